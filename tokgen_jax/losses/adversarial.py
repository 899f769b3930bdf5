"""GAN losses on discriminator logits: hinge, non-saturating, LeCAM regularization and the R1 penalty.

Every function takes raw logits of any shape (our discriminators give one logit per sample, `[B]`), computes in
float32 and returns a scalar. What the reference trainers use (NUMERICS.md, "MAGVIT-v2 tokenizer and GAN
training"):

- Open-MAGVIT2 (ImageNet 256): the generator gets the non-saturating loss on spatially averaged logits (with
  one logit per sample the averaging is already done), weight 0.1; the discriminator gets half the hinge sum
  below (weight 0.5 on `hinge_discriminator_loss`) + LeCAM with weight 0.05 and EMA decay 0.999.
- google-research/magvit: LeCAM as below and an R1 penalty with weight 10.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """`mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))` (Lim & Ye 2017, Geometric GAN).

  Taming-derived code (VQGAN and its descendants) returns half this sum: a discriminator weight copied from
  such a config matches this function at half its value.
  """
  return jnp.mean(jax.nn.relu(1.0 - _f32(real_logits))) + jnp.mean(jax.nn.relu(1.0 + _f32(fake_logits)))


def hinge_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """`-mean(D(G(z)))`: the generator side of the hinge game, unbounded below by design."""
  return -jnp.mean(_f32(fake_logits))


def non_saturating_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """`mean(softplus(-D(G(z)))) = -mean(log σ(D(G(z))))` (Goodfellow et al. 2014, the non-saturating variant).

  Its gradient stays large exactly when the discriminator confidently rejects the fakes, unlike `log(1 - σ)`.
  """
  return jnp.mean(jax.nn.softplus(-_f32(fake_logits)))


def non_saturating_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """`mean(softplus(-D(x))) + mean(softplus(D(G(z))))`: binary cross-entropy with real = 1, fake = 0."""
  return jnp.mean(jax.nn.softplus(-_f32(real_logits))) + jnp.mean(jax.nn.softplus(_f32(fake_logits)))


def lecam_regularization(real_logits: jax.Array, fake_logits: jax.Array, ema_real: jax.Array,
                         ema_fake: jax.Array) -> jax.Array:
  """LeCAM regularizer `mean(relu(D(x) - α_F)²) + mean(relu(α_R - D(G(z)))²)`, added to the discriminator loss.

  Tseng et al. 2021 (eq. 3) write `E‖D(x) - α_F‖² + E‖D(G(z)) - α_R‖²` with α_R, α_F the EMAs of the real and
  fake logits; their released code and google-research/magvit penalize only the one-sided excess (a real
  logit above the fake anchor, a fake logit below the real anchor), which is the form computed here. The
  anchors are constants: no gradient flows into them.
  """
  ema_real = jax.lax.stop_gradient(_f32(ema_real))
  ema_fake = jax.lax.stop_gradient(_f32(ema_fake))
  return (jnp.mean(jnp.square(jax.nn.relu(_f32(real_logits) - ema_fake)))
          + jnp.mean(jnp.square(jax.nn.relu(ema_real - _f32(fake_logits)))))


def update_lecam_ema(ema: jax.Array, value: jax.Array, decay: float = 0.999) -> jax.Array:
  """`decay·ema + (1 - decay)·mean(value)`: one step of the LeCAM anchor EMA over a batch of logits.

  The reference code starts both anchors at 0. `value` is treated as a constant, so the update may sit inside
  a differentiated loss function.
  """
  if isinstance(decay, (int, float)) and not 0.0 <= decay < 1.0:
    raise ConfigError(f"update_lecam_ema: decay={decay} must lie in [0, 1) (the LeCAM paper and magvit use 0.999); "
                      "set the LeCAM EMA decay to a value in that range")
  mean = jnp.mean(jax.lax.stop_gradient(_f32(value)))
  return decay * _f32(ema) + (1.0 - decay) * mean


def r1_penalty(discriminator_fn: Callable[[jax.Array], jax.Array], real: jax.Array) -> jax.Array:
  """`mean_b ‖∇_x D(x_b)‖²`, the squared norm summed over every pixel and channel of a sample (Mescheder et al.
  2018, eq. 9 without its γ/2 factor: the caller's R1 weight, 10 in magvit, multiplies this value).

  One `jax.grad` of the summed logits gives every sample's gradient at once; that is exact only because a
  sample's logits depend on that sample alone (no batch statistics in the discriminator). To train through
  the penalty, close `discriminator_fn` over the parameters and differentiate this function with respect to them.
  """
  real = _f32(real)
  grads = jax.grad(lambda x: jnp.sum(_f32(discriminator_fn(x))))(real)
  per_sample = jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=1)
  return jnp.mean(per_sample)
