"""A bias-free linear map with named, shardable kernel dimensions (the projections of attention and MLPs)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class Projection(nn.Module):
  """A bias-free linear map contracting the last `in_axes` dims of x into `features`, with a named kernel.

  The kernel is `[*in_shape, *features]` so heads stay their own (shardable) dimension instead of being folded
  into a flat matrix; initialized with fan-in scaling over all contracted dims (LeCun normal).
  """

  features: tuple[int, ...]
  axes: tuple[str | None, ...]
  in_axes: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[x.ndim - self.in_axes:]
    contracted = tuple(range(self.in_axes))
    outputs = tuple(range(self.in_axes, self.in_axes + len(self.features)))
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=contracted, out_axis=outputs)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), in_shape + tuple(self.features),
                        self.param_dtype)
    return jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_axes)
