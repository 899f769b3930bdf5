"""Autoencoder task: train a tokenizer to reconstruct images or videos through its bottleneck.

Generator objective = L1/L2 reconstruction + `perceptual_weight`·LPIPS (when weights are given) + the
quantizer's own loss + the adversarial term of `AdversarialTraining` (when a discriminator is configured).

State layout, keyed by parameter group: params/opt_state {'autoencoder', 'discriminator'}; ema_params
{'autoencoder'} (the generator's EMA only); model_state {'autoencoder': the model's non-trainable collections,
'discriminator': LeCAM anchors, 'perceptual': the frozen LPIPS weights}. Everything a step reads is in the
checkpointed state, so a resumed run is bit-identical.
"""

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from absl import logging

from tokgen_jax import data, quantizers, tokenizers
from tokgen_jax.data import files, grids
from tokgen_jax.errors import ConfigError
from tokgen_jax.losses import reconstruction_loss
from tokgen_jax.metrics import ms_ssim, psnr, ssim
from tokgen_jax.quantizers import MultiScaleResidualQuantizer, bits_per_pixel
from tokgen_jax.tasks import adversarial as adversarial_lib
from tokgen_jax.tasks import evaluation
from tokgen_jax.tasks.base import Phase, RunContext, Task, TrainState, apply_gradients, evaluation_params
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer

GROUP = "autoencoder"
PERCEPTUAL = "perceptual"
MS_SSIM_MIN_SIZE = 176  # five scales: the coarsest (1/16) must still hold the 11-tap window


@dataclasses.dataclass(frozen=True)
class AutoencoderTask(Task):
  """`input_shape` is one example without batch: `(H, W, 3)` for images, `(T, H, W, 3)` for videos.
  `feature_networks` loads (once) the networks of the feature metrics (`evaluation.feature_networks`)."""

  model: nn.Module
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  input_shape: tuple[int, ...]
  l1_weight: float = 1.0
  l2_weight: float = 0.0
  ema_decay: float = 0.0
  eval_ema: bool = True  # eval and sampling read the EMA weights (when kept): the protocol's use_ema
  adversarial: adversarial_lib.AdversarialTraining | None = None
  perceptual: nn.Module | None = None
  perceptual_weight: float = 0.0
  perceptual_params: Any = dataclasses.field(default=None, hash=False, compare=False)
  feature_networks: Callable[[], dict[str, Any]] = dataclasses.field(default=dict, hash=False, compare=False)

  @property
  def input_key(self) -> str:
    return "video" if len(self.input_shape) == 4 else "image"

  def example_batch(self) -> dict[str, jax.Array]:
    return {self.input_key: jnp.zeros((1,) + tuple(self.input_shape), jnp.float32)}

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    model_rng, disc_rng, state_rng = jax.random.split(rng, 3)
    x = batch[self.input_key]
    variables = self.model.init({"params": model_rng, "dropout": model_rng, "noise": model_rng}, x, train=False)
    params = {GROUP: variables.pop("params")}
    opt_state = {GROUP: self.optimizer.init(params[GROUP])}
    model_state = {GROUP: dict(variables)}
    if self.adversarial is not None:
      group = adversarial_lib.GROUP
      params[group], opt_state[group], model_state[group] = self.adversarial.init(disc_rng, x)
    if self.perceptual_params is not None:
      model_state[PERCEPTUAL] = jax.tree.map(jnp.asarray, self.perceptual_params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      ema_params={GROUP: params[GROUP]} if self.ema_decay else {}, model_state=model_state,
                      rng=state_rng)

  def _perceptual_loss(self, state: TrainState, reconstruction: jax.Array, x: jax.Array) -> jax.Array:
    if self.perceptual_params is None or not self.perceptual_weight:
      return jnp.zeros((), jnp.float32)
    distances = self.perceptual.apply({"params": state.model_state[PERCEPTUAL]}, reconstruction, x)
    return self.perceptual_weight * jnp.mean(distances)

  def _generator_loss(self, params: Any, state: TrainState, x: jax.Array, rng: jax.Array,
                      adversarial_on: bool = False):
    dropout_rng, noise_rng = jax.random.split(rng)
    collections = state.model_state[GROUP]
    (reconstruction, aux), new_collections = self.model.apply(
        {"params": params, **collections}, x, train=True, rngs={"dropout": dropout_rng, "noise": noise_rng},
        mutable=list(collections))
    quantized = aux["quantizer"]
    rec_loss = reconstruction_loss(reconstruction, x, self.l1_weight, self.l2_weight)
    perceptual = self._perceptual_loss(state, reconstruction, x)
    adversarial = (self.adversarial.generator_term(state.params[adversarial_lib.GROUP], reconstruction)
                   if adversarial_on else jnp.zeros((), jnp.float32))
    loss = rec_loss + perceptual + quantized.loss + adversarial
    metrics = {"loss": loss, "reconstruction_loss": rec_loss, "quantizer_loss": quantized.loss, **quantized.metrics}
    if self.perceptual_params is not None:
      metrics["perceptual_loss"] = perceptual
    if adversarial_on:
      metrics["generator_adversarial_loss"] = adversarial
    return loss, (metrics, dict(new_collections), reconstruction)

  def phases(self) -> tuple[Phase, ...]:
    """'reconstruction' (no discriminator), then 'adversarial' from the discriminator's `start_step`."""
    if self.adversarial is None:
      return (Phase("reconstruction", 0),)
    if self.adversarial.start_step <= 0:
      return (Phase("adversarial", 0),)
    return (Phase("reconstruction", 0), Phase("adversarial", self.adversarial.start_step))

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 phase: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of `phase` (default: the phase of step 0, see `phases`)."""
    rng = jax.random.fold_in(state.rng, state.step)
    x = batch[self.input_key]
    adversarial_on = (phase or self.phases()[0].name) == "adversarial"
    if adversarial_on and self.adversarial is None:
      raise ConfigError("AutoencoderTask: phase 'adversarial' needs a discriminator (config.adversarial.enabled).")
    grads, (metrics, collections, reconstruction) = jax.grad(self._generator_loss, has_aux=True)(
        state.params[GROUP], state, x, rng, adversarial_on)
    update = apply_gradients(self.optimizer, state.params[GROUP], state.opt_state[GROUP], grads,
                             state.ema_params.get(GROUP), self.ema_decay)
    params = dict(state.params, **{GROUP: update.params})
    opt_state = dict(state.opt_state, **{GROUP: update.opt_state})
    model_state = dict(state.model_state, **{GROUP: collections})
    metrics |= update.metrics | {"lr": self.learning_rate(state.step)}
    if self.adversarial is not None:
      group = adversarial_lib.GROUP
      disc = (state.params[group], state.opt_state[group], state.model_state[group], x)
      if adversarial_on:
        params[group], opt_state[group], model_state[group], disc_metrics = self.adversarial.update(
            *disc, reconstruction, state.step)
      else:
        disc_metrics = self.adversarial.idle_metrics(*disc, state.step)
        metrics["generator_adversarial_loss"] = jnp.zeros((), jnp.float32)
      metrics |= disc_metrics
    ema_params = {GROUP: update.ema_params} if self.ema_decay else {}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params,
                              model_state=model_state)
    return new_state, metrics

  def eval_params(self, state: TrainState) -> Any:
    """The EMA weights when they exist and `eval_ema`, else the live ones."""
    return evaluation_params(state, GROUP, self.eval_ema)

  def _reconstruct_and_tokens(self, state: TrainState, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    variables = {"params": self.eval_params(state), **state.model_state[GROUP]}
    reconstruction, aux = self.model.apply(variables, x)
    # Evaluate what a viewer would see: decoders overshoot [-1, 1].
    return jnp.clip(reconstruction, -1.0, 1.0), aux["quantizer"].indices

  def encode(self, state: TrainState, x: jax.Array) -> dict[str, jax.Array]:
    """The named latents of inputs `[B, *input_shape]` (`tokenizers/base.py`: `tokens` or `latents`)."""
    variables = {"params": self.eval_params(state), **state.model_state[GROUP]}
    return self.model.apply(variables, x, method="encode")

  def decode(self, state: TrainState, latents: dict[str, jax.Array]) -> jax.Array:
    """Pixels in [-1, 1] decoded from named latents (the inverse of `encode` up to reconstruction error)."""
    variables = {"params": self.eval_params(state), **state.model_state[GROUP]}
    return jnp.clip(self.model.apply(variables, latents, method="decode"), -1.0, 1.0)

  def reconstruct(self, state: TrainState, x: jax.Array) -> jax.Array:
    return self._reconstruct_and_tokens(state, x)[0]

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-example metrics and the reconstruction and token ids of every example (`tokens` `[B, N]`, or
    `[B, N, L]` for L codebook levels). Videos are scored per frame and averaged over frames. MS-SSIM needs
    frames of at least `MS_SSIM_MIN_SIZE` pixels and is left out for smaller ones."""
    x = batch[self.input_key]
    reconstruction, indices = self._reconstruct_and_tokens(state, x)
    # SSIM is not shift-invariant in intensity: report it on [0, 1] images, as papers do.
    to_unit = lambda v: (v + 1.0) / 2.0
    outputs = {"reconstruction": reconstruction, "psnr": psnr(reconstruction, x, data_range=2.0),
               "ssim": ssim(to_unit(reconstruction), to_unit(x), data_range=1.0),
               "bpp": jnp.full(x.shape[:1], self.bits_per_pixel(x.shape)),
               "tokens": self._flat_tokens(indices, x.shape)}
    if min(x.shape[-3:-1]) >= MS_SSIM_MIN_SIZE:
      outputs["ms_ssim"] = ms_ssim(to_unit(reconstruction), to_unit(x), data_range=1.0)
    return outputs | self._prefix_psnrs(state, indices, x)

  def _prefix_psnrs(self, state: TrainState, indices: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
    """A multi-scale tokenizer's `psnr_prefix_k`: PSNR of the decode of its scales 0..k alone (k < S - 1; the
    full decode is `psnr`), how much each coarser prefix already reconstructs."""
    quantizer = self.model.quantizer
    if not isinstance(quantizer, MultiScaleResidualQuantizer):
      return {}
    variables = {"params": self.eval_params(state), **state.model_state[GROUP]}
    bounds = np.cumsum(quantizer.scale_lengths)
    outputs = {}
    for k, end in enumerate(bounds[:-1]):
      prefix = jnp.clip(self.model.apply(variables, quantizer.named_indices(indices[:, :end]), method="decode"),
                        -1.0, 1.0)
      outputs[f"psnr_prefix_{k}"] = psnr(prefix, x, data_range=2.0)
    return outputs

  def _flat_tokens(self, indices: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    grid_ndim = len(self.model.latent_grid(tuple(batch_shape[1:])))
    has_levels = indices.ndim > 1 + grid_ndim
    return indices.reshape((indices.shape[0], -1) + ((indices.shape[-1],) if has_levels else ()))

  @property
  def codebook_size(self) -> int:
    """Entries per codebook (level), 0 for a continuous bottleneck."""
    return int(self.model.quantizer.codebook_size)

  def bits_per_pixel(self, batch_shape: tuple[int, ...]) -> float:
    """Bits per pixel of the token representation of one example of `batch_shape` ([B, (T,) H, W, C])."""
    example_shape = tuple(batch_shape[1:])
    quantizer = self.model.quantizer
    tokens = self.model.num_latent_positions(example_shape)
    return bits_per_pixel(tokens, quantizer.bits_per_token, math.prod(example_shape[:-1]))

  # ------------------------------------------------------------------------------------------- protocol

  def evaluator(self, run: RunContext, state: TrainState) -> "ReconstructionPass":
    del state
    eval_config = run.config.eval
    quantizer = self.model.quantizer
    scale_lengths = quantizer.scale_lengths if isinstance(quantizer, MultiScaleResidualQuantizer) else ()
    return ReconstructionPass(self.input_key, evaluation.ReconstructionEvaluator(self.feature_networks(),
                                                                              self.codebook_size, scale_lengths),
                              int(eval_config.num_grid_images), float(run.config.data.get("fps", 8)))

  def modes(self) -> dict[str, Callable[[RunContext], dict[str, Any]]]:
    return {"sample": self.reconstruct_files, "stats": self.compute_statistics}

  def describe(self) -> dict[str, Any]:
    """Per example: the input, the named latents (`encode`, abstract) with their vocabulary, the latent grid, the
    latent positions (tokens; a factorized tokenizer's planes), factors, bits per token and bits per pixel."""
    specs = self.model.latent_specs(tuple(self.input_shape))
    factors = self.model.factors
    return {"input": {"shape": list(self.input_shape), "dtype": "float32"},
            "latents": {name: spec.as_dict() for name, spec in specs.items()},
            "latent_grid": list(self.model.latent_grid(tuple(self.input_shape))),
            "latent_positions": self.model.num_latent_positions(tuple(self.input_shape)),
            "factors": {"temporal": factors.temporal, "spatial": factors.spatial},
            "codebook_size": self.codebook_size, "bits_per_token": float(self.model.quantizer.bits_per_token),
            "bits_per_pixel": self.bits_per_pixel((1,) + tuple(self.input_shape))}

  def reconstruct_files(self, run: RunContext) -> dict[str, Any]:
    """--mode=sample: every file in config.sample.inputs reconstructed into workdir/samples/recon_<name>.png
    (.mp4/.gif for videos), with its PSNR."""
    paths = [p.strip() for p in run.config.sample.inputs.split(",") if p.strip()]
    if not paths:
      raise ConfigError("config.sample.inputs is empty: --mode=sample reconstructs given images or videos; pass "
                        "--config.sample.inputs=a.png,b.mp4.")
    state, step = run.restore()
    reconstruct = jax.jit(self.reconstruct)
    fps = float(run.config.data.get("fps", 8))
    written = {}
    for path in paths:
      pixels = self.load_sample_input(run.config.data, path)
      with run.context():
        recon = np.asarray(run.gather(reconstruct(state, run.replicate(pixels))))
      stem = f"recon_{files.as_path(path).stem}"
      out = run.workdir / "samples" / (f"{stem}.mp4" if pixels.ndim == 5 else f"{stem}.png")
      if run.is_chief:
        grids.save_examples(out.parent, stem, [pixels, recon], max_rows=1, fps=fps)
        mse = float(np.mean((recon - pixels) ** 2))
        print(f"sample {path} → {out} (step {step}, psnr {10 * np.log10(4.0 / max(mse, 1e-12)):.2f} dB)", flush=True)
      written[path] = str(out)
    return written

  def load_sample_input(self, data_config: Any, path: str) -> np.ndarray:
    """One file as a model input `[1, (T,) H, W, 3]` in [-1, 1], center-cropped to multiples of the downsampling
    factor: a video keeps the longest valid frame count (1 + k·s_t for a temporally downsampling tokenizer) of at
    most config.data.num_frames frames."""
    if self.input_key == "video":
      frames = data.load_video_file(path, fps=float(data_config.fps))[:int(data_config.num_frames)]
      stride = self.temporal_factor
      frames = frames[:1 + (len(frames) - 1) // stride * stride]
    else:
      frames = data.load_image_file(path)
    frames = _center_crop_to_multiple(frames, self.model.factors.spatial)
    return (frames.astype(np.float32) / 127.5 - 1.0)[None]

  @property
  def temporal_factor(self) -> int:
    """Frames per latent frame after the first (1 for image tokenizers)."""
    return self.model.factors.temporal

  def compute_statistics(self, run: RunContext) -> dict[str, Any]:
    """--mode=stats: reference feature statistics of the eval split, saved as .npz (`mu`, `sigma`, `count`, and
    the first 10,000 `features` for precision/recall)."""
    config = run.config
    batches = ((host[self.input_key], mask) for _, host, mask in run.eval_batches())
    statistics = evaluation.reference_statistics(self.feature_networks(), self.input_key == "video", batches)
    path = files.as_path(config.eval.reference_statistics or
                         run.workdir / "stats" / f"{config.data.source}_{config.data.eval_split}.npz")
    if run.is_chief:
      statistics.save(path)
      print(f"stats: {statistics.count} examples, {statistics.dim}-d features → {path}", flush=True)
    return {"path": str(path), "count": statistics.count}


def _center_crop_to_multiple(frames: np.ndarray, factor: int) -> np.ndarray:
  """Center-crop the last-but-one two axes (H, W) of an image `[H, W, C]` or video `[T, H, W, C]` to multiples."""
  height, width = (frames.shape[-3] // factor) * factor, (frames.shape[-2] // factor) * factor
  top, left = (frames.shape[-3] - height) // 2, (frames.shape[-2] - width) // 2
  return frames[..., top:top + height, left:left + width, :]


class ReconstructionPass:
  """The autoencoder's `Evaluator`: per-example metrics, codebook usage and feature metrics over the split
  (`evaluation.ReconstructionEvaluator`), and the first batch's originals | reconstructions as a grid."""

  def __init__(self, input_key: str, metrics: evaluation.ReconstructionEvaluator, num_grid_images: int, fps: float):
    self._input_key, self._metrics = input_key, metrics
    self._num_grid_images, self._fps = num_grid_images, fps
    self._examples: list[np.ndarray] | None = None

  def update(self, outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray], mask: np.ndarray) -> None:
    originals = batch[self._input_key]
    self._metrics.update(outputs, originals, mask)
    if self._examples is None:
      self._examples = [originals[mask], outputs["reconstruction"][mask]]

  def results(self) -> dict[str, float]:
    return self._metrics.results()

  def write_samples(self, directory: epath.Path, step: int) -> None:
    if self._examples is not None:
      grids.save_examples(directory, f"eval_step_{step}", self._examples, self._num_grid_images, fps=self._fps)


# ------------------------------------------------------------------------------------------------------ build


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


def build_tokenizer(model_config: Any) -> tokenizers.Tokenizer:
  """The tokenizer module `config.model` describes (`tokenizers.REGISTRY`), its quantizer built from its preset."""
  if model_config.name not in tokenizers.REGISTRY:
    raise ConfigError(f"config.model.name={model_config.name!r} is not a known tokenizer; "
                      f"choose one of {sorted(tokenizers.REGISTRY)}.")
  _check_model_sizes(model_config)
  kwargs = model_config.to_dict()
  kwargs.pop("name")
  quantizer_kwargs = kwargs.pop("quantizer")
  kwargs["quantizer"] = quantizers.build(quantizer_kwargs.pop("name"), **quantizer_kwargs)
  return tokenizers.REGISTRY[model_config.name](**kwargs)


def _check_image_size(config: Any, model: nn.Module) -> None:
  factor = model.factors.spatial
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
  if str(data_config.source) in data.VIDEO_SOURCE_KINDS:
    return (int(data_config.num_frames), size, size, 3)
  return (size, size, 3)


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


def build(config: Any) -> AutoencoderTask:
  """`config.task='autoencoder'`: a tokenizer trained to reconstruct `config.data` (a GAN when configured)."""
  model = build_tokenizer(config.model)
  _check_image_size(config, model)
  shape = input_shape(config.data)
  networks = functools.cache(lambda: evaluation.feature_networks(config.eval, is_video=len(shape) == 4))
  return AutoencoderTask(
      model=model,
      optimizer=make_optimizer(config.optimizer, config.total_steps),
      learning_rate=learning_rate_schedule(config.optimizer, config.total_steps),
      input_shape=shape, l1_weight=config.loss.l1_weight, l2_weight=config.loss.l2_weight,
      ema_decay=config.optimizer.ema_decay, eval_ema=bool(config.eval.protocol.use_ema),
      adversarial=adversarial_lib.build(config), feature_networks=networks,
      **_build_perceptual(config.loss))
