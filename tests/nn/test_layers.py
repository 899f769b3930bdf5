"""nn building blocks: shapes, logical axis names, and the structural properties each layer promises."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.nn import Conv, Downsample2D, ResBlock2D, SpatialSelfAttention, Upsample2D, group_norm


def test_conv_kernel_carries_logical_axes():
  variables = Conv(8, (3, 3)).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
  kernel = variables["params"]["conv"]["kernel"]
  assert isinstance(kernel, nn.Partitioned)
  assert kernel.names == (None, None, "conv_in", "conv_out")


def test_downsample_halves_and_reads_each_pixel_once():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  layer = Downsample2D(6)
  variables = layer.init(jax.random.key(1), x)
  chex.assert_shape(layer.apply(variables, x), (2, 4, 4, 6))
  # Output (0, 0) with padding (0, 1) sees input rows/cols 0..2 only.
  grad = jax.grad(lambda x: layer.apply(variables, x)[0, 0, 0].sum())(x)
  assert np.all(np.asarray(grad[0, 3:]) == 0) and np.all(np.asarray(grad[0, :, 3:]) == 0)


def test_upsample_repeats_pixels_before_its_conv():
  layer = Upsample2D(2)
  x = jax.random.normal(jax.random.key(0), (1, 3, 3, 2))
  variables = layer.init(jax.random.key(1), x)
  identity = np.zeros((3, 3, 2, 2), np.float32)
  identity[1, 1] = np.eye(2)
  params = {"params": {"Conv_0": {"conv": {"kernel": identity, "bias": np.zeros(2, np.float32)}}}}
  out = layer.apply(params, x)
  np.testing.assert_allclose(out, np.repeat(np.repeat(x, 2, 1), 2, 2), atol=1e-6)
  assert jax.tree.structure(nn.unbox(variables)) == jax.tree.structure(params)


def test_group_norm_caps_groups_at_channels_and_rejects_indivisible():
  class Norm(nn.Module):
    groups: int

    @nn.compact
    def __call__(self, x):
      return group_norm(x, self.groups)

  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 6)) * 3 + 1
  out, _ = Norm(32).init_with_output(jax.random.key(1), x)  # 6 channels → 6 groups: per-channel normalization
  np.testing.assert_allclose(np.mean(out, axis=(1, 2)), 0.0, atol=1e-5)
  with pytest.raises(ValueError, match="not divisible"):
    Norm(4).init(jax.random.key(1), x)


def test_resblock_projects_skip_only_when_width_changes():
  x = jnp.ones((1, 4, 4, 8))
  same = ResBlock2D(8, num_groups=4).init(jax.random.key(0), x)["params"]
  wider = ResBlock2D(16, num_groups=4).init(jax.random.key(0), x)["params"]
  assert "skip" not in same and "skip" in wider


def test_self_attention_is_equivariant_to_permuting_positions():
  """Attention without positional encoding commutes with any permutation of the H·W positions."""
  layer = SpatialSelfAttention(num_groups=4)
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 8))
  variables = layer.init(jax.random.key(1), x)
  permutation = np.random.default_rng(0).permutation(16)
  permute = lambda t: t.reshape(1, 16, 8)[:, permutation].reshape(1, 4, 4, 8)
  np.testing.assert_allclose(layer.apply(variables, permute(x)), permute(layer.apply(variables, x)), atol=1e-5)
