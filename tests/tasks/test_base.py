"""The shared task helpers: which weights eval and sampling read."""

import jax.numpy as jnp

from tests.helpers import tiny_config
from tokgen_jax import tasks
from tokgen_jax.tasks.base import TrainState, evaluation_params


def _state(with_ema: bool) -> TrainState:
  params = {"autoencoder": {"w": jnp.ones(2)}, "discriminator": {"w": jnp.zeros(2)}}
  ema = {"autoencoder": {"w": jnp.full(2, 0.5)}} if with_ema else {}
  return TrainState(step=jnp.int32(0), params=params, opt_state={}, ema_params=ema, model_state={},
                    rng=jnp.zeros(2, jnp.uint32))


def test_evaluation_reads_the_ema_copy_only_when_the_protocol_asks_and_one_exists():
  assert float(evaluation_params(_state(True), "autoencoder")["w"][0]) == 0.5
  assert float(evaluation_params(_state(True), "autoencoder", use_ema=False)["w"][0]) == 1.0
  assert float(evaluation_params(_state(False), "autoencoder")["w"][0]) == 1.0


def test_the_protocols_use_ema_reaches_the_task():
  assert tasks.build(tiny_config()).eval_ema
  assert not tasks.build(tiny_config(**{"eval.protocol.use_ema": False})).eval_ema
