"""MaskGIT's parallel decoder: re-masking counts, given tokens kept, and equality with a slow numpy reference step for
step (CFG with a ramp, factorized sub-tokens, early exit)."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import parallel_decoding as pd
from tokgen_jax.generators.masked import MaskedTransformer

LABELS = jnp.array([0, 1, 2])
# Seven steps over 20 positions: no step's n₀·γ(r) lands on an integer, where float32 and float64 could floor apart.
SETTINGS = pd.MaskedSamplingSettings(num_steps=7, cfg_scale=2.5, cfg_ramp=True)


@pytest.fixture(scope="module", params=[pytest.param((16,), id="plain"),
                                        pytest.param((16, 8), id="factorized", marks=pytest.mark.slow)])
def model_and_params(request):
  model = MaskedTransformer(vocab_sizes=request.param, grid=(4, 5), embed_dim=32, num_layers=2, num_heads=4,
                            mlp_dim=64, conditioning="class", num_classes=3, dropout_rate=0.0)
  tokens = jnp.zeros((3, 20, len(request.param)), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens, jnp.zeros((3, 20), bool), {"label": LABELS}))["params"]
  return model, params


def _reference(model, params, rng, settings, tokens, known):
  """A slow decoder written from MaskGIT's description: per step the conditional and unconditional logits of two
  separate calls, the draws with the same keys, and the re-masking by a numpy sort. Returns every step's state."""
  tokens, unknown = np.array(tokens), ~np.array(known)
  initial = unknown.sum(-1)
  states = []
  for step in range(settings.decoded_steps):
    draw_key, gumbel_key = jax.random.split(jax.random.fold_in(rng, step))
    apply = lambda flags: np.asarray(model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(unknown),
                                                 {"label": LABELS}, jnp.asarray(flags)))
    cond, uncond = apply([False] * 3), apply([True] * 3)
    scale = 1 + (settings.cfg_scale - 1) * step / (settings.num_steps - 1)
    logits = (uncond + scale * (cond - uncond)) / settings.temperature
    drawn = np.asarray(jax.random.categorical(draw_key, jnp.asarray(logits), axis=-1))
    log_softmax = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                         keepdims=True)) - logits.max(-1, keepdims=True)
    log_prob = np.take_along_axis(log_softmax, drawn[..., None], -1)[..., 0].sum(-1)
    tokens = np.where(unknown[..., None], drawn, tokens)
    if step == settings.decoded_steps - 1:
      states.append((tokens, np.zeros_like(unknown)))
      break
    ratio = (step + 1) / settings.num_steps
    gumbel = np.asarray(jax.random.gumbel(gumbel_key, log_prob.shape))
    confidence = np.where(unknown, log_prob + settings.choice_temperature * (1 - ratio) * gumbel, np.inf)
    remaining = unknown.sum(-1)
    count = np.floor(initial * math.cos(math.pi / 2 * ratio)).astype(int)
    count = np.minimum(np.maximum(1, np.minimum(remaining - 1, count)), remaining)
    new_unknown = np.zeros_like(unknown)
    for row in range(len(tokens)):
      new_unknown[row, np.argsort(confidence[row], kind="stable")[:count[row]]] = True
    unknown = new_unknown & unknown
    states.append((tokens.copy(), unknown.copy()))
  return states


def _start(model, seed=0, given_share=0.0):
  rng = np.random.default_rng(seed)
  tokens = np.stack([rng.integers(0, v, (3, 20)) for v in model.vocab_sizes], -1).astype(np.int32)
  known = rng.random((3, 20)) < given_share
  return jnp.asarray(tokens), jnp.asarray(known)


@functools.lru_cache(maxsize=None)
def _jitted_step(model, settings):
  return jax.jit(lambda p, rng, tokens, unknown, initial, step: pd.decode_step(
      model, p, {"label": LABELS}, rng, settings, tokens, unknown, initial, step))


@pytest.mark.parametrize("given_share", [pytest.param(0.0, marks=pytest.mark.slow), 0.3])
def test_decoder_equals_the_reference_step_for_step(model_and_params, given_share):
  model, params = model_and_params
  rng = jax.random.key(7)
  tokens, known = _start(model, 1, given_share)
  reference = _reference(model, params, rng, SETTINGS, tokens, known)
  unknown = ~known
  initial = jnp.sum(unknown, -1)
  step = _jitted_step(model, SETTINGS)
  for index, (expected_tokens, expected_unknown) in enumerate(reference[:-1]):
    tokens, unknown = step(params, rng, tokens, unknown, initial, jnp.int32(index))
    np.testing.assert_array_equal(unknown, expected_unknown, err_msg=f"step {index}")
    np.testing.assert_array_equal(np.where(unknown[..., None], 0, tokens),
                                  np.where(expected_unknown[..., None], 0, expected_tokens), err_msg=f"step {index}")
  start_tokens, start_known = _start(model, 1, given_share)
  decoded = jax.jit(lambda p: pd.parallel_decode(model, p, {"label": LABELS}, rng, SETTINGS, start_tokens,
                                                 start_known))(params)
  np.testing.assert_array_equal(decoded, reference[-1][0])
  np.testing.assert_array_equal(np.asarray(decoded)[np.asarray(start_known)],
                                np.asarray(start_tokens)[np.asarray(start_known)])  # given tokens never change
  assert np.all(np.asarray(decoded) < np.asarray(model.vocab_sizes))  # each sub-token within its own vocabulary


def test_each_step_re_masks_exactly_the_scheduled_count(model_and_params):
  model, params = model_and_params
  settings = pd.MaskedSamplingSettings(num_steps=8, schedule="linear")
  tokens, known = _start(model, 2, 0.2)
  unknown = ~known
  initial = np.asarray(jnp.sum(unknown, -1))
  step = _jitted_step(model, settings)
  for index in range(7):
    before = np.asarray(unknown)
    tokens, unknown = step(params, jax.random.key(3), tokens, unknown, jnp.asarray(initial), jnp.int32(index))
    expected = np.clip(np.floor(initial * (1 - (index + 1) / 8)), 1, before.sum(-1) - 1)
    np.testing.assert_array_equal(np.asarray(unknown).sum(-1), expected, err_msg=f"step {index}")
    assert not np.any(np.asarray(unknown) & ~before)  # a decided position is never masked again


def test_early_exit_stops_after_the_first_steps_and_fill_completes(model_and_params):
  model, params = model_and_params
  settings = pd.MaskedSamplingSettings(num_steps=7, exit_steps=2, cfg_scale=2.5, cfg_ramp=True)
  rng = jax.random.key(5)
  tokens, known = _start(model, 3)
  reference = _reference(model, params, rng, settings, tokens, known)
  assert len(reference) == 5  # five model calls of the seven-step schedule
  seen = {}

  def fill(logits, drawn, tokens, unknown, fill_rng):
    seen["unknown"] = unknown
    return pd.keep_draws(logits, drawn, tokens, unknown, fill_rng)

  decode = jax.jit(lambda p: (pd.parallel_decode(model, p, {"label": LABELS}, rng, settings, tokens, known,
                                                 fill=fill), seen["unknown"]))
  decoded, left = decode(params)
  np.testing.assert_array_equal(decoded, reference[-1][0])
  np.testing.assert_array_equal(left, reference[-2][1])  # fill sees the state after the fourth step


def test_settings_are_validated():
  with pytest.raises(ConfigError, match="exit_steps"):
    pd.MaskedSamplingSettings(num_steps=4, exit_steps=4)
  with pytest.raises(ConfigError, match="schedule"):
    pd.MaskedSamplingSettings(schedule="exp")
  with pytest.raises(ConfigError, match="greedy"):
    pd.MaskedSamplingSettings(temperature=0.0)


def test_argmax_fill_takes_each_unknown_positions_most_likely_token():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 1, 7))
  tokens = jnp.full((2, 5, 1), 9, jnp.int32)
  unknown = jnp.array([[True, False, True, False, True]] * 2)
  filled = pd.argmax_fill(logits, tokens, tokens, unknown, jax.random.key(1))
  np.testing.assert_array_equal(filled, np.where(unknown[..., None], np.argmax(logits, -1), 9))
