"""Convolutions whose kernels carry logical axis names, and the 2D resampling layers built on them."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Kernel layout [*window, in, out]: the window dims are never sharded.
_CONV_AXES_2D = (None, None, "conv_in", "conv_out")


class Conv(nn.Module):
  """An `nn.Conv` with logically partitioned kernel and bias."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: str | Sequence[tuple[int, int]] = "SAME"
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    window = (None,) * len(self.kernel_size)
    return nn.Conv(
        self.features,
        tuple(self.kernel_size),
        strides=tuple(self.strides),
        padding=self.padding,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, window + ("conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name="conv",
    )(x)


class Downsample2D(nn.Module):
  """Halve H and W with a stride-2 3x3 conv, padded (0, 1) like VQGAN so no pixel is read twice."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv(self.features, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)))(x)


class Upsample2D(nn.Module):
  """Double H and W with nearest-neighbour repetition followed by a 3x3 conv (VQGAN decoder)."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
    return Conv(self.features, (3, 3))(x)
