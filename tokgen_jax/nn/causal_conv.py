"""Temporally causal 3D convolution (MAGVIT-v2, Yu et al. 2023, Sec. 3.2), the layer that lets one tokenizer
encode images and videos alike.

Causality comes from padding time on the past side only: with `k_t - 1` frames of padding before frame 0 and
none after, the window of output frame j covers input frames `j·s_t - (k_t - 1) ... j·s_t`, so no output ever
reads a later frame. Output frame 0 covers frames `-(k_t - 1) ... 0`, i.e. padding and frame 0 alone: an image
(a one-frame video) yields exactly frame 0 of any video that starts with it. The output has
`floor((T - 1) / s_t) + 1` frames; we require `(T - 1) % s_t == 0` so no trailing frame is silently dropped,
which gives the "1 + k·s_t" frame counts that map to `1 + (T - 1) / s_t` output frames.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError

_CONV_AXES_3D = (None, None, None, "conv_in", "conv_out")
TEMPORAL_PADDINGS = ("replicate", "zeros")


def valid_frame_counts(temporal_stride: int, how_many: int = 4) -> list[int]:
  """The first frame counts `1 + k·s_t` (k = 0, 1, ...) that a temporal stride accepts."""
  return [1 + k * temporal_stride for k in range(how_many)]


def check_frame_count(num_frames: int, temporal_stride: int, where: str) -> int:
  """Return the output frame count `1 + (T - 1) / s_t`, or raise ConfigError listing the valid counts."""
  if num_frames < 1 or (num_frames - 1) % temporal_stride:
    below = 1 + max(num_frames - 1, 0) // temporal_stride * temporal_stride
    raise ConfigError(
        f"{where}: {num_frames} frames do not fit temporal stride {temporal_stride}; the frame count must be "
        f"1 + k·{temporal_stride}, i.e. one of {valid_frame_counts(temporal_stride)}, ... "
        f"(nearest: {below} or {below + temporal_stride}). Change the clip length (data.num_frames) to such a count.")
  return 1 + (num_frames - 1) // temporal_stride


def spatial_padding(size: int, kernel: int, stride: int, where: str) -> tuple[int, int]:
  """The (low, high) padding that maps `size` pixels to `size / stride` pixels.

  The total pad is `max(k - s, 0)` with the odd pixel at the end: symmetric `((k-1)//2, k//2)` for stride 1,
  and `(0, 1)` for a 3-wide stride-2 kernel, as VQGAN's Downsample. With that (0, 1) pad the windows start at
  pixels 0, 2, 4, ... so output pixel i is centred on input pixel 2i + 1 and only the last window reads a padded
  pixel (symmetric (1, 1) padding would centre on 2i and read padding on the first row instead). This equals
  XLA's "SAME" rule when `size % stride == 0`, which we require.
  """
  if size % stride:
    raise ConfigError(f"{where}: spatial size {size} is not divisible by stride {stride}; use resolutions that "
                      f"are multiples of the total spatial downsampling.")
  total = max(kernel - stride, 0)
  return total // 2, total - total // 2


def pad_past(x: jax.Array, frames: int, mode: str, where: str = "pad_past") -> jax.Array:
  """Prepend `frames` frames to `[B, T, ...]`: copies of frame 0 ("replicate") or zeros ("zeros")."""
  if mode not in TEMPORAL_PADDINGS:
    raise ConfigError(f"{where}: temporal_padding={mode!r} is not one of {TEMPORAL_PADDINGS}.")
  if frames == 0:
    return x
  if mode == "replicate":
    past = jnp.repeat(x[:, :1], frames, axis=1)
  else:
    past = jnp.zeros((x.shape[0], frames) + x.shape[2:], x.dtype)
  return jnp.concatenate([past, x], axis=1)


class CausalConv3D(nn.Module):
  """Conv over `[B, T, H, W, C]`, causal in time (past-only padding) and "SAME"-like in space.

  `temporal_padding="replicate"` repeats frame 0 into the past (Cosmos), "zeros" pads with zeros
  (magvit2-pytorch); both keep frame 0 a function of frame 0 alone.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  temporal_padding: str = "replicate"
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    where = f"CausalConv3D(kernel_size={tuple(self.kernel_size)}, strides={tuple(self.strides)})"
    if x.ndim != 5 or len(self.kernel_size) != 3 or len(self.strides) != 3:
      raise ConfigError(f"{where}: expects a [B, T, H, W, C] video and 3-element kernel_size/strides, got input "
                        f"shape {x.shape}; give images as one-frame videos (x[:, None]).")
    (kt, kh, kw), (st, sh, sw) = self.kernel_size, self.strides
    check_frame_count(x.shape[1], st, where)
    x = pad_past(x, kt - 1, self.temporal_padding, where)
    padding = ((0, 0), spatial_padding(x.shape[2], kh, sh, where), spatial_padding(x.shape[3], kw, sw, where))
    return nn.Conv(
        self.features,
        (kt, kh, kw),
        strides=(st, sh, sw),
        padding=padding,
        use_bias=self.use_bias,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, _CONV_AXES_3D),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name="conv",
    )(x)
