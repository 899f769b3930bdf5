"""A linear map with named, shardable kernel dimensions (the projections of attention and MLPs), bias-free by
default, and `relayout_kernels` to move trained kernels between its two storage layouts."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError

Dtype = Any


INITS = ("lecun", "xavier", "zeros")
KERNEL_LAYOUTS = ("in_out", "out_in")


class Projection(nn.Module):
  """A linear map contracting the last `in_axes` dims of x into `features`, with a named kernel.

  The kernel is `[*in_shape, *features]` so heads stay their own (shardable) dimension instead of being folded
  into a flat matrix. `kernel_layout="out_in"` stores it `[*features, *in_shape]` instead (torch's `nn.Linear`
  layout: each output's weights contiguous), the layout that streams weights fastest through a small-batch matmul
  on the CPU: a GPT-B decode step at batch 8 takes ~16% less time (`bench/ar_sampling.py`). The sampler converts
  to it (`relayout_kernels`); training and checkpoints keep `in_out`.

  `kernel_init`: "lecun" (normal, fan-in scaling over all contracted dims, the default),
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
  kernel_layout: str = "in_out"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def _out_in(self) -> bool:
    if self.kernel_layout not in KERNEL_LAYOUTS:
      raise ConfigError(f"Projection kernel_layout={self.kernel_layout!r}; choose one of {KERNEL_LAYOUTS}.")
    return self.kernel_layout == "out_in"

  def _initializer(self) -> nn.initializers.Initializer:
    num_in, num_out = self.in_axes, len(self.features)
    if self._out_in:  # [*features, *in_shape]
      outputs, contracted = tuple(range(num_out)), tuple(range(num_out, num_out + num_in))
    else:  # [*in_shape, *features]
      contracted, outputs = tuple(range(num_in)), tuple(range(num_in, num_in + num_out))
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
    in_shape, features = x.shape[x.ndim - self.in_axes:], tuple(self.features)
    if self._out_in:
      shape, axes = features + in_shape, self.axes[self.in_axes:] + self.axes[:self.in_axes]
    else:
      shape, axes = in_shape + features, self.axes
    kernel = self.param("kernel", nn.with_logical_partitioning(self._initializer(), axes), shape, self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if not self._out_in:
      return self._add_bias(jnp.tensordot(x, kernel, axes=self.in_axes))
    # As flat matrices, so XLA contracts the kernel's minor dim in place; contracting a multi-dim kernel's trailing
    # dims makes it transpose the kernel back to [in, out] at every call.
    flat_x = x.reshape(x.shape[:x.ndim - self.in_axes] + (math.prod(in_shape),))
    y = jnp.einsum("...i,oi->...o", flat_x, kernel.reshape(math.prod(features), math.prod(in_shape)))
    return self._add_bias(y.reshape(y.shape[:-1] + features))

  def _add_bias(self, y: jax.Array) -> jax.Array:
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.axes[self.in_axes:]),
                        tuple(self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def _rotation(shape: tuple[int, ...], target: tuple[int, ...], where: str) -> int:
  """The n with `shape[n:] + shape[:n] == target` (n in 1 .. ndim - 1): how many leading dims move to the end."""
  fits = [n for n in range(1, len(shape)) if tuple(shape[n:]) + tuple(shape[:n]) == tuple(target)]
  if len(fits) != 1:
    raise ConfigError(f"relayout_kernels: the kernel at {where} {tuple(shape)} maps onto {tuple(target)} by "
                      f"{'no' if not fits else 'more than one'} rotation of its dims; the parameters do not belong "
                      f"to the model whose shapes were given (or its dims are all equal, which is ambiguous).")
  return fits[0]


def relayout_kernels(params: Any, target_shapes: Any) -> Any:
  """`params` of a model whose Projections keep one kernel layout, for the same model with the other
  (`target_shapes`: its parameter shapes, e.g. `jax.eval_shape` of its init). Each `kernel` leaf is rotated:
  `[*in_shape, *features]` becomes `[*features, *in_shape]` (or back), its leading dims moving to the end, as many
  as make the shape match its target (and so do the logical axis names of a boxed kernel). Every Projection of
  the target must use the other layout (a square kernel is transposed whatever its target shape says); other
  leaves are kept."""
  boxed = lambda leaf: isinstance(leaf, nn.Partitioned)

  def relayout(path, leaf, target):
    if getattr(path[-1], "key", None) != "kernel":
      return leaf
    value = leaf.unbox() if boxed(leaf) else leaf
    moved = _rotation(value.shape, target.shape, jax.tree_util.keystr(path))
    value = jnp.moveaxis(value, tuple(range(moved)), tuple(range(value.ndim - moved, value.ndim)))
    return leaf.replace(value=value, names=leaf.names[moved:] + leaf.names[:moved]) if boxed(leaf) else value

  return jax.tree_util.tree_map_with_path(relayout, params, nn.unbox(target_shapes), is_leaf=boxed)
