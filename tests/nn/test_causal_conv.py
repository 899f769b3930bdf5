"""CausalConv3D: exact causality, image == first frame of a video, frame counts, padding semantics, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.causal_conv import CausalConv3D, check_frame_count, spatial_padding

MODES = ("replicate", "zeros")


def _layer_and_video(mode, strides, frames=5, size=8):
  layer = CausalConv3D(4, (3, 3, 3), strides=strides, temporal_padding=mode)
  x = jax.random.normal(jax.random.key(0), (1, frames, size, size, 3))
  return layer, layer.init(jax.random.key(1), x), x


def test_kernel_carries_logical_axes():
  layer, variables, _ = _layer_and_video("replicate", (1, 1, 1))
  kernel = variables["params"]["conv"]["kernel"]
  assert isinstance(kernel, nn.Partitioned)
  assert kernel.names == (None, None, None, "conv_in", "conv_out")
  assert kernel.value.shape == (3, 3, 3, 3, 4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temporal_stride", (1, 2))
def test_changing_later_frames_leaves_earlier_outputs_bit_identical(mode, temporal_stride):
  layer, variables, x = _layer_and_video(mode, (temporal_stride, 1, 1))
  out = np.asarray(layer.apply(variables, x))
  noise = jax.random.normal(jax.random.key(2), x.shape)
  for t in range(x.shape[1] - 1):
    changed = np.asarray(layer.apply(variables, x.at[:, t + 1:].add(noise[:, t + 1:])))
    # Output frame j reads input frames ≤ j·s_t.
    keep = t // temporal_stride + 1
    np.testing.assert_array_equal(changed[:, :keep], out[:, :keep])
    assert np.all(np.abs(changed[:, keep:] - out[:, keep:]).max(axis=(0, 2, 3, 4)) > 0)  # the change is seen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strides", ((1, 1, 1), (2, 2, 2)))
def test_first_frame_alone_encodes_like_frame_zero_of_a_video(mode, strides):
  layer, variables, x = _layer_and_video(mode, strides)
  video = layer.apply(variables, x)
  image = layer.apply(variables, x[:, :1])
  assert image.shape[1] == 1
  # Same window values; only XLA's blocking for the other shape could change the rounding (≤ 1 ulp).
  np.testing.assert_allclose(np.asarray(image[:, 0]), np.asarray(video[:, 0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("temporal_stride, frames, expected", [
    (1, 1, 1), (1, 4, 4), (2, 1, 1), (2, 3, 2), (2, 5, 3), (2, 9, 5), (4, 1, 1), (4, 5, 2), (4, 17, 5)])
def test_output_frame_count_is_one_plus_frames_minus_one_over_stride(temporal_stride, frames, expected):
  layer = CausalConv3D(2, strides=(temporal_stride, 2, 2))
  x = jax.ShapeDtypeStruct((2, frames, 8, 16, 3), jnp.float32)
  out = jax.eval_shape(lambda x: layer.init_with_output(jax.random.key(0), x)[0], x)
  assert out.shape == (2, expected, 4, 8, 2)
  assert check_frame_count(frames, temporal_stride, "test") == expected


def test_invalid_frame_count_error_names_the_valid_counts():
  layer = CausalConv3D(2, strides=(2, 1, 1))
  with pytest.raises(ConfigError, match=r"4 frames .* one of \[1, 3, 5, 7\].*nearest: 3 or 5"):
    layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 4, 1)))
  with pytest.raises(ConfigError, match="not divisible by stride 2"):
    CausalConv3D(2, strides=(1, 2, 2)).init(jax.random.key(0), jnp.zeros((1, 1, 5, 4, 1)))


@pytest.mark.parametrize("mode", MODES)
def test_oldest_tap_delta_shifts_time_by_two_and_pads_the_past(mode):
  """A kernel that is the identity at the oldest temporal tap (spatial centre) gives out[t] = x[t - 2]."""
  x = jax.random.normal(jax.random.key(0), (1, 5, 4, 4, 2))
  kernel = np.zeros((3, 3, 3, 2, 2), np.float32)
  kernel[0, 1, 1] = np.eye(2)
  params = {"params": {"conv": {"kernel": kernel, "bias": np.zeros(2, np.float32)}}}
  out = np.asarray(CausalConv3D(2, temporal_padding=mode).apply(params, x))
  past = np.repeat(x[:, :1], 2, axis=1) if mode == "replicate" else np.zeros_like(x[:, :2])
  np.testing.assert_allclose(out, np.concatenate([past, x[:, :3]], axis=1), atol=1e-6)


def test_spatial_padding_is_symmetric_for_stride_one_and_vqgan_like_for_stride_two():
  assert spatial_padding(8, 3, 1, "test") == (1, 1)
  assert spatial_padding(8, 3, 2, "test") == (0, 1)
  assert spatial_padding(8, 4, 2, "test") == (1, 1)
  assert spatial_padding(8, 1, 2, "test") == (0, 0)
  # Stride 2: output pixel (0, 0) reads input rows/cols 0..2 only, and frames ≤ 0.
  layer = CausalConv3D(2, strides=(1, 2, 2))
  x = jax.random.normal(jax.random.key(0), (1, 3, 8, 8, 2))
  variables = layer.init(jax.random.key(1), x)
  grad = np.asarray(jax.grad(lambda x: layer.apply(variables, x)[0, 0, 0, 0].sum())(x))
  assert np.all(grad[0, 1:] == 0) and np.all(grad[0, :, 3:] == 0) and np.all(grad[0, :, :, 3:] == 0)
  assert np.all(np.abs(grad[0, 0, :3, :3]).sum(-1) > 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("frames,strides", [(5, (1, 1, 1)), (5, (2, 2, 2)), (5, (2, 1, 1)), (1, (1, 1, 1)),
                                            (1, (2, 2, 2))])
def test_temporal_tap_implementation_equals_one_3d_conv(mode, frames, strides):
  """The CPU path (a 2D conv per temporal tap; one folded kernel for a single frame) and XLA's 3D conv share
  parameters and agree."""
  x = jax.random.normal(jax.random.key(0), (2, frames, 8, 8, 3))
  taps = CausalConv3D(4, strides=strides, temporal_padding=mode, implementation="conv2d_taps")
  variables = taps.init(jax.random.key(1), x)
  one_conv = taps.clone(implementation="conv3d")
  np.testing.assert_allclose(taps.apply(variables, x), one_conv.apply(variables, x), atol=1e-5)
