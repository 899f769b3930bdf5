"""The discriminator side of tokenizer training: its parameters, optimizer, losses and LeCAM anchors.

`AutoencoderTask` owns one of these when the config has a discriminator. One train step then does:

  generator loss  = reconstruction + perceptual + quantizer + `generator_weight`·G(D(x̂))       (x̂ = decoder output)
  discriminator   = `discriminator_weight`·D_loss(D(x), D(sg(x̂))) + `lecam_weight`·LeCAM + `r1_weight`·R1

and updates both parameter groups with their own optimizers. With `start_step` > 0 the autoencoder task has two
phases (`tasks.base.Phase`): before `start_step` the discriminator never runs (no forward or backward pass), its
parameters, optimizer state and LeCAM anchors stay exactly as initialized, and its metrics read 0
(`idle_metrics`); from `start_step` on both terms are live. Each phase compiles once.

Defaults follow Open-MAGVIT2's ImageNet recipe (NUMERICS.md), term by term:
- generator: non-saturating loss on the discriminator's logits, fixed weight 0.1 (`generator_weight`).
- discriminator: `D_loss` is the hinge sum `E relu(1 - D(x)) + E relu(1 + D(x̂))` (Lim & Ye 2017), and
  `discriminator_weight` = 0.5 reproduces Open-MAGVIT2's `disc_factor · hinge_d_loss` with `disc_factor` = 1 and
  its `hinge_d_loss` = `0.5·(E relu(1 - D(x)) + E relu(1 + D(x̂)))` (taming-transformers' form).
- LeCAM weight 0.05 with EMA decay 0.999 (Open-MAGVIT2; LeCAM's anchors as in google-research/magvit). The anchors
  are updated with the current batch's logits before the regularizer reads them, as in the LeCAM authors' code.
- Open-MAGVIT2's `disc_weight` = 0.8 is not a discriminator weight: it multiplies taming's adaptive generator
  weight (the ratio of reconstruction to adversarial gradient norms at the last decoder layer). That adaptive
  weight is not built here, so the generator's weight is the fixed 0.1 and 0.8 has no counterpart.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tokgen_jax import losses
from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks.base import apply_gradients
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer

GROUP = "discriminator"
GENERATOR_LOSSES = {"non_saturating": losses.non_saturating_generator_loss, "hinge": losses.hinge_generator_loss}
DISCRIMINATOR_LOSSES = {"hinge": losses.hinge_discriminator_loss,
                        "non_saturating": losses.non_saturating_discriminator_loss}
DISCRIMINATORS = {"stylegan2d": losses.StyleGANDiscriminator2D, "stylegan3d": losses.StyleGANDiscriminator3D}


def _check_choice(value: str, choices: dict, key: str) -> None:
  if value not in choices:
    raise ConfigError(f"config.adversarial.{key}={value!r} is not known; choose one of {sorted(choices)}.")


@dataclasses.dataclass(frozen=True)
class AdversarialTraining:
  discriminator: nn.Module
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  start_step: int = 0
  generator_weight: float = 0.1
  discriminator_weight: float = 0.5
  generator_loss: str = "non_saturating"
  discriminator_loss: str = "hinge"
  lecam_weight: float = 0.05
  lecam_decay: float = 0.999
  r1_weight: float = 0.0

  def __post_init__(self):
    _check_choice(self.generator_loss, GENERATOR_LOSSES, "generator_loss")
    _check_choice(self.discriminator_loss, DISCRIMINATOR_LOSSES, "discriminator_loss")

  def init(self, rng: jax.Array, example: jax.Array) -> tuple[Any, Any, dict[str, jax.Array]]:
    """Parameters, optimizer state and the LeCAM anchors (both start at 0, as in the reference code)."""
    params = self.discriminator.init(rng, example)["params"]
    anchors = {"lecam_real": jnp.zeros((), jnp.float32), "lecam_fake": jnp.zeros((), jnp.float32)}
    return params, self.optimizer.init(params), anchors

  def _logits(self, params: Any, x: jax.Array) -> jax.Array:
    return self.discriminator.apply({"params": params}, x)

  def generator_term(self, params: Any, fake: jax.Array) -> jax.Array:
    """`generator_weight·G(D(x̂))`, differentiable in `fake`."""
    return self.generator_weight * GENERATOR_LOSSES[self.generator_loss](self._logits(params, fake))

  def _loss(self, params: Any, anchors: dict, real: jax.Array, fake: jax.Array):
    real_logits, fake_logits = self._logits(params, real), self._logits(params, fake)
    adversarial = DISCRIMINATOR_LOSSES[self.discriminator_loss](real_logits, fake_logits)
    anchors = {"lecam_real": losses.update_lecam_ema(anchors["lecam_real"], real_logits, self.lecam_decay),
               "lecam_fake": losses.update_lecam_ema(anchors["lecam_fake"], fake_logits, self.lecam_decay)}
    lecam = losses.lecam_regularization(real_logits, fake_logits, anchors["lecam_real"], anchors["lecam_fake"])
    r1 = (losses.r1_penalty(lambda x: self._logits(params, x), real) if self.r1_weight
          else jnp.zeros((), jnp.float32))
    total = self.discriminator_weight * adversarial + self.lecam_weight * lecam + self.r1_weight * r1
    metrics = {"discriminator_loss": total, "discriminator_adversarial_loss": adversarial, "lecam_loss": lecam,
               "r1_penalty": r1, "logits_real": jnp.mean(real_logits), "logits_fake": jnp.mean(fake_logits),
               "lecam_ema_real": anchors["lecam_real"], "lecam_ema_fake": anchors["lecam_fake"]}
    return total, (metrics, anchors)

  def _update(self, params, opt_state, anchors, real, fake):
    grads, (metrics, anchors) = jax.grad(self._loss, has_aux=True)(params, anchors, real, fake)
    update = apply_gradients(self.optimizer, params, opt_state, grads, prefix="discriminator_")
    return update.params, update.opt_state, anchors, metrics | update.metrics

  def update(self, params: Any, opt_state: Any, anchors: dict, real: jax.Array, fake: jax.Array,
             step: jax.Array) -> tuple[Any, Any, dict, dict[str, jax.Array]]:
    """One discriminator optimizer step on `real` and the (gradient-stopped) `fake`."""
    new_params, new_opt_state, new_anchors, metrics = self._update(params, opt_state, anchors, real,
                                                                   jax.lax.stop_gradient(fake))
    return new_params, new_opt_state, new_anchors, metrics | {"discriminator_lr": self.learning_rate(step)}

  def idle_metrics(self, params: Any, opt_state: Any, anchors: dict, real: jax.Array,
                   step: jax.Array) -> dict[str, jax.Array]:
    """The metrics of `update` as zeros (the learning rate as scheduled), for steps before `start_step`: traced
    abstractly, so the discriminator does not run."""
    shapes = jax.eval_shape(self._update, params, opt_state, anchors, real, real)[3]
    return {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()} | {
        "discriminator_lr": self.learning_rate(step)}


def build(config: Any) -> AdversarialTraining | None:
  """`config.adversarial` as an `AdversarialTraining`, or None when it is disabled."""
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
