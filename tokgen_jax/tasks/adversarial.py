"""The discriminator side of tokenizer training: its parameters, optimizer, losses and LeCAM anchors.

`AutoencoderTask` owns one of these when the config has a discriminator. One train step then does:

  generator loss  = reconstruction + perceptual + quantizer + `generator_weight`·G(D(x̂))       (x̂ = decoder output)
  discriminator   = `discriminator_weight`·D_loss(D(x), D(sg(x̂))) + `lecam_weight`·LeCAM + `r1_weight`·R1

and updates both parameter groups with their own optimizers. Before `start_step` both adversarial terms are
masked to zero with `jnp.where` and the discriminator, its optimizer state and the LeCAM anchors are kept exactly
as initialized. The discriminator's forward and backward passes still run before `start_step`, and their results
are discarded: one compiled step serves the whole run.

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

GROUP = "discriminator"
GENERATOR_LOSSES = {"non_saturating": losses.non_saturating_generator_loss, "hinge": losses.hinge_generator_loss}
DISCRIMINATOR_LOSSES = {"hinge": losses.hinge_discriminator_loss,
                        "non_saturating": losses.non_saturating_discriminator_loss}


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

  def active(self, step: jax.Array) -> jax.Array:
    return step >= self.start_step

  def _logits(self, params: Any, x: jax.Array) -> jax.Array:
    return self.discriminator.apply({"params": params}, x)

  def generator_term(self, params: Any, fake: jax.Array, step: jax.Array) -> jax.Array:
    """`generator_weight·G(D(x̂))` once the discriminator has started, else 0; differentiable in `fake`."""
    generator_loss = GENERATOR_LOSSES[self.generator_loss]
    term = self.generator_weight * generator_loss(self._logits(params, fake))
    return jnp.where(self.active(step), term, jnp.zeros_like(term))

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
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    metrics |= {"discriminator_grad_norm": optax.global_norm(grads)}
    return optax.apply_updates(params, updates), opt_state, anchors, metrics

  def update(self, params: Any, opt_state: Any, anchors: dict, real: jax.Array, fake: jax.Array,
             step: jax.Array) -> tuple[Any, Any, dict, dict[str, jax.Array]]:
    """One discriminator optimizer step on `real` and the (gradient-stopped) `fake`, skipped before start_step."""
    new_params, new_opt_state, new_anchors, metrics = self._update(params, opt_state, anchors, real,
                                                                   jax.lax.stop_gradient(fake))
    active = self.active(step)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
    metrics = jax.tree.map(lambda m: jnp.where(active, m, jnp.zeros_like(m)), metrics)
    return (keep(new_params, params), keep(new_opt_state, opt_state), keep(new_anchors, anchors),
            metrics | {"discriminator_lr": self.learning_rate(step)})
