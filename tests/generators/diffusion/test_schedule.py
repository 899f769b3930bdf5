"""Noise schedules against their formulas, zero-terminal-SNR rescaling, and respaced timesteps."""

import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion.schedule import NoiseSchedule, make_schedule, respaced_timesteps


def test_linear_schedule_is_ddpms():
  schedule = NoiseSchedule.linear()
  betas = np.asarray(schedule.betas, np.float64)
  assert schedule.num_steps == 1000 and schedule.betas.dtype == np.float32
  np.testing.assert_allclose(betas[[0, 1, 999]], [1e-4, 1e-4 + (0.02 - 1e-4) / 999, 0.02], rtol=1e-6)
  np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5)


def test_cosine_schedule_follows_nichol_and_dhariwal():
  schedule = NoiseSchedule.cosine(100)
  f = lambda t: np.cos((t / 100 + 0.008) / 1.008 * np.pi / 2) ** 2
  for t in (0, 10, 50, 98):  # before the last steps, where β is clipped at 0.999
    np.testing.assert_allclose(schedule.alphas_cumprod[t], f(t + 1) / f(0), rtol=1e-5)
  assert float(schedule.betas.max()) <= 0.999 + 1e-7


def test_scaled_linear_is_ldms():
  betas = np.asarray(NoiseSchedule.scaled_linear(1000).betas, np.float64)
  np.testing.assert_allclose(betas[[0, -1]], [0.00085, 0.012], rtol=1e-5)
  np.testing.assert_allclose(np.sqrt(betas[500]), (0.00085 ** 0.5 + 500 * (0.012 ** 0.5 - 0.00085 ** 0.5) / 999),
                             rtol=1e-5)


def test_zero_terminal_snr_ends_in_pure_noise_and_keeps_the_first_step():
  base = NoiseSchedule.linear()
  rescaled = make_schedule("linear", 1000, zero_terminal_snr=True)
  assert float(rescaled.alphas_cumprod[-1]) == 0.0
  np.testing.assert_allclose(rescaled.alphas_cumprod[0], base.alphas_cumprod[0], rtol=1e-6)
  root, base_root = np.sqrt(np.asarray(rescaled.alphas_cumprod, np.float64)), np.sqrt(base.alphas_cumprod)
  # Lin et al.'s rescaling is affine in √ᾱ: equal steps of the base map to equal steps of the rescaled one.
  np.testing.assert_allclose(np.diff(root) / np.diff(base_root), (root[0] - root[-1]) / (base_root[0] - base_root[-1]),
                             rtol=2e-3)
  np.testing.assert_allclose(np.cumprod(1 - np.asarray(rescaled.betas, np.float64)), rescaled.alphas_cumprod,
                             atol=1e-6)


def test_respaced_timesteps_are_even_and_descending():
  assert respaced_timesteps(1000, 5).tolist() == [999, 749, 500, 250, 0]
  for count in (250, 50, 1000):
    steps = respaced_timesteps(1000, count)
    assert len(steps) == len(set(steps.tolist())) == count and steps[0] == 999 and steps[-1] == 0
    assert np.all(np.diff(steps) < 0) and steps.dtype == np.int32
  assert respaced_timesteps(1000, 1).tolist() == [999]
  np.testing.assert_array_equal(respaced_timesteps(10, 10), np.arange(9, -1, -1))


@pytest.mark.parametrize("call, match", [
    (lambda: respaced_timesteps(1000, 0), r"config.sample.num_steps=0 must lie in \[1, 1000\]"),
    (lambda: respaced_timesteps(100, 250), r"config.sample.num_steps=250 must lie in \[1, 100\]"),
    (lambda: make_schedule("sigmoid"), r"config.diffusion.schedule='sigmoid' is not known"),
    (lambda: make_schedule("linear", 1), r"config.diffusion.num_steps=1 must be at least 2"),
    (lambda: NoiseSchedule.from_betas([0.1, 0.0]), r"betas must be a non-empty 1-D array in \(0, 1\]"),
])
def test_errors_name_the_setting(call, match):
  with pytest.raises(ConfigError, match=match):
    call()
