"""A trained tokenizer held fixed under a second stage: its task and restored state, with jitted encode/decode.

A generator loads it through the run (`RunContext.load_experiment(config.tokenizer.experiment, workdir)`), encodes
its share of a dataset with it once (`--mode=encode`, each process its own rows) and decodes its samples with it.
Latents are the tokenizer's named arrays (`tokenizers/base.py`): `{"tokens": ...}` or `{"latents": ...}`.
"""

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks.autoencoder import AutoencoderTask
from tokgen_jax.tasks.base import RunContext


@dataclasses.dataclass(frozen=True)
class FrozenTokenizer:
  task: AutoencoderTask
  state: Any
  step: int
  run: RunContext

  @functools.cached_property
  def _decode(self):
    return jax.jit(self.task.decode)

  def encode(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Named latents of this process's `pixels` (every process calls it together, each with its own rows)."""
    return self.run.map_local(self.task.encode, self.state, pixels)

  def latent_specs(self) -> dict[str, Any]:
    return self.task.model.latent_specs(tuple(self.task.input_shape))

  def decode(self, latents: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(self._decode(self.state, latents))


def load(run: RunContext, tokenizer_config: Any) -> FrozenTokenizer:
  """`config.tokenizer` (experiment, workdir, checkpoint_step) restored on the run's mesh."""
  try:
    task, state, step = run.load_experiment(tokenizer_config.experiment, tokenizer_config.workdir,
                                            int(tokenizer_config.checkpoint_step))
  except ConfigError as error:
    raise ConfigError(f"config.tokenizer.workdir={tokenizer_config.workdir!r}: {error} The generator needs a "
                      f"trained tokenizer there (train it with its experiment, e.g. the ':tokenizer' variant).") from error
  return FrozenTokenizer(task, state, step, run)
