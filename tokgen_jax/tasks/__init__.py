"""Tasks turn a config into model constructor arguments and pure train/eval functions."""

from typing import Any

from tokgen_jax import quantizers, tokenizers
from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks.autoencoder import AutoencoderTask
from tokgen_jax.tasks.base import Task, TrainState
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer


def _model_kwargs(model_config: Any) -> dict[str, Any]:
  kwargs = model_config.to_dict()
  kwargs.pop("name")
  quantizer_kwargs = kwargs.pop("quantizer")
  kwargs["quantizer"] = quantizers.build(quantizer_kwargs.pop("name"), **quantizer_kwargs)
  return kwargs


def build_tokenizer(model_config: Any):
  if model_config.name not in tokenizers.REGISTRY:
    raise ConfigError(f"config.model.name={model_config.name!r} is not a known tokenizer; "
                      f"choose one of {sorted(tokenizers.REGISTRY)}.")
  return tokenizers.REGISTRY[model_config.name](**_model_kwargs(model_config))


def _check_image_size(config: Any, model: Any) -> None:
  factor = model.downsample_factor
  for key in ("image_size", "eval_image_size"):
    size = config.data[key]
    if size % factor:
      raise ConfigError(
          f"config.data.{key}={size} is not divisible by the model's downsampling factor {factor} "
          f"(2 ** (len(config.model.channel_multipliers) - 1)); set config.data.{key} to a multiple of {factor}, "
          f"e.g. {max(factor, size // factor * factor)}.")


def _build_autoencoder(config: Any) -> AutoencoderTask:
  model = build_tokenizer(config.model)
  _check_image_size(config, model)
  return AutoencoderTask(
      model=model,
      optimizer=make_optimizer(config.optimizer, config.total_steps),
      learning_rate=learning_rate_schedule(config.optimizer, config.total_steps),
      l1_weight=config.loss.l1_weight, l2_weight=config.loss.l2_weight,
      ema_decay=config.optimizer.ema_decay)


BUILDERS = {"autoencoder": _build_autoencoder}


def build(config: Any) -> Task:
  if config.task not in BUILDERS:
    raise ConfigError(f"config.task={config.task!r} is not a known task; choose one of {sorted(BUILDERS)}.")
  return BUILDERS[config.task](config)


__all__ = ["Task", "TrainState", "AutoencoderTask", "build", "build_tokenizer"]
