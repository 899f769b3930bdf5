"""StyleGAN2-style residual discriminators for images `[B, H, W, C]` and videos `[B, T, H, W, C]`.

Layout (Karras et al. 2020, StyleGAN2, the "resnet" discriminator of Fig. 7c; MAGVIT uses its 3D form):
conv3x3 → leaky ReLU, then one residual block per channel multiplier, each halving the resolution, then
conv3x3 → leaky ReLU → flatten → dense → leaky ReLU → dense(1). Output: one logit per sample, `[B]` (not a
PatchGAN map): the flatten + dense head sees absolute positions, so the logits are not translation invariant,
and the trained parameters fix the input resolution.

Left out on purpose: StyleGAN2's equalized learning rate and minibatch-stddev layer. Without the latter no
sample's logit depends on another sample, which `r1_penalty`'s one-gradient-for-the-batch trick relies on.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.blur import filter_subsample
from tokgen_jax.nn.conv import Conv

_LEAKY_SLOPE = 0.2
# Binomial [1, 3, 3, 1] / 8 (StyleGAN2's resampling filter) when blurring; a 2-tap box (average pooling) when not.
_BLUR_TAPS = np.array([1.0, 3.0, 3.0, 1.0], np.float32) / 8.0
_BOX_TAPS = np.array([1.0, 1.0], np.float32) / 2.0


def _leaky(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, _LEAKY_SLOPE)


def _half_padding(size: int, taps: int) -> tuple[int, int]:
  """Zero padding that makes a `taps`-wide, stride-2 filter give `ceil(size/2)` outputs, split as evenly as possible."""
  total = 2 * (-(-size // 2) - 1) + taps - size
  return total // 2, total - total // 2


def _blur_downsample(x: jax.Array, axes: Sequence[int], blur: bool = True) -> jax.Array:
  """Depthwise low-pass filter along each of `axes` (indices into x's dims) with stride 2 there: size n → ceil(n/2).

  Separable: one 1D pass per halved axis, as weighted sums of strided slices (XLA's CPU backend runs the
  equivalent depthwise convolution ~40x slower). The taps sum to 1, so a constant input stays constant away from
  the zero-padded border.
  """
  taps = _BLUR_TAPS if blur else _BOX_TAPS
  for axis in axes:
    pads = [(0, 0)] * x.ndim
    pads[axis] = _half_padding(x.shape[axis], len(taps))
    x = filter_subsample(jnp.pad(x, pads), axis, 2, taps)
  return x


def _conv3(features: int, window: tuple[int, ...]) -> Conv:
  """A stride-1 "SAME" conv; the strides are spelled out because `Conv` defaults to two of them (2D)."""
  return Conv(features, window, strides=(1,) * len(window))


class _ResBlockDown(nn.Module):
  """conv3 → leaky → blur-downsample → conv3 → leaky, plus a blur-downsampled 1x1 skip; sum / √2 (StyleGAN2).

  The √2 keeps the variance of the sum of two roughly independent unit-variance branches at one. Blurring before
  the second conv (rather than StyleGAN2's blur + stride-2 conv) runs that conv at the lower resolution: 4x
  (8x in 3D) cheaper, and it matters when importing StyleGAN2 weights.
  """

  features: int
  down_axes: tuple[int, ...]
  blur: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    window = (3,) * (x.ndim - 2)
    h = _leaky(_conv3(x.shape[-1], window)(x))
    h = _blur_downsample(h, self.down_axes, self.blur)
    h = _leaky(_conv3(self.features, window)(h))
    skip = _blur_downsample(x, self.down_axes, self.blur)
    # The 1x1 skip has no bias: the main branch's biases already cover a constant offset.
    skip = nn.Conv(self.features, (1,) * (x.ndim - 2), use_bias=False, name="skip",
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.lecun_normal(), (None,) * (x.ndim - 2) + ("conv_in", "conv_out")))(skip)
    return (h + skip) / math.sqrt(2.0)


def _check_size(x: jax.Array, levels: int, where: str) -> None:
  if levels == 0:
    raise ConfigError(f"{where}: channel_multipliers is empty; give at least one level, e.g. (2, 4, 4, 4, 4)")
  height, width = x.shape[-3], x.shape[-2]
  factor = 2 ** levels
  if height % factor or width % factor:
    raise ConfigError(f"{where}: input {height}x{width} must have H and W divisible by 2**len(channel_multipliers) "
                      f"= {factor}; resize or crop the input, or use fewer channel_multipliers")


def _discriminate(x: jax.Array, channels: int, multipliers: Sequence[int], blur: bool, halve_time: bool) -> jax.Array:
  """The shared body; called inside a compact `__call__`, so the layers it creates belong to that module."""
  window = (3,) * (x.ndim - 2)
  h = _leaky(_conv3(channels, window)(x.astype(jnp.float32)))
  for multiplier in multipliers:
    time = (1,) if halve_time and h.shape[1] > 1 else ()
    space = (h.ndim - 3, h.ndim - 2)
    h = _ResBlockDown(channels * multiplier, time + space, blur)(h)
  width = channels * multipliers[-1]
  h = _leaky(_conv3(width, window)(h))
  h = h.reshape(h.shape[0], -1)
  h = _leaky(nn.Dense(width, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)))(h))
  logits = nn.Dense(1, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)))(h)
  return logits[:, 0]


class StyleGANDiscriminator2D(nn.Module):
  """Image discriminator: `[B, H, W, C]` → logits `[B]`; a video `[B, T, H, W, C]` is judged frame by frame → `[B, T]`.

  H and W must be divisible by `2**len(channel_multipliers)`; block i has `channels·channel_multipliers[i]` channels.
  `blur=False` swaps the [1, 3, 3, 1] binomial for 2x2 average pooling.
  """

  channels: int = 64
  channel_multipliers: Sequence[int] = (2, 4, 4, 4, 4)
  blur: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim not in (4, 5):
      raise ConfigError(f"StyleGANDiscriminator2D: input shape {x.shape} must be [B, H, W, C] or [B, T, H, W, C]; "
                        "reshape the input")
    _check_size(x, len(self.channel_multipliers), "StyleGANDiscriminator2D")
    if x.ndim == 5:
      batch, frames = x.shape[:2]
      logits = _discriminate(x.reshape((batch * frames,) + x.shape[2:]), self.channels, self.channel_multipliers,
                             self.blur, halve_time=False)
      return logits.reshape(batch, frames)
    return _discriminate(x, self.channels, self.channel_multipliers, self.blur, halve_time=False)


class StyleGANDiscriminator3D(nn.Module):
  """Video discriminator: `[B, T, H, W, C]` → logits `[B]`, with 3x3x3 convs (non-causal: it sees the whole clip).

  Each block halves H and W, and halves T (T → ceil(T/2), zero padded) while T > 1, so a MAGVIT-v2 clip of
  1 + 4k frames and a one-frame image both work; H and W must be divisible by `2**len(channel_multipliers)`.
  """

  channels: int = 64
  channel_multipliers: Sequence[int] = (2, 4, 4, 4, 4)
  blur: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 5:
      raise ConfigError(f"StyleGANDiscriminator3D: input shape {x.shape} must be [B, T, H, W, C]; an image is "
                        "[B, 1, H, W, C]")
    _check_size(x, len(self.channel_multipliers), "StyleGANDiscriminator3D")
    return _discriminate(x, self.channels, self.channel_multipliers, self.blur, halve_time=True)
