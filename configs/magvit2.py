"""MAGVIT-v2 model presets by size (Yu et al. 2024, §3.2 and Appendix; widths as in Open-MAGVIT2's video model)."""

import ml_collections

from tokgen_jax.configs import quantizers
from tokgen_jax.errors import ConfigError

SIZES = {
    # name: (channels, channel_multipliers, num_res_blocks, temporal_downsample, num_groups)
    "local": (16, (1, 2, 2), 1, (False, True), 8),         # f = 4, s_t = 2: fits a 2-core CPU
    "S": (64, (1, 2, 2, 4), 2, (False, True, True), 32),   # f = 8, s_t = 4
    # 17x128x128 → 5x16x16 tokens; the source gives no widths. Two readings of seed 004, both f = 8, s_t = 4, 64
    # base channels with multipliers (1, 2, 2, 4) (Open-MAGVIT2's video model):
    # "paper": the final model of its architecture ablations, which end with "deeper: residual blocks 2x → 4x",
    #   so 4 blocks per level: 92.7M parameters with the 2^18 LFQ.
    "paper": (64, (1, 2, 2, 4), 4, (False, True, True), 32),
    # "paper_58m": the "MAGViTv2 58M" row of its joint image-video tokenization table: 2 blocks per level give
    #   56.4M parameters, the nearest to 58M of these widths.
    "paper_58m": (64, (1, 2, 2, 4), 2, (False, True, True), 32),
}
# The ablation list (seed 004) ends with the final model's "3D blur pooling for shift invariance": on for both
# paper readings; off for the CPU sizes, whose experiment figures were measured without it.
BLUR_POOL = {"local": False, "S": False, "paper": True, "paper_58m": True}


def magvit2(size: str = "local", quantizer: ml_collections.ConfigDict | None = None,
            **overrides) -> ml_collections.ConfigDict:
  """Every field `tokenizers.MagvitV2` takes; the quantizer defaults to LFQ with a 2^18 vocabulary (the paper's).

  `adaptive_norm` "style" is the paper's StyleGAN-like decoder normalization in Open-MAGVIT2's form (see
  `tokenizers/magvit2.py`); "spatial" is the SPADE-like alternative."""
  if size not in SIZES:
    raise ConfigError(f"MAGVIT-v2 size {size!r} is not a preset; choose one of {sorted(SIZES)}.")
  channels, multipliers, res_blocks, temporal, groups = SIZES[size]
  config = ml_collections.ConfigDict(dict(
      name="magvit2", channels=channels, channel_multipliers=multipliers, num_res_blocks=res_blocks,
      temporal_downsample=temporal, num_groups=groups, blur_pool=BLUR_POOL[size], temporal_padding="replicate",
      out_channels=3, upsample_kernel_size=(3, 3, 3), adaptive_norm="style",
      quantizer=quantizer or quantizers.lfq(bits=18)))
  config.update(overrides)
  return config


def factorized(size: str = "local", factorization: str = "four_plane", time_split: int = 1, pooling: str = "mean",
               quantizer: ml_collections.ConfigDict | None = None, **overrides) -> ml_collections.ConfigDict:
  """`magvit2(size)` with its latent volume factorized into planes (`tokenizers/factorized.py`): 'four_plane'
  (seed 000) or 'tri_plane'; `time_split` latent frames in the first spatial plane (1: the causal first frame
  alone); `pooling` 'mean' (the seed's), 'linear' or 'attention'. The quantizer defaults to W.A.L.T.'s 8-channel
  KL bottleneck."""
  config = magvit2(size, quantizer=quantizer or quantizers.kl(dim=8), **overrides)
  config.name = "factorized_magvit2"
  config.factorization, config.time_split, config.pooling = factorization, time_split, pooling
  return config
