"""Adaptive GroupNorm: GroupNorm without its own affine, scaled and shifted by projections of a conditioning
tensor (MAGVIT-v2's decoder, conditioned on the quantized latent). Two forms (`conditioning`):

- "style": per sample and channel, from the conditioning's statistics, as StyleGAN's AdaIN and Open-MAGVIT2's
  `AdaptiveGroupNorm`: `GN(x)·Linear_γ(std(z)) + Linear_β(mean(z))`, mean and std of z over its spatial positions.
- "spatial": per channel and position, from the conditioning resized to x (SPADE, Park et al. 2019, Eq. 1):
  `GN(x)·(1 + conv_γ(z↑)) + conv_β(z↑)`.

Statistics are per frame by default: GroupNorm over (T, H, W) would let frame 0 see later frames, breaking the
causal tokenizer's "an image is a one-frame video" and causality guarantees.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError

_CONV_AXES_3D = (None, None, None, "conv_in", "conv_out")


def capped_groups(channels: int, num_groups: int, where: str) -> int:
  """The group count capped at the channel count, as `norms.group_norm` does; raises if channels don't divide."""
  groups = min(num_groups, channels)
  if channels % groups:
    raise ConfigError(f"{where}: {channels} channels are not divisible into {groups} groups; "
                      f"choose channel widths that are multiples of the group count.")
  return groups


def group_standardize(x: jax.Array, num_groups: int, per_frame: bool = True, epsilon: float = 1e-6) -> jax.Array:
  """(x - mean) / sqrt(var + eps) per sample and channel group (Wu & He 2018, Eq. 1), without affine.

  `x` is `[B, *spatial, C]`. With `per_frame` (and `x` a `[B, T, H, W, C]` video) statistics are taken over
  (H, W, group) for each frame; otherwise over all of `*spatial` and the group, as `nn.GroupNorm`. The group
  count is capped at C. Statistics are computed in float32 with the two-pass variance.
  """
  groups = capped_groups(x.shape[-1], num_groups, "group_standardize")
  grouped = x.astype(jnp.float32).reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
  first = 2 if per_frame and x.ndim == 5 else 1
  axes = tuple(range(first, x.ndim - 1)) + (x.ndim,)
  mean = jnp.mean(grouped, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
  return ((grouped - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape).astype(x.dtype)


def causal_frame_index(source_frames: int, target_frames: int) -> np.ndarray:
  """For each of `target_frames` frames, the source frame that nearest-neighbour resizing in time reads.

  A causal latent of t = 1 + (T - 1)/s frames holds frame 0 alone and then one frame per s frames, so target
  frame i reads latent frame ceil(i / s) (the chunk that contains it); t = 1 broadcasts. This is the frame map of
  `DepthToSpaceUpsample3D` and of the causal encoder, so the decoder stays causal in the latent.
  """
  if source_frames == 1:
    return np.zeros(target_frames, np.int32)
  if target_frames < source_frames or (target_frames - 1) % (source_frames - 1):
    raise ConfigError(
        f"AdaptiveGroupNorm: a conditioning tensor of {source_frames} frames cannot be resized causally to "
        f"{target_frames} frames; the target must have 1 + k·(t - 1) frames for an integer k ≥ 1 (e.g. "
        f"{[1 + k * (source_frames - 1) for k in (1, 2, 4)]}); check the decoder's temporal upsampling.")
  step = (target_frames - 1) // (source_frames - 1)
  return (-(-np.arange(target_frames) // step)).astype(np.int32)


def resize_nearest(cond: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
  """Resize `[B, t, h, w, c]` to `[B, T, H, W, c]`: causal frame map in time, nearest pixel in space."""
  frames, height, width = shape
  cond = jnp.take(cond, causal_frame_index(cond.shape[1], frames), axis=1)
  # Pixel i of H reads floor(i·h / H): plain repetition when h divides H.
  cond = jnp.take(cond, np.arange(height) * cond.shape[2] // height, axis=2)
  return jnp.take(cond, np.arange(width) * cond.shape[3] // width, axis=3)


def frame_statistics(cond: jax.Array, epsilon: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Per sample, frame and channel: the mean of `cond` `[B, t, h, w, c]` over (h, w) and `sqrt(var + eps)`, both
  `[B, t, c]` float32. The variance is the unbiased one (divisor h·w - 1, at least 1), which is what Open-MAGVIT2's
  `quantizer.var(dim=-1)` computes (torch's default) despite its "not unbias" comment."""
  flat = cond.astype(jnp.float32).reshape(cond.shape[:2] + (-1, cond.shape[-1]))
  count = flat.shape[2]
  mean = jnp.mean(flat, axis=2)
  var = jnp.sum(jnp.square(flat - mean[:, :, None]), axis=2) / max(count - 1, 1)
  return mean, jnp.sqrt(var + epsilon)


CONDITIONINGS = ("style", "spatial")


class AdaptiveGroupNorm(nn.Module):
  """Affine-free GroupNorm of x `[B, T, H, W, C]` modulated by cond `[B, t, h, w, c]` (see the module docstring).

  "style": `group_standardize(x)·gamma(std) + beta(mean)` with Dense maps c → C of `frame_statistics(cond)`, the
  statistics of latent frame ceil(i / s) serving video frame i (per frame, not over the whole clip, so the
  decoder stays causal; for an image this is exactly Open-MAGVIT2's form). gamma's bias starts at 1 and beta's
  at 0 (torch's uniform Linear init is not reproduced), so at init the scale is about 1.

  "spatial": `group_standardize(x)·(1 + gamma(cond↑)) + beta(cond↑)` with 1x1x1 convs of the nearest-resized
  cond. The projections are zero-initialized (`zero_init`), so at init the layer is a plain affine-free GroupNorm
  and the conditioning enters through a residual scale around 1 (as adaLN-Zero in DiT).
  """

  num_groups: int = 32
  per_frame: bool = True
  epsilon: float = 1e-6
  zero_init: bool = True
  conditioning: str = "spatial"

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    if x.ndim != 5 or cond.ndim != 5 or x.shape[0] != cond.shape[0]:
      raise ConfigError(f"AdaptiveGroupNorm: expects x [B, T, H, W, C] and cond [B, t, h, w, c] with the same B, "
                        f"got {x.shape} and {cond.shape}.")
    if self.conditioning not in CONDITIONINGS:
      raise ConfigError(f"AdaptiveGroupNorm: conditioning={self.conditioning!r} is not known; choose one of "
                        f"{CONDITIONINGS}.")
    normed = group_standardize(x, self.num_groups, self.per_frame, self.epsilon)
    if self.conditioning == "style":
      return self._style(normed, cond)
    cond = resize_nearest(cond, x.shape[1:4])
    init = nn.initializers.zeros_init() if self.zero_init else nn.initializers.lecun_normal()
    project = lambda name: nn.Conv(
        x.shape[-1], (1, 1, 1),
        kernel_init=nn.with_logical_partitioning(init, _CONV_AXES_3D),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name)(cond)
    gamma, beta = project("gamma"), project("beta")
    return normed * (1.0 + gamma) + beta

  def _style(self, normed: jax.Array, cond: jax.Array) -> jax.Array:
    mean, std = frame_statistics(cond, self.epsilon)
    frames = causal_frame_index(cond.shape[1], normed.shape[1])
    mean, std = jnp.take(mean, frames, axis=1), jnp.take(std, frames, axis=1)
    project = lambda name, bias_init: nn.Dense(
        normed.shape[-1], kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                   ("conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(bias_init, ("conv_out",)), name=name)
    gamma = project("gamma", nn.initializers.ones_init())(std)[:, :, None, None]
    beta = project("beta", nn.initializers.zeros_init())(mean)[:, :, None, None]
    return normed * gamma.astype(normed.dtype) + beta.astype(normed.dtype)
