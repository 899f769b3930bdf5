"""Anti-aliased downsampling: a binomial low-pass blur, then subsampling (Zhang 2019, "Making Convolutional
Networks Shift-Invariant Again"), the "3D blur pooling" of MAGVIT-v2 and the blur downsampling of StyleGAN
discriminators.

The blur is separable and depthwise (no parameters): along every axis with stride s > 1 the signal is filtered
with the normalized binomial kernel of `filter_size` taps ([1, 2, 1]/4, [1, 3, 3, 1]/8, ...) and every s-th
sample is kept; axes with stride 1 pass through unblurred. Binomial taps sum to 1 (constants are preserved) and,
since sum_k (-1)^k C(n, k) = 0, their even and odd taps each sum to 1/2: with stride 2 every input sample gets
total weight 1/2, so on a periodic signal (wrap padding) the mean is preserved exactly, and the Nyquist
frequency (-1)^n is removed entirely.

Time is causal as in `CausalConv3D`: `filter_size - 1` copies of frame 0 are prepended, so output frame j reads
input frames ≤ j·s_t, frame 0 is a function of frame 0 alone, and T = 1 + k·s_t frames give 1 + k outputs.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.causal_conv import check_frame_count, pad_past, spatial_padding

SPATIAL_PADDINGS = ("reflect", "edge", "wrap")


def binomial_kernel(size: int) -> np.ndarray:
  """Row `size - 1` of Pascal's triangle divided by its sum 2^(size-1)."""
  if not 1 <= size <= 16:
    raise ConfigError(f"blur filter_size={size} is out of range; use 1..16 (3 or 4 are usual).")
  taps = np.array([math.comb(size - 1, k) for k in range(size)], np.float64)
  return (taps / taps.sum()).astype(np.float32)


def filter_subsample(x: jax.Array, axis: int, stride: int, taps: np.ndarray) -> jax.Array:
  """out[j] = sum_k taps[k] · x[j·stride + k] along a padded axis, as a weighted sum of strided slices."""
  n_out = (x.shape[axis] - len(taps)) // stride + 1
  out = 0.0
  for k, weight in enumerate(taps):
    window = jax.lax.slice_in_dim(x, k, k + stride * (n_out - 1) + 1, stride=stride, axis=axis)
    out = out + float(weight) * window
  return out


def _blur_spatial(x: jax.Array, axis: int, stride: int, filter_size: int, mode: str, where: str) -> jax.Array:
  if stride == 1:
    return x
  # A kernel of filter_size + stride - 1 taps gets total pad filter_size - 1: H maps to H / stride, split
  # symmetrically with the odd pixel at the end ((1, 1) for [1, 2, 1], as Zhang 2019; (1, 2) for [1, 3, 3, 1]).
  low, high = spatial_padding(x.shape[axis], filter_size + stride - 1, stride, where)
  pads = [(0, 0)] * x.ndim
  pads[axis] = (low, high)
  return filter_subsample(jnp.pad(x, pads, mode=mode), axis, stride, binomial_kernel(filter_size))


def _check_spatial_mode(mode: str, where: str) -> None:
  if mode not in SPATIAL_PADDINGS:
    raise ConfigError(f"{where}: spatial_padding={mode!r} is not one of {SPATIAL_PADDINGS}.")


class BlurPool2D(nn.Module):
  """Blur-then-subsample `[B, H, W, C]` images (default stride 2 in both axes)."""

  strides: Sequence[int] = (2, 2)
  filter_size: int = 3
  spatial_padding: str = "reflect"  # Zhang 2019's default; "wrap" makes mean preservation exact.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    where = f"BlurPool2D(strides={tuple(self.strides)})"
    if x.ndim != 4 or len(self.strides) != 2:
      raise ConfigError(f"{where}: expects [B, H, W, C] and 2 strides, got input shape {x.shape}.")
    _check_spatial_mode(self.spatial_padding, where)
    for axis, stride in zip((1, 2), self.strides):
      x = _blur_spatial(x, axis, stride, self.filter_size, self.spatial_padding, where)
    return x


class BlurPool3D(nn.Module):
  """Blur-then-subsample `[B, T, H, W, C]` videos, causal in time; strides (s_t, s_h, s_w)."""

  strides: Sequence[int] = (2, 2, 2)
  filter_size: int = 3
  spatial_padding: str = "reflect"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    where = f"BlurPool3D(strides={tuple(self.strides)})"
    if x.ndim != 5 or len(self.strides) != 3:
      raise ConfigError(f"{where}: expects a [B, T, H, W, C] video and 3 strides, got input shape {x.shape}; "
                        f"give images as one-frame videos (x[:, None]).")
    _check_spatial_mode(self.spatial_padding, where)
    st, sh, sw = self.strides
    check_frame_count(x.shape[1], st, where)
    if st > 1:
      # Replicating frame 0 (not zeros) keeps a constant video constant at its start.
      x = filter_subsample(pad_past(x, self.filter_size - 1, "replicate", where), 1, st,
                          binomial_kernel(self.filter_size))
    x = _blur_spatial(x, 2, sh, self.filter_size, self.spatial_padding, where)
    return _blur_spatial(x, 3, sw, self.filter_size, self.spatial_padding, where)
