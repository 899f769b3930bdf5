"""BlurPool2D/3D: binomial taps, constants and means preserved, Nyquist removed, causal in time, hand example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.blur import SPATIAL_PADDINGS, BlurPool2D, BlurPool3D, binomial_kernel


def _apply(layer, x):
  return np.asarray(layer.apply({}, x))


def test_binomial_kernel_is_pascal_row_over_its_sum():
  np.testing.assert_allclose(binomial_kernel(3), [0.25, 0.5, 0.25])
  np.testing.assert_allclose(binomial_kernel(4), [1 / 8, 3 / 8, 3 / 8, 1 / 8])
  for size in range(1, 8):
    taps = binomial_kernel(size)
    assert abs(taps.sum() - 1) < 1e-6
    if size > 1:  # even and odd taps each carry half the weight: stride 2 weighs every sample equally
      assert abs(taps[::2].sum() - 0.5) < 1e-6
  with pytest.raises(ConfigError, match="filter_size=0"):
    binomial_kernel(0)


@pytest.mark.parametrize("mode", SPATIAL_PADDINGS)
@pytest.mark.parametrize("filter_size", (3, 4))
def test_blur_of_a_constant_is_the_constant(mode, filter_size):
  video = jnp.full((1, 5, 8, 8, 2), 0.7)
  out = _apply(BlurPool3D((2, 2, 2), filter_size, mode), video)
  assert out.shape == (1, 3, 4, 4, 2)
  np.testing.assert_allclose(out, 0.7, atol=1e-6)
  out = _apply(BlurPool2D((2, 2), filter_size, mode), video[:, 0])
  assert out.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(out, 0.7, atol=1e-6)


@pytest.mark.parametrize("filter_size", (3, 4))
def test_wrap_padding_preserves_the_mean_of_any_periodic_input(filter_size):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  out = _apply(BlurPool2D((2, 2), filter_size, "wrap"), x)
  np.testing.assert_allclose(out.mean(axis=(1, 2)), np.asarray(x).mean(axis=(1, 2)), atol=1e-6)
  # Plain subsampling keeps only the even samples: its mean differs (what the blur corrects).
  assert np.abs(np.asarray(x)[:, ::2, ::2].mean(axis=(1, 2)) - np.asarray(x).mean(axis=(1, 2))).max() > 1e-2


@pytest.mark.parametrize("mode", ("reflect", "wrap"))
def test_nyquist_checkerboard_is_removed_where_plain_subsampling_aliases_it(mode):
  grid = np.add.outer(np.arange(8), np.arange(8))
  checker = jnp.asarray((-1.0) ** grid)[None, :, :, None]
  np.testing.assert_allclose(_apply(BlurPool2D(spatial_padding=mode), checker), 0.0, atol=1e-6)
  assert np.all(np.asarray(checker[:, ::2, ::2]) == 1.0)  # what stride-2 subsampling alone would keep


def test_hand_computed_row():
  """Row [1, 2, 3, 4], reflect pad → [2, 1, 2, 3, 4, 3]; [1,2,1]/4 at 0 and 2 → [1.5, 3.0]."""
  x = jnp.broadcast_to(jnp.arange(1.0, 5.0)[None, None, :, None], (1, 4, 4, 1))
  out = _apply(BlurPool2D(), x)
  np.testing.assert_allclose(out[0, :, :, 0], [[1.5, 3.0], [1.5, 3.0]], atol=1e-6)


def test_time_is_causal_and_frame_zero_stands_alone():
  blur = BlurPool3D((2, 2, 2))
  x = jax.random.normal(jax.random.key(0), (1, 5, 4, 4, 2))
  out = _apply(blur, x)
  assert out.shape == (1, 3, 2, 2, 2)
  np.testing.assert_array_equal(_apply(blur, x[:, :1])[:, 0], out[:, 0])
  for t in range(4):
    changed = _apply(blur, x.at[:, t + 1:].add(1.0))
    keep = t // 2 + 1
    np.testing.assert_array_equal(changed[:, :keep], out[:, :keep])
    assert np.all(changed[:, keep:] != out[:, keep:])
  # Temporal taps [1, 2, 1]/4 over frames (0, 1, 2) for output frame 1.
  spatial = _apply(BlurPool3D((1, 2, 2)), x)
  np.testing.assert_allclose(out[:, 1], (spatial[:, 0] + 2 * spatial[:, 1] + spatial[:, 2]) / 4, atol=1e-6)


def test_bad_frame_counts_and_shapes_raise_config_errors():
  with pytest.raises(ConfigError, match=r"one of \[1, 3, 5, 7\]"):
    BlurPool3D((2, 2, 2)).apply({}, jnp.zeros((1, 4, 4, 4, 1)))
  with pytest.raises(ConfigError, match="one-frame videos"):
    BlurPool3D().apply({}, jnp.zeros((1, 4, 4, 1)))
  with pytest.raises(ConfigError, match="spatial_padding"):
    BlurPool2D(spatial_padding="zeros").apply({}, jnp.zeros((1, 4, 4, 1)))
