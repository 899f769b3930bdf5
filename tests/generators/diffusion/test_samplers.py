"""The jitted diffusion sampler equals a float64 numpy loop written from NUMERICS' formulas, step for step, for
DDPM (each variance) and DDIM, with guidance (all channels, a subset, a ramp), self-conditioning and each
prediction kind; plus the CFG formula, determinism, and settings errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import samplers
from tokgen_jax.generators.diffusion.samplers import DiffusionSampling
from tokgen_jax.generators.diffusion.schedule import NoiseSchedule, respaced_timesteps

SCHEDULE = NoiseSchedule.linear(100)
A = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
SHAPE = (3, 2, 2, 4)


def _model(x, t, unconditional, self_cond, xp=jnp):
  """A fixed analytic model: output and var_frac depend on x, t, the condition flag and the self-condition."""
  scale = 0.3 + 0.5 * (t / 100.0)[:, None, None, None]
  shift = xp.where(unconditional[:, None, None, None], -0.2, 0.4) * xp.arange(1, 5) / 4
  output = scale * x + shift + 0.25 * self_cond
  frac = xp.tanh(0.5 * x + (t / 100.0)[:, None, None, None] - 0.5)
  return output, frac


def _reference(x, rng, settings):
  """The sampler in numpy float64, from the formulas (not the module's helpers)."""
  timesteps = respaced_timesteps(100, settings.num_steps)
  previous = np.concatenate([timesteps[1:], [-1]])
  x = np.asarray(x, np.float64)
  self_cond = np.zeros_like(x)
  model = lambda x_, t_, u_, s_: tuple(np.asarray(a, np.float64) for a in _model(x_, t_, u_, s_, xp=np))
  for index, (t, t_prev) in enumerate(zip(timesteps, previous)):
    noise = np.asarray(jax.random.normal(jax.random.fold_in(rng, index), x.shape), np.float64)
    ts = np.full(len(x), t, np.float64)
    output, frac = model(x, ts, np.zeros(len(x), bool), self_cond)
    if settings.cfg_scale != 1.0:
      uncond, _ = model(x, ts, np.ones(len(x), bool), self_cond)
      s = 1 + (settings.cfg_scale - 1) * (index + 1) / settings.num_steps if settings.cfg_ramp == "linear" \
          else settings.cfg_scale
      guided = uncond + s * (output - uncond)
      k = settings.cfg_channels or x.shape[-1]
      output = np.concatenate([guided[..., :k], output[..., k:]], axis=-1)
    a_t, a_p = A[t], (A[t_prev] if t_prev >= 0 else 1.0)
    if settings.prediction == "eps":
      eps = output
      x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    elif settings.prediction == "x0":
      x0 = output
      eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
    else:
      x0 = np.sqrt(a_t) * x - np.sqrt(1 - a_t) * output
      eps = np.sqrt(1 - a_t) * x + np.sqrt(a_t) * output
    if settings.method == "ddim":
      sigma = settings.eta * np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p)
      x_new = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - sigma ** 2) * eps + sigma * noise
    else:
      beta = 1 - a_t / a_p
      mean = np.sqrt(a_p) * beta / (1 - a_t) * x0 + np.sqrt(1 - beta) * (1 - a_p) / (1 - a_t) * x
      small = beta * (1 - a_p) / (1 - a_t)
      if settings.variance == "fixed_small":
        variance = small
      elif settings.variance == "fixed_large":
        variance = beta
      else:
        floor = (1 - A[1] / A[0]) * (1 - A[0]) / (1 - A[1])
        m = (frac + 1) / 2
        variance = np.exp(m * np.log(beta) + (1 - m) * np.log(small if t_prev >= 0 else floor))
      x_new = mean + (np.sqrt(variance) * noise if t_prev >= 0 else 0.0)
    x = x_new
    if settings.self_condition:
      self_cond = x0
  return x


@functools.lru_cache(maxsize=None)
def _jitted(settings):
  return jax.jit(lambda x, rng: samplers.sample(_model, SCHEDULE, x, rng, settings))


CASES = {
    "ddpm_small": DiffusionSampling(num_steps=100),
    "ddpm_large_respaced": DiffusionSampling(num_steps=25, variance="fixed_large"),
    "ddpm_learned_cfg": DiffusionSampling(num_steps=20, variance="learned", cfg_scale=2.5),
    "ddpm_cfg_3_channels_x0": DiffusionSampling(num_steps=10, cfg_scale=4.0, cfg_channels=3, prediction="x0"),
    "ddim": DiffusionSampling(method="ddim", num_steps=10),
    "ddim_eta_ramp_v": DiffusionSampling(method="ddim", num_steps=12, eta=0.5, cfg_scale=3.0, cfg_ramp="linear",
                                         prediction="v"),
    "ddim_self_condition": DiffusionSampling(method="ddim", num_steps=8, self_condition=True, cfg_scale=1.5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jitted_sampler_equals_the_numpy_loop(name):
  settings = CASES[name]
  x_T = jax.random.normal(jax.random.key(1), SHAPE)
  rng = jax.random.key(2)
  got = np.asarray(_jitted(settings)(x_T, rng), np.float64)
  expected = _reference(x_T, rng, settings)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(expected).max()))


def test_guide_formula_and_channel_subset():
  cond, uncond = jnp.arange(8.0).reshape(2, 4), -jnp.ones((2, 4))
  np.testing.assert_allclose(samplers.guide(cond, uncond, 3.0), -1 + 3 * (np.arange(8.0).reshape(2, 4) + 1))
  subset = np.asarray(samplers.guide(cond, uncond, 3.0, channels=3))
  np.testing.assert_allclose(subset[:, :3], (-1 + 3 * (np.arange(8.0).reshape(2, 4) + 1))[:, :3])
  np.testing.assert_allclose(subset[:, 3], cond[:, 3])  # the unguided channel keeps the conditional output


def test_deterministic_ddim_ignores_the_rng_and_ddpm_does_not():
  x_T = jax.random.normal(jax.random.key(3), SHAPE)
  ddim = _jitted(CASES["ddim"])
  np.testing.assert_array_equal(ddim(x_T, jax.random.key(4)), ddim(x_T, jax.random.key(5)))
  ddpm = _jitted(CASES["ddpm_large_respaced"])
  assert float(jnp.abs(ddpm(x_T, jax.random.key(4)) - ddpm(x_T, jax.random.key(5))).max()) > 1e-3


@pytest.mark.parametrize("field, value, match", [
    ("method", "euler", "config.sample.method='euler' must be one of"),
    ("variance", "big", "config.sample.variance='big'"),
    ("cfg_ramp", "cosine", "config.sample.cfg_ramp='cosine'"),
    ("num_steps", 0, "config.sample.num_steps=0 must be at least 1"),
    ("cfg_scale", -1.0, "config.sample.cfg_scale=-1.0"),
    ("eta", -0.5, "config.sample.eta=-0.5"),
    ("cfg_channels", -2, "config.sample.cfg_channels=-2"),
])
def test_bad_settings_name_the_field(field, value, match):
  with pytest.raises(ConfigError, match=match):
    DiffusionSampling(**{field: value}).validate()


def test_learned_variance_without_var_channels_is_refused():
  model = lambda x, t, u, s: (x, None)
  with pytest.raises(ConfigError, match="outputs no variance"):
    samplers.sample(model, SCHEDULE, jnp.zeros(SHAPE), jax.random.key(0),
                    DiffusionSampling(num_steps=2, variance="learned"))
