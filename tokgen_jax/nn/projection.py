"""A linear map with named, shardable kernel dimensions (the projections of attention and MLPs), bias-free by
default."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


INITS = ("lecun", "xavier", "zeros")


class Projection(nn.Module):
  """A linear map contracting the last `in_axes` dims of x into `features`, with a named kernel.

  The kernel is `[*in_shape, *features]` so heads stay their own (shardable) dimension instead of being folded
  into a flat matrix. `kernel_init`: "lecun" (normal, fan-in scaling over all contracted dims, the default),
  "xavier" (uniform, fan-average: torch's `xavier_uniform_` on the flattened `[in, out]` matrix, as DiT inits its
  Linears) or "zeros" (adaLN-Zero's layers). `use_bias` adds a zero-initialised bias named like `features`.
  Flax's `DenseGeneral` flattens its kernel before the initializer runs, which breaks a multi-axis logical
  partitioning under a mesh; here the initializer sees the real shape.
  """

  features: tuple[int, ...]
  axes: tuple[str | None, ...]
  in_axes: int = 1
  use_bias: bool = False
  kernel_init: str = "lecun"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _initializer(self) -> nn.initializers.Initializer:
    contracted = tuple(range(self.in_axes))
    outputs = tuple(range(self.in_axes, self.in_axes + len(self.features)))
    if self.kernel_init == "zeros":
      return nn.initializers.zeros_init()
    if self.kernel_init == "xavier":
      return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=contracted, out_axis=outputs)
    if self.kernel_init == "lecun":
      return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=contracted,
                                              out_axis=outputs)
    raise ValueError(f"Projection kernel_init={self.kernel_init!r}; choose one of {INITS}.")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[x.ndim - self.in_axes:]
    kernel = self.param("kernel", nn.with_logical_partitioning(self._initializer(), self.axes),
                        in_shape + tuple(self.features), self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_axes)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.axes[self.in_axes:]),
                        tuple(self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
