"""Gaussian diffusion in closed form: the forward marginal, conversions between ε, x0 and v predictions, the
posterior of one reverse step, DDPM and DDIM steps, and improved DDPM's learned variance with its VLB terms.

Every function takes the `NoiseSchedule` first and `t` as int32 timesteps `[B]`; per-example coefficients
broadcast over the remaining axes of x. A reverse step goes from t to any earlier `t_prev` (respaced sampling);
`t_prev < 0` means the end of the chain, where ᾱ = 1 (x0 itself). The formulas are NUMERICS.md "Diffusion".
"""

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion.schedule import NoiseSchedule

PREDICTIONS = ("eps", "v", "x0")
VARIANCES = ("fixed_small", "fixed_large", "learned")


def alpha_bar(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
  """ᾱ_t per example `[B]`; 1 where t < 0 (before the first noise step)."""
  t = jnp.asarray(t, jnp.int32)
  return jnp.where(t < 0, 1.0, schedule.alphas_cumprod[jnp.clip(t, 0, schedule.num_steps - 1)])


def _expand(values: jax.Array, like: jax.Array) -> jax.Array:
  return values.reshape(values.shape + (1,) * (like.ndim - values.ndim)).astype(jnp.float32)


def _previous(t: jax.Array, t_prev: jax.Array | None) -> jax.Array:
  return jnp.asarray(t, jnp.int32) - 1 if t_prev is None else jnp.asarray(t_prev, jnp.int32)


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε, a draw of q(x_t | x0) (DDPM eq. 4)."""
  a = _expand(alpha_bar(schedule, t), x0)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


# ----------------------------------------------------------------------------------------------- predictions


def x0_from_eps(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  a = _expand(alpha_bar(schedule, t), x_t)
  return (x_t - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)


def eps_from_x0(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
  a = _expand(alpha_bar(schedule, t), x_t)
  return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)


def v_from_eps(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """v = √ᾱ ε - √(1-ᾱ) x0 (Salimans & Ho 2022, §4)."""
  a = _expand(alpha_bar(schedule, t), x0)
  return jnp.sqrt(a) * eps - jnp.sqrt(1.0 - a) * x0


def x0_from_v(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
  a = _expand(alpha_bar(schedule, t), x_t)
  return jnp.sqrt(a) * x_t - jnp.sqrt(1.0 - a) * v


def eps_from_v(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
  a = _expand(alpha_bar(schedule, t), x_t)
  return jnp.sqrt(1.0 - a) * x_t + jnp.sqrt(a) * v


def _check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ConfigError(f"config.diffusion.prediction={prediction!r} is not known; choose one of {PREDICTIONS}.")


def training_target(prediction: str, schedule: NoiseSchedule, x0: jax.Array, t: jax.Array,
                    noise: jax.Array) -> jax.Array:
  """What a model predicting `prediction` regresses to for x_t = q_sample(x0, t, noise)."""
  _check_prediction(prediction)
  if prediction == "eps":
    return noise
  if prediction == "x0":
    return x0
  return v_from_eps(schedule, x0, t, noise)


def to_eps_and_x0(prediction: str, schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array,
                  output: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(ε, x0) implied by a model output of kind `prediction` at x_t."""
  _check_prediction(prediction)
  if prediction == "eps":
    return output, x0_from_eps(schedule, x_t, t, output)
  if prediction == "x0":
    return eps_from_x0(schedule, x_t, t, output), output
  return eps_from_v(schedule, x_t, t, output), x0_from_v(schedule, x_t, t, output)


# -------------------------------------------------------------------------------------------------- posterior


def _step_coefficients(schedule: NoiseSchedule, t: jax.Array, t_prev: jax.Array) -> tuple[jax.Array, ...]:
  """(ᾱ_t, ᾱ_prev, β of the step t → t_prev = 1 - ᾱ_t/ᾱ_prev, its posterior variance β̃), each `[B]`."""
  a_t, a_prev = alpha_bar(schedule, t), alpha_bar(schedule, t_prev)
  beta = 1.0 - a_t / a_prev
  posterior_variance = beta * (1.0 - a_prev) / (1.0 - a_t)
  return a_t, a_prev, beta, posterior_variance


def _variance_floor(schedule: NoiseSchedule) -> jax.Array:
  """β̃ of the base schedule's step 1 → 0: improved DDPM's stand-in for the zero variance at the chain's end."""
  a = schedule.alphas_cumprod
  return schedule.betas[1] * (1.0 - a[0]) / (1.0 - a[1])


def posterior_mean_variance(schedule: NoiseSchedule, x0: jax.Array, x_t: jax.Array, t: jax.Array,
                            t_prev: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean, variance and clipped log-variance of q(x_{t_prev} | x_t, x0) (DDPM eqs. 6-7, for the step's own β as
  improved DDPM's respacing): mean = √ᾱ_prev β/(1-ᾱ_t) x0 + √(ᾱ_t/ᾱ_prev)(1-ᾱ_prev)/(1-ᾱ_t) x_t,
  variance β̃ = β (1-ᾱ_prev)/(1-ᾱ_t). At the chain's end the variance is 0 and the log uses β̃ of step 1 → 0
  instead (improved DDPM's `posterior_log_variance_clipped`)."""
  t_prev = _previous(t, t_prev)
  a_t, a_prev, beta, variance = _step_coefficients(schedule, t, t_prev)
  x0_coefficient = jnp.sqrt(a_prev) * beta / (1.0 - a_t)
  x_t_coefficient = jnp.sqrt(a_t / a_prev) * (1.0 - a_prev) / (1.0 - a_t)
  mean = _expand(x0_coefficient, x0) * x0 + _expand(x_t_coefficient, x_t) * x_t
  log_variance = jnp.log(jnp.where(t_prev < 0, _variance_floor(schedule), variance))
  return mean, _expand(variance, x_t), _expand(log_variance, x_t)


def learned_log_variance(schedule: NoiseSchedule, t: jax.Array, frac: jax.Array,
                         t_prev: jax.Array | None = None) -> jax.Array:
  """Improved DDPM §3.1 (eq. 15): log σ² = m log β + (1-m) log β̃ (clipped), m = (frac + 1)/2, for a model
  output `frac` in [-1, 1] (DiT's `learn_sigma` channels)."""
  t_prev = _previous(t, t_prev)
  _, _, beta, variance = _step_coefficients(schedule, t, t_prev)
  log_small = jnp.log(jnp.where(t_prev < 0, _variance_floor(schedule), variance))
  m = (frac + 1.0) / 2.0
  return m * _expand(jnp.log(beta), frac) + (1.0 - m) * _expand(log_small, frac)


# --------------------------------------------------------------------------------------------------- steps


def _clipped(x0: jax.Array, clip_x0: float) -> jax.Array:
  return jnp.clip(x0, -clip_x0, clip_x0) if clip_x0 > 0 else x0


def ddpm_step(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, eps: jax.Array, noise: jax.Array,
              variance: str = "fixed_small", t_prev: jax.Array | None = None, clip_x0: float = 0.0,
              log_variance: jax.Array | None = None) -> jax.Array:
  """One ancestral step x_t → x_{t_prev} (seed 001 algorithm 2): the posterior mean at x̂0 = x0_from_eps
  (clipped to ±clip_x0 only when it is > 0) plus σ z, σ² = β̃ ("fixed_small"), β of the step ("fixed_large") or
  exp(log_variance) ("learned"); no noise at the chain's end. With t_prev = t-1 the mean is
  (x_t - β_t/√(1-ᾱ_t) ε)/√α_t, Ho et al.'s form."""
  if variance not in VARIANCES:
    raise ConfigError(f"config.sample.variance={variance!r} is not known; choose one of {VARIANCES}.")
  t_prev = _previous(t, t_prev)
  x0 = _clipped(x0_from_eps(schedule, x_t, t, eps), clip_x0)
  mean, posterior_variance, _ = posterior_mean_variance(schedule, x0, x_t, t, t_prev)
  if variance == "learned":
    if log_variance is None:
      raise ConfigError("ddpm_step: variance='learned' needs the model's log_variance (learned_log_variance).")
    sigma = jnp.exp(0.5 * log_variance)
  elif variance == "fixed_large":
    sigma = _expand(jnp.sqrt(_step_coefficients(schedule, t, t_prev)[2]), x_t)
  else:
    sigma = jnp.sqrt(posterior_variance)
  return mean + _expand((t_prev >= 0).astype(jnp.float32), x_t) * sigma * noise


def ddim_step(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, t_prev: jax.Array, eps: jax.Array,
              eta: float = 0.0, noise: jax.Array | None = None, clip_x0: float = 0.0) -> jax.Array:
  """One DDIM step (Song et al. 2021, eq. 12): x_prev = √ᾱ_prev x̂0 + √(1-ᾱ_prev-σ²) ε + σ z with
  σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev); η = 0 is deterministic. A clipped x̂0 gives back its ε."""
  t_prev = jnp.asarray(t_prev, jnp.int32)
  a_t, a_prev = (_expand(alpha_bar(schedule, s), x_t) for s in (t, t_prev))
  x0 = x0_from_eps(schedule, x_t, t, eps)
  if clip_x0 > 0:
    x0 = _clipped(x0, clip_x0)
    eps = eps_from_x0(schedule, x_t, t, x0)
  sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t)) * jnp.sqrt(1.0 - a_t / a_prev)
  x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0)) * eps
  if eta > 0:
    if noise is None:
      raise ConfigError("ddim_step: eta > 0 draws noise; pass `noise` shaped like x_t.")
    x_prev = x_prev + sigma * noise
  return x_prev


# ------------------------------------------------------------------------------------------------------ VLB


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
  """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
  """log P(x) per element for data in [-1, 1] quantized to 256 levels (bins of width 2/255, the edge bins open),
  under N(means, e^{2·log_scales}) (Ho et al. 2020 §3.3, improved DDPM's decoder). Uses the exact normal CDF
  where improved DDPM uses a tanh approximation of it."""
  centered = x - means
  inverse_std = jnp.exp(-log_scales)
  cdf_plus = jax.scipy.special.ndtr(inverse_std * (centered + 1.0 / 255.0))
  cdf_min = jax.scipy.special.ndtr(inverse_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vlb_terms(schedule: NoiseSchedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, model_mean: jax.Array,
              model_log_variance: jax.Array) -> jax.Array:
  """Per example, in bits per dimension: L_{t-1} = KL(q(x_{t-1}|x_t, x0) ‖ p(x_{t-1}|x_t)) for t > 0 and the
  decoder NLL L_0 = -log p(x0|x1) at t = 0 (improved DDPM's `_vb_terms_bpd`). The decoder term assumes data in
  [-1, 1] quantized to 8 bits (pixels); on continuous latents it is only a surrogate, as in DiT."""
  true_mean, _, true_log_variance = posterior_mean_variance(schedule, x0, x_t, t)
  per_dim = lambda values: jnp.mean(values.reshape(values.shape[0], -1), axis=-1) / np.log(2.0)
  kl = per_dim(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance))
  nll = per_dim(-discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance))
  return jnp.where(jnp.asarray(t) == 0, nll, kl)
