"""MAGVIT-v2 model presets by size (Yu et al. 2024, §3.2 and Appendix; widths as in Open-MAGVIT2's video model)."""

import ml_collections

from tokgen_jax.configs import quantizers
from tokgen_jax.errors import ConfigError

SIZES = {
    # name: (channels, channel_multipliers, num_res_blocks, temporal_downsample, num_groups)
    "local": (16, (1, 2, 2), 1, (False, True), 8),         # f = 4, s_t = 2: fits a 2-core CPU
    "S": (64, (1, 2, 2, 4), 2, (False, True, True), 32),   # f = 8, s_t = 4
    # 17x128x128 → 5x16x16 tokens. The source gives no widths; 4 residual blocks per level is its "deeper: 2x → 4x"
    # ablation, and 64 base channels put the model (93M parameters) nearest the 58M its comparison table lists.
    "paper": (64, (1, 2, 2, 4), 4, (False, True, True), 32),
}


def magvit2(size: str = "local", quantizer: ml_collections.ConfigDict | None = None,
            **overrides) -> ml_collections.ConfigDict:
  """Every field `tokenizers.MagvitV2` takes; the quantizer defaults to LFQ with a 2^18 vocabulary (the paper's)."""
  if size not in SIZES:
    raise ConfigError(f"MAGVIT-v2 size {size!r} is not a preset; choose one of {sorted(SIZES)}.")
  channels, multipliers, res_blocks, temporal, groups = SIZES[size]
  config = ml_collections.ConfigDict(dict(
      name="magvit2", channels=channels, channel_multipliers=multipliers, num_res_blocks=res_blocks,
      temporal_downsample=temporal, num_groups=groups, blur_pool=False, temporal_padding="replicate",
      out_channels=3, upsample_kernel_size=(3, 3, 3), quantizer=quantizer or quantizers.lfq(bits=18)))
  config.update(overrides)
  return config
