"""Llama-style transformer blocks (Touvron et al. 2023) with grouped-query attention, RoPE and a KV cache.

The autoregressive generators (LlamaGen-style image AR, HiTVideo-style video AR) run `LlamaStack` two ways:

- full sequence (`cache=None`): training and scoring, causal attention over `[B, L, E]`;
- cached decode (`cache=KVCache`): the new tokens at positions `[index, index + n)` attend to everything written
  so far; `n > 1` prefills a prompt (class / text tokens) in one call, `n == 1` samples a token.

Both paths share one attention (`nn/attention.py`) and one mask builder (`nn/masks.py`, causal by default), so
decoding one token at a time reproduces the full forward. Layers are stacked with `nn.scan` (parameters and
caches gain a leading "layers" axis), which compiles one block whatever the depth; `remat_policy` trades
recomputation for activation memory.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, and `layers` when scanned); activations
are constrained to (`batch`, `length`, `embed` | `mlp` | `heads`, `kv`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn import masks
from tokgen_jax.nn.attention import HIDDEN_AXES, Attention, KVCache, attention_dims
from tokgen_jax.nn.projection import Projection

Dtype = Any

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


def llama_mlp_dim(embed_dim: int, multiple_of: int = 256) -> int:
  """SwiGLU hidden width of Llama / LlamaGen: `2/3 · 4E` rounded up to `multiple_of` (same FLOPs as a 4E GELU MLP)."""
  hidden = int(2 * 4 * embed_dim / 3)
  return multiple_of * math.ceil(hidden / multiple_of)


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
  kernel_layout: str = "in_out"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda features, axes, name: Projection(
        (features,), axes, kernel_layout=self.kernel_layout, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)
    gate = dense(self.hidden_dim, ("embed", "mlp"), "gate")(x)
    up = dense(self.hidden_dim, ("embed", "mlp"), "up")(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), "down")(hidden)


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
  mask: masks.MaskBuilder = masks.Causal()
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  attention_implementation: str | None = None
  norm_eps: float = 1e-5
  deterministic: bool = True
  kernel_layout: str = "in_out"  # of every projection (`Projection.kernel_layout`)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array | None = None, sin: jax.Array | None = None,
               cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    norm = lambda name: RMSNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    residual_dropout = nn.Dropout(self.dropout_rate)
    x = nn.with_logical_constraint(x, HIDDEN_AXES)
    h, cache = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.mask, self.attention_dropout_rate,
                         self.attention_implementation, kernel_layout=self.kernel_layout, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="attention")(norm("attention_norm")(x), cos, sin, cache, self.deterministic)
    x = x + residual_dropout(h, deterministic=self.deterministic)
    h = SwiGLU(self.mlp_dim, self.kernel_layout, dtype=self.dtype, param_dtype=self.param_dtype,
               name="mlp")(norm("mlp_norm")(x))
    x = x + residual_dropout(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x.astype(self.dtype), HIDDEN_AXES), cache


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
  unrolled blocks are named `layers_{i}` with the same per-layer parameter trees (`unstack_layers` converts).
  `cache` is `init_cache(...)`: stacked for scanned layers, one buffer per layer for unrolled ones, so each
  layer's decode step updates its own buffer in place (slicing and re-stacking a stacked cache copies all of it
  every step).
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  mask: masks.MaskBuilder = masks.Causal()
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  attention_implementation: str | None = None
  norm_eps: float = 1e-5
  remat_policy: str = "none"
  scan_layers: bool = True
  final_norm: bool = True
  kernel_layout: str = "in_out"  # of every projection (`Projection.kernel_layout`)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def init_cache(self, batch: int, max_len: int, features: int) -> KVCache | tuple[KVCache, ...]:
    """An empty cache for `batch` sequences of up to `max_len` tokens, embedding width `features`: one stacked
    `KVCache` (leading `[num_layers]` axis) for scanned layers, a tuple of per-layer caches for unrolled ones."""
    _, kv_heads, head_dim = attention_dims(features, self.num_heads, self.num_kv_heads, self.head_dim)
    if self.scan_layers:
      return KVCache.zeros(batch, max_len, kv_heads, head_dim, self.dtype, num_layers=self.num_layers)
    return tuple(KVCache.zeros(batch, max_len, kv_heads, head_dim, self.dtype) for _ in range(self.num_layers))

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
                  head_dim=self.head_dim, mask=self.mask, dropout_rate=self.dropout_rate,
                  attention_dropout_rate=self.attention_dropout_rate,
                  attention_implementation=self.attention_implementation, norm_eps=self.norm_eps,
                  deterministic=deterministic, kernel_layout=self.kernel_layout, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    if self.scan_layers:
      scanned = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast, 0), length=self.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, cache = scanned(**kwargs, name="layers")(x, cos, sin, cache)
    else:
      _check_layer_caches(cache, self.num_layers)
      layer_caches = []
      for i in range(self.num_layers):
        x, layer_cache = block_cls(**kwargs, name=f"layers_{i}")(x, cos, sin, None if cache is None else cache[i])
        layer_caches.append(layer_cache)
      cache = None if cache is None else tuple(layer_caches)
    if self.final_norm:
      x = RMSNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)
    return x, cache


def _check_layer_caches(cache: Any, num_layers: int) -> None:
  if cache is not None and not (isinstance(cache, tuple) and len(cache) == num_layers):
    raise ConfigError(f"LlamaStack: unrolled layers take a tuple of {num_layers} per-layer KVCaches, got "
                      f"{type(cache).__name__}; build the cache with init_cache of the same stack (scan_layers "
                      f"decides its form).")


def unstack_layers(stack_params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """A scanned `LlamaStack`'s parameters (`{"layers": stacked, ...}`) in the unrolled layout (`layers_{i}`), for
  the same stack with `scan_layers=False`; other entries (the final norm) are kept."""
  if "layers" not in stack_params:
    raise ConfigError(f"unstack_layers: expected scanned LlamaStack parameters with a 'layers' entry, got "
                      f"{sorted(stack_params)}.")
  rest = {name: value for name, value in stack_params.items() if name != "layers"}
  return rest | {f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], stack_params["layers"]) for i in range(num_layers)}
