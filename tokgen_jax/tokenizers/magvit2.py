"""MAGVIT-v2 video tokenizer (Yu et al. 2024, "Language Model Beats Diffusion", §3.2): a temporally causal 3D CNN
autoencoder around any registered quantizer (LFQ in the paper), for images and videos alike.

Design:
- Encoder: CausalConv3D conv_in → per level `num_res_blocks` causal 3D residual blocks (per-frame GroupNorm with
  affine, swish, CausalConv3D 3x3x3) → between levels a downsample, a CausalConv3D 3x3x3 with stride
  (2 if temporal_downsample[level] else 1, 2, 2), or with `blur_pool` a BlurPool3D with those strides followed
  by a stride-1 CausalConv3D (anti-aliased, the paper's "3D blur pooling") → `num_res_blocks` mid blocks →
  GroupNorm, swish, 1x1x1 conv to `quantizer.dim`.
- Decoder: CausalConv3D conv_in from z_q → `num_res_blocks` mid blocks → per level (reversed) `num_res_blocks`
  blocks → DepthToSpaceUpsample3D with block (2 if temporal else 1, 2, 2), CRD channel order (see
  `nn.depth_to_space`) → GroupNorm, swish, CausalConv3D 3x3x3 to 3 channels. Adaptive GroupNorm conditioned on
  z_q (`adaptive_norm`):
  - "style" (default): the paper's text, "adaptive group normalization ... following StyleGAN", read as
    StyleGAN's per-sample style: one AdaptiveGroupNorm per level after its residual blocks (before the upsample),
    modulated by Linear maps of z_q's per-frame channel mean and std, as Open-MAGVIT2's decoder does; residual
    blocks use plain GroupNorm.
  - "spatial": every decoder residual block's norms are SPADE-like AdaptiveGroupNorms, scale and shift per
    position from 1x1x1 convs of z_q resized to the block's resolution.
- Every norm takes statistics per frame: GroupNorm over (T, H, W) would let frame 0 read later frames.

Frames: a video of T = 1 + k·s_t frames (s_t = 2^sum(temporal_downsample)) gives 1 + k latent frames; latent
frame 0 depends on input frame 0 alone, latent frame j on input frames ≤ j·s_t; the decoder maps t latent
frames back to 1 + (t - 1)·s_t frames, output frame i reading latent frames ≤ ceil(i / s_t). An image
`[B, H, W, 3]` is a one-frame video: its tokens equal those of frame 0 of any video starting with it, and
outputs keep the input's rank.
"""

from typing import Sequence

import flax.linen as nn
import jax

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn import (AdaptiveGroupNorm, BlurPool3D, CausalConv3D, DepthToSpaceUpsample3D, check_frame_count,
                           group_standardize)
from tokgen_jax.quantizers import QuantizerOutput
from tokgen_jax.tokenizers.base import Factors, Tokenizer

_ACTIVATION_AXES = ("batch", "time", "height", "width", "conv_out")


class FrameGroupNorm(nn.Module):
  """GroupNorm with per-channel affine whose statistics are taken per frame (over H, W and the group)."""

  num_groups: int = 32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("conv_out",)),
                       (channels,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
                      (channels,))
    return group_standardize(x, self.num_groups, per_frame=True, epsilon=self.epsilon) * scale + bias


class ResBlock3D(nn.Module):
  """norm → swish → causal conv 3x3x3 → norm → swish → causal conv 3x3x3, plus a 1x1x1-projected skip.

  With `cond` given, both norms are AdaptiveGroupNorm conditioned on it (decoder); otherwise FrameGroupNorm.
  """

  features: int
  num_groups: int = 32
  temporal_padding: str = "replicate"

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    def norm(h, name):
      if cond is None:
        return FrameGroupNorm(self.num_groups, name=name)(h)
      return AdaptiveGroupNorm(self.num_groups, name=name)(h, cond)

    conv = lambda features, kernel, name: CausalConv3D(features, kernel, temporal_padding=self.temporal_padding,
                                                       name=name)
    h = conv(self.features, (3, 3, 3), "conv1")(nn.swish(norm(x, "norm1")))
    h = conv(self.features, (3, 3, 3), "conv2")(nn.swish(norm(h, "norm2")))
    if x.shape[-1] != self.features:
      x = conv(self.features, (1, 1, 1), "skip")(x)
    return x + h


class Encoder3D(nn.Module):
  channels: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  latent_dim: int
  temporal_downsample: Sequence[bool]
  num_groups: int = 32
  blur_pool: bool = False
  temporal_padding: str = "replicate"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    block = lambda features: ResBlock3D(features, self.num_groups, self.temporal_padding)
    h = CausalConv3D(self.channels * self.channel_multipliers[0], temporal_padding=self.temporal_padding,
                     name="conv_in")(x)
    for level, multiplier in enumerate(self.channel_multipliers):
      for _ in range(self.num_res_blocks):
        h = block(self.channels * multiplier)(h)
      if level < len(self.channel_multipliers) - 1:
        strides = (2 if self.temporal_downsample[level] else 1, 2, 2)
        if self.blur_pool:
          h = BlurPool3D(strides)(h)
          strides = (1, 1, 1)
        h = CausalConv3D(h.shape[-1], strides=strides, temporal_padding=self.temporal_padding,
                         name=f"downsample_{level}")(h)
      h = nn.with_logical_constraint(h, _ACTIVATION_AXES)
    for _ in range(self.num_res_blocks):
      h = block(h.shape[-1])(h)
    h = nn.swish(FrameGroupNorm(self.num_groups, name="norm_out")(h))
    return CausalConv3D(self.latent_dim, (1, 1, 1), name="to_latent")(h)


ADAPTIVE_NORMS = ("style", "spatial")


class Decoder3D(nn.Module):
  channels: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  temporal_downsample: Sequence[bool]
  out_channels: int = 3
  num_groups: int = 32
  temporal_padding: str = "replicate"
  upsample_kernel_size: Sequence[int] = (3, 3, 3)
  adaptive_norm: str = "style"

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    multipliers = tuple(reversed(self.channel_multipliers))
    temporal = tuple(reversed(self.temporal_downsample))  # decoder level j undoes the encoder's last-but-j step
    block = lambda features: ResBlock3D(features, self.num_groups, self.temporal_padding)
    spatial = self.adaptive_norm == "spatial"
    block_cond = z if spatial else None
    h = CausalConv3D(self.channels * multipliers[0], temporal_padding=self.temporal_padding, name="conv_in")(z)
    for _ in range(self.num_res_blocks):
      h = block(h.shape[-1])(h, block_cond)
    for level, multiplier in enumerate(multipliers):
      for _ in range(self.num_res_blocks):
        h = block(self.channels * multiplier)(h, block_cond)
      if not spatial:
        h = AdaptiveGroupNorm(self.num_groups, conditioning="style", name=f"adaptive_norm_{level}")(h, z)
      if level < len(multipliers) - 1:
        h = DepthToSpaceUpsample3D(h.shape[-1], (2 if temporal[level] else 1, 2, 2), self.upsample_kernel_size,
                                   temporal_padding=self.temporal_padding, name=f"upsample_{level}")(h)
      h = nn.with_logical_constraint(h, _ACTIVATION_AXES)
    h = nn.swish(FrameGroupNorm(self.num_groups, name="norm_out")(h))
    return CausalConv3D(self.out_channels, temporal_padding=self.temporal_padding, name="conv_out")(h)


class MagvitV2(Tokenizer):
  """Video/image tokenizer: `reconstruction, aux = model(videos, train)`, videos `[B, T, H, W, 3]` in [-1, 1].

  `encode` maps videos to `{"tokens": [B, 1 + (T-1)/s_t, H/f, W/f]}` (images `[B, H, W, 3]` to `[B, H/f, W/f]`;
  `latents` with a trailing dim behind a continuous bottleneck), `decode` maps it back; f, s_t = `factors`.
  `temporal_downsample[i]` says whether the downsample after level i also halves time (one entry per level
  but the last). `upsample_kernel_size` is the kernel of the conv before each depth-to-space: 3x3x3 (as
  Open-MAGVIT2's 3x3) or 1x1x1 (as magvit2-pytorch); at paper size the 3x3x3 ones to 8·512 channels dominate
  the decoder's parameters.
  """

  channels: int = 128
  channel_multipliers: Sequence[int] = (1, 2, 2, 4)
  num_res_blocks: int = 2
  temporal_downsample: Sequence[bool] = (False, True, True)
  num_groups: int = 32
  blur_pool: bool = False
  temporal_padding: str = "replicate"
  out_channels: int = 3
  upsample_kernel_size: Sequence[int] = (3, 3, 3)
  adaptive_norm: str = "style"

  @property
  def factors(self) -> Factors:
    return Factors(temporal=2 ** sum(bool(flag) for flag in self.temporal_downsample),
                   spatial=2 ** (len(self.channel_multipliers) - 1))

  def setup(self):
    if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
      raise ConfigError(
          f"MagvitV2: temporal_downsample={tuple(self.temporal_downsample)} needs one entry per downsampling "
          f"step, i.e. len(channel_multipliers) - 1 = {len(self.channel_multipliers) - 1} entries.")
    if self.adaptive_norm not in ADAPTIVE_NORMS:
      raise ConfigError(f"MagvitV2: adaptive_norm={self.adaptive_norm!r} is not known; set "
                        f"config.model.adaptive_norm to one of {ADAPTIVE_NORMS}.")
    shared = dict(channels=self.channels, channel_multipliers=self.channel_multipliers,
                  num_res_blocks=self.num_res_blocks, temporal_downsample=self.temporal_downsample,
                  num_groups=self.num_groups, temporal_padding=self.temporal_padding)
    self.encoder = Encoder3D(latent_dim=self.quantizer.dim, blur_pool=self.blur_pool, **shared)
    self.decoder = Decoder3D(out_channels=self.out_channels, upsample_kernel_size=self.upsample_kernel_size,
                             adaptive_norm=self.adaptive_norm, **shared)

  def encode_latent(self, videos: jax.Array) -> jax.Array:
    """The continuous encoder output before quantization, `[B, t, h, w, D]` (`[B, h, w, D]` for images)."""
    z = self.encoder(self._as_video(videos))
    return z if videos.ndim == 5 else z[:, 0]

  def quantize(self, videos: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    z_q, out = self.quantizer(self.encoder(self._as_video(videos)), train=train)
    if videos.ndim == 4:  # an image: drop the one-frame time axis of codes and indices
      z_q, out = z_q[:, 0], out.replace(indices=out.indices[:, 0])
    return z_q, out

  def decode_codes(self, z_q: jax.Array, train: bool = False) -> jax.Array:
    """Latents `[B, t, h, w, D]` → videos `[B, 1 + (t-1)·s_t, H, W, 3]`; `[B, h, w, D]` → images."""
    del train  # no dropout or batch statistics: kept for the tokenizer interface
    if z_q.ndim not in (4, 5):
      raise ConfigError(f"MagvitV2.decode_codes: expects latents [B, t, h, w, D] or [B, h, w, D], got {z_q.shape}.")
    out = self.decoder(z_q if z_q.ndim == 5 else z_q[:, None])
    return out if z_q.ndim == 5 else out[:, 0]

  def _as_video(self, videos: jax.Array) -> jax.Array:
    if videos.ndim not in (4, 5):
      raise ConfigError(f"MagvitV2: expects videos [B, T, H, W, C] or images [B, H, W, C], got shape "
                        f"{videos.shape}.")
    videos = videos if videos.ndim == 5 else videos[:, None]
    height, width = videos.shape[2:4]
    if height % self.factors.spatial or width % self.factors.spatial:
      raise ConfigError(f"MagvitV2: frame size {height}x{width} is not divisible by the spatial downsampling "
                        f"factor {self.factors.spatial}; crop or resize to a multiple of it.")
    check_frame_count(videos.shape[1], self.factors.temporal, "MagvitV2")
    return videos
