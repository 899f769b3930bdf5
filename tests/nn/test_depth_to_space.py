"""space_to_depth / depth_to_space: exact inverses, stated channel order; the causal upsampler's frame counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.causal_conv import CausalConv3D
from tokgen_jax.nn.depth_to_space import DepthToSpaceUpsample3D, depth_to_space, space_to_depth


@pytest.mark.parametrize("order", ("CRD", "DCR"))
@pytest.mark.parametrize("shape, block", [
    ((2, 4, 6, 8, 3), (2, 3, 2)), ((1, 4, 4, 5), (2, 2)), ((1, 3, 2, 2, 2), (1, 2, 1))])
def test_depth_to_space_and_space_to_depth_are_exact_inverses(order, shape, block):
  x = jax.random.normal(jax.random.key(0), shape)
  packed = space_to_depth(x, block, order)
  volume = int(np.prod(block))
  assert packed.shape == (shape[0],) + tuple(s // b for s, b in zip(shape[1:-1], block)) + (shape[-1] * volume,)
  np.testing.assert_array_equal(depth_to_space(packed, block, order), x)
  np.testing.assert_array_equal(space_to_depth(depth_to_space(packed, block, order), block, order), packed)


def test_hand_computed_channel_orders():
  """x[h, w, c] = 10·c + 2·h + w on a 2x2x2 image, block (2, 2)."""
  h, w, c = np.meshgrid(np.arange(2), np.arange(2), np.arange(2), indexing="ij")
  x = jnp.asarray(10 * c + 2 * h + w, jnp.float32)[None]
  assert space_to_depth(x, (2, 2), "CRD").ravel().tolist() == [0, 1, 2, 3, 10, 11, 12, 13]  # like pixel_shuffle
  assert space_to_depth(x, (2, 2), "DCR").ravel().tolist() == [0, 10, 1, 11, 2, 12, 3, 13]  # like TF
  # Temporal block: frame offset is the slowest of the offsets within a channel (CRD).
  video = jnp.arange(8.0).reshape(1, 2, 2, 2, 1)  # value = 4·t + 2·h + w
  assert space_to_depth(video, (2, 2, 2)).ravel().tolist() == list(range(8))


def test_bad_shapes_raise_config_errors():
  with pytest.raises(ConfigError, match="not divisible by block"):
    space_to_depth(jnp.zeros((1, 3, 4, 1)), (2, 2))
  with pytest.raises(ConfigError, match="features·8"):
    depth_to_space(jnp.zeros((1, 1, 2, 2, 6)), (2, 2, 2))
  with pytest.raises(ConfigError, match="order"):
    depth_to_space(jnp.zeros((1, 2, 2, 4)), (2, 2), "RCD")


@pytest.mark.parametrize("block, frames, expected", [
    ((2, 2, 2), 1, 1), ((2, 2, 2), 2, 3), ((2, 2, 2), 3, 5), ((2, 2, 2), 5, 9), ((1, 2, 2), 3, 3), ((4, 1, 1), 2, 5)])
def test_upsample_frame_count_is_one_plus_frames_minus_one_times_block(block, frames, expected):
  layer = DepthToSpaceUpsample3D(4, block)
  x = jax.ShapeDtypeStruct((1, frames, 3, 5, 2), jnp.float32)
  out = jax.eval_shape(lambda x: layer.init_with_output(jax.random.key(0), x)[0], x)
  assert out.shape == (1, expected, 3 * block[1], 5 * block[2], 4)


def test_frame_counts_round_trip_through_a_strided_encoder():
  for frames in (1, 5, 9, 17):
    x = jax.ShapeDtypeStruct((1, frames, 8, 8, 2), jnp.float32)
    down = jax.eval_shape(lambda x: CausalConv3D(2, strides=(2, 2, 2)).init_with_output(jax.random.key(0), x)[0], x)
    up = jax.eval_shape(lambda x: DepthToSpaceUpsample3D(2).init_with_output(jax.random.key(0), x)[0], down)
    assert up.shape == x.shape


def test_nearest_init_upsamples_like_nearest_neighbour_and_frame_zero_stands_alone():
  layer = DepthToSpaceUpsample3D(3, (2, 2, 2))
  x = jax.random.normal(jax.random.key(0), (1, 3, 2, 2, 4))
  out, variables = layer.init_with_output(jax.random.key(1), x)
  out = np.asarray(out)
  assert out.shape == (1, 5, 4, 4, 3)
  nearest = np.repeat(np.repeat(out[:, :, ::2, ::2], 2, axis=2), 2, axis=3)
  np.testing.assert_array_equal(out, nearest)
  np.testing.assert_array_equal(out[:, 1], out[:, 2])  # latent frame 1 → output frames 1, 2
  np.testing.assert_array_equal(out[:, 3], out[:, 4])  # latent frame 2 → output frames 3, 4
  assert not np.allclose(out[:, 0], out[:, 1])
  # Equal up to rounding: XLA may block the conv differently for 1 and 3 frames (seen: 1 ulp on CPU).
  np.testing.assert_allclose(np.asarray(layer.apply(variables, x[:, :1]))[:, 0], out[:, 0], rtol=0, atol=1e-6)
  # Without nearest init the sub-positions differ (the test above could fail).
  plain = np.asarray(DepthToSpaceUpsample3D(3, (2, 2, 2), nearest_init=False).init_with_output(
      jax.random.key(1), x)[0])
  assert not np.allclose(plain[:, 1], plain[:, 2])
