"""The one attention of the package: a scaled dot-product kernel taking a boolean mask, and the layers around it.

- `dot_product_attention`: `softmax(q kᵀ / sqrt(d) + mask) v` with grouped-query heads, through
  `jax.nn.dot_product_attention` (XLA everywhere; `implementation="cudnn"` selects the fused GPU kernel), or
  `cached_attention` when attention-weight dropout is live (the fused kernels have none).
- `Attention`: multi-head self-attention with projections carrying logical axis names, RoPE, a `KVCache`, and a
  mask from a builder in `nn/masks.py` (causal by default; block-causal, windowed, bidirectional, prefix-LM).
- `cached_attention`: the written-out kernel over head-major `[B, kv_heads, length, D]` keys and values (a
  `KVCache`'s layout), for decode steps and the dropout path.
- `SpatialSelfAttention`: VQGAN's single-head attention over all H·W positions of a feature map.
"""

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn import masks
from tokgen_jax.nn.conv import Conv
from tokgen_jax.nn.norms import group_norm
from tokgen_jax.nn.projection import Projection
from tokgen_jax.nn.rope import apply_rope

Dtype = Any

HEAD_AXES = ("batch", "length", "heads", "kv")
CACHE_AXES = ("batch", "heads", "length", "kv")
HIDDEN_AXES = ("batch", "length", "embed")


@flax.struct.dataclass
class KVCache:
  """Keys and values of the positions decoded so far, `[B, kv_heads, max_len, head_dim]`, and how many there are.

  `index` is the next free position (an int32 scalar). Heads come before positions so that each (row, head)
  reads its keys as one contiguous `[max_len, head_dim]` matrix: a decode step's `q·kᵀ` is then a plain
  matrix-vector product (3x faster than over the `[B, max_len, heads, D]` layout of the projections, for GPT-B
  on the CPU). A scanned `LlamaStack` stacks one cache per layer (a leading `[num_layers]` axis, which `nn.scan`
  slices); an unrolled one keeps a tuple of per-layer caches.
  """

  k: jax.Array
  v: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Dtype = jnp.float32,
            num_layers: int | None = None) -> "KVCache":
    lead = () if num_layers is None else (num_layers,)
    shape = lead + (batch, num_kv_heads, max_len, head_dim)
    # Two buffers, not one array twice: a jitted step that donates the cache may reuse each in place.
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), index=jnp.zeros(lead, jnp.int32))

  @property
  def batch(self) -> int:
    return self.k.shape[-4]

  @property
  def max_len(self) -> int:
    return self.k.shape[-2]

  def grown(self, max_len: int) -> "KVCache":
    """The same cache with room for `max_len` positions (the new slots zero; the index and entries kept)."""
    if max_len < self.max_len:
      raise ConfigError(f"KVCache.grown: max_len={max_len} is below the cache's {self.max_len}; a cache only grows.")
    pad = [(0, 0)] * self.k.ndim
    pad[-2] = (0, max_len - self.max_len)
    return KVCache(k=jnp.pad(self.k, pad), v=jnp.pad(self.v, pad), index=self.index)

  def update(self, k_new: jax.Array, v_new: jax.Array) -> "KVCache":
    """Write `[B, n, kv_heads, D]` at positions `[index, index + n)` and advance the index.

    `dynamic_update_slice` clamps a start past `max_len - n`, which would overwrite the latest entries: size the
    cache for the whole sequence (prompt + generated tokens).
    """
    start = (0, 0, self.index, 0)
    write = lambda old, new: jax.lax.dynamic_update_slice(old, jnp.swapaxes(new, 1, 2).astype(old.dtype), start)
    k, v = (nn.with_logical_constraint(a, CACHE_AXES) for a in (write(self.k, k_new), write(self.v, v_new)))
    return KVCache(k=k, v=v, index=self.index + k_new.shape[1])


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                          dropout: nn.Module | None = None, deterministic: bool = True,
                          implementation: str | None = None, scale: float | None = None) -> jax.Array:
  """`softmax(scale · q kᵀ + mask) v` (Vaswani et al. 2017, eq. 1; scale 1/sqrt(d) unless given) with
  grouped-query heads (Ainslie et al. 2023).

  q `[B, Lq, H, D]`, k/v `[B, Lk, G, D]` with G dividing H: query heads `g·H/G ... (g+1)·H/G - 1` share kv head
  g (Llama's `repeat_kv`). `mask` is `[Lq, Lk]` or `[B, Lq, Lk]` booleans (True = may attend), None for full
  attention. Logits and softmax are float32 whatever the compute dtype.
  """
  if dropout is None or deterministic:
    k, v = k.astype(q.dtype), v.astype(q.dtype)  # a cache may store another dtype than the compute dtype
    if mask is not None:
      mask = mask[None, None] if mask.ndim == 2 else mask[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)
  head_major = lambda a: jnp.swapaxes(a, 1, 2)
  return cached_attention(q, head_major(k), head_major(v), mask, scale,
                          weights_dropout=lambda w: dropout(w, deterministic=False))


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                     scale: float | None = None, weights_dropout=None) -> jax.Array:
  """`softmax(scale · q kᵀ + mask) v` of queries q `[B, n, H, D]` against head-major k/v `[B, G, S, D]` (a
  `KVCache`'s layout; grouped-query heads as in `dot_product_attention`), mask `[n, S]` or `[B, n, S]` booleans
  or None. The written-out kernel: decode steps read the cache with it, and `dot_product_attention` runs it when
  attention weights drop out (`weights_dropout`, applied to the softmax). Logits and softmax are float32; two
  einsums, so neither k nor v is transposed or copied."""
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[1]
  grouped = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
  scale = head_dim ** -0.5 if scale is None else scale
  logits = jnp.einsum("bqgrd,bgsd->bgrqs", grouped, k.astype(q.dtype), preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask if mask.ndim == 2 else mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if weights_dropout is not None:
    weights = weights_dropout(weights)
  out = jnp.einsum("bgrqs,bgsd->bqgrd", weights.astype(q.dtype), v.astype(q.dtype))
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
  """Multi-head self-attention with grouped-query kv heads, RoPE on q and k, a mask builder and an optional cache.

  Call with `cache=None` for the full sequence (positions `[0, L)`), or with a per-layer `KVCache` to process new
  tokens at positions `[index, index + n)`; returns `(out, cache)`. `cos, sin` (from `rope_frequencies`) are those
  of exactly the tokens in x; None skips RoPE. `mask` (a `nn/masks.py` builder) decides which positions read
  which; cached queries also never read unwritten slots, so a bidirectional prefix must be prefilled in one call.
  Cached calls are inference: `cached_attention` over the cache's head-major layout, without dropout or a fused
  kernel (`implementation` applies to full sequences).

  `normalized`: VAR's attention (`FoundationVision/VAR`, `SelfAttention(attn_l2_norm=True)`): q and k are
  l2-normalized per head and the logits are `exp(s_h)·cos(q, k)` with a learnable per-head log-scale s_h ("scale"
  param, initialised at log 4 and clamped at log 100 in the forward), bounded logits that keep fp16 training
  stable (VAR#38).
  """

  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  mask: masks.MaskBuilder = masks.Causal()
  attention_dropout_rate: float = 0.0
  implementation: str | None = None
  use_bias: bool = False  # Llama has none; BERT-style blocks (MaskGIT) have biases on all four projections
  key_bias: bool = True  # with use_bias; VAR has none on the keys (q and v biases only)
  normalized: bool = False
  kernel_layout: str = "in_out"  # of the four projections (`Projection.kernel_layout`)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _normalize(self, q: jax.Array, k: jax.Array, heads: int) -> tuple[jax.Array, jax.Array]:
    """VAR's l2-normalized q, k with q scaled by `exp(min(s_h, log 100))` (see the class docstring)."""
    log_scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.constant(math.log(4.0)),
                                                                 ("heads",)), (heads,), jnp.float32)
    scale = jnp.exp(jnp.minimum(log_scale, math.log(100.0)))[:, None]
    unit = lambda a: a * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(a.astype(jnp.float32)), -1, keepdims=True),
                                                   1e-12))
    return (unit(q) * scale).astype(q.dtype), unit(k).astype(k.dtype)

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array | None = None, sin: jax.Array | None = None,
               cache: KVCache | None = None, deterministic: bool = True) -> tuple[jax.Array, KVCache | None]:
    heads, kv_heads, head_dim = attention_dims(x.shape[-1], self.num_heads, self.num_kv_heads, self.head_dim)
    length = x.shape[1]
    if cache is not None:
      _check_cache(cache, length, kv_heads, head_dim)
    proj = lambda h, name, bias=True: Projection((h, head_dim), ("embed", "heads", "kv"),
                                                 use_bias=self.use_bias and bias,
                                                 kernel_layout=self.kernel_layout, dtype=self.dtype,
                                                 param_dtype=self.param_dtype, name=name)
    q, k, v = proj(heads, "query")(x), proj(kv_heads, "key", self.key_bias)(x), proj(kv_heads, "value")(x)
    q, k, v = (nn.with_logical_constraint(a, HEAD_AXES) for a in (q, k, v))
    if cos is not None:
      q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if self.normalized:
      q, k = self._normalize(q, k, heads)

    scale = 1.0 if self.normalized else None
    if cache is None:
      self.mask.check_length(length)
      mask = self.mask(jnp.arange(length), jnp.arange(length))
      dropout = nn.Dropout(self.attention_dropout_rate) if self.attention_dropout_rate else None
      out = dot_product_attention(q, k, v, mask, dropout, deterministic, self.implementation, scale=scale)
    else:  # inference: no attention dropout
      offset = cache.index
      cache = cache.update(k, v)
      self.mask.check_length(cache.max_len)
      key_positions = jnp.arange(cache.max_len)
      mask = self.mask(offset + jnp.arange(length), key_positions) & (key_positions < cache.index)[None]
      out = cached_attention(q, cache.k, cache.v, mask, scale=scale)
    out = Projection((x.shape[-1],), ("heads", "kv", "embed"), in_axes=2, use_bias=self.use_bias,
                     kernel_layout=self.kernel_layout, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="out")(out)
    return nn.with_logical_constraint(out, HIDDEN_AXES), cache


def _check_cache(cache: KVCache, length: int, kv_heads: int, head_dim: int) -> None:
  if cache.k.ndim != 4 or (cache.k.shape[1], cache.k.shape[3]) != (kv_heads, head_dim):
    raise ConfigError(f"Attention: KV cache keys {cache.k.shape} do not match [B, kv_heads={kv_heads}, max_len, "
                      f"head_dim={head_dim}]; build the cache with the model's init_cache.")
  if length > cache.max_len:
    raise ConfigError(f"Attention: {length} new tokens do not fit a KV cache of max_len={cache.max_len}; "
                      f"init the cache with max_len >= the full sequence length (prompt + generated).")


class SpatialSelfAttention(nn.Module):
  """Single-head self-attention over all H·W positions with a residual (VQGAN's mid-block AttnBlock)."""

  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = group_norm(x, self.num_groups)
    q, k, v = (Conv(channels, (1, 1), name=n)(h).reshape(batch, height * width, 1, channels) for n in "qkv")
    out = dot_product_attention(q, k, v, mask=None).reshape(batch, height, width, channels)
    return x + Conv(channels, (1, 1), name="proj")(out)


class CrossAttention(nn.Module):
  """Multi-head attention of queries from x `[B, N, D]` to keys and values of a context `[B, L, D_c]`.

  `context_mask` (bool `[B, L]`, True = a real token) hides padding keys from every query; None attends to all.
  Text-to-image transformers read their caption this way (PixArt-α, Chen et al. 2023, §2.3, Fig. 4). PixArt's
  projections have biases (`use_bias`) and its output projection starts at zero (`zero_init_output`), so a residual `x + CrossAttention(x, text)` is the identity at init. Kernels are
  xavier-uniform over their flattened `[in, out]` matrix, as torch's `nn.Linear` under DiT/PixArt's init.
  Returns `[B, N, D]`.
  """

  num_heads: int
  head_dim: int | None = None
  use_bias: bool = False
  zero_init_output: bool = False
  implementation: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _dense(self, features, in_axes, axes, kernel_init, name):
    return Projection(features, axes, in_axes=in_axes, use_bias=self.use_bias, kernel_init=kernel_init,
                      dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, context_mask: jax.Array | None = None) -> jax.Array:
    heads, _, head_dim = attention_dims(x.shape[-1], self.num_heads, head_dim=self.head_dim)
    if context.ndim != 3 or context.shape[0] != x.shape[0]:
      raise ConfigError(f"CrossAttention: context {context.shape} must be [B, L, D_c] with the queries' batch "
                        f"{x.shape[0]}; pass the (projected) text states, one row per example.")
    proj = lambda name: self._dense((heads, head_dim), 1, ("embed", "heads", "kv"), "xavier", name)
    q = proj("query")(x)
    k, v = proj("key")(context), proj("value")(context)
    q, k, v = (nn.with_logical_constraint(a, HEAD_AXES) for a in (q, k, v))
    mask = None
    if context_mask is not None:
      mask = jnp.broadcast_to(context_mask.astype(bool)[:, None, :], (x.shape[0], x.shape[1], context.shape[1]))
    out = dot_product_attention(q, k, v, mask, implementation=self.implementation)
    out_init = "zeros" if self.zero_init_output else "xavier"
    out = self._dense((x.shape[-1],), 2, ("heads", "kv", "embed"), out_init, "out")(out)
    return nn.with_logical_constraint(out, HIDDEN_AXES)
