"""Optimizer presets (optax AdamW with linear warmup and cosine decay)."""

import ml_collections


def adamw(learning_rate: float = 1e-4, warmup_steps: int = 1000, weight_decay: float = 1e-4,
          b1: float = 0.9, b2: float = 0.99, grad_clip_norm: float = 1.0, ema_decay: float = 0.0,
          end_learning_rate_factor: float = 0.1) -> ml_collections.ConfigDict:
  """`ema_decay=0` disables the EMA copy of the parameters; durations are steps."""
  return ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=learning_rate, warmup_steps=warmup_steps, weight_decay=weight_decay,
      b1=b1, b2=b2, grad_clip_norm=grad_clip_norm, ema_decay=ema_decay,
      end_learning_rate_factor=end_learning_rate_factor))
