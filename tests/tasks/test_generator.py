"""The generator task: sequence layout round trip, per-layer weighted loss, eval NLL, and training lowers the loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import ARTransformer, SamplingSettings
from tokgen_jax.tasks import GeneratorTask

SMALL = dict(embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64, dropout_rate=0.0, token_dropout_rate=0.0)


def _task(token_shape=(4, 4), levels=1, weights=(), lr=3e-3, **model_kwargs) -> GeneratorTask:
  grid = token_shape[:2]
  model = ARTransformer(vocab_sizes=(8,) * levels, layer_grids=(grid,) * levels, conditioning="class",
                        num_classes=4, **(SMALL | model_kwargs))
  return GeneratorTask(model=model, optimizer=optax.adam(lr), learning_rate=optax.constant_schedule(lr),
                       token_shape=token_shape, layer_weights=weights)


def _batch(levels: int = 1, size: int = 16) -> dict:
  """Tokens that are a function of the label: a learnable conditional distribution."""
  rng = np.random.default_rng(0)
  labels = np.arange(size) % 4
  patterns = rng.integers(0, 8, size=(4, 4, 4) + ((levels,) if levels > 1 else ()))
  return {"tokens": jnp.asarray(patterns[labels], jnp.int32), "label": jnp.asarray(labels, jnp.int32)}


@pytest.mark.parametrize("levels, ordering", [(1, "row_major"), (1, "subsample"), (2, "spiral_out")])
def test_to_sequence_and_back_is_the_identity(levels, ordering):
  task = _task((4, 4, levels) if levels > 1 else (4, 4), levels, ordering=ordering)
  tokens = _batch(levels)["tokens"]
  sequence = task.to_sequence(tokens)
  assert sequence.shape == (16, 16 * levels)
  np.testing.assert_array_equal(task.to_grid(sequence), tokens)
  if levels > 1:  # coarse (level 0) tokens first
    np.testing.assert_array_equal(np.sort(sequence[:, :16], axis=1), np.sort(tokens[..., 0].reshape(16, 16), axis=1))


def test_video_token_grids_use_three_axis_positions():
  model = ARTransformer(vocab_sizes=(8,), layer_grids=((2, 3, 3),), conditioning="none", **SMALL)
  task = GeneratorTask(model=model, optimizer=optax.adam(1e-3), learning_rate=optax.constant_schedule(1e-3),
                       token_shape=(2, 3, 3))
  tokens = jnp.arange(2 * 18).reshape(2, 2, 3, 3) % 8
  np.testing.assert_array_equal(task.to_grid(task.to_sequence(tokens)), tokens)
  positions = model.rope_positions()
  assert positions.shape == (1 + 18 - 1, 3)
  np.testing.assert_array_equal(positions[1 + 9], [1, 0, 0])  # the first token of frame 1
  state = nn.unbox(task.init(jax.random.key(0), {"tokens": tokens}))
  assert jax.jit(task.eval_step)(state, {"tokens": tokens})["nll"].shape == (2,)


@pytest.mark.slow
def test_training_lowers_the_loss_and_eval_nll_is_the_cross_entropy():
  task = _task()
  batch = _batch()
  state = jax.jit(lambda key: nn.unbox(task.init(key, batch)))(jax.random.key(0))
  step = jax.jit(task.train_step)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.3 * losses[0], losses
  outputs = jax.jit(task.eval_step)(state, batch)
  logits = task.model.apply({"params": state.params["generator"]}, task.to_sequence(batch["tokens"]),
                            task.condition(batch))
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, task.to_sequence(batch["tokens"])).mean(-1)
  np.testing.assert_allclose(outputs["nll"], expected, rtol=1e-5, atol=1e-6)
  assert np.all((0 <= outputs["token_accuracy"]) & (outputs["token_accuracy"] <= 1))
  assert float(outputs["token_accuracy"].mean()) > 0.9


def test_a_trained_model_samples_its_label_pattern():
  """After fitting label → tokens, greedy samples with guidance reproduce each label's pattern."""
  task = _task(lr=1e-2)
  batch = _batch()
  state = jax.jit(lambda key: nn.unbox(task.init(key, batch)))(jax.random.key(0))
  step = jax.jit(task.train_step)
  for _ in range(60):
    state, _ = step(state, batch)
  cond = {"label": batch["label"][:4]}
  grids = jax.jit(lambda s, c: task.sample(s, c, jax.random.key(0), SamplingSettings(greedy=True, cfg_scale=2.0)))(
      state, cond)
  np.testing.assert_array_equal(grids, batch["tokens"][:4])


@pytest.mark.slow
def test_layer_weights_select_the_layers_in_the_loss():
  batch = _batch(levels=2)
  full, coarse_only = _task((4, 4, 2), 2), _task((4, 4, 2), 2, weights=(1.0, 0.0))
  state = nn.unbox(full.init(jax.random.key(0), batch))
  _, metrics = full.train_step(state, batch)
  _, coarse = coarse_only.train_step(state, batch)
  np.testing.assert_allclose(coarse["loss"], metrics["loss_layer_0"], rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], (metrics["loss_layer_0"] + metrics["loss_layer_1"]) / 2, rtol=1e-6)


def test_model_and_token_shape_must_agree():
  model = ARTransformer(vocab_sizes=(8,), layer_grids=((4, 4),), conditioning="class", num_classes=4, **SMALL)
  with pytest.raises(ConfigError, match="layer_grids"):
    GeneratorTask(model=model, optimizer=optax.adam(1e-3), learning_rate=optax.constant_schedule(1e-3),
                  token_shape=(8, 8))
  with pytest.raises(ConfigError, match="layer_weights"):
    GeneratorTask(model=model, optimizer=optax.adam(1e-3), learning_rate=optax.constant_schedule(1e-3),
                  token_shape=(4, 4), layer_weights=(1.0, 1.0))


def test_text_is_padded_or_cut_to_the_model_length():
  model = ARTransformer(vocab_sizes=(8,), layer_grids=((2, 2),), conditioning="text", text_length=4, text_dim=3,
                        **SMALL)
  task = GeneratorTask(model=model, optimizer=optax.adam(1e-3), learning_rate=optax.constant_schedule(1e-3),
                       token_shape=(2, 2))
  short = task.condition({"text": jnp.ones((2, 2, 3)), "text_mask": jnp.ones((2, 2), bool)})
  assert short["text"].shape == (2, 4, 3)
  np.testing.assert_array_equal(short["text_mask"], [[True, True, False, False]] * 2)
  long = task.condition({"text": jnp.ones((2, 6, 3)), "text_mask": jnp.ones((2, 6), bool)})
  assert long["text"].shape == (2, 4, 3) and long["text_mask"].shape == (2, 4)
