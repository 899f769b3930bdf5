"""Tasks turn a config into a model and the pure train/eval functions of the `Task` protocol (`tasks.base`).

`REGISTRY` maps `config.task` to the `build(config)` of each task's own file; a new task family adds one line here
(or calls `register` from its own code).
"""

from typing import Any, Callable

from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks import autoencoder, diffusion, generator, masked, var
from tokgen_jax.tasks.adversarial import AdversarialTraining
from tokgen_jax.tasks.autoencoder import AutoencoderTask, build_tokenizer, input_shape
from tokgen_jax.tasks.base import Evaluator, Phase, RunContext, Task, TrainState, active_phase, phase_step
from tokgen_jax.tasks.evaluation import ReconstructionEvaluator, feature_networks, reference_statistics
from tokgen_jax.tasks.diffusion import DiffusionTask
from tokgen_jax.tasks.generator import GeneratorTask, tokenizer_token_shape
from tokgen_jax.tasks.masked import MaskedTask
from tokgen_jax.tasks.var import NextScaleTask

REGISTRY: dict[str, Callable[[Any], Task]] = {"autoencoder": autoencoder.build, "generator": generator.build,
                                             "diffusion": diffusion.build, "masked": masked.build,
                                             "var": var.build}


def register(name: str, build_fn: Callable[[Any], Task]) -> None:
  """Make `config.task=name` build with `build_fn(config)`."""
  if name in REGISTRY and REGISTRY[name] is not build_fn:
    raise ValueError(f"task {name!r} is already registered.")
  REGISTRY[name] = build_fn


def _require_batch(value: int, key: str, meaning: str) -> None:
  if value < 1:
    raise ConfigError(f"config.{key}={value} must be at least 1 ({meaning}); set config.{key} to 1 or more.")


def build(config: Any) -> Task:
  if config.task not in REGISTRY:
    raise ConfigError(f"config.task={config.task!r} is not a known task; choose one of {sorted(REGISTRY)}.")
  _require_batch(config.batch_size, "batch_size", "global training batch")
  _require_batch(config.eval.batch_size, "eval.batch_size", "global eval batch")
  return REGISTRY[config.task](config)


__all__ = ["Task", "TrainState", "Phase", "Evaluator", "RunContext", "active_phase", "phase_step", "REGISTRY",
           "register", "build", "AutoencoderTask", "GeneratorTask", "DiffusionTask", "MaskedTask", "NextScaleTask", "AdversarialTraining", "build_tokenizer",
           "input_shape", "tokenizer_token_shape", "ReconstructionEvaluator", "feature_networks",
           "reference_statistics"]
