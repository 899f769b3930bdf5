"""Autoencoder task: train a tokenizer to reconstruct images or videos through its bottleneck.

Generator objective = L1/L2 reconstruction + `perceptual_weight`·LPIPS (when weights are given) + the
quantizer's own loss + the adversarial term of `AdversarialTraining` (when a discriminator is configured).

State layout, keyed by parameter group: params/opt_state {'autoencoder', 'discriminator'}; ema_params
{'autoencoder'} (the generator's EMA only); model_state {'autoencoder': the model's non-trainable collections,
'discriminator': LeCAM anchors, 'perceptual': the frozen LPIPS weights}. Everything a step reads is in the
checkpointed state, so a resumed run is bit-identical.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tokgen_jax.losses import reconstruction_loss
from tokgen_jax.metrics import ms_ssim, psnr, ssim
from tokgen_jax.quantizers import bits_per_pixel, tokens_per_image
from tokgen_jax.tasks import adversarial as adversarial_lib
from tokgen_jax.tasks.base import TrainState, evaluation_params
from tokgen_jax.tasks.optimizers import ema_update

GROUP = "autoencoder"
PERCEPTUAL = "perceptual"
MS_SSIM_MIN_SIZE = 176  # five scales: the coarsest (1/16) must still hold the 11-tap window


@dataclasses.dataclass(frozen=True)
class AutoencoderTask:
  """`input_shape` is one example without batch: `(H, W, 3)` for images, `(T, H, W, 3)` for videos."""

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

  def _generator_loss(self, params: Any, state: TrainState, x: jax.Array, rng: jax.Array):
    dropout_rng, noise_rng = jax.random.split(rng)
    collections = state.model_state[GROUP]
    (reconstruction, aux), new_collections = self.model.apply(
        {"params": params, **collections}, x, train=True, rngs={"dropout": dropout_rng, "noise": noise_rng},
        mutable=list(collections))
    quantized = aux["quantizer"]
    rec_loss = reconstruction_loss(reconstruction, x, self.l1_weight, self.l2_weight)
    perceptual = self._perceptual_loss(state, reconstruction, x)
    adversarial = (self.adversarial.generator_term(state.params[adversarial_lib.GROUP], reconstruction, state.step)
                   if self.adversarial is not None else jnp.zeros((), jnp.float32))
    loss = rec_loss + perceptual + quantized.loss + adversarial
    metrics = {"loss": loss, "reconstruction_loss": rec_loss, "quantizer_loss": quantized.loss, **quantized.metrics}
    if self.perceptual_params is not None:
      metrics["perceptual_loss"] = perceptual
    if self.adversarial is not None:
      metrics["generator_adversarial_loss"] = adversarial
    return loss, (metrics, dict(new_collections), reconstruction)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(state.rng, state.step)
    x = batch[self.input_key]
    grads, (metrics, collections, reconstruction) = jax.grad(self._generator_loss, has_aux=True)(
        state.params[GROUP], state, x, rng)
    updates, group_opt_state = self.optimizer.update(grads, state.opt_state[GROUP], state.params[GROUP])
    params = dict(state.params, **{GROUP: optax.apply_updates(state.params[GROUP], updates)})
    opt_state = dict(state.opt_state, **{GROUP: group_opt_state})
    model_state = dict(state.model_state, **{GROUP: collections})
    metrics |= {"grad_norm": optax.global_norm(grads), "update_norm": optax.global_norm(updates),
                "param_norm": optax.global_norm(params[GROUP]), "lr": self.learning_rate(state.step)}
    if self.adversarial is not None:
      group = adversarial_lib.GROUP
      params[group], opt_state[group], model_state[group], disc_metrics = self.adversarial.update(
          state.params[group], state.opt_state[group], state.model_state[group], x, reconstruction, state.step)
      metrics |= disc_metrics
    ema_params = ({GROUP: ema_update(state.ema_params[GROUP], params[GROUP], self.ema_decay)}
                  if self.ema_decay else {})
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

  def tokenize(self, state: TrainState, x: jax.Array) -> jax.Array:
    """Token ids of inputs `[B, *input_shape]`: `[B, *grid]`, plus a levels dim for multi-codebook quantizers."""
    variables = {"params": self.eval_params(state), **state.model_state[GROUP]}
    return self.model.apply(variables, x, method="tokenize")

  def detokenize(self, state: TrainState, indices: jax.Array) -> jax.Array:
    """Pixels in [-1, 1] decoded from token ids (the inverse of `tokenize` up to reconstruction error)."""
    variables = {"params": self.eval_params(state), **state.model_state[GROUP]}
    return jnp.clip(self.model.apply(variables, indices, method="detokenize"), -1.0, 1.0)

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
    return outputs

  def _flat_tokens(self, indices: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    grid_ndim = len(self.latent_grid(tuple(batch_shape[1:])))
    has_levels = indices.ndim > 1 + grid_ndim
    return indices.reshape((indices.shape[0], -1) + ((indices.shape[-1],) if has_levels else ()))

  @property
  def codebook_size(self) -> int:
    """Entries per codebook (level), 0 for a continuous bottleneck."""
    return int(getattr(self.model.quantizer, "codebook_size", 0))

  def latent_grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The token grid of one example of `input_shape` (`[..., H, W, C]`, with T first for videos)."""
    height, width = input_shape[-3:-1]
    factor = self.model.downsample_factor
    grid = (height // factor, width // factor)
    if len(input_shape) == 4 and input_shape[-4] > 0 and hasattr(self.model, "temporal_downsample_factor"):
      grid = (1 + (input_shape[-4] - 1) // self.model.temporal_downsample_factor,) + grid
    return grid

  def bits_per_pixel(self, batch_shape: tuple[int, ...]) -> float:
    """Bits per pixel of the token representation of one example of `batch_shape` ([B, (T,) H, W, C])."""
    example_shape = tuple(batch_shape[1:])
    quantizer = self.model.quantizer
    tokens = tokens_per_image(quantizer, self.latent_grid(example_shape))
    return bits_per_pixel(tokens, quantizer.bits_per_token, math.prod(example_shape[:-1]))
