"""The one attention: kernel vs a numpy softmax, GQA vs repeated-kv MHA, each mask builder seen through the layer
(what a changed input can and cannot reach), cached block-causal decoding, the dropout path, VQGAN's attention."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn import masks
from tokgen_jax.nn.attention import Attention, KVCache, SpatialSelfAttention, cached_attention, dot_product_attention
from tokgen_jax.nn.conv import Conv
from tokgen_jax.nn.norms import group_norm

EMBED, HEADS, KV_HEADS = 32, 4, 2


def _init(module, *args, **kwargs):
  return jax.jit(functools.partial(module.init, **kwargs))(jax.random.key(0), *args)


def _numpy_attention(q, k, v, mask):
  """Per-head softmax(q kᵀ/√d) v in float64, kv head g serving query heads g·H/G ... (g+1)·H/G - 1."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  group = q.shape[2] // k.shape[2]
  out = np.zeros(q.shape)
  for h in range(q.shape[2]):
    logits = np.einsum("bqd,bsd->bqs", q[:, :, h], k[:, :, h // group]) / np.sqrt(q.shape[-1])
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    out[:, :, h] = np.einsum("bqs,bsd->bqd", weights / weights.sum(-1, keepdims=True), v[:, :, h // group])
  return out


@pytest.mark.parametrize("mask_builder", (masks.Causal(), masks.BlockCausal((1, 2, 3)), masks.Bidirectional()))
def test_kernel_equals_a_numpy_softmax_with_grouped_heads(mask_builder):
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, h, 8)) for i, h in enumerate((HEADS, KV_HEADS, KV_HEADS)))
  mask = mask_builder(np.arange(6), np.arange(6))
  out = jax.jit(dot_product_attention)(q, k, v, mask)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, np.asarray(mask)), atol=1e-5)
  per_example = jnp.stack([mask, jnp.ones_like(mask)])  # [B, Lq, Lk]: the second example attends fully
  out = jax.jit(dot_product_attention)(q, k, v, per_example)
  np.testing.assert_allclose(out[1], _numpy_attention(q, k, v, np.ones((6, 6), bool))[1], atol=1e-5)


def test_cached_kernel_over_the_head_major_cache_equals_the_numpy_softmax():
  """Queries at positions 4, 5 against a cache of 8 slots, 6 filled: the unfilled slots hold junk that the mask
  must hide, and the head-major k/v `[B, G, S, D]` are read as the projections' `[B, S, G, D]`."""
  q = jax.random.normal(jax.random.key(0), (2, 2, HEADS, 8))
  k, v = (jax.random.normal(jax.random.key(i), (2, 8, KV_HEADS, 8)) for i in (1, 2))
  mask = masks.Causal()(np.arange(4, 6), np.arange(8)) & (np.arange(8) < 6)[None]
  out = jax.jit(cached_attention)(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, np.asarray(mask)), atol=1e-5)


def test_a_grown_cache_keeps_its_entries_and_index():
  cache = KVCache.zeros(2, 3, KV_HEADS, 4).update(jnp.ones((2, 2, KV_HEADS, 4)), 2 * jnp.ones((2, 2, KV_HEADS, 4)))
  grown = cache.grown(5)
  assert grown.max_len == 5 and int(grown.index) == 2 and grown.k.shape == (2, KV_HEADS, 5, 4)
  np.testing.assert_array_equal(grown.v[:, :, :3], cache.v)
  np.testing.assert_array_equal(grown.k[:, :, 3:], 0.0)
  with pytest.raises(ConfigError, match="only grows"):
    cache.grown(2)


class _DropoutKernel(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, q, k, v, mask):
    return dot_product_attention(q, k, v, mask, nn.Dropout(self.rate), deterministic=False)


def test_written_out_dropout_path_equals_the_fused_path_when_nothing_drops():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, h, 8)) for i, h in enumerate((HEADS, KV_HEADS, KV_HEADS)))
  mask = masks.Causal()(np.arange(5), np.arange(5))
  fused = dot_product_attention(q, k, v, mask)
  np.testing.assert_allclose(_DropoutKernel(0.0).apply({}, q, k, v, mask), fused, atol=1e-6)
  dropped = _DropoutKernel(0.5).apply({}, q, k, v, mask, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(dropped, fused)


def _hand_mha(x, params, heads, mask):
  p = jax.tree.map(np.asarray, nn.unbox(params))
  q, k, v = (np.einsum("ble,ehd->blhd", np.asarray(x, np.float64), p[n]["kernel"]) for n in ("query", "key", "value"))
  return np.einsum("blhd,hde->ble", _numpy_attention(q, k, v, mask), p["out"]["kernel"])


def test_gqa_with_as_many_kv_heads_as_heads_is_standard_mha():
  x = jax.random.normal(jax.random.key(3), (2, 7, EMBED))
  layer = Attention(HEADS, num_kv_heads=HEADS)
  variables = _init(layer, x)
  np.testing.assert_allclose(jax.jit(layer.apply)(variables, x)[0],
                             _hand_mha(x, variables["params"], HEADS, np.tri(7, dtype=bool)), atol=1e-5)


def test_gqa_equals_mha_whose_kv_heads_repeat_for_each_group():
  x = jax.random.normal(jax.random.key(5), (2, 7, EMBED))
  gqa = Attention(HEADS, num_kv_heads=KV_HEADS)
  params = nn.unbox(_init(gqa, x))["params"]
  group = HEADS // KV_HEADS
  repeated = {name: {"kernel": jnp.repeat(params[name]["kernel"], group, axis=1)} for name in ("key", "value")}
  np.testing.assert_allclose(jax.jit(gqa.apply)({"params": params}, x)[0],
                             _hand_mha(x, params | repeated, HEADS, np.tri(7, dtype=bool)), atol=1e-5)


def _reach(mask_builder, length, changed):
  """Which output positions move when input position `changed` moves, through a randomly initialised layer."""
  x = jax.random.normal(jax.random.key(1), (1, length, EMBED))
  layer = Attention(HEADS, KV_HEADS, mask=mask_builder)
  variables = _init(layer, x)
  apply = jax.jit(layer.apply)
  moved = np.abs(apply(variables, x.at[:, changed].add(1.0))[0] - apply(variables, x)[0]).max(axis=(0, 2))
  return moved > 0


def test_prefix_tokens_attend_bidirectionally_and_the_rest_causally():
  np.testing.assert_array_equal(_reach(masks.PrefixCausal(3), 6, changed=2), True)  # a later prefix token
  np.testing.assert_array_equal(_reach(masks.PrefixCausal(3), 6, changed=3), [0, 0, 0, 1, 1, 1])


def test_block_causal_reaches_its_scale_and_the_finer_ones():
  np.testing.assert_array_equal(_reach(masks.BlockCausal((1, 4, 4)), 9, changed=3), [0] + [1] * 8)


def test_spatial_window_keeps_frames_apart():
  grid = (3, 2, 2)
  np.testing.assert_array_equal(_reach(masks.Windowed.spatial(grid), 12, changed=5), [0] * 4 + [1] * 4 + [0] * 4)


def test_block_causal_decoding_one_scale_per_call_equals_the_full_forward():
  sizes = (1, 4, 9)  # VAR decodes a whole scale per step
  length = sum(sizes)
  x = jax.random.normal(jax.random.key(7), (2, length, EMBED))
  layer = Attention(HEADS, KV_HEADS, mask=masks.BlockCausal(sizes))
  variables = _init(layer, x)
  full = jax.jit(layer.apply)(variables, x)[0]
  cache = KVCache.zeros(2, length, KV_HEADS, EMBED // HEADS)
  start, outputs = 0, []
  for size in sizes:
    out, cache = layer.apply(variables, x[:, start:start + size], cache=cache)
    outputs.append(out)
    start += size
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)


def test_bad_head_counts_and_window_lengths_name_the_fix():
  x = jnp.zeros((1, 2, EMBED))
  with pytest.raises(ConfigError, match="num_kv_heads=3 must divide num_heads=4"):
    Attention(HEADS, num_kv_heads=3).init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="width 32 is not divisible by num_heads=5"):
    Attention(5).init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="does not flatten the grid"):
    Attention(HEADS, mask=masks.Windowed.spatial((1, 2, 2))).init(jax.random.key(0), jnp.zeros((1, 5, EMBED)))


class _ExplicitSpatialAttention(nn.Module):
  """VQGAN's AttnBlock written out with einsums, same parameter names as SpatialSelfAttention."""

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = group_norm(x, 4)
    q, k, v = (Conv(channels, (1, 1), name=n)(h).reshape(batch, height * width, channels) for n in "qkv")
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / np.sqrt(channels), axis=-1)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(x.shape)
    return x + Conv(channels, (1, 1), name="proj")(out)


def test_spatial_self_attention_is_vqgans_single_head_attention_over_positions():
  x = jax.random.normal(jax.random.key(2), (2, 4, 4, 8))
  layer = SpatialSelfAttention(num_groups=4)
  variables = _init(layer, x)
  np.testing.assert_allclose(jax.jit(layer.apply)(variables, x),
                             jax.jit(_ExplicitSpatialAttention().apply)(variables, x), atol=1e-5)
