"""Autoencoder task: train a tokenizer to reconstruct its input through a quantized bottleneck.

Loss = reconstruction (L1/L2) + the quantizer's own loss. Parameters live in the group 'autoencoder'; the state
layout (groups, EMA, model_state) leaves room for a discriminator group with its own optimizer.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tokgen_jax.losses import reconstruction_loss
from tokgen_jax.metrics import psnr, ssim
from tokgen_jax.quantizers import bits_per_pixel, tokens_per_image
from tokgen_jax.tasks.base import TrainState
from tokgen_jax.tasks.optimizers import ema_update

GROUP = "autoencoder"


@dataclasses.dataclass(frozen=True)
class AutoencoderTask:
  model: nn.Module
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  l1_weight: float = 1.0
  l2_weight: float = 0.0
  ema_decay: float = 0.0

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = self.model.init({"params": init_rng, "dropout": init_rng}, batch["image"], train=False)
    params = {GROUP: variables.pop("params")}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={GROUP: self.optimizer.init(params[GROUP])},
        ema_params=params if self.ema_decay else {},
        model_state=dict(variables),
        rng=state_rng,
    )

  def _loss(self, params: Any, model_state: dict, images: jax.Array, rng: jax.Array):
    (reconstruction, aux), new_model_state = self.model.apply(
        {"params": params, **model_state}, images, train=True, rngs={"dropout": rng},
        mutable=list(model_state))
    quantized = aux["quantizer"]
    rec_loss = reconstruction_loss(reconstruction, images, self.l1_weight, self.l2_weight)
    loss = rec_loss + quantized.loss
    metrics = {"loss": loss, "reconstruction_loss": rec_loss, "quantizer_loss": quantized.loss,
               **quantized.metrics}
    return loss, (metrics, new_model_state)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.grad(self._loss, has_aux=True)
    grads, (metrics, model_state) = grad_fn(state.params[GROUP], state.model_state, batch["image"], rng)
    updates, opt_state = self.optimizer.update(grads, state.opt_state[GROUP], state.params[GROUP])
    params = {GROUP: optax.apply_updates(state.params[GROUP], updates)}
    ema_params = ema_update(state.ema_params, params, self.ema_decay) if self.ema_decay else {}
    metrics |= {"grad_norm": optax.global_norm(grads), "update_norm": optax.global_norm(updates),
                "param_norm": optax.global_norm(params), "lr": self.learning_rate(state.step)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state={GROUP: opt_state},
                              ema_params=ema_params, model_state=model_state)
    return new_state, metrics

  def eval_params(self, state: TrainState) -> Any:
    """The EMA weights when they exist, else the live ones."""
    return (state.ema_params or state.params)[GROUP]

  def reconstruct(self, state: TrainState, images: jax.Array) -> jax.Array:
    reconstruction, _ = self.model.apply({"params": self.eval_params(state), **state.model_state}, images)
    return jnp.clip(reconstruction, -1.0, 1.0)  # evaluate what a viewer would see

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    images = batch["image"]
    reconstruction = self.reconstruct(state, images)
    # SSIM is not shift-invariant in intensity: report it on [0, 1] images, as papers do.
    to_unit = lambda x: (x + 1.0) / 2.0
    return {"reconstruction": reconstruction, "psnr": psnr(reconstruction, images, data_range=2.0),
            "ssim": ssim(to_unit(reconstruction), to_unit(images), data_range=1.0),
            "bpp": jnp.full(images.shape[:1], self.bits_per_pixel(images.shape))}

  def bits_per_pixel(self, image_shape: tuple[int, ...]) -> float:
    """Bits per pixel of the token representation of one image of `image_shape` ([B, H, W, C])."""
    height, width = image_shape[-3:-1]
    factor = self.model.downsample_factor
    quantizer = self.model.quantizer
    tokens = tokens_per_image(quantizer, (height // factor, width // factor))
    return bits_per_pixel(tokens, quantizer.bits_per_token, height * width)
