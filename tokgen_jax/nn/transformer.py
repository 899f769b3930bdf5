"""Llama-style transformer blocks (Touvron et al. 2023) with grouped-query attention, RoPE and a KV cache.

The autoregressive generators (LlamaGen-style image AR, HiTVideo-style video AR) run `LlamaStack` two ways:

- full sequence (`cache=None`): training and scoring, causal attention over `[B, L, E]`;
- cached decode (`cache=KVCache`): the new tokens at positions `[index, index + n)` attend to everything written
  so far; `n > 1` prefills a prompt (class / text tokens) in one call, `n == 1` samples a token.

Both paths share one attention function and one mask rule, so decoding one token at a time reproduces the full
forward. Layers are stacked with `nn.scan` (parameters and caches gain a leading "layers" axis), which compiles
one block whatever the depth; `remat_policy` trades recomputation for activation memory.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, and `layers` when scanned); activations
are constrained to (`batch`, `length`, `embed` | `mlp` | `heads`, `kv`).
"""

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.rope import apply_rope

Dtype = Any

_HIDDEN_AXES = ("batch", "length", "embed")
_HEAD_AXES = ("batch", "length", "heads", "kv")

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


def llama_mlp_dim(embed_dim: int, multiple_of: int = 256) -> int:
  """SwiGLU hidden width of Llama / LlamaGen: `2/3 · 4E` rounded up to `multiple_of` (same FLOPs as a 4E GELU MLP)."""
  hidden = int(2 * 4 * embed_dim / 3)
  return multiple_of * math.ceil(hidden / multiple_of)


class Projection(nn.Module):
  """A bias-free linear map contracting the last `in_axes` dims of x into `features`, with a named kernel.

  The kernel is `[*in_shape, *features]` so heads stay their own (shardable) dimension instead of being folded
  into a flat matrix; initialized with fan-in scaling over all contracted dims (LeCun normal).
  """

  features: tuple[int, ...]
  axes: tuple[str | None, ...]
  in_axes: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[x.ndim - self.in_axes:]
    contracted = tuple(range(self.in_axes))
    outputs = tuple(range(self.in_axes, self.in_axes + len(self.features)))
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=contracted, out_axis=outputs)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), in_shape + tuple(self.features),
                        self.param_dtype)
    return jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_axes)


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich 2019, eq. 4): `x / sqrt(mean(x²) + eps) · g`, statistics in float32.

  float32 statistics keep bf16 activations from losing the mean square of large residual streams.
  """

  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (normed * scale.astype(jnp.float32)).astype(self.dtype)


class SwiGLU(nn.Module):
  """Gated MLP `W_down (Swish(x W_gate) ⊙ x W_up)` (Shazeer 2020, eq. 6 "FFN_SwiGLU"; biases dropped as in Llama)."""

  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda features, axes, name: Projection(
        (features,), axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    gate = dense(self.hidden_dim, ("embed", "mlp"), "gate")(x)
    up = dense(self.hidden_dim, ("embed", "mlp"), "up")(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), "down")(hidden)


@flax.struct.dataclass
class KVCache:
  """Keys and values of the positions decoded so far, `[B, max_len, kv_heads, head_dim]`, and how many there are.

  `index` is the next free position (an int32 scalar). A `LlamaStack` cache stacks one per layer: every leaf
  gains a leading `[num_layers]` axis so `nn.scan` hands each layer its own slice.
  """

  k: jax.Array
  v: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Dtype = jnp.float32,
            num_layers: int | None = None) -> "KVCache":
    lead = () if num_layers is None else (num_layers,)
    kv = jnp.zeros(lead + (batch, max_len, num_kv_heads, head_dim), dtype)
    return cls(k=kv, v=kv, index=jnp.zeros(lead, jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k.shape[-3]

  def update(self, k_new: jax.Array, v_new: jax.Array) -> "KVCache":
    """Write `[B, n, kv_heads, D]` at positions `[index, index + n)` and advance the index.

    `dynamic_update_slice` clamps a start past `max_len - n`, which would overwrite the latest entries: size the
    cache for the whole sequence (prompt + generated tokens).
    """
    start = (0, self.index, 0, 0)
    k = jax.lax.dynamic_update_slice(self.k, k_new.astype(self.k.dtype), start)
    v = jax.lax.dynamic_update_slice(self.v, v_new.astype(self.v.dtype), start)
    k, v = (nn.with_logical_constraint(a, _HEAD_AXES) for a in (k, v))
    return KVCache(k=k, v=v, index=self.index + k_new.shape[1])


def attention_mask(query_positions: jax.Array, key_positions: jax.Array, prefix_len: int = 0,
                   num_written: jax.Array | int | None = None) -> jax.Array:
  """`[Lq, Lk]` boolean: query at sequence position p may read key at position s.

  Causal (`s <= p`), plus prefix-LM (Raffel et al. 2020): keys in the first `prefix_len` positions are readable by
  every query, so prefix tokens attend to each other bidirectionally. LlamaGen's class/text conditioning is causal
  throughout (`prefix_len=0`). `num_written` hides empty cache slots.
  """
  p, s = query_positions[:, None], key_positions[None, :]
  mask = (s <= p) | (s < prefix_len)
  if num_written is not None:
    mask &= s < num_written
  return mask


def grouped_query_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                            dropout: nn.Module | None = None, deterministic: bool = True) -> jax.Array:
  """`softmax(q kᵀ / sqrt(d) + mask) v` (Vaswani et al. 2017, eq. 1) with grouped-query heads (Ainslie et al. 2023).

  q `[B, Lq, H, D]`, k/v `[B, Lk, G, D]` with G dividing H: query heads `g·H/G ... (g+1)·H/G - 1` share kv head
  g (Llama's `repeat_kv`). Logits and softmax are float32 whatever the compute dtype.
  """
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim) * jnp.asarray(head_dim ** -0.5, q.dtype)
  logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout is not None:
    weights = dropout(weights, deterministic=deterministic)
  out = jnp.einsum("bkgqs,bskd->bqkgd", weights.astype(v.dtype), v)
  return out.reshape(batch, length, heads, head_dim)


def attention_dims(features: int, num_heads: int, num_kv_heads: int | None = None,
                   head_dim: int | None = None) -> tuple[int, int, int]:
  """(heads, kv_heads, head_dim) of an attention layer over embedding width `features`, validated."""
  kv_heads = num_kv_heads or num_heads
  if num_heads % kv_heads:
    raise ConfigError(f"Attention: num_kv_heads={kv_heads} must divide num_heads={num_heads} (each kv head serves "
                      f"an equal group of query heads); pick a divisor of {num_heads}.")
  if head_dim is None:
    if features % num_heads:
      raise ConfigError(f"Attention: embedding width {features} is not divisible by num_heads={num_heads}; change "
                        f"the width or the head count, or set head_dim explicitly.")
    head_dim = features // num_heads
  return num_heads, kv_heads, head_dim


class Attention(nn.Module):
  """Causal multi-head self-attention with grouped-query kv heads, RoPE on q and k, and an optional KV cache.

  Call with `cache=None` for the full sequence (positions `[0, L)`), or with a per-layer `KVCache` to process new
  tokens at positions `[index, index + n)`; returns `(out, cache)`. `cos, sin` (from `rope_frequencies`) are those
  of exactly the tokens in x; None skips RoPE. A bidirectional prefix must be prefilled in one call (a cached
  query never sees keys written after it).
  """

  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  prefix_len: int = 0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array | None = None, sin: jax.Array | None = None,
               cache: KVCache | None = None, deterministic: bool = True) -> tuple[jax.Array, KVCache | None]:
    heads, kv_heads, head_dim = attention_dims(x.shape[-1], self.num_heads, self.num_kv_heads, self.head_dim)
    length = x.shape[1]
    if cache is not None:
      _check_cache(cache, length, kv_heads, head_dim)
    proj = lambda h, name: Projection((h, head_dim), ("embed", "heads", "kv"), dtype=self.dtype,
                                      param_dtype=self.param_dtype, name=name)
    q, k, v = proj(heads, "query")(x), proj(kv_heads, "key")(x), proj(kv_heads, "value")(x)
    q, k, v = (nn.with_logical_constraint(a, _HEAD_AXES) for a in (q, k, v))
    if cos is not None:
      q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    if cache is None:
      offset, num_written = 0, None
    else:
      offset = cache.index
      cache = cache.update(k, v)
      k, v, num_written = cache.k, cache.v, cache.index
    mask = attention_mask(offset + jnp.arange(length), jnp.arange(k.shape[1]), self.prefix_len, num_written)
    dropout = nn.Dropout(self.attention_dropout_rate) if self.attention_dropout_rate else None
    out = grouped_query_attention(q, k, v, mask, dropout, deterministic)
    out = Projection((x.shape[-1],), ("heads", "kv", "embed"), in_axes=2, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="out")(out)
    return nn.with_logical_constraint(out, _HIDDEN_AXES), cache


def _check_cache(cache: KVCache, length: int, kv_heads: int, head_dim: int) -> None:
  if cache.k.ndim != 4 or cache.k.shape[2:] != (kv_heads, head_dim):
    raise ConfigError(f"Attention: KV cache keys {cache.k.shape} do not match [B, max_len, kv_heads={kv_heads}, "
                      f"head_dim={head_dim}]; build the cache with LlamaStack.init_cache for this model.")
  if length > cache.max_len:
    raise ConfigError(f"Attention: {length} new tokens do not fit a KV cache of max_len={cache.max_len}; "
                      f"init the cache with max_len >= the full sequence length (prompt + generated).")


class LlamaBlock(nn.Module):
  """Pre-norm block: `x + Drop(Attn(RMSNorm(x)))`, then `x + Drop(SwiGLU(RMSNorm(x)))` (Llama, LlamaGen).

  `__call__(x, cos, sin, cache) -> (x, cache)` is shaped as an `nn.scan` body: x is the carry, cos/sin are
  broadcast, the cache is scanned over layers. `deterministic` is a field (not an argument) so scan and remat see
  only arrays.
  """

  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  prefix_len: int = 0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  norm_eps: float = 1e-5
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array | None = None, sin: jax.Array | None = None,
               cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    norm = lambda name: RMSNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    residual_dropout = nn.Dropout(self.dropout_rate)
    x = nn.with_logical_constraint(x, _HIDDEN_AXES)
    h, cache = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.prefix_len,
                         self.attention_dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="attention")(norm("attention_norm")(x), cos, sin, cache, self.deterministic)
    x = x + residual_dropout(h, deterministic=self.deterministic)
    h = SwiGLU(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")(norm("mlp_norm")(x))
    x = x + residual_dropout(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x.astype(self.dtype), _HIDDEN_AXES), cache


def remat_policy(name: str) -> Any:
  """The `jax.checkpoint` policy for a config name; "none" (no remat) returns None as well, see `_block_class`."""
  policies = {"none": None, "full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable,
              "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
  if name not in policies:
    raise ConfigError(f"LlamaStack: remat_policy={name!r} is unknown; choose one of {REMAT_POLICIES} (none keeps "
                      f"all activations, full recomputes each block in the backward pass).")
  return policies[name]


class LlamaStack(nn.Module):
  """`num_layers` LlamaBlocks (scanned or unrolled) and a final RMSNorm: `(x, cos, sin, cache) -> (y, cache)`.

  x `[B, L, E]` is cast to `dtype` (bf16 compute keeps float32 params when `param_dtype` is float32). With
  `scan_layers` the parameters of all blocks are stacked along a leading "layers" axis (one compiled block);
  unrolled blocks are named `layers_{i}` with the same per-layer parameter trees. `cache` is the stacked
  `init_cache(...)` (leading `[num_layers]` axis) in both modes.
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  prefix_len: int = 0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  norm_eps: float = 1e-5
  remat_policy: str = "none"
  scan_layers: bool = True
  final_norm: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def init_cache(self, batch: int, max_len: int, features: int) -> KVCache:
    """An empty stacked cache for `batch` sequences of up to `max_len` tokens, embedding width `features`."""
    _, kv_heads, head_dim = attention_dims(features, self.num_heads, self.num_kv_heads, self.head_dim)
    return KVCache.zeros(batch, max_len, kv_heads, head_dim, self.dtype, num_layers=self.num_layers)

  def _block_class(self) -> type[nn.Module]:
    policy = remat_policy(self.remat_policy)
    if self.remat_policy == "none":
      return LlamaBlock
    # Inside scan, CSE across iterations cannot undo the remat, so the extra barriers are not needed.
    return nn.remat(LlamaBlock, policy=policy, prevent_cse=not self.scan_layers)

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array | None = None, sin: jax.Array | None = None,
               cache: KVCache | None = None, deterministic: bool = True) -> tuple[jax.Array, KVCache | None]:
    block_cls = self._block_class()
    kwargs = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_kv_heads=self.num_kv_heads,
                  head_dim=self.head_dim, prefix_len=self.prefix_len, dropout_rate=self.dropout_rate,
                  attention_dropout_rate=self.attention_dropout_rate, norm_eps=self.norm_eps,
                  deterministic=deterministic, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    if self.scan_layers:
      scanned = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast, 0), length=self.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, cache = scanned(**kwargs, name="layers")(x, cos, sin, cache)
    else:
      layer_caches = []
      for i in range(self.num_layers):
        layer_cache = None if cache is None else jax.tree.map(lambda a, i=i: a[i], cache)
        x, layer_cache = block_cls(**kwargs, name=f"layers_{i}")(x, cos, sin, layer_cache)
        layer_caches.append(layer_cache)
      cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *layer_caches)
    if self.final_norm:
      x = RMSNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)
    return x, cache

