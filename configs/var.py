"""VAR presets (`config.model` and `config.optimizer` of the var task; Tian et al. 2024, `FoundationVision/VAR`).

VAR's sizes follow one rule: depth d gives width 64·d, d heads, MLP ratio 4 and drop-path 0.1·d/24 (d16 310M,
d20 600M, d24 1.0B, d30 2.0B parameters at V = 4096, 680 tokens). "local" is this project's CPU size. `sampling`
is `configs/ar.py`'s: both samplers take the same settings.
"""

import ml_collections

from tokgen_jax.configs import optimizer
from tokgen_jax.configs.ar import sampling  # noqa: F401  (re-exported: the var task samples with these settings)
from tokgen_jax.errors import ConfigError

PAPER_DEPTHS = (16, 20, 24, 30)
LOCAL = dict(embed_dim=128, num_layers=4, num_heads=4, drop_path_rate=0.0)


def size(depth: int | str) -> dict:
  """Width, depth, heads and drop-path rate of `depth` (an int, VAR's rule) or "local"."""
  if depth == "local":
    return dict(LOCAL)
  if not isinstance(depth, int) or depth < 1:
    raise ConfigError(f"VAR depth {depth!r} must be a positive int (VAR trains 16, 20, 24, 30) or 'local'.")
  return dict(embed_dim=64 * depth, num_layers=depth, num_heads=depth, drop_path_rate=0.1 * depth / 24)


def var(depth: int | str = 16, num_classes: int = 1000, **overrides) -> ml_collections.ConfigDict:
  """A `VARTransformer` config (scales, codebook and channels come from the tokenizer). Class dropout 0.1 and
  normalized attention are VAR's defaults; `dtype` 'bfloat16' computes in bf16 with float32 parameters."""
  config = ml_collections.ConfigDict(dict(
      name="var", **size(depth), mlp_ratio=4.0, conditioning="class", num_classes=num_classes, cond_dropout_rate=0.1,
      normalized_attention=True, attention_implementation="xla", remat_policy="none", dtype="float32"))
  config.update(overrides)
  return config


def var_optimizer(batch_size: int, warmup_steps: int = 1000, **overrides) -> ml_collections.ConfigDict:
  """VAR's AdamW: lr 1e-4·batch/256, β (0.9, 0.95), weight decay 0.05, gradient clipping at 2."""
  config = optimizer.adamw(learning_rate=1e-4 * batch_size / 256, warmup_steps=warmup_steps, weight_decay=0.05,
                           b1=0.9, b2=0.95, grad_clip_norm=2.0)
  config.update(overrides)
  return config
