"""Diffusion samplers: DDPM (ancestral) and DDIM over respaced timesteps with classifier-free guidance, as one
jitted `lax.fori_loop` (tests/generators/diffusion/test_samplers.py checks it against a float64 numpy loop).

The model is a function `model_fn(x_t, t, unconditional, self_cond) -> (output, var_frac)`: x_t `[B, ...]`, t int32
`[B]`, unconditional bool `[B]` (rows that take the null condition), self_cond `[B, ...]` (the previous step's x0
estimate, zeros when unused); output is of kind `settings.prediction` and var_frac the learned-variance channels
(None without). Under guidance the model runs once per step on the doubled batch `[x; x]` with the second half
unconditional.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import gaussian
from tokgen_jax.generators.diffusion.schedule import NoiseSchedule, respaced_timesteps

METHODS = ("ddpm", "ddim")
CFG_RAMPS = ("none", "linear")
ModelFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array | None]]


@dataclasses.dataclass(frozen=True)
class DiffusionSampling:
  """Static sampler settings (a jit argument). `cfg_channels` > 0 guides only the first channels (DiT's
  `forward_with_cfg` guides 3 of 4, a GLIDE leftover; 0 guides all, the default). `cfg_ramp='linear'` grows the
  scale from 1 towards `cfg_scale` over the steps: step i of S (0 the noisiest) uses 1 + (s-1)(i+1)/S, so the
  noisiest steps, where guidance costs diversity most, are guided least (our choice of ramp)."""

  method: str = "ddpm"
  num_steps: int = 250
  eta: float = 0.0
  variance: str = "fixed_small"
  prediction: str = "eps"
  cfg_scale: float = 1.0
  cfg_channels: int = 0
  cfg_ramp: str = "none"
  clip_x0: float = 0.0
  self_condition: bool = False

  @property
  def guided(self) -> bool:
    return self.cfg_scale != 1.0

  def validate(self) -> None:
    checks = [("method", self.method in METHODS, f"one of {METHODS}"),
              ("variance", self.variance in gaussian.VARIANCES, f"one of {gaussian.VARIANCES}"),
              ("prediction", self.prediction in gaussian.PREDICTIONS, f"one of {gaussian.PREDICTIONS}"),
              ("cfg_ramp", self.cfg_ramp in CFG_RAMPS, f"one of {CFG_RAMPS}"),
              ("num_steps", self.num_steps >= 1, "at least 1"), ("eta", self.eta >= 0, "at least 0"),
              ("cfg_scale", self.cfg_scale >= 0, "at least 0 (1 = no guidance)"),
              ("cfg_channels", self.cfg_channels >= 0, "at least 0 (0 = all channels)"),
              ("clip_x0", self.clip_x0 >= 0, "at least 0 (0 = no clipping)")]
    for field, ok, expected in checks:
      if not ok:
        raise ConfigError(f"config.sample.{field}={getattr(self, field)!r} must be {expected}.")


def guide(cond: jax.Array, uncond: jax.Array, scale, channels: int = 0) -> jax.Array:
  """Classifier-free guidance, ε̂ = ε_u + s (ε_c - ε_u) (Ho & Salimans 2022, eq. 6); with `channels` = k only the
  first k channels of the last axis are guided and the rest keep the conditional output (as DiT)."""
  guided = uncond + scale * (cond - uncond)
  if channels <= 0 or channels >= cond.shape[-1]:
    return guided
  return jnp.concatenate([guided[..., :channels], cond[..., channels:]], axis=-1)


def _scale(settings: DiffusionSampling, index) -> jax.Array:
  if settings.cfg_ramp == "linear":
    return 1.0 + (settings.cfg_scale - 1.0) * (index + 1) / settings.num_steps
  return jnp.asarray(settings.cfg_scale, jnp.float32)


def _predict(model_fn: ModelFn, x: jax.Array, t: jax.Array, self_cond: jax.Array, settings: DiffusionSampling,
             index) -> tuple[jax.Array, jax.Array | None]:
  """The (guided) model output and var_frac at x for timestep t of every row."""
  size = x.shape[0]
  if not settings.guided:
    return model_fn(x, t, jnp.zeros((size,), bool), self_cond)
  doubled = lambda a: jnp.concatenate([a, a])
  unconditional = jnp.concatenate([jnp.zeros((size,), bool), jnp.ones((size,), bool)])
  output, frac = model_fn(doubled(x), doubled(t), unconditional, doubled(self_cond))
  cond, uncond = jnp.split(output, 2)
  return guide(cond, uncond, _scale(settings, index), settings.cfg_channels), (
      None if frac is None else frac[:size])


def _step(model_fn: ModelFn, schedule: NoiseSchedule, settings: DiffusionSampling, x: jax.Array,
          self_cond: jax.Array, index, timestep, previous, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sampling step `index` from `timestep` to `previous`: (x at `previous`, the x0 estimate for self-conditioning)."""
  size = x.shape[0]
  t = jnp.full((size,), timestep, jnp.int32)
  t_prev = jnp.full((size,), previous, jnp.int32)
  output, frac = _predict(model_fn, x, t, self_cond, settings, index)
  eps, x0 = gaussian.to_eps_and_x0(settings.prediction, schedule, x, t, output)
  if settings.method == "ddim":
    x = gaussian.ddim_step(schedule, x, t, t_prev, eps, settings.eta, noise, settings.clip_x0)
  else:
    log_variance = None
    if settings.variance == "learned":
      if frac is None:
        raise ConfigError("config.sample.variance='learned' but the model outputs no variance (learn_sigma=False).")
      log_variance = gaussian.learned_log_variance(schedule, t, frac, t_prev)
    x = gaussian.ddpm_step(schedule, x, t, eps, noise, settings.variance, t_prev, settings.clip_x0, log_variance)
  return x, (x0 if settings.self_condition else self_cond)


def _plan(schedule: NoiseSchedule, settings: DiffusionSampling) -> tuple[np.ndarray, np.ndarray]:
  settings.validate()
  timesteps = respaced_timesteps(schedule.num_steps, settings.num_steps)
  return timesteps, np.concatenate([timesteps[1:], [-1]]).astype(np.int32)


def sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array,
           settings: DiffusionSampling) -> jax.Array:
  """x0 from x_T after `settings.num_steps` respaced steps (a `lax.fori_loop`; jit with `settings` static). Step i
  draws its noise from `fold_in(rng, i)`."""
  timesteps, previous = (jnp.asarray(a) for a in _plan(schedule, settings))

  def body(index, carry):
    x, self_cond = carry
    noise = jax.random.normal(jax.random.fold_in(rng, index), x.shape, jnp.float32)
    return _step(model_fn, schedule, settings, x, self_cond, index, timesteps[index], previous[index], noise)

  x_T = x_T.astype(jnp.float32)
  x, _ = jax.lax.fori_loop(0, len(timesteps), body, (x_T, jnp.zeros_like(x_T)))
  return x

