"""The next-scale task: the per-scale layout, VAR's 1/L loss weights, eval per scale, the tokenizer's quantizer
copied in by `prepare`, and training that learns a label → token maps mapping the scale sampler then draws."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import sampling
from tokgen_jax.generators.var import VARTransformer
from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer
from tokgen_jax.tasks.var import QUANTIZER, NextScaleTask

SCALES = (1, 2, 4)
CODES = 8


def _task(lr=3e-3, **kwargs) -> NextScaleTask:
  quantizer = MultiScaleResidualQuantizer(CODES, 4, scales=SCALES, restart_after_steps=5)
  model = VARTransformer(SCALES, CODES, 4, embed_dim=32, num_layers=2, num_heads=4, num_classes=4,
                         cond_dropout_rate=0.0)
  return NextScaleTask(model=model, quantizer=quantizer, optimizer=optax.adam(lr),
                       learning_rate=optax.constant_schedule(lr), **kwargs)


def _batch(size=8):
  """Token maps that are a function of the label."""
  rng = np.random.default_rng(0)
  labels = np.arange(size) % 4
  maps = {f"tokens_{k}": rng.integers(0, CODES, size=(4, s, s))[labels].astype(np.int32)
          for k, s in enumerate(SCALES)}
  return {**{k: jnp.asarray(v) for k, v in maps.items()}, "label": jnp.asarray(labels, jnp.int32)}


@pytest.fixture(scope="module")
def fresh():
  task = _task()
  return task, _batch(), nn.unbox(task.init(jax.random.key(0), task.example_batch()))


@pytest.fixture(scope="module")
def trained():
  task = _task()
  batch = _batch()
  state = nn.unbox(task.init(jax.random.key(0), task.example_batch()))
  step = jax.jit(task.train_step)
  losses = []
  for _ in range(120):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return task, batch, state, losses


def test_sequence_is_the_scales_coarse_first_and_round_trips():
  task = _task()
  batch = _batch()
  sequence = task.sequence(batch)
  assert sequence.shape == (8, 21)
  np.testing.assert_array_equal(sequence[:, 1:5], batch["tokens_1"].reshape(8, 4))
  arrays = task.latent_arrays(np.asarray(sequence))
  assert list(arrays) == ["tokens_0", "tokens_1", "tokens_2"]
  for name in arrays:
    np.testing.assert_array_equal(arrays[name], batch[name])
  examples = [{name: np.asarray(batch[name][i]) for name in arrays} for i in range(8)]
  np.testing.assert_array_equal(task.example_latents(examples), sequence)


def test_loss_weights_sum_to_one_and_the_loss_is_the_mean_token_cross_entropy(fresh):
  task, batch, state = fresh
  weights = task.token_weights()
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(weights, 1.0 / 21)
  params, quantizer = state.params["generator"], state.model_state[QUANTIZER]
  loss, _ = task._loss(params, batch, jax.random.key(0), quantizer)
  sequence = task.sequence(batch)
  logits = task.model.apply({"params": params}, task.teacher_inputs(quantizer, sequence), {"label": batch["label"]})
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, sequence).mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.slow  # 120 train steps
def test_training_lowers_the_loss_and_the_sampler_draws_the_learned_maps(trained):
  task, batch, state, losses = trained
  assert losses[-1] < 0.2 * losses[0], losses[::10]
  settings = sampling.SamplingSettings(greedy=True)
  drawn = jax.jit(lambda s, c: task.sample(s, c, jax.random.key(0), settings))(state, {"label": batch["label"]})
  np.testing.assert_array_equal(drawn, task.sequence(batch))


def test_eval_reports_nll_and_accuracy_per_scale(fresh):
  task, batch, state = fresh
  outputs = task.eval_step(state, batch)
  assert {"nll", "token_accuracy", "nll_scale_0", "nll_scale_2", "token_accuracy_scale_1"} <= set(outputs)
  assert outputs["nll"].shape == (8,)
  per_scale = np.stack([outputs[f"nll_scale_{k}"] for k in range(3)], -1)
  np.testing.assert_allclose(outputs["nll"], per_scale @ np.asarray([1, 4, 16]) / 21, rtol=1e-5)


@pytest.mark.slow  # 120 train steps
def test_the_frozen_quantizer_is_not_trained(trained):
  task, _, state, _ = trained
  initial = nn.unbox(task.init(jax.random.key(0), task.example_batch()))
  jax.tree.map(np.testing.assert_array_equal, state.model_state, initial.model_state)


def _tokenizer_with(task, variables):
  """A stand-in for the frozen tokenizer: its task's eval params and model state hold the quantizer."""
  tokenizer_task = types.SimpleNamespace(eval_params=lambda state: {"quantizer": variables["params"]})
  stats = {name: {"quantizer": tree} for name, tree in variables.items() if name != "params"}
  tokenizer_state = types.SimpleNamespace(model_state={"autoencoder": stats})
  task._loaded["tokenizer"] = types.SimpleNamespace(task=tokenizer_task, state=tokenizer_state)


def test_prepare_copies_the_tokenizers_quantizer_variables():
  task = _task()
  state = nn.unbox(task.init(jax.random.key(0), task.example_batch()))
  source = jax.tree.map(lambda a: a + 1, state.model_state[QUANTIZER])
  assert set(source) == {"params", "quantizer_stats"}  # codebook and φ, and the restart offsets
  _tokenizer_with(task, source)
  prepared = task.prepare(None, state)
  jax.tree.map(np.testing.assert_array_equal, prepared.model_state[QUANTIZER], source)
  jax.tree.map(lambda a: a.delete(), prepared.model_state[QUANTIZER])  # as the donating train step does
  assert np.isfinite(np.asarray(source["params"]["vq"]["codebook"])).all()  # the tokenizer's own buffers live on
  other = _task(tokenizer=types.SimpleNamespace(workdir="/tmp/other_tokenizer"))
  _tokenizer_with(other, {"params": {"vq": {"codebook": jnp.zeros((CODES + 1, 4))}}})
  with pytest.raises(ConfigError, match="other_tokenizer.*do not match"):
    other.prepare(None, state)
