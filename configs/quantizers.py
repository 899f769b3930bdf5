"""Quantizer presets, one per registry name; `by_name(name)` gives the default of each."""

import ml_collections

from tokgen_jax.errors import ConfigError


def vq(codebook_size: int = 1024, dim: int = 8, commitment_weight: float = 0.25, l2_normalize: bool = True,
       ema_decay: float = 0.0, restart_after_steps: int = 20, lookup_dim: int = 0,
       kmeans_init_iterations: int = 0, entropy_weight: float = 0.0, entropy_temperature: float = 0.01,
       restart_below_usage: float = 0.0, usage_decay: float = 0.99,
       linear_codebook: bool = False) -> ml_collections.ConfigDict:
  """VQ; l2-normalized low-dimensional codes as in ViT-VQGAN/LlamaGen keep usage high, and a code idle for
  `restart_after_steps` steps restarts from a batch vector (on by default: on the quickstart it lifted held-out
  usage from 0.19 to 0.75). Measured there and off by default: an EMA codebook (0.99) and the k-means
  initialisation lowered PSNR; MaskGIT's `entropy_weight` raises usage further (0.81 at 0.01) but costs PSNR at
  its ImageNet weight 0.1 (see the quickstart docstring). `restart_below_usage` (off) also restarts codes whose
  EMA share of assignments falls below that fraction of 1/K; on the quickstart 0.1 never fired and 0.3 moved the
  held-out figures within seed noise. `linear_codebook` (off) is SimVQ's `C·W` codebook; on the quickstart it
  lowered PSNR (22.75 dB) at the same usage (0.77 / 212)."""
  return ml_collections.ConfigDict(dict(
      name="vq", codebook_size=codebook_size, dim=dim, commitment_weight=commitment_weight,
      l2_normalize=l2_normalize, ema_decay=ema_decay, restart_after_steps=restart_after_steps,
      lookup_dim=lookup_dim, kmeans_init_iterations=kmeans_init_iterations, entropy_weight=entropy_weight,
      entropy_temperature=entropy_temperature, restart_below_usage=restart_below_usage, usage_decay=usage_decay,
      linear_codebook=linear_codebook))


def lfq(bits: int = 10, entropy_weight: float = 0.1, commitment_weight: float = 0.25,
        inv_temperature: float = 100.0, group_size: int = 9, entropy_anneal_steps: int = 0,
        entropy_weight_start: float = 0.3, codebook_entropy_weight: float = 1.0) -> ml_collections.ConfigDict:
  """MAGVIT-v2 lookup-free quantization: vocabulary 2^bits (2^18 in the paper), entropy weight 0.1 and commitment
  0.25 (a MAGVIT-v2 author, for 2^10 to 2^40). With `entropy_anneal_steps` > 0 the entropy weight goes linearly
  from `entropy_weight_start` to `entropy_weight` over that many steps (the author recommends annealing for large
  vocabularies; the start of 3x the final weight is our choice, the seed gives no schedule); 0 keeps it fixed."""
  return ml_collections.ConfigDict(dict(
      name="lfq", bits=bits, entropy_weight=entropy_weight, commitment_weight=commitment_weight,
      inv_temperature=inv_temperature, group_size=group_size, entropy_anneal_steps=entropy_anneal_steps,
      entropy_weight_start=entropy_weight_start, codebook_entropy_weight=codebook_entropy_weight))


def fsq(levels: tuple[int, ...] = (8, 5, 5, 5)) -> ml_collections.ConfigDict:
  """Finite scalar quantization; (8, 5, 5, 5) has 1000 codes."""
  return ml_collections.ConfigDict(dict(name="fsq", levels=levels))


def rvq(depth: int = 4, codebook_size: int = 1024, dim: int = 8, shared_codebook: bool = False,
        l2_normalize: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name="rvq", depth=depth, codebook_size=codebook_size, dim=dim,
                                        shared_codebook=shared_codebook, l2_normalize=l2_normalize))


def msrq(codebook_size: int = 4096, dim: int = 32,
         scales: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
         resize: str = "exact", restart_after_steps: int = 0, restart_below_usage: float = 0.0,
         kmeans_init_iterations: int = 0, standardize_scales: bool = False,
         standardize_decay: float = 0.99, codebook_per_scale: bool = False) -> ml_collections.ConfigDict:
  """VAR multi-scale residual quantization; the last scale must equal the latent grid size. `resize="torch"`
  resamples exactly as VAR's PyTorch code (for imported weights); "exact" is exact area averaging. The code-keeping
  options (off: VAR's quantizer has none) restart idle or rarely used codes from the step's residual vectors of
  all scales and start the codebook by k-means on them (`VectorQuantizer`). `standardize_scales` (ours, off in
  VAR) looks each scale up standardized by its running mean and spread, and `codebook_per_scale` (ours; VAR shares
  one codebook) gives each scale its own codes (`MultiScaleResidualQuantizer`)."""
  return ml_collections.ConfigDict(dict(name="msrq", codebook_size=codebook_size, dim=dim, scales=scales,
                                        resize=resize, restart_after_steps=restart_after_steps,
                                        restart_below_usage=restart_below_usage,
                                        kmeans_init_iterations=kmeans_init_iterations,
                                        standardize_scales=standardize_scales,
                                        standardize_decay=standardize_decay,
                                        codebook_per_scale=codebook_per_scale))


def kl(dim: int = 8, kl_weight: float = 1e-6) -> ml_collections.ConfigDict:
  """Continuous KL bottleneck for latent diffusion: 8 channels as in W.A.L.T., LDM's KL weight 1e-6."""
  return ml_collections.ConfigDict(dict(name="kl", dim=dim, kl_weight=kl_weight))


PRESETS = {"vq": vq, "lfq": lfq, "fsq": fsq, "rvq": rvq, "msrq": msrq, "kl": kl}


def by_name(name: str) -> ml_collections.ConfigDict:
  if name not in PRESETS:
    raise ConfigError(f"quantizer preset {name!r} is not known; choose one of {sorted(PRESETS)}.")
  return PRESETS[name]()
