"""The train state and the Task interface that the one training loop drives."""

from typing import Any, Protocol

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes, as one pytree (checkpointed whole).

  params and opt_state are keyed by parameter group ('autoencoder'; a GAN adds 'discriminator' with its own
  optimizer). ema_params holds EMA copies of the groups that keep one (empty when EMA is off); model_state holds
  non-trainable state by group (quantizer statistics, LeCAM anchors, frozen perceptual weights).
  Per-step randomness is `fold_in(rng, step)`, so a resumed run draws the same numbers.
  """

  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  ema_params: dict[str, Any]
  model_state: dict[str, Any]
  rng: jax.Array


def evaluation_params(state: TrainState, group: str, use_ema: bool = True) -> Any:
  """The weights of `group` that eval and sampling use: its EMA copy when `use_ema` and training kept one."""
  if use_ema and group in state.ema_params:
    return state.ema_params[group]
  return state.params[group]


class Task(Protocol):
  """Pure functions over a TrainState; the trainer jits and shards them."""

  def example_batch(self) -> dict[str, jax.Array]:
    """A one-example batch of the task's input shapes (zeros), for abstract and real initialization."""

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """A fresh state; parameters may be `nn.Partitioned` boxes carrying logical axis names."""

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step; returns the new state and scalar metrics."""

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-example outputs and metrics (leading dimension = batch)."""
