"""VQGAN-style 2D convolutional autoencoder (Esser et al. 2021): ResNet encoder → quantizer → ResNet decoder.

The encoder halves the resolution once per entry of `channel_multipliers` after the first, so the downsampling
factor is `2 ** (len(channel_multipliers) - 1)` (4, 8 or 16 for 3, 4 or 5 levels).
"""

from typing import Sequence

import flax.linen as nn
import jax

from tokgen_jax.nn import Conv, Downsample2D, ResBlock2D, SpatialSelfAttention, Upsample2D, group_norm
from tokgen_jax.quantizers import QuantizerOutput
from tokgen_jax.tokenizers.base import Factors, Tokenizer

_ACTIVATION_AXES = ("batch", "height", "width", "conv_out")


class Encoder2D(nn.Module):
  channels: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  latent_dim: int
  use_attention: bool = False
  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = Conv(self.channels * self.channel_multipliers[0], (3, 3), name="conv_in")(x)
    for level, multiplier in enumerate(self.channel_multipliers):
      for _ in range(self.num_res_blocks):
        h = ResBlock2D(self.channels * multiplier, self.num_groups, self.dropout)(h, train)
      if level < len(self.channel_multipliers) - 1:
        h = Downsample2D(h.shape[-1])(h)
      h = nn.with_logical_constraint(h, _ACTIVATION_AXES)
    h = _mid_block(h, self.num_groups, self.dropout, self.use_attention, train)
    h = nn.swish(group_norm(h, self.num_groups))
    return Conv(self.latent_dim, (1, 1), name="to_latent")(h)


class Decoder2D(nn.Module):
  channels: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  out_channels: int = 3
  use_attention: bool = False
  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    multipliers = tuple(reversed(self.channel_multipliers))
    h = Conv(self.channels * multipliers[0], (3, 3), name="conv_in")(z)
    h = _mid_block(h, self.num_groups, self.dropout, self.use_attention, train)
    for level, multiplier in enumerate(multipliers):
      # The decoder mirrors the encoder with one extra block per level, as in VQGAN.
      for _ in range(self.num_res_blocks + 1):
        h = ResBlock2D(self.channels * multiplier, self.num_groups, self.dropout)(h, train)
      if level < len(multipliers) - 1:
        h = Upsample2D(h.shape[-1])(h)
      h = nn.with_logical_constraint(h, _ACTIVATION_AXES)
    h = nn.swish(group_norm(h, self.num_groups))
    return Conv(self.out_channels, (3, 3), name="conv_out")(h)


def _mid_block(h: jax.Array, num_groups: int, dropout: float, use_attention: bool, train: bool) -> jax.Array:
  h = ResBlock2D(h.shape[-1], num_groups, dropout)(h, train)
  if use_attention:
    h = SpatialSelfAttention(num_groups)(h)
  return ResBlock2D(h.shape[-1], num_groups, dropout)(h, train)


class VQGAN(Tokenizer):
  """Image tokenizer: `reconstruction, out = model(images, train)` with images `[B, H, W, 3]` in [-1, 1].

  `encode` maps images to `{"tokens": [B, H/f, W/f]}` (`{"latents": [B, H/f, W/f, D]}` behind a continuous
  bottleneck), `decode` maps that back to images; f = `factors.spatial` (see `tokenizers/base.py`).
  """

  channels: int = 32
  channel_multipliers: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  use_attention: bool = False
  num_groups: int = 32
  dropout: float = 0.0
  out_channels: int = 3

  @property
  def factors(self) -> Factors:
    return Factors(temporal=1, spatial=2 ** (len(self.channel_multipliers) - 1))

  def setup(self):
    shared = dict(channels=self.channels, channel_multipliers=self.channel_multipliers,
                  num_res_blocks=self.num_res_blocks, use_attention=self.use_attention,
                  num_groups=self.num_groups, dropout=self.dropout)
    self.encoder = Encoder2D(latent_dim=self.quantizer.dim, **shared)
    self.decoder = Decoder2D(out_channels=self.out_channels, **shared)

  def quantize(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    self._check_shape(images)
    return self.quantizer(self.encoder(images, train), train=train)

  def decode_codes(self, z_q: jax.Array, train: bool = False) -> jax.Array:
    return self.decoder(z_q, train)

  def _check_shape(self, images: jax.Array) -> None:
    height, width = images.shape[-3:-1]
    factor = self.factors.spatial
    if height % factor or width % factor:
      raise ValueError(f"VQGAN: image size {height}x{width} is not divisible by the downsampling factor "
                       f"{factor}; crop or resize the images to a multiple of it.")
