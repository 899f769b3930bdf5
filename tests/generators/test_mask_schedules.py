"""Mask-ratio schedules: closed forms, end points and clipping, and the training masks they draw."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import mask_schedules

R = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], np.float32)
CLOSED_FORMS = {
    "cosine": np.cos(np.pi / 2 * R),
    "linear": 1 - R,
    "square": 1 - R ** 2,
    "arccos": np.arccos(R) / (np.pi / 2),
}


@pytest.mark.parametrize("schedule", mask_schedules.SCHEDULES)
def test_schedules_equal_their_closed_forms_clipped(schedule):
  ratio = np.asarray(mask_schedules.mask_ratio(schedule, R))
  np.testing.assert_allclose(ratio, np.clip(CLOSED_FORMS[schedule], 1e-6, 1.0), rtol=1e-6, atol=1e-7)
  assert ratio[0] == 1.0 and ratio[-1] == pytest.approx(1e-6)  # all masked at r=0; the clip floor at r=1
  assert np.all(np.diff(ratio) <= 0)  # fewer masked as decoding progresses
  outside = np.asarray(mask_schedules.mask_ratio(schedule, np.array([-0.5, 1.5])))
  np.testing.assert_allclose(outside, [1.0, 1e-6], rtol=1e-6)  # progress is clamped to [0, 1]


def test_cosine_at_a_third_is_half():
  assert float(mask_schedules.mask_ratio("cosine", 1 / 3)) == pytest.approx(math.cos(math.pi / 6))
  with pytest.raises(ConfigError, match="not one of"):
    mask_schedules.mask_ratio("sigmoid", 0.5)


def test_random_mask_masks_ceil_ratio_of_the_maskable_positions_only():
  rng = jax.random.key(0)
  maskable = np.ones((64, 20), bool)
  maskable[:, :5] = False  # a task's given positions
  maskable[0] = False  # a row with nothing to mask
  masked = np.asarray(mask_schedules.random_mask(rng, "cosine", jnp.asarray(maskable)))
  assert not np.any(masked & ~maskable)
  assert not masked[0].any()
  # The count per row is clip(ceil(γ(r)·15), 1, 15) for the r drawn with the same key.
  ratio_rng, _ = jax.random.split(rng)
  r = jax.random.uniform(ratio_rng, (64,))
  expected = np.clip(np.ceil(np.asarray(mask_schedules.mask_ratio("cosine", r)) * 15), 1, 15)
  np.testing.assert_array_equal(masked[1:].sum(-1), expected[1:])
  partial = masked[1:][(expected[1:] > 1) & (expected[1:] < 15)]
  assert len(set(map(tuple, partial))) >= len(partial) - 3  # positions differ row to row (14 of 15 can repeat)


def test_lowest_ranked_breaks_ties_by_position():
  scores = jnp.array([[0.5, 0.1, 0.5, 0.1, 0.9]])
  np.testing.assert_array_equal(mask_schedules.lowest_ranked(scores, jnp.array([3])), [[True, True, False, True,
                                                                                        False]])
