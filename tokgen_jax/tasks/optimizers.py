"""optax optimizers from `config.optimizer`."""

from typing import Any

import jax
import optax

from tokgen_jax.errors import ConfigError


def learning_rate_schedule(optimizer_config: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to `end_learning_rate_factor`·peak at total_steps."""
  peak = optimizer_config.learning_rate
  warmup = min(optimizer_config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
      end_value=peak * optimizer_config.end_learning_rate_factor)


def _decay_mask(params: Any) -> Any:
  """Weight decay on kernels and embeddings only, not on biases and norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(optimizer_config: Any, total_steps: int) -> optax.GradientTransformation:
  if optimizer_config.name != "adamw":
    raise ConfigError(f"config.optimizer.name={optimizer_config.name!r} is not supported; use 'adamw'.")
  return optax.chain(
      optax.clip_by_global_norm(optimizer_config.grad_clip_norm),
      optax.adamw(learning_rate_schedule(optimizer_config, total_steps), b1=optimizer_config.b1,
                  b2=optimizer_config.b2, weight_decay=optimizer_config.weight_decay, mask=_decay_mask),
  )
