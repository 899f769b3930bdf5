import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tokgen_jax.configs import optimizer as optimizer_presets
from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks.base import ema_update
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer


def test_schedule_warms_up_linearly_then_decays_by_cosine():
  config = optimizer_presets.adamw(learning_rate=1.0, warmup_steps=10, end_learning_rate_factor=0.1)
  schedule = learning_rate_schedule(config, total_steps=110)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(schedule(60), 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)), atol=1e-6)
  np.testing.assert_allclose(schedule(110), 0.1, atol=1e-6)


def test_weight_decay_skips_biases_and_clipping_bounds_the_update():
  config = optimizer_presets.adamw(learning_rate=1.0, warmup_steps=0, weight_decay=0.5, grad_clip_norm=1.0)
  optimizer = make_optimizer(config, total_steps=10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zero_grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}
  state = optimizer.init(params)
  updates, _ = optimizer.update(zero_grads, state, params)
  assert float(jnp.abs(updates["bias"]).max()) == 0.0  # no decay on biases
  assert float(jnp.abs(updates["kernel"]).max()) > 0.0  # decoupled decay on kernels
  clipped = optax.clip_by_global_norm(1.0).update({"g": jnp.full((4,), 10.0)}, None)[0]
  np.testing.assert_allclose(optax.global_norm(clipped), 1.0, rtol=1e-6)


def test_unknown_optimizer_is_named():
  config = ml_collections.ConfigDict(optimizer_presets.adamw().to_dict() | {"name": "lion"})
  with pytest.raises(ConfigError, match="config.optimizer.name='lion'"):
    make_optimizer(config, 10)


def test_ema_update_closed_form():
  np.testing.assert_allclose(ema_update({"w": jnp.array(1.0)}, {"w": jnp.array(3.0)}, decay=0.75)["w"], 1.5)
