"""Llama blocks: causality, cached decode == full forward (causal and prefix-LM), scan == unrolled, remat
invariance, logical axes, bf16 compute, errors. The attention layer itself is tested in test_attention.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn import masks
from tokgen_jax.nn.attention import Attention, KVCache
from tokgen_jax.nn.rope import rope_frequencies
from tokgen_jax.nn.transformer import LlamaStack, RMSNorm, SwiGLU, llama_mlp_dim, unstack_layers

EMBED, HEADS, KV_HEADS, MLP, LAYERS, VOCAB = 32, 4, 2, 48, 2, 16
GRID = (2, 5)  # 10 tokens with 2D RoPE positions
LENGTH = GRID[0] * GRID[1]
HEAD_DIM = EMBED // HEADS


class TinyLM(nn.Module):
  """Embedding → LlamaStack (2D RoPE from explicit positions) → vocabulary head, as an AR generator uses it."""

  scan_layers: bool = True
  remat_policy: str = "none"
  prefix_len: int = 0
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, positions, cache=None, deterministic=True):
    x = nn.Embed(VOCAB, EMBED, name="embed")(tokens)
    cos, sin = rope_frequencies(HEAD_DIM, positions)
    stack = LlamaStack(LAYERS, HEADS, MLP, num_kv_heads=KV_HEADS, mask=masks.PrefixCausal(self.prefix_len),
                       dropout_rate=self.dropout_rate, attention_dropout_rate=self.dropout_rate,
                       remat_policy=self.remat_policy, scan_layers=self.scan_layers, dtype=self.dtype, name="stack")
    x, cache = stack(x, cos, sin, cache, deterministic)
    return nn.Dense(VOCAB, use_bias=False, name="head")(x.astype(jnp.float32)), cache


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, VOCAB, size=(2, LENGTH)))
  # A random order of the grid cells: RoPE follows the explicit coordinates, not the sequence index.
  positions = np.stack(np.unravel_index(rng.permutation(LENGTH), GRID), axis=-1)
  return tokens, jnp.asarray(positions)


@pytest.fixture(scope="module")
def scanned(data):
  model = TinyLM()
  return model, _init(model, *data)


def _init(module, *args, **kwargs):
  """Jitted init: one compile instead of one per eager op."""
  return jax.jit(functools.partial(module.init, **kwargs))(jax.random.key(0), *args)


def _full_logits(model, variables, data):
  return np.asarray(jax.jit(model.apply)(variables, *data)[0])


def _unstack(params):
  """Scanned params `{"layers": stacked}` as unrolled `{"layers_i": slice i}`, written out independently of
  `unstack_layers` (which a test below checks against it)."""
  params = dict(params)
  stacked = params.pop("layers")
  return params | {f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(LAYERS)}


def _as_unrolled(variables):
  params = nn.unbox(variables)["params"]
  return {"params": params | {"stack": _unstack(params["stack"])}}


def test_unstack_layers_gives_the_unrolled_layout(scanned):
  _, variables = scanned
  stack = nn.unbox(variables)["params"]["stack"]
  jax.tree.map(np.testing.assert_array_equal, unstack_layers(stack, LAYERS), _unstack(stack))
  assert set(unstack_layers(stack, LAYERS)) == {"final_norm", *(f"layers_{i}" for i in range(LAYERS))}
  with pytest.raises(ConfigError, match="'layers' entry"):
    unstack_layers(unstack_layers(stack, LAYERS), LAYERS)


def test_every_param_carries_logical_axis_names(scanned, data):
  _, variables = scanned
  leaves = jax.tree_util.tree_leaves_with_path(variables["params"]["stack"],
                                               is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for path, leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), path
    assert len(leaf.names) == leaf.value.ndim, path
    assert all(name is not None for name in leaf.names), path
    assert (leaf.names[0] == "layers") == (path[0].key == "layers"), path
  layer = variables["params"]["stack"]["layers"]
  assert layer["attention"]["query"]["kernel"].names == ("layers", "embed", "heads", "kv")
  assert layer["attention"]["key"]["kernel"].value.shape == (LAYERS, EMBED, KV_HEADS, HEAD_DIM)
  assert layer["attention"]["out"]["kernel"].names == ("layers", "heads", "kv", "embed")
  assert layer["mlp"]["down"]["kernel"].names == ("layers", "mlp", "embed")
  assert variables["params"]["stack"]["final_norm"]["scale"].names == ("embed",)
  unrolled = jax.eval_shape(TinyLM(scan_layers=False).init, jax.random.key(0), *data)
  assert unrolled["params"]["stack"]["layers_1"]["mlp"]["gate"]["kernel"].names == ("embed", "mlp")


def test_changing_a_later_token_leaves_earlier_outputs_bit_identical(scanned, data):
  model, variables = scanned
  tokens, positions = data
  apply = jax.jit(model.apply)
  out = np.asarray(apply(variables, tokens, positions)[0])
  for j in (1, 4, LENGTH - 1):
    changed = np.asarray(apply(variables, tokens.at[:, j].set((tokens[:, j] + 1) % VOCAB), positions)[0])
    np.testing.assert_array_equal(changed[:, :j], out[:, :j])
    assert np.abs(changed[:, j:] - out[:, j:]).max(axis=(0, 2)).min() > 0


def _decode(model, variables, data, prefill):
  """Logits of a prefill of `prefill` tokens, then one token a step, through the KV cache."""
  tokens, positions = data
  cache = LlamaStack(LAYERS, HEADS, MLP, num_kv_heads=KV_HEADS, scan_layers=model.scan_layers).init_cache(
      tokens.shape[0], LENGTH + 2, EMBED)
  step = jax.jit(model.apply)
  logits, cache = step(variables, tokens[:, :prefill], positions[:prefill], cache)
  outputs = [logits]
  for i in range(prefill, LENGTH):
    logits, cache = step(variables, tokens[:, i:i + 1], positions[i:i + 1], cache)
    outputs.append(logits)
  for layer_cache in (cache if isinstance(cache, tuple) else (cache,)):
    np.testing.assert_array_equal(layer_cache.index, LENGTH)
  return np.concatenate(outputs, axis=1)


@pytest.mark.parametrize("prefill", (1, 3))
def test_cached_decoding_equals_the_full_forward(scanned, data, prefill):
  model, variables = scanned
  np.testing.assert_allclose(_decode(model, variables, data, prefill), _full_logits(model, variables, data),
                             atol=1e-5)


def test_cached_decoding_with_a_bidirectional_prefix_and_unrolled_layers(scanned, data):
  _, variables = scanned
  model = TinyLM(scan_layers=False, prefix_len=3)
  unrolled = _as_unrolled(variables)
  np.testing.assert_allclose(_decode(model, unrolled, data, prefill=3), _full_logits(model, unrolled, data),
                             atol=1e-5)


def test_cache_layout_and_error(scanned, data):
  cache = LlamaStack(LAYERS, HEADS, MLP, num_kv_heads=KV_HEADS).init_cache(2, 12, EMBED)
  assert isinstance(cache, KVCache)
  assert cache.k.shape == (LAYERS, 2, KV_HEADS, 12, HEAD_DIM) and cache.index.shape == (LAYERS,)
  per_layer = LlamaStack(LAYERS, HEADS, MLP, num_kv_heads=KV_HEADS, scan_layers=False).init_cache(2, 12, EMBED)
  assert len(per_layer) == LAYERS and all(c.k.shape == (2, KV_HEADS, 12, HEAD_DIM) for c in per_layer)
  assert per_layer[0].k is not per_layer[0].v  # distinct buffers, so a donated cache can be updated in place
  with pytest.raises(ConfigError, match="tuple of 2 per-layer KVCaches"):
    TinyLM(scan_layers=False).apply(_as_unrolled(scanned[1]), data[0][:, :1], data[1][:1], cache)
  layer = Attention(HEADS, KV_HEADS)
  x = jnp.zeros((2, 13, EMBED))
  with pytest.raises(ConfigError, match="13 new tokens do not fit a KV cache of max_len=12"):
    layer.init(jax.random.key(0), x, cache=jax.tree.map(lambda a: a[0], cache))


def _logits_and_grads(model, variables, data):
  """Full-sequence logits and the gradient of mean(logits²) w.r.t. the params, from one compiled program."""
  loss = lambda p: (lambda logits: (jnp.mean(logits ** 2), logits))(model.apply({"params": p}, *data)[0])
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(nn.unbox(variables)["params"])
  return np.asarray(logits), grads


@pytest.fixture(scope="module")
def reference(scanned, data):
  model, variables = scanned
  return _logits_and_grads(model, variables, data)


def test_scan_equals_unrolled_with_restacked_params(scanned, data, reference):
  _, variables = scanned
  logits, grads = _logits_and_grads(TinyLM(scan_layers=False), _as_unrolled(variables), data)
  np.testing.assert_allclose(logits, reference[0], atol=1e-5)
  expected = reference[1] | {"stack": _unstack(reference[1]["stack"])}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, expected)


@pytest.mark.parametrize("policy", ("full", "dots_saveable"))
def test_remat_policies_change_neither_outputs_nor_gradients(scanned, data, reference, policy):
  _, variables = scanned
  logits, grads = _logits_and_grads(TinyLM(remat_policy=policy), variables, data)
  np.testing.assert_allclose(logits, reference[0], rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, reference[1])


def test_bf16_compute_keeps_float32_params_and_tracks_float32(scanned, data, reference):
  _, variables = scanned
  model = TinyLM(dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 5, EMBED), jnp.float32)
  stack = LlamaStack(LAYERS, HEADS, MLP, num_kv_heads=KV_HEADS, dtype=jnp.bfloat16)
  (out, _), stack_vars = jax.eval_shape(stack.init_with_output, jax.random.key(0), x)
  assert out.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nn.unbox(stack_vars)))
  np.testing.assert_allclose(_full_logits(model, variables, data), reference[0], atol=0.1, rtol=0.05)


def test_dropout_is_active_only_when_not_deterministic(scanned, data, reference):
  _, variables = scanned
  model = TinyLM(dropout_rate=0.5)
  np.testing.assert_allclose(_full_logits(model, variables, data), reference[0], atol=1e-6)
  train = jax.jit(lambda key: model.apply(variables, *data, deterministic=False, rngs={"dropout": key})[0])
  assert not np.allclose(train(jax.random.key(9)), reference[0])
  assert not np.allclose(train(jax.random.key(9)), train(jax.random.key(10)))


def test_rmsnorm_and_swiglu_match_their_formulas():
  x = jax.random.normal(jax.random.key(11), (2, 3, EMBED)) * 5
  norm = RMSNorm(epsilon=1e-6)
  expected = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(jax.jit(norm.apply)(_init(norm, x), x), expected, rtol=1e-5)
  mlp = SwiGLU(MLP)
  p = jax.tree.map(np.asarray, nn.unbox(_init(mlp, x))["params"])
  x = np.asarray(x)
  gate, up = x @ p["gate"]["kernel"], x @ p["up"]["kernel"]
  swish = gate / (1 + np.exp(-gate))
  np.testing.assert_allclose(jax.jit(mlp.apply)({"params": p}, x), (swish * up) @ p["down"]["kernel"], atol=1e-5)
  assert llama_mlp_dim(4096) == 11008  # Llama-7B


def test_bad_remat_policy_names_the_fix():
  x = jnp.zeros((1, 2, EMBED))
  with pytest.raises(ConfigError, match="remat_policy='sometimes' is unknown"):
    LlamaStack(LAYERS, HEADS, MLP, remat_policy="sometimes").init(jax.random.key(0), x)
