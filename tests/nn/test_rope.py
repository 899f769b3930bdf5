"""RoPE: eq. 34 as a complex rotation, norm preservation, relative positions per axis, multi-axis reductions."""

import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.rope import apply_rope, default_axis_dims, rope_frequencies

HEAD_DIM = 16


def _rotate(x, positions, axis_dims=None):
  """RoPE of one vector `[D]` at one position `[A]`."""
  cos, sin = rope_frequencies(x.shape[-1], np.asarray([positions]), axis_dims)
  return np.asarray(apply_rope(x[None, None, None], cos, sin))[0, 0, 0]


def test_one_axis_is_roformer_eq34_as_complex_multiplication():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 3, HEAD_DIM)).astype(np.float32)
  positions = np.arange(5) * 7
  cos, sin = rope_frequencies(HEAD_DIM, positions)
  # Pair i of position m turns by m · 10000^(-2i/D).
  angles = positions[:, None] * 10000.0 ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
  pairs = x[..., 0::2] + 1j * x[..., 1::2]
  expected = pairs * np.exp(1j * angles)[None, :, None, :]
  out = np.asarray(apply_rope(x, cos, sin))
  np.testing.assert_allclose(out[..., 0::2], expected.real, atol=1e-5)
  np.testing.assert_allclose(out[..., 1::2], expected.imag, atol=1e-5)


@pytest.mark.parametrize("num_axes", (1, 2, 3))
def test_rotation_preserves_norms(num_axes):
  rng = np.random.default_rng(num_axes)
  x = rng.normal(size=(2, 6, 3, HEAD_DIM)).astype(np.float32)
  cos, sin = rope_frequencies(HEAD_DIM, rng.integers(0, 50, size=(6, num_axes)))
  np.testing.assert_allclose(np.linalg.norm(apply_rope(x, cos, sin), axis=-1), np.linalg.norm(x, axis=-1),
                             rtol=1e-5)


@pytest.mark.parametrize("num_axes", (1, 2, 3))
def test_query_key_product_depends_only_on_the_position_difference_per_axis(num_axes):
  rng = np.random.default_rng(10 + num_axes)
  q, k = rng.normal(size=(2, HEAD_DIM)).astype(np.float32)
  m, n = rng.integers(0, 20, size=(2, num_axes))
  reference = _rotate(q, m) @ _rotate(k, n)
  for shift in rng.integers(-10, 30, size=(4, num_axes)):
    np.testing.assert_allclose(_rotate(q, m + shift) @ _rotate(k, n + shift), reference, rtol=1e-4, atol=1e-4)
  # ...and it does change with the difference along each axis alone.
  for axis in range(num_axes):
    moved = m.copy()
    moved[axis] += 3
    assert abs(_rotate(q, moved) @ _rotate(k, n) - reference) > 1e-3


@pytest.mark.parametrize("axis_dims", ((8, 8), (4, 6, 6)))
def test_multi_axis_reduces_to_1d_rope_of_the_first_chunk_when_other_coordinates_are_zero(axis_dims):
  positions = np.zeros((5, len(axis_dims)), np.int32)
  positions[:, 0] = np.arange(5) * 3
  cos, sin = rope_frequencies(HEAD_DIM, positions, axis_dims)
  cos_1d, sin_1d = rope_frequencies(axis_dims[0], positions[:, 0])
  half = axis_dims[0] // 2
  np.testing.assert_allclose(cos[:, :half], cos_1d, atol=1e-6)
  np.testing.assert_allclose(sin[:, :half], sin_1d, atol=1e-6)
  np.testing.assert_array_equal(cos[:, half:], 1.0)  # other chunks are not rotated
  np.testing.assert_array_equal(sin[:, half:], 0.0)


def test_default_split_gives_axes_equal_pair_counts_like_llamagen_2d():
  assert default_axis_dims(64, 1) == (64,)
  assert default_axis_dims(64, 2) == (32, 32)
  assert default_axis_dims(64, 3) == (24, 20, 20)
  cos, _ = rope_frequencies(64, np.zeros((3, 2), np.int32))
  assert cos.shape == (3, 32)


def test_batched_positions_give_per_example_rotations():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 4, 2, HEAD_DIM)).astype(np.float32)
  positions = rng.integers(0, 9, size=(2, 4, 2))
  cos, sin = rope_frequencies(HEAD_DIM, positions)
  out = np.asarray(apply_rope(x, cos, sin))
  for b in range(2):
    cos_b, sin_b = rope_frequencies(HEAD_DIM, positions[b])
    np.testing.assert_allclose(out[b], np.asarray(apply_rope(x[b:b + 1], cos_b, sin_b))[0], atol=1e-6)


def test_bad_dimensions_name_the_fix():
  with pytest.raises(ConfigError, match="head_dim=15 is odd"):
    rope_frequencies(15, np.zeros((2, 1), np.int32))
  with pytest.raises(ConfigError, match=r"axis_dims=\(8, 6\) must be 2 positive even sizes"):
    rope_frequencies(HEAD_DIM, np.zeros((2, 2), np.int32), axis_dims=(8, 6))
  cos, sin = rope_frequencies(HEAD_DIM, np.zeros((3, 1), np.int32))
  with pytest.raises(ConfigError, match=r"needs cos/sin of shape \[L, D/2\]"):
    apply_rope(np.zeros((1, 4, 2, HEAD_DIM), np.float32), cos, sin)
