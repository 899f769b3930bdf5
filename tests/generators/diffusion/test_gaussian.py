"""Gaussian diffusion against hand computation: q marginals, prediction conversions, the posterior as a product of
Gaussians, DDPM's closed form, DDIM inverting to x0, learned variance endpoints, KL and the decoder likelihood."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import gaussian
from tokgen_jax.generators.diffusion.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.linear()
A = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
B = np.asarray(SCHEDULE.betas, np.float64)
T = jnp.asarray([0, 1, 300, 999])


def _arrays(seed=0, shape=(4, 3, 2)):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(2))


def test_q_sample_is_the_marginal():
  x0 = jnp.full((20_000,), 0.7)
  t = jnp.full((20_000,), 300)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  x_t = np.asarray(gaussian.q_sample(SCHEDULE, x0, t, noise), np.float64)
  assert abs(x_t.mean() - np.sqrt(A[300]) * 0.7) < 0.02 and abs(x_t.var() - (1 - A[300])) < 0.02
  np.testing.assert_allclose(gaussian.q_sample(SCHEDULE, x0[:1], t[:1], noise[:1]),
                             np.sqrt(A[300]) * 0.7 + np.sqrt(1 - A[300]) * np.asarray(noise[:1]), rtol=1e-6)


def test_alpha_bar_before_the_first_step_is_one():
  np.testing.assert_allclose(gaussian.alpha_bar(SCHEDULE, jnp.asarray([-1, 0, 999])), [1.0, A[0], A[999]], rtol=1e-6)


def test_predictions_round_trip_and_match_the_targets():
  x0, eps = _arrays()
  x_t = gaussian.q_sample(SCHEDULE, x0, T, eps)
  for prediction in gaussian.PREDICTIONS:
    target = gaussian.training_target(prediction, SCHEDULE, x0, T, eps)
    eps_back, x0_back = gaussian.to_eps_and_x0(prediction, SCHEDULE, x_t, T, target)
    tolerance = 2e-2 if prediction == "x0" else 2e-3  # ε from x0 divides by √(1-ᾱ_0) = 0.01
    np.testing.assert_allclose(eps_back, eps, atol=tolerance)
    np.testing.assert_allclose(x0_back, x0, atol=2e-3 if prediction != "eps" else 5e-2)
  a = A[np.asarray(T)][:, None, None]
  np.testing.assert_allclose(gaussian.v_from_eps(SCHEDULE, x0, T, eps), np.sqrt(a) * eps - np.sqrt(1 - a) * x0,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match="config.diffusion.prediction='score'"):
    gaussian.training_target("score", SCHEDULE, x0, T, eps)


def test_posterior_is_the_product_of_the_prior_and_the_step_likelihood():
  """q(x_{t-1}|x_t, x0) ∝ N(x_{t-1}; √ᾱ_{t-1} x0, 1-ᾱ_{t-1}) · N(x_t; √α_t x_{t-1}, β_t), solved by hand."""
  x0, x_t = _arrays(1)
  for t, t_prev in ((300, 299), (300, 200), (5, -1)):
    a_t, a_p = A[t], (A[t_prev] if t_prev >= 0 else 1.0)
    alpha = a_t / a_p
    prior_var, step_var = 1 - a_p, 1 - alpha
    if prior_var == 0:  # the end of the chain: x_{-1} is x0 itself
      variance, mean = 0.0, np.asarray(x0, np.float64)
    else:
      variance = 1 / (1 / prior_var + alpha / step_var)
      mean = variance * (np.sqrt(a_p) * np.asarray(x0, np.float64) / prior_var
                         + np.sqrt(alpha) * np.asarray(x_t, np.float64) / step_var)
    got_mean, got_var, got_log = gaussian.posterior_mean_variance(
        SCHEDULE, x0, x_t, jnp.full((4,), t), jnp.full((4,), t_prev))
    np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_var)[:, 0, 0], variance, rtol=1e-4, atol=1e-12)
    if t_prev < 0:  # the log stands in β̃ of step 1 → 0
      np.testing.assert_allclose(np.asarray(got_log)[:, 0, 0], np.log(B[1] * (1 - A[0]) / (1 - A[1])), rtol=1e-4)


def test_ddpm_step_is_ho_et_als_closed_form():
  x_t, eps = _arrays(2)
  noise = next(_arrays(3))
  t = jnp.asarray([1, 10, 500, 999])
  got = gaussian.ddpm_step(SCHEDULE, x_t, t, eps, noise, variance="fixed_large")
  a, beta = A[np.asarray(t)][:, None, None], B[np.asarray(t)][:, None, None]
  expected = (np.asarray(x_t) - beta / np.sqrt(1 - a) * np.asarray(eps)) / np.sqrt(1 - beta) + np.sqrt(beta) * noise
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  last = gaussian.ddpm_step(SCHEDULE, x_t, jnp.zeros((4,), jnp.int32), eps, noise)  # no noise at t = 0
  np.testing.assert_allclose(last, gaussian.x0_from_eps(SCHEDULE, x_t, jnp.zeros((4,), jnp.int32), eps), atol=1e-5)
  clipped = gaussian.ddpm_step(SCHEDULE, 5 * x_t, jnp.zeros((4,), jnp.int32), eps, noise, clip_x0=1.0)
  assert float(jnp.abs(clipped).max()) <= 1.0 + 1e-6
  with pytest.raises(ConfigError, match="config.sample.variance='tiny'"):
    gaussian.ddpm_step(SCHEDULE, x_t, t, eps, noise, variance="tiny")


def test_deterministic_ddim_with_the_true_noise_returns_x0_from_any_step():
  x0, eps = _arrays(4)
  for start in (999, 600, 37):
    t = jnp.full((4,), start)
    x = gaussian.q_sample(SCHEDULE, x0, t, eps)
    timesteps = list(range(start, -1, -max(1, start // 7))) + [-1]
    for current, previous in zip(timesteps[:-1], timesteps[1:]):
      x = gaussian.ddim_step(SCHEDULE, x, jnp.full((4,), current), jnp.full((4,), previous), eps)
    np.testing.assert_allclose(x, x0, atol=2e-4)


def test_ddim_noise_level_follows_eta():
  x_t, eps = _arrays(5)
  noise = next(_arrays(6))
  t, t_prev = jnp.full((4,), 500), jnp.full((4,), 400)
  plain = gaussian.ddim_step(SCHEDULE, x_t, t, t_prev, eps)
  noisy = gaussian.ddim_step(SCHEDULE, x_t, t, t_prev, eps, eta=1.0, noise=noise)
  a_t, a_p = A[500], A[400]
  sigma = np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p)
  x0 = (np.asarray(x_t) - np.sqrt(1 - a_t) * np.asarray(eps)) / np.sqrt(a_t)
  expected = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - sigma ** 2) * np.asarray(eps) + sigma * np.asarray(noise)
  np.testing.assert_allclose(noisy, expected, rtol=1e-4, atol=1e-5)
  # With η = 1 DDIM's σ is the DDPM posterior's: σ² = β̃.
  np.testing.assert_allclose(sigma ** 2, (1 - a_t / a_p) * (1 - a_p) / (1 - a_t), rtol=1e-9)
  assert float(jnp.abs(plain - noisy).max()) > 0.01


def test_learned_log_variance_spans_beta_tilde_to_beta():
  t = jnp.asarray([1, 200, 999])
  small = np.log(B[np.asarray(t)] * (1 - A[np.asarray(t) - 1]) / (1 - A[np.asarray(t)]))
  for frac, expected in ((-1.0, small), (1.0, np.log(B[np.asarray(t)])), (0.0, (small + np.log(B[np.asarray(t)])) / 2)):
    got = gaussian.learned_log_variance(SCHEDULE, t, jnp.full((3, 2), frac))
    np.testing.assert_allclose(np.asarray(got)[:, 0], expected, rtol=1e-4)


def test_normal_kl_and_the_decoder_likelihood_are_the_closed_forms():
  got = gaussian.normal_kl(jnp.asarray(0.3), jnp.log(jnp.asarray(2.0)), jnp.asarray(-0.1), jnp.log(jnp.asarray(0.5)))
  expected = np.log(np.sqrt(0.5) / np.sqrt(2.0)) + (2.0 + 0.4 ** 2) / (2 * 0.5) - 0.5
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  x = jnp.asarray([-1.0, 0.2, 1.0])
  mean, log_scale = jnp.asarray([-0.9, 0.25, 0.8]), jnp.log(jnp.asarray([0.1, 0.05, 0.3]))
  got = np.exp(gaussian.discretized_gaussian_log_likelihood(x, mean, log_scale))
  normal = stats.norm(loc=np.asarray(mean, np.float64), scale=np.exp(np.asarray(log_scale, np.float64)))
  expected = [normal.cdf(-1 + 1 / 255)[0], (normal.cdf(0.2 + 1 / 255) - normal.cdf(0.2 - 1 / 255))[1],
              1 - normal.cdf(1 - 1 / 255)[2]]
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_vlb_terms_vanish_for_the_true_posterior_and_use_the_nll_at_t0():
  x0, x_t = _arrays(7)
  t = jnp.asarray([0, 3, 400, 999])
  mean, _, log_variance = gaussian.posterior_mean_variance(SCHEDULE, x0, x_t, t)
  terms = np.asarray(gaussian.vlb_terms(SCHEDULE, x0, x_t, t, mean, log_variance))
  np.testing.assert_allclose(terms[1:], 0.0, atol=1e-5)
  assert terms[0] > 0  # a decoder NLL, not a KL
  worse = np.asarray(gaussian.vlb_terms(SCHEDULE, x0, x_t, t, mean + 0.1, log_variance))
  assert np.all(worse[1:] > 1e-3)
