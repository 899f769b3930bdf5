"""The masked task: factorized token layout, the masked loss (sum of sub-token losses, label smoothing), task masks
never masked, eval, training that learns a label → tokens mapping the decoder then reproduces, and MarkovGen's phase
(only the MRF trains; the model stays frozen)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import parallel_decoding as pd
from tokgen_jax.generators.markovgen import MarkovRandomField
from tokgen_jax.generators.masked import MaskedTransformer
from tokgen_jax.quantizers import factorize_indices
from tokgen_jax.tasks import MaskedTask

SMALL = dict(embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64, dropout_rate=0.0, cond_dropout_rate=0.1)


def _task(vocab_sizes=(16,), bits=0, grid=(4, 4), lr=3e-3, **kwargs) -> MaskedTask:
  model = MaskedTransformer(vocab_sizes=vocab_sizes, grid=grid, conditioning="class", num_classes=4, **SMALL)
  return MaskedTask(model=model, optimizer=optax.adam(lr), learning_rate=optax.constant_schedule(lr),
                    token_shape=grid, codebook_bits=bits, **kwargs)


def _batch(vocab=16, grid=(4, 4), size=16):
  """Tokens that are a function of the label: a learnable conditional distribution."""
  rng = np.random.default_rng(0)
  labels = np.arange(size) % 4
  patterns = rng.integers(0, vocab, size=(4,) + grid)
  return {"tokens": jnp.asarray(patterns[labels], jnp.int32), "label": jnp.asarray(labels, jnp.int32)}


def test_factorized_tokens_merge_back_and_split_low_bits_first():
  task = _task((4, 4, 4), bits=6)
  tokens = _batch(64)["tokens"]
  model_tokens = task.to_model_tokens(tokens)
  assert model_tokens.shape == (16, 16, 3)
  np.testing.assert_array_equal(model_tokens[..., 0], tokens.reshape(16, 16) % 4)
  np.testing.assert_array_equal(model_tokens[..., 2], tokens.reshape(16, 16) // 16)
  np.testing.assert_array_equal(task.to_grid(model_tokens), tokens)


def test_token_layers_become_sub_tokens_of_their_position():
  """Residual depths `[B, h, w, L]`: each layer is a sub-token of its position, its own table and head."""
  model = MaskedTransformer(vocab_sizes=(8, 8, 8), grid=(4, 4), conditioning="class", num_classes=4, **SMALL)
  task = MaskedTask(model=model, optimizer=optax.adam(1e-3), learning_rate=optax.constant_schedule(1e-3),
                    token_shape=(4, 4, 3), levels=3)
  tokens = jax.random.randint(jax.random.key(0), (5, 4, 4, 3), 0, 8)
  model_tokens = task.to_model_tokens(tokens)
  assert model_tokens.shape == (5, 16, 3)
  np.testing.assert_array_equal(model_tokens[:, 6], tokens[:, 1, 2])  # position 6 holds cell (1, 2)'s layers
  np.testing.assert_array_equal(task.to_grid(model_tokens), tokens)
  with pytest.raises(ConfigError, match="3 level"):
    MaskedTask(model=model, optimizer=optax.adam(1e-3), learning_rate=optax.constant_schedule(1e-3),
               token_shape=(4, 4, 2), levels=3)


def test_factorized_loss_is_the_sum_of_the_sub_token_losses():
  task = _task((4, 4), bits=4, label_smoothing=0.1)
  tokens = task.to_model_tokens(_batch(16)["tokens"])
  logits = jax.random.normal(jax.random.key(0), tokens.shape + (4,))
  smoothed, nll, correct = task.position_losses(logits, tokens)
  per_factor = [optax.softmax_cross_entropy(logits[..., f, :], 0.9 * jax.nn.one_hot(tokens[..., f], 4) + 0.1 / 4)
                for f in range(2)]
  np.testing.assert_allclose(smoothed, per_factor[0] + per_factor[1], rtol=1e-6)
  log_probs = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, -picked.sum(-1), rtol=1e-6)
  np.testing.assert_array_equal(correct, jnp.all(jnp.argmax(logits, -1) == tokens, -1))


def test_smoothing_spreads_only_over_each_sub_tokens_own_vocabulary():
  task = _task((8, 4), bits=0, label_smoothing=0.5)  # unequal vocabularies (padded logits past 4)
  tokens = jnp.zeros((1, 16, 2), jnp.int32)
  logits = jnp.concatenate([jnp.zeros((1, 16, 2, 4)), jnp.full((1, 16, 2, 4), -1e9)], -1).at[..., 0, 4:].set(0.0)
  smoothed, _, _ = task.position_losses(logits, tokens)
  np.testing.assert_allclose(smoothed, np.log(8) + np.log(4), rtol=1e-5)  # uniform over 8 and over 4 codes


def test_task_masks_give_positions_that_are_never_masked():
  task = _task(grid=(3, 4, 4), tasks=("frame_prediction", "outpainting"), given_frames=1)
  masks = np.asarray(task.draw_mask(jax.random.key(0), 256)).reshape(256, 3, 4, 4)
  first_frame_given = ~masks[:, 0].any(axis=(1, 2))
  box_given = ~masks[:, :, 1:3, 1:3].any(axis=(1, 2, 3))
  assert np.all(first_frame_given | box_given) and 60 < first_frame_given.sum() < 200
  assert np.all(masks.reshape(256, -1).any(-1))  # every example has something to predict
  with pytest.raises(ConfigError, match="video token grid"):
    _task(tasks=("interpolation",))


@pytest.fixture(scope="module")
def trained():
  task = _task(lr=1e-2, schedule="cosine", label_smoothing=0.0)
  batch = _batch()
  state = jax.jit(lambda key: nn.unbox(task.init(key, batch)))(jax.random.key(0))
  step = jax.jit(task.train_step)
  losses = []
  for _ in range(150):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return task, batch, state, losses


@pytest.mark.slow  # 150 training steps
def test_training_lowers_the_masked_loss_and_eval_scores_masked_positions(trained):
  task, batch, state, losses = trained
  assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:5]), (losses[:5], losses[-10:])
  outputs = jax.jit(task.eval_step)(state, batch)
  assert outputs["nll"].shape == (16,) and float(outputs["token_accuracy"].mean()) > 0.9


@pytest.mark.slow  # 150 training steps
def test_the_decoder_reproduces_each_labels_pattern(trained):
  task, batch, state, _ = trained
  settings = pd.MaskedSamplingSettings(num_steps=4, cfg_scale=2.0, temperature=0.5)
  sampled = jax.jit(lambda s, c, r: task.sample(s, c, r, settings))(state, {"label": batch["label"]},
                                                                    jax.random.key(1))
  assert sampled.shape == (16, 4, 4)
  assert float(jnp.mean(sampled == batch["tokens"])) > 0.9
  # Starting from the true tokens of the left half, the decoder keeps them and fills the right half.
  given = jnp.tile((jnp.arange(16) % 4 < 2)[None], (16, 1))
  conditions = {"label": batch["label"], "given_tokens": batch["tokens"], "given": given}
  filled = jax.jit(lambda s, c, r: task.sample(s, c, r, settings))(state, conditions, jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(filled)[..., :2], np.asarray(batch["tokens"])[..., :2])


@pytest.mark.slow
def test_markovgen_phase_trains_only_the_mrf_on_the_frozen_model(trained):
  task, batch, state, _ = trained
  mrf = MarkovRandomField(vocab_size=16, grid=(4, 4), rank=4, iterations=3)
  with_mrf = dataclasses.replace(task, markovgen=mrf, markovgen_progress=(0.6, 0.9), markovgen_cfg_scale=1.0)
  assert [p.name for p in with_mrf.phases()] == ["markovgen"]
  fresh = jax.jit(lambda key: nn.unbox(with_mrf.init(key, batch)))(jax.random.key(1))
  mrf_state = fresh.replace(params=fresh.params | {"generator": state.params["generator"]})
  step = jax.jit(lambda s, b: with_mrf.train_step(s, b, "markovgen"))
  first = None
  for _ in range(60):
    mrf_state, metrics = step(mrf_state, batch)
    first = first or {k: float(v) for k, v in metrics.items()}
  assert set(metrics) >= {"loss", "masked_nll", "unary_nll", "masked_accuracy", "mask_ratio"}
  assert float(metrics["loss"]) < 0.8 * first["loss"]
  assert float(metrics["loss"]) < float(metrics["unary_nll"])  # the MRF beats the model's own marginals
  jax.tree.map(np.testing.assert_array_equal, mrf_state.params["generator"], state.params["generator"])
  settings = pd.MaskedSamplingSettings(num_steps=6, exit_steps=2, final_fill="mrf", temperature=0.5)
  sampled = jax.jit(lambda s, c, r: with_mrf.sample(s, c, r, settings))(mrf_state, {"label": batch["label"]},
                                                                        jax.random.key(3))
  assert sampled.shape == (16, 4, 4) and float(jnp.mean(sampled == batch["tokens"])) > 0.8
  with pytest.raises(ConfigError, match="needs a MarkovGen MRF"):
    task.fill(state, settings)
