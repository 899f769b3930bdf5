import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.quantizers.fsq import FiniteScalarQuantizer

LEVELS = (8, 5, 5, 5)


def _half_l_and_offset(levels):
  levels = np.asarray(levels, np.float64)
  return (levels - 1) * (1 - 1e-3) / 2, np.where(levels % 2 == 0, 0.5, 0.0)


def _apply(z, levels=LEVELS, method=None):
  fsq = FiniteScalarQuantizer(levels)
  return fsq.apply({}, z, method=method and getattr(fsq, method))


def test_8555_has_1000_codes_and_mixed_radix_indices():
  fsq = FiniteScalarQuantizer(LEVELS)
  assert fsq.codebook_size == 1000 and fsq.dim == 4
  np.testing.assert_allclose(fsq.bits_per_token, np.log2(1000))
  codes = np.asarray(_apply(jnp.arange(1000), method="codes_from_indices"))
  assert len(np.unique(codes, axis=0)) == 1000
  # index = d0 + 8·d1 + 40·d2 + 200·d3 with digit d = code·(L//2) + L//2.
  digits = np.rint(codes * np.array([4, 2, 2, 2]) + np.array([4, 2, 2, 2])).astype(int)
  np.testing.assert_array_equal(digits @ np.array([1, 8, 40, 200]), np.arange(1000))
  np.testing.assert_array_equal(codes[1], [-0.75, -1.0, -1.0, -1.0])
  np.testing.assert_array_equal(_apply(jnp.asarray(codes), method="codes_to_indices"), np.arange(1000))


def test_outputs_lie_on_the_grid_and_indices_round_trip():
  z = 3.0 * jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  z_q, out = _apply(z)
  chex.assert_shape(out.indices, (2, 8, 8))
  chex.assert_type(out.indices, jnp.int32)
  steps = np.asarray(z_q) * np.array([4, 2, 2, 2])
  np.testing.assert_array_equal(steps, np.rint(steps))
  assert set(np.unique(steps[..., 0])) <= set(range(-4, 4))  # even L = 8: half-step offset grid -4 … 3
  assert set(np.unique(steps[..., 1:])) <= set(range(-2, 3))  # odd L = 5: -2 … 2
  chex.assert_trees_all_close(_apply(out.indices, method="codes_from_indices"), z_q, atol=0)
  np.testing.assert_array_equal(_apply(z_q, method="codes_to_indices"), out.indices)
  assert float(out.loss) == 0.0
  counts = np.bincount(np.asarray(out.indices).ravel(), minlength=1000) / out.indices.size
  np.testing.assert_allclose(out.metrics["codebook_usage"], np.mean(counts > 0), rtol=1e-6)
  entropy = -np.sum(counts[counts > 0] * np.log(counts[counts > 0]))
  np.testing.assert_allclose(out.metrics["perplexity"], np.exp(entropy), rtol=1e-5)


def test_quantizing_grid_points_is_idempotent():
  """An input whose bound lands exactly on a level is returned unchanged, and re-quantizing a code keeps it."""
  half_l, offset = _half_l_and_offset(LEVELS)
  shift = np.arctanh(offset / half_l)
  # Interior levels k of every channel (the extremes are only reached by rounding).
  k = np.array([[-3, -1, -1, -1], [-2, 0, 1, -1], [0, 0, 0, 0], [2, 1, 1, 1], [1, -1, 0, 1]], np.float64)
  z = np.arctanh((k + offset) / half_l) - shift
  z_q, out = _apply(jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(z_q, k / np.array([4, 2, 2, 2]), atol=1e-6)
  again = _apply(_apply(out.indices, method="codes_from_indices"), method="codes_to_indices")
  np.testing.assert_array_equal(again, out.indices)
  np.testing.assert_allclose(_apply(jnp.zeros((1, 4)))[0], 0.0, atol=1e-7)  # z = 0 is code 0 (the shift)


@pytest.mark.parametrize("levels", [LEVELS, (7, 6, 2)])
def test_bound_stays_inside_the_levels(levels):
  levels_arr = np.asarray(levels)
  half_l, offset = _half_l_and_offset(levels)
  z = jnp.concatenate([1e4 * jnp.ones((1, len(levels))), -1e4 * jnp.ones((1, len(levels))),
                       10.0 * jax.random.normal(jax.random.key(1), (64, len(levels)))])
  bounded = np.asarray(_apply(z, levels, method="bound"), np.float64)
  assert np.all(bounded >= -half_l - offset - 1e-6) and np.all(bounded <= half_l - offset + 1e-6)
  rounded = np.rint(bounded)
  assert np.all(rounded >= -(levels_arr // 2)) and np.all(rounded <= levels_arr - 1 - levels_arr // 2)
  np.testing.assert_array_equal(rounded[0], levels_arr - 1 - levels_arr // 2)  # saturation hits the top level
  np.testing.assert_array_equal(rounded[1], -(levels_arr // 2))


def test_straight_through_gradient_is_the_bound_derivative():
  """Rounding passes the gradient unchanged: d z_q/dz = tanh'(z + shift)·half_l / (L//2)."""
  z = jax.random.normal(jax.random.key(2), (2, 8, 8, 4))
  cotangent = jax.random.normal(jax.random.key(3), z.shape)
  grad = jax.grad(lambda z: jnp.sum(_apply(z)[0] * cotangent))(z)
  half_l, offset = _half_l_and_offset(LEVELS)
  shift = np.arctanh(offset / half_l)
  expected = np.asarray(cotangent) * (1 - np.tanh(np.asarray(z) + shift) ** 2) * half_l / np.array([4, 2, 2, 2])
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_rejects_wrong_channel_count_and_bad_levels():
  with pytest.raises(ValueError, match="needs 4"):
    _apply(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=">= 2"):
    _apply(jnp.zeros((2, 2)), levels=(1, 5))
