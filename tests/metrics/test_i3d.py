"""I3D shapes and FVD's preprocessing (equality of the network with PyTorch lives in tests/convert/test_i3d.py).

Shapes are checked abstractly (`jax.eval_shape`), so the real FVD input, 224x224 frames, costs nothing. I3D
is not causal: every output mixes all frames, so only the documented shapes are checked across clip lengths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.metrics.i3d import (FVD_SIZE, I3D, NUM_CLASSES, POOLED_DIM, I3DOutputs, preprocess_for_i3d,
                                   resize_bilinear)


@pytest.fixture(scope="module")
def abstract_variables():
  return jax.eval_shape(I3D().init, jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)))


@pytest.mark.parametrize("frames, mixed_5c_frames", [(16, 2), (32, 4)])
def test_output_shapes_for_two_clip_lengths(abstract_variables, frames, mixed_5c_frames):
  """At FVD's 224x224, Mixed_5c is 7x7 in space (the TF model's 2x7x7 pool window) and T / 8 in time."""
  videos = jax.ShapeDtypeStruct((2, frames, *FVD_SIZE, 3), jnp.bfloat16)
  outputs, state = jax.eval_shape(
      lambda v, x: I3D().apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
      abstract_variables, videos)
  assert isinstance(outputs, I3DOutputs)
  assert outputs.logits.shape == outputs.features.shape == (2, NUM_CLASSES)
  assert outputs.pooled.shape == (2, POOLED_DIM)
  assert outputs.logits.dtype == outputs.pooled.dtype == jnp.float32
  assert state["intermediates"]["Mixed_5c"]["__call__"][0].shape == (2, mixed_5c_frames, 7, 7, POOLED_DIM)


def test_small_clips_run(abstract_variables):
  """Tests and quick checks use small clips: "SAME" padding never empties a map and the pool window clamps."""
  outputs = jax.eval_shape(I3D().apply, abstract_variables, jax.ShapeDtypeStruct((1, 3, 20, 12, 3), jnp.float32))
  assert outputs.logits.shape == (1, NUM_CLASSES) and outputs.pooled.shape == (1, POOLED_DIM)


def test_variable_collections(abstract_variables):
  assert set(abstract_variables) == {"params", "batch_stats"}
  assert abstract_variables["params"]["logits"]["kernel"].shape == (POOLED_DIM, NUM_CLASSES)
  assert abstract_variables["params"]["Conv3d_1a_7x7"]["conv3d"]["kernel"].shape == (7, 7, 7, 3, 64)
  assert set(abstract_variables["batch_stats"]["Mixed_4f"]["b2b"]["bn"]) == {"mean", "var"}


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (1, 4, 32, 32, 1)])
def test_rejects_images_and_non_rgb(abstract_variables, shape):
  with pytest.raises(ConfigError, match=r"\[B, T, H, W, 3\]"):
    jax.eval_shape(I3D().apply, abstract_variables, jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.slow
@pytest.mark.parametrize("in_size, out_size", [((17, 23), (40, 50)), ((50, 70), (24, 31))])
def test_half_pixel_resize_matches_torch_interpolate(in_size, out_size):
  torch = pytest.importorskip("torch")
  videos = np.random.default_rng(0).uniform(-1, 1, (2, 3, *in_size, 3)).astype(np.float32)
  frames = torch.from_numpy(videos.reshape(6, *in_size, 3).transpose(0, 3, 1, 2))
  expected = torch.nn.functional.interpolate(frames, size=out_size, mode="bilinear", align_corners=False)
  expected = expected.numpy().transpose(0, 2, 3, 1).reshape(2, 3, *out_size, 3)
  # torch computes source coordinates in float32, these in float64: weights differ by ~1e-6.
  np.testing.assert_allclose(resize_bilinear(videos, out_size, half_pixel_centers=True), expected, atol=2e-5)


def test_tf1_resize_samples_at_scaled_output_indices():
  """TF1 `resize_bilinear` (FVD's reference) samples source coordinate `i * in / out`: halving picks every other
  pixel, doubling keeps the source pixels at even outputs, midpoints at odd ones and repeats the last pixel."""
  x = np.random.default_rng(1).uniform(-1, 1, (1, 1, 6, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(resize_bilinear(x, (3, 4)), x[:, :, ::2, ::2], atol=1e-6)
  up = np.asarray(resize_bilinear(x, (12, 8)))
  np.testing.assert_allclose(up[:, :, 0::2], x, atol=1e-6)
  np.testing.assert_allclose(up[:, :, 1:-1:2], (x[:, :, :-1] + x[:, :, 1:]) / 2, atol=1e-6)
  np.testing.assert_allclose(up[:, :, -1], x[:, :, -1], atol=1e-6)


def test_preprocess_resizes_to_224_in_unit_range():
  black, white = np.zeros((1, 2, 64, 48, 3), np.uint8), np.full((1, 2, 64, 48, 3), 255, np.uint8)
  for video, value in ((black, -1.0), (white, 1.0), (np.full((1, 2, 64, 48, 3), 0.3, np.float32), 0.3)):
    out = preprocess_for_i3d(video)
    assert out.shape == (1, 2, *FVD_SIZE, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, value, atol=1e-6)
  ramp = np.linspace(0, 255, 64 * 48 * 3).reshape(1, 1, 64, 48, 3).round().astype(np.uint8)
  np.testing.assert_allclose(preprocess_for_i3d(ramp), resize_bilinear(ramp.astype(np.float32) / 127.5 - 1.0),
                             atol=1e-5)
