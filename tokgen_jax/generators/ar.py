"""Autoregressive token generator: a Llama-style decoder over visual tokens (LlamaGen; HiTVideo's text-to-video AR).

Sequence layout (LlamaGen, Sun et al. 2024, §2.2): `P` condition positions, then the visual tokens:

    input   [c_0 .. c_{P-1}, x_0 .. x_{N-2}]      length P + N - 1
    target  [               x_0 .. x_{N-1}]       read at positions P - 1 .. P + N - 2

- Conditions: a class embedding (P = 1; the extra row `num_classes` is the learned null class of classifier-free
  guidance), projected text embeddings (P = `text_length`; unconditional = a learned `[text_length, text_dim]`
  embedding replacing the text, as HiTVideo's "learned unconditional embedding"), or a learned start token.
  In training, conditions are replaced by the unconditional one with probability `cond_dropout_rate` (0.1 in
  LlamaGen), so one model gives both terms of CFG.
- Token layers: the visual sequence concatenates `len(vocab_sizes)` layers, coarse first, each on its own grid
  `layer_grids[l]` with its own vocabulary, embedding table and output head; a learned layer embedding tells
  them apart (HiTVideo's hierarchical tokens; RVQ depths; factorized LFQ indices, 2^18 as 2 x 2^9). Inside a
  layer tokens follow `ordering` (`generators/orderings.py`).
- Positions: RoPE over the grid axes of each token's cell (`rope="grid"`: 2D (h, w) for images, 3D (t, h, w) for
  video, as LlamaGen's 2D RoPE and HiTVideo's 3D RoPE), condition positions at coordinate 0 (LlamaGen gives its
  class/text tokens zero rotation); `rope="sequence"` uses 1D positions 0 .. P + N - 2.
- Logits of all layers share one padded width `max(vocab_sizes)`: entries past a layer's vocabulary are
  `INVALID_LOGIT`, so a softmax over them is the layer's own softmax and a jitted decode loop has one shape.

`__call__` scores a whole sequence (training, teacher-forced eval); `prefill` + `decode` run the same network one
position at a time against a KV cache (`generators/sampling.py`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import orderings
from tokgen_jax.generators.conditioning import prefix_embeddings, setup_prefix, validate_conditioning
from tokgen_jax.nn.attention import KVCache, attention_dims
from tokgen_jax.nn.projection import Projection, relayout_kernels
from tokgen_jax.nn.rope import rope_frequencies
from tokgen_jax.nn.transformer import LlamaStack, llama_mlp_dim, unstack_layers

ROPE_MODES = ("grid", "sequence")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
INVALID_LOGIT = -1e9  # finite, so 0 · logit stays 0 in any downstream arithmetic
Dtype = Any

_embedding_init = nn.initializers.normal(stddev=0.02)  # LlamaGen's initializer_range


class ARTransformer(nn.Module):
  """Decoder-only transformer over token layers, conditioned on a class, a text or nothing (see module doc).

  `cond` arguments are dicts: `{"label": int [B]}` for class conditioning, `{"text": float [B, text_length,
  text_dim], "text_mask": bool [B, text_length]}` for text (padding positions get a learned pad vector), `{}`
  for none. `unconditional` (bool [B]) forces the unconditional embedding for those rows (CFG).
  """

  vocab_sizes: tuple[int, ...]
  layer_grids: tuple[tuple[int, ...], ...]
  embed_dim: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int | None = None
  mlp_dim: int = 0  # 0: Llama's 2/3·4E rounded up to 256
  conditioning: str = "class"
  num_classes: int = 0
  text_length: int = 0
  text_dim: int = 0
  cond_dropout_rate: float = 0.1
  ordering: str = "row_major"
  rope: str = "grid"
  rope_theta: float = 10000.0
  dropout_rate: float = 0.0
  token_dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  attention_implementation: str = "xla"  # "cudnn": the fused GPU kernel (bf16 / fp16 compute)
  remat_policy: str = "none"
  scan_layers: bool = True
  kernel_layout: str = "in_out"  # of every projection; the sampler may decode with another (`for_decoding`)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  # ------------------------------------------------------------------------------------------ static layout

  @property
  def prefix_length(self) -> int:
    return self.text_length if self.conditioning == "text" else 1

  @property
  def layer_lengths(self) -> tuple[int, ...]:
    return tuple(math.prod(grid) for grid in self.layer_grids)

  @property
  def num_tokens(self) -> int:
    return sum(self.layer_lengths)

  @property
  def max_vocab(self) -> int:
    return max(self.vocab_sizes)

  @property
  def cache_length(self) -> int:
    """Positions a decode writes: the prefix and every token but the last (which is never fed back)."""
    return self.prefix_length + self.num_tokens - 1

  def permutations(self) -> list[np.ndarray]:
    """The ordering of each layer's grid cells (row-major flat indices in sequence order)."""
    return [orderings.order(self.ordering, grid) for grid in self.layer_grids]

  def token_layer_ids(self) -> np.ndarray:
    """`[N]` int32: the token layer of every visual sequence element."""
    return np.repeat(np.arange(len(self.layer_lengths)), self.layer_lengths).astype(np.int32)

  def rope_positions(self) -> np.ndarray:
    """`[P + N - 1, A]` int32 RoPE coordinates of every input position (conditions at 0)."""
    if self.rope == "sequence":
      return np.arange(self.cache_length, dtype=np.int32)[:, None]
    cells = [orderings.positions(perm, grid) for perm, grid in zip(self.permutations(), self.layer_grids)]
    visual = np.concatenate(cells, axis=0)[:-1]
    return np.concatenate([np.zeros((self.prefix_length, visual.shape[1]), np.int32), visual], axis=0)

  def validate(self) -> None:
    name = "ARTransformer"
    if len(self.vocab_sizes) != len(self.layer_grids) or not self.vocab_sizes:
      raise ConfigError(f"{name}: vocab_sizes={self.vocab_sizes} and layer_grids={self.layer_grids} must list one "
                        f"entry per token layer; give both the same (non-zero) length.")
    if len({len(grid) for grid in self.layer_grids}) != 1:
      raise ConfigError(f"{name}: layer_grids={self.layer_grids} mix grid ranks; every layer must be (h, w) or "
                        f"every layer (t, h, w), so RoPE has one number of axes.")
    if min(self.vocab_sizes) < 2:
      raise ConfigError(f"{name}: vocab_sizes={self.vocab_sizes} must each be at least 2.")
    validate_conditioning(self, name)
    if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ConfigError(f"{name}: attention_implementation={self.attention_implementation!r} is not one of "
                        f"{ATTENTION_IMPLEMENTATIONS} (jax.nn.dot_product_attention's kernels).")
    if self.rope not in ROPE_MODES:
      raise ConfigError(f"{name}: rope={self.rope!r} is not one of {ROPE_MODES}.")
    if self.num_tokens < 2:
      raise ConfigError(f"{name}: layer_grids={self.layer_grids} hold {self.num_tokens} token; need at least 2.")

  # ------------------------------------------------------------------------------------------------ modules

  def _stack(self, **parent) -> LlamaStack:
    return LlamaStack(self.num_layers, self.num_heads, self.mlp_dim or llama_mlp_dim(self.embed_dim),
                      num_kv_heads=self.num_kv_heads, dropout_rate=self.dropout_rate,
                      attention_dropout_rate=self.attention_dropout_rate,
                      attention_implementation=self.attention_implementation, remat_policy=self.remat_policy,
                      scan_layers=self.scan_layers, kernel_layout=self.kernel_layout, dtype=self.dtype,
                      param_dtype=self.param_dtype, **parent)

  def init_cache(self, batch: int, length: int | None = None) -> KVCache | tuple[KVCache, ...]:
    """An empty KV cache for `batch` sequences of `length` positions (default `cache_length`, all a draw writes;
    callable on the unbound module; see `LlamaStack.init_cache`)."""
    return self._stack(parent=None).init_cache(batch, length or self.cache_length, self.embed_dim)

  def unrolled(self, params: Any) -> tuple["ARTransformer", Any]:
    """This model with unrolled layers and `params` converted to that layout (as is when already unrolled).
    The cached sampler decodes this way: a scanned stack slices each layer's weights and cache out of the
    stacked arrays at every step, which doubles a GPT-B decode step on the CPU (`bench/ar_sampling.py`)."""
    if not self.scan_layers:
      return self, params
    return self.clone(scan_layers=False), {**params, "stack": unstack_layers(params["stack"], self.num_layers)}

  def for_decoding(self, params: Any, cond: dict[str, jax.Array],
                   kernel_layout: str = "in_out") -> tuple["ARTransformer", Any]:
    """This model and `params` in the layout the cached sampler decodes with: unrolled layers (`unrolled`) and
    projection kernels in `kernel_layout` (`Projection.kernel_layout`; converted by `relayout_kernels` when it is
    not the model's). Which layout streams weights faster at a few rows depends on the CPU's matmul kernels:
    `out_in` cut a GPT-B batch-8 decode step by ~16% on one 2-core machine and cost ~25% on another (an AMD
    EPYC), where `in_out` was within 15% of the best on both; `bench/ar_sampling.py --kernel-layout` measures it.
    `cond` (the sampler's, any batch) gives the shapes the target's parameters are read from."""
    model, params = self.unrolled(params)
    if model.kernel_layout == kernel_layout:
      return model, params
    model = model.clone(kernel_layout=kernel_layout)
    one = {key: value[:1] for key, value in cond.items()}
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, model.num_tokens), jnp.int32),
                                               one)["params"])
    return model, relayout_kernels(params, nn.unbox(target))

  def setup(self):
    self.validate()
    embed = lambda num, name: nn.Embed(num, self.embed_dim, embedding_init=nn.with_logical_partitioning(
        _embedding_init, ("vocab", "embed")), dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    self.token_embeddings = [embed(v, f"token_embedding_{l}") for l, v in enumerate(self.vocab_sizes)]
    self.heads = [Projection((v,), ("embed", "vocab"), kernel_layout=self.kernel_layout, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"head_{l}") for l, v in enumerate(self.vocab_sizes)]
    if len(self.vocab_sizes) > 1:
      self.layer_embedding = self.param("layer_embedding", nn.with_logical_partitioning(
          _embedding_init, (None, "embed")), (len(self.vocab_sizes), self.embed_dim), self.param_dtype)
    setup_prefix(self, _embedding_init, self.kernel_layout)
    if self.conditioning == "none":
      self.start = self.param("start", nn.with_logical_partitioning(_embedding_init, (None, "embed")),
                              (1, self.embed_dim), self.param_dtype)
    self.stack = self._stack()
    self.token_dropout = nn.Dropout(self.token_dropout_rate)

  # ----------------------------------------------------------------------------------------- embeddings

  def condition_embeddings(self, cond: dict[str, jax.Array], batch: int, unconditional: jax.Array | None,
                           train: bool) -> jax.Array:
    """`[B, P, E]`: the condition prefix (`generators/conditioning.py`), or the learned start token."""
    prefix = prefix_embeddings(self, cond, batch, unconditional, train)
    if prefix is None:
      return jnp.broadcast_to(self.start.astype(self.dtype), (batch, 1, self.embed_dim))
    return prefix

  def _embed_layer(self, tokens: jax.Array, layer: int) -> jax.Array:
    x = self.token_embeddings[layer](tokens)
    if len(self.vocab_sizes) > 1:
      x = x + self.layer_embedding[layer].astype(x.dtype)
    return x

  def token_embeddings_of_sequence(self, tokens: jax.Array) -> jax.Array:
    """`[B, n, E]` embeddings of the first n visual tokens `[B, n]` (each through its own layer's table)."""
    bounds = np.cumsum((0,) + self.layer_lengths)
    parts = [self._embed_layer(tokens[:, start:min(end, tokens.shape[1])], layer)
             for layer, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])) if start < tokens.shape[1]]
    return jnp.concatenate(parts, axis=1)

  def _embed_one(self, token: jax.Array, layer: jax.Array) -> jax.Array:
    """`[B, 1, E]` embedding of one token `[B]` of the (traced) layer `layer`."""
    options = [self._embed_layer(jnp.minimum(token, v - 1)[:, None], l) for l, v in enumerate(self.vocab_sizes)]
    return jnp.stack(options)[layer] if len(options) > 1 else options[0]

  # ------------------------------------------------------------------------------------------------ heads

  def _layer_logits(self, hidden: jax.Array, layer: int) -> jax.Array:
    logits = self.heads[layer](hidden).astype(jnp.float32)
    pad = self.max_vocab - self.vocab_sizes[layer]
    return jnp.pad(logits, ((0, 0), (0, 0), (0, pad)), constant_values=INVALID_LOGIT) if pad else logits

  def _sequence_logits(self, hidden: jax.Array) -> jax.Array:
    """Logits `[B, N, V_max]` from the hidden states `[B, N, E]` that predict x_0 .. x_{N-1}."""
    bounds = np.cumsum((0,) + self.layer_lengths)
    return jnp.concatenate([self._layer_logits(hidden[:, start:end], layer)
                            for layer, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]))], axis=1)

  def _next_logits(self, hidden: jax.Array, layer: jax.Array) -> jax.Array:
    """`[B, V_max]` logits of the next token, through the head of its (traced) layer."""
    options = [self._layer_logits(hidden, l)[:, -1] for l in range(len(self.vocab_sizes))]
    return jnp.stack(options)[layer] if len(options) > 1 else options[0]

  def _rope(self, start: jax.Array | int, length: int) -> tuple[jax.Array, jax.Array]:
    head_dim = attention_dims(self.embed_dim, self.num_heads, self.num_kv_heads)[2]
    table = jnp.asarray(self.rope_positions())
    positions = jax.lax.dynamic_slice_in_dim(table, start, length, axis=0)
    return rope_frequencies(head_dim, positions, theta=self.rope_theta)

  # ------------------------------------------------------------------------------------------------- calls

  def __call__(self, tokens: jax.Array, cond: dict[str, jax.Array], unconditional: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """Teacher-forced logits `[B, N, V_max]` (float32) for visual tokens `[B, N]` in sequence order."""
    if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
      raise ConfigError(f"ARTransformer: tokens {tokens.shape} must be [B, {self.num_tokens}] (the layers "
                        f"{self.layer_grids} flattened in sequence order); see GeneratorTask.to_sequence.")
    batch = tokens.shape[0]
    prefix = self.condition_embeddings(cond, batch, unconditional, train)
    x = jnp.concatenate([prefix.astype(self.dtype),
                         self.token_embeddings_of_sequence(tokens[:, :-1]).astype(self.dtype)], axis=1)
    x = self.token_dropout(x, deterministic=not train)
    cos, sin = self._rope(0, x.shape[1])
    hidden, _ = self.stack(x, cos, sin, None, deterministic=not train)
    return self._sequence_logits(hidden[:, self.prefix_length - 1:])

  def prefill(self, cond: dict[str, jax.Array], unconditional: jax.Array | None,
              cache: KVCache | tuple[KVCache, ...]) -> tuple[jax.Array, KVCache | tuple[KVCache, ...]]:
    """Run the condition prefix into an empty cache; returns the logits of x_0 `[B, V_max]` and the cache."""
    batch = (cache[0] if isinstance(cache, tuple) else cache).batch
    x = self.condition_embeddings(cond, batch, unconditional, train=False).astype(self.dtype)
    cos, sin = self._rope(0, self.prefix_length)
    hidden, cache = self.stack(x, cos, sin, cache)
    return self._next_logits(hidden, jnp.int32(0)), cache

  def decode(self, token: jax.Array, index: jax.Array,
             cache: KVCache | tuple[KVCache, ...]) -> tuple[jax.Array, KVCache | tuple[KVCache, ...]]:
    """Feed visual token `index` (`[B]` ids) at position P + index; returns the logits of token index + 1."""
    layer_ids = jnp.asarray(self.token_layer_ids())
    x = self._embed_one(token, layer_ids[index]).astype(self.dtype)
    cos, sin = self._rope(self.prefix_length + index, 1)
    hidden, cache = self.stack(x, cos, sin, cache)
    next_layer = layer_ids[jnp.minimum(index + 1, self.num_tokens - 1)]
    return self._next_logits(hidden, next_layer), cache
