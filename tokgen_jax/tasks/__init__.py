"""Tasks turn a config into model constructor arguments and pure train/eval functions."""

from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from tokgen_jax import generators, losses, quantizers, tokenizers
from tokgen_jax.data import VIDEO_SOURCE_KINDS
from tokgen_jax.data import tokens as token_data
from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks.adversarial import AdversarialTraining
from tokgen_jax.tasks.autoencoder import AutoencoderTask
from tokgen_jax.tasks.base import Task, TrainState
from tokgen_jax.tasks.generator import GeneratorTask
from tokgen_jax.tasks.evaluation import ReconstructionEvaluator, feature_networks, reference_statistics
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer

DISCRIMINATORS = {"stylegan2d": losses.StyleGANDiscriminator2D, "stylegan3d": losses.StyleGANDiscriminator3D}


def _model_kwargs(model_config: Any) -> dict[str, Any]:
  kwargs = model_config.to_dict()
  kwargs.pop("name")
  quantizer_kwargs = kwargs.pop("quantizer")
  kwargs["quantizer"] = quantizers.build(quantizer_kwargs.pop("name"), **quantizer_kwargs)
  return kwargs


def _require(value: Any, key: str, minimum: int, meaning: str) -> None:
  """ConfigError unless `value` >= `minimum`: a zero or negative size otherwise fails deep inside Flax or XLA with
  a shape error that names neither the key nor the fix."""
  if value < minimum:
    raise ConfigError(f"config.{key}={value} must be at least {minimum} ({meaning}); set config.{key} to "
                      f"{minimum} or more.")


# Positive-size fields of tokenizer and quantizer configs (those that have them): (name, minimum, meaning).
_MODEL_SIZES = (("channels", 1, "base channel width"), ("num_groups", 1, "GroupNorm groups"),
                ("num_res_blocks", 0, "residual blocks per level"), ("out_channels", 1, "decoded channels"))
_QUANTIZER_SIZES = (("codebook_size", 2, "codes per codebook"), ("dim", 1, "latent channels"),
                    ("bits", 1, "bits per token"))


def _check_model_sizes(model_config: Any) -> None:
  for name, minimum, meaning in _MODEL_SIZES:
    if name in model_config:
      _require(model_config[name], f"model.{name}", minimum, meaning)
  multipliers = tuple(model_config.get("channel_multipliers", (1,)))
  if not multipliers or min(multipliers) < 1:
    raise ConfigError(f"config.model.channel_multipliers={multipliers} must list at least one positive multiplier "
                      "(one per resolution level), e.g. (1, 2, 4).")
  for name, minimum, meaning in _QUANTIZER_SIZES:
    if name in model_config.quantizer:
      _require(model_config.quantizer[name], f"model.quantizer.{name}", minimum, meaning)


def build_tokenizer(model_config: Any):
  if model_config.name not in tokenizers.REGISTRY:
    raise ConfigError(f"config.model.name={model_config.name!r} is not a known tokenizer; "
                      f"choose one of {sorted(tokenizers.REGISTRY)}.")
  _check_model_sizes(model_config)
  return tokenizers.REGISTRY[model_config.name](**_model_kwargs(model_config))


def _check_image_size(config: Any, model: Any) -> None:
  factor = model.downsample_factor
  _require(config.data.resize, "data.resize", 0, "shorter side to resize to; 0 keeps the native size")
  for key in ("image_size", "eval_image_size"):
    size = config.data[key]
    _require(size, f"data.{key}", 1, "pixels per side of a crop or eval tile")
    if size % factor:
      raise ConfigError(
          f"config.data.{key}={size} is not divisible by the model's downsampling factor {factor} "
          f"(2 ** (len(config.model.channel_multipliers) - 1)); set config.data.{key} to a multiple of {factor}, "
          f"e.g. {max(factor, size // factor * factor)}.")


def input_shape(data_config: Any) -> tuple[int, ...]:
  """One training example's shape: `(T, S, S, 3)` for video sources, `(S, S, 3)` for image sources."""
  size = data_config.image_size
  if str(data_config.source) in VIDEO_SOURCE_KINDS:
    return (int(data_config.num_frames), size, size, 3)
  return (size, size, 3)


def _build_adversarial(config: Any) -> AdversarialTraining | None:
  gan = config.adversarial
  if not gan.enabled:
    return None
  kwargs = gan.discriminator.to_dict()
  name = kwargs.pop("name")
  if name not in DISCRIMINATORS:
    raise ConfigError(f"config.adversarial.discriminator.name={name!r} is not known; choose one of "
                      f"{sorted(DISCRIMINATORS)}.")
  return AdversarialTraining(
      discriminator=DISCRIMINATORS[name](**kwargs),
      optimizer=make_optimizer(gan.optimizer, config.total_steps),
      learning_rate=learning_rate_schedule(gan.optimizer, config.total_steps),
      start_step=gan.start_step, generator_weight=gan.generator_weight,
      discriminator_weight=gan.discriminator_weight, generator_loss=gan.generator_loss,
      discriminator_loss=gan.discriminator_loss, lecam_weight=gan.lecam_weight, lecam_decay=gan.lecam_decay,
      r1_weight=gan.r1_weight)


def _build_perceptual(loss_config: Any) -> dict[str, Any]:
  """LPIPS module and weights, or nothing (with one log line saying why) when no weights file is configured."""
  weight, path = loss_config.perceptual_weight, loss_config.lpips_weights
  if not weight:
    return {}
  if not path:
    logging.warning("LPIPS perceptual loss is off although config.loss.perceptual_weight=%g: "
                    "config.loss.lpips_weights is empty and no weights can be downloaded. Convert them once with "
                    "`python -m tokgen_jax.convert.lpips` (see its docstring) and pass the .safetensors path.",
                    weight)
    return {}
  from tokgen_jax.convert import lpips as lpips_convert  # pylint: disable=g-import-not-at-top  (torch-free)
  from tokgen_jax.losses import perceptual  # pylint: disable=g-import-not-at-top
  return dict(perceptual=perceptual.LPIPS(), perceptual_weight=weight,
              perceptual_params=lpips_convert.load_lpips(path))


def _protocol_uses_ema(config: Any) -> bool:
  return bool(config.eval.protocol.use_ema)


def _build_autoencoder(config: Any) -> AutoencoderTask:
  model = build_tokenizer(config.model)
  _check_image_size(config, model)
  return AutoencoderTask(
      model=model,
      optimizer=make_optimizer(config.optimizer, config.total_steps),
      learning_rate=learning_rate_schedule(config.optimizer, config.total_steps),
      input_shape=input_shape(config.data),
      l1_weight=config.loss.l1_weight, l2_weight=config.loss.l2_weight,
      ema_decay=config.optimizer.ema_decay, eval_ema=_protocol_uses_ema(config),
      adversarial=_build_adversarial(config),
      **_build_perceptual(config.loss))


def tokenizer_token_shape(tokenizer_config: Any) -> tuple[tuple[int, ...], int, int]:
  """`(token_shape, grid_ndim, codebook_size)` of one example of the tokenizer experiment `tokenizer_config`:
  the grid `(h, w)` or `(t, h, w)` (its rank is `grid_ndim`), plus a trailing levels dim for multi-codebook
  quantizers; from an abstract (free) forward."""
  model = build_tokenizer(tokenizer_config.model)
  example = jnp.zeros((1,) + input_shape(tokenizer_config.data), jnp.float32)
  rng = jax.random.PRNGKey(0)
  rngs = {"params": rng, "dropout": rng, "noise": rng}
  indices = jax.eval_shape(lambda x: model.init_with_output(rngs, x, method="tokenize")[0], example)
  codebook_size = int(getattr(model.quantizer, "codebook_size", 0))
  if not codebook_size:
    raise ConfigError(f"config.tokenizer: the tokenizer's quantizer {tokenizer_config.model.quantizer.name!r} is "
                      f"continuous; an AR generator needs discrete tokens (vq, lfq, fsq, rvq).")
  return tuple(indices.shape[1:]), example.ndim - 2, codebook_size


def _build_generator(config: Any) -> GeneratorTask:
  token_shape, grid_ndim, codebook_size = tokenizer_token_shape(config.tokenizer.experiment)
  kwargs = config.model.to_dict()
  if kwargs.pop("name") != "ar":
    raise ConfigError(f"config.model.name={config.model.name!r}: the generator task trains 'ar' models.")
  kwargs["dtype"] = jnp.dtype(kwargs.pop("dtype"))
  grid, levels = token_shape[:grid_ndim], (token_shape[grid_ndim] if len(token_shape) > grid_ndim else 1)
  model = generators.ARTransformer(vocab_sizes=(codebook_size,) * levels, layer_grids=(tuple(grid),) * levels,
                                   **kwargs)
  model.validate()
  if str(config.data.source) == "tokens" and str(config.data.path):  # tokens already written must fit the model
    for split in (config.data.train_split, config.data.eval_split):
      token_data.check_split_fits(str(config.data.path), str(split), token_shape=token_shape,
                                  codebook_size=codebook_size)
  return GeneratorTask(model=model, optimizer=make_optimizer(config.optimizer, config.total_steps),
                       learning_rate=learning_rate_schedule(config.optimizer, config.total_steps),
                       token_shape=token_shape, layer_weights=tuple(config.loss.layer_weights),
                       ema_decay=config.optimizer.ema_decay, eval_ema=_protocol_uses_ema(config))


BUILDERS = {"autoencoder": _build_autoencoder, "generator": _build_generator}


def build(config: Any) -> Task:
  if config.task not in BUILDERS:
    raise ConfigError(f"config.task={config.task!r} is not a known task; choose one of {sorted(BUILDERS)}.")
  _require(config.batch_size, "batch_size", 1, "global training batch")
  _require(config.eval.batch_size, "eval.batch_size", 1, "global eval batch")
  return BUILDERS[config.task](config)


__all__ = ["Task", "TrainState", "AutoencoderTask", "GeneratorTask", "tokenizer_token_shape", "AdversarialTraining", "build", "build_tokenizer",
           "input_shape", "ReconstructionEvaluator",
           "feature_networks", "reference_statistics"]
