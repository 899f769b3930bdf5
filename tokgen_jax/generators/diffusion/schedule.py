"""Noise schedules of a discrete-time diffusion process and the respacing of its steps for sampling.

Timesteps are the integers 0..T-1 and `alphas_cumprod[t] = Π_{s≤t} (1 - β_s)` (ᾱ_t of DDPM, Ho et al. 2020), as in
DiT and diffusers: t = 0 is the least noisy step. Schedules are computed in float64 and stored as float32.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError

SCHEDULES = ("linear", "cosine", "scaled_linear")


@flax.struct.dataclass
class NoiseSchedule:
  betas: jax.Array  # [T] float32
  alphas_cumprod: jax.Array  # [T] float32

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])

  @classmethod
  def from_betas(cls, betas) -> "NoiseSchedule":
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or not betas.size or np.any(betas <= 0) or np.any(betas > 1):
      raise ConfigError(f"NoiseSchedule: betas must be a non-empty 1-D array in (0, 1], got shape {betas.shape} "
                        f"and range [{betas.min() if betas.size else None}, {betas.max() if betas.size else None}].")
    return cls(betas=jnp.asarray(betas, jnp.float32), alphas_cumprod=jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))

  @classmethod
  def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
    """DDPM's (and DiT's) schedule: β linear from 1e-4 to 0.02 over 1000 steps."""
    return cls.from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))

  @classmethod
  def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
    """Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2), with
    β_t = 1 - ᾱ(t+1)/ᾱ(t) clipped at `max_beta` (their §3.2)."""
    f = lambda u: np.cos((u / num_steps + s) / (1 + s) * np.pi / 2) ** 2
    steps = np.arange(num_steps, dtype=np.float64)
    return cls.from_betas(np.minimum(1.0 - f(steps + 1) / f(steps), max_beta))

  @classmethod
  def scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085,
                    beta_end: float = 0.012) -> "NoiseSchedule":
    """LDM / Stable Diffusion: √β linear from √0.00085 to √0.012."""
    return cls.from_betas(np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=np.float64) ** 2)

  def rescale_zero_terminal_snr(self) -> "NoiseSchedule":
    """Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed"), Algorithm 1: shift and
    scale √ᾱ so that √ᾱ_{T-1} = 0 (pure noise at the last step) while √ᾱ_0 keeps its value. The last β becomes 1,
    so ε-prediction is undefined there: pair it with v-prediction, as the paper does."""
    root = np.sqrt(np.asarray(self.alphas_cumprod, np.float64))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    alphas_cumprod = root ** 2
    alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return NoiseSchedule(betas=jnp.asarray(1.0 - alphas, jnp.float32),
                         alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32))


def make_schedule(name: str, num_steps: int = 1000, zero_terminal_snr: bool = False) -> NoiseSchedule:
  """The schedule `config.diffusion.schedule` names, over `num_steps` training steps."""
  if name not in SCHEDULES:
    raise ConfigError(f"config.diffusion.schedule={name!r} is not known; choose one of {SCHEDULES}.")
  if int(num_steps) < 2:
    raise ConfigError(f"config.diffusion.num_steps={num_steps} must be at least 2 (DDPM and DiT use 1000).")
  schedule = getattr(NoiseSchedule, name)(int(num_steps))
  return schedule.rescale_zero_terminal_snr() if zero_terminal_snr else schedule


def respaced_timesteps(num_train_steps: int, num_sample_steps: int) -> np.ndarray:
  """`num_sample_steps` of the training timesteps, evenly spaced from T-1 down to 0 (improved DDPM's
  `space_timesteps` with one section: round(i·(T-1)/(S-1))), int32, in sampling order (noisiest first)."""
  if not 1 <= int(num_sample_steps) <= int(num_train_steps):
    raise ConfigError(f"config.sample.num_steps={num_sample_steps} must lie in [1, {num_train_steps}] (the "
                      "training steps); DiT samples 250 of 1000, DDIM commonly 50.")
  if num_sample_steps == 1:
    return np.asarray([num_train_steps - 1], np.int32)
  steps = np.round(np.arange(num_sample_steps) * (num_train_steps - 1) / (num_sample_steps - 1))
  return steps.astype(np.int32)[::-1].copy()
