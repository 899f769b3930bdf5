"""VQGAN model presets by size. Widths and depths follow taming-transformers' f16 ImageNet model at size B."""

import ml_collections

SIZES = {
    # name: (channels, channel_multipliers, num_res_blocks, use_attention)
    "local": (32, (1, 2, 2), 1, False),     # downsampling 4, fits a 2-core CPU
    "S": (64, (1, 1, 2, 2, 4), 1, True),    # downsampling 16
    "B": (128, (1, 1, 2, 2, 4), 2, True),   # taming-transformers f16
}


def vq(codebook_size: int = 1024, dim: int = 8, commitment_weight: float = 0.25,
       l2_normalize: bool = True) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name="vq", codebook_size=codebook_size, dim=dim,
                                        commitment_weight=commitment_weight, l2_normalize=l2_normalize))


def vqgan(size: str = "local", quantizer: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  channels, multipliers, res_blocks, attention = SIZES[size]
  return ml_collections.ConfigDict(dict(
      name="vqgan", channels=channels, channel_multipliers=multipliers, num_res_blocks=res_blocks,
      use_attention=attention, num_groups=32, dropout=0.0, quantizer=quantizer or vq()))
