"""GAN losses against hand computation on small arrays."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.losses.adversarial import (hinge_discriminator_loss, hinge_generator_loss, lecam_regularization,
                                           non_saturating_discriminator_loss, non_saturating_generator_loss,
                                           r1_penalty, update_lecam_ema)


def test_hinge_losses_closed_form():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 0.5])
  # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 1.5].
  np.testing.assert_allclose(hinge_discriminator_loss(real, fake), 2.5 / 3 + 2.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(hinge_generator_loss(fake), 0.5, rtol=1e-6)
  # A discriminator past both margins has zero loss and zero gradient.
  loss, grads = jax.value_and_grad(hinge_discriminator_loss, argnums=(0, 1))(jnp.array([1.5]), jnp.array([-3.0]))
  assert float(loss) == 0.0 and float(grads[0][0]) == 0.0 and float(grads[1][0]) == 0.0


def test_non_saturating_losses_closed_form():
  # softplus(-0) = log 2, softplus(-log 3) = log(4/3).
  fake = jnp.array([0.0, math.log(3.0)])
  np.testing.assert_allclose(non_saturating_generator_loss(fake), (math.log(2.0) + math.log(4.0 / 3.0)) / 2, rtol=1e-6)
  np.testing.assert_allclose(non_saturating_discriminator_loss(jnp.array([math.log(3.0)]), jnp.array([0.0])),
                             math.log(4.0 / 3.0) + math.log(2.0), rtol=1e-6)
  # Non-saturating: d/df softplus(-f) = -sigmoid(-f) → -1 as the fake is rejected harder, unlike log(1 - σ(f)).
  grad = jax.grad(non_saturating_generator_loss)(jnp.array([-20.0]))
  np.testing.assert_allclose(grad, [-1.0], rtol=1e-6)


def test_losses_compute_in_float32():
  fake = jnp.array([0.3, -0.7], jnp.bfloat16)
  for loss in (hinge_generator_loss(fake), non_saturating_generator_loss(fake), hinge_discriminator_loss(fake, fake)):
    assert loss.dtype == jnp.float32


def test_lecam_closed_form_and_constant_anchors():
  real = jnp.array([1.0, -1.0])
  fake = jnp.array([0.0, 2.0])
  # relu(real - (-0.5)) = [1.5, 0] → 2.25 / 2; relu(0.5 - fake) = [0.5, 0] → 0.25 / 2.
  args = (real, fake, jnp.float32(0.5), jnp.float32(-0.5))
  np.testing.assert_allclose(lecam_regularization(*args), 1.125 + 0.125, rtol=1e-6)
  grads = jax.grad(lecam_regularization, argnums=(0, 1, 2, 3))(*args)
  np.testing.assert_allclose(grads[0], [1.5, 0.0], rtol=1e-6)  # d/dr mean(relu(r - a)²) = 2(r - a)/N
  np.testing.assert_allclose(grads[1], [-0.5, 0.0], rtol=1e-6)
  assert float(grads[2]) == 0.0 and float(grads[3]) == 0.0


def test_lecam_ema_update_closed_form():
  np.testing.assert_allclose(update_lecam_ema(jnp.float32(2.0), jnp.array([1.0, 3.0, 5.0]), decay=0.9),
                             0.9 * 2.0 + 0.1 * 3.0, rtol=1e-6)
  # n updates with a constant batch mean v: ema_n = v + (ema_0 - v)·decay^n.
  ema = jnp.float32(0.0)
  for _ in range(10):
    ema = update_lecam_ema(ema, jnp.array([4.0, 2.0]), decay=0.8)
  np.testing.assert_allclose(ema, 3.0 + (0.0 - 3.0) * 0.8 ** 10, rtol=1e-5)
  with pytest.raises(ConfigError, match="decay"):
    update_lecam_ema(jnp.float32(0.0), jnp.ones(2), decay=1.0)


def test_r1_of_linear_discriminator_is_squared_weight_norm():
  w = jax.random.normal(jax.random.key(0), (4, 4, 3))
  real = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
  linear = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  np.testing.assert_allclose(r1_penalty(linear, real), np.sum(np.square(w)), rtol=1e-5)


def test_r1_of_quadratic_discriminator_closed_form():
  # D(x) = a·Σx² per sample → ∇D = 2a·x, ‖∇D‖² = 4a²·Σx²; averaged over the batch.
  a = 0.7
  real = jax.random.normal(jax.random.key(2), (3, 2, 4, 4, 1))
  quadratic = lambda x: a * jnp.sum(jnp.square(x), axis=(1, 2, 3, 4))
  expected = np.mean(4 * a * a * np.sum(np.square(np.asarray(real)), axis=(1, 2, 3, 4)))
  np.testing.assert_allclose(r1_penalty(quadratic, real), expected, rtol=1e-5)
