"""VQGAN model presets by size. Widths and depths follow taming-transformers' f16 ImageNet model at size B."""

import ml_collections

from tokgen_jax.configs import quantizers
from tokgen_jax.errors import ConfigError

SIZES = {
    # name: (channels, channel_multipliers, num_res_blocks, use_attention, num_groups)
    "local": (16, (1, 2, 4), 1, False, 8),    # downsampling 4, ~3.4 steps/s at batch 16 on a 2-core CPU
    "S": (64, (1, 1, 2, 2, 4), 1, True, 32),  # downsampling 16
    "B": (128, (1, 1, 2, 2, 4), 2, True, 32), # taming-transformers f16
}


def vqgan(size: str = "local", quantizer: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  if size not in SIZES:
    raise ConfigError(f"VQGAN size {size!r} is not a preset; choose one of {sorted(SIZES)}.")
  channels, multipliers, res_blocks, attention, groups = SIZES[size]
  return ml_collections.ConfigDict(dict(
      name="vqgan", channels=channels, channel_multipliers=multipliers, num_res_blocks=res_blocks,
      use_attention=attention, num_groups=groups, dropout=0.0, quantizer=quantizer or quantizers.vq()))
