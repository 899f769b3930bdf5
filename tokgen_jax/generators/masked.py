"""Masked generative transformer: a bidirectional transformer over a token grid with a [MASK] token (MaskGIT, Chang
et al. 2022; Muse; MAGVIT's MLM). It predicts every masked position's token at once.

Sequence: `P` condition positions, then the `N` grid positions in row-major order. Every position attends to
every other (`masks.Bidirectional`).

- Tokens are `[B, N, F]`: F sub-tokens per position. F = 1 for a plain codebook. For token factorization (MAGVIT-v2's
  MLM over 2^18 LFQ codes as 2 × 2^9; `quantizers.factorize_indices`) F > 1: the input embedding is the sum of
  the F sub-token embeddings, and there are F output heads. The sequence length does not change.
  Each sub-token table has one extra row, the [MASK] embedding, used wherever `masked` is True.
- Conditions: a class embedding (one position; row `num_classes` is the null class of CFG, as MaskGIT prepends
  `codebook_size + label`), projected text states (`text_length` positions, padding replaced by a learned vector),
  or nothing. In training, `cond_dropout_rate` drops the condition to the null one, so one model gives both
  terms of CFG.
- Positions: a learned absolute table over the P + N positions (MaskGIT, MAGVIT).
- `block="bert"` reproduces MaskGIT: post-LN blocks (`nn/bert.py`), LayerNorm on the embeddings, and each output
  head tied to its token table (`LN(gelu(Dense(h))) @ E^T + b`, maskgit_transformer.py's MlmLayer) with the
  logits sliced to the codebook. `block="llama"` is the package's pre-norm Llama stack (RMSNorm, SwiGLU) with
  untied linear heads.
- Logits of all sub-tokens share one padded width `max(vocab_sizes)`. Entries past a sub-token's vocabulary are
  `INVALID_LOGIT`, as in the AR transformer.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.ar import INVALID_LOGIT
from tokgen_jax.generators.conditioning import prefix_embeddings, setup_prefix, validate_conditioning
from tokgen_jax.nn import masks
from tokgen_jax.nn.bert import BertStack, layer_norm
from tokgen_jax.nn.projection import Projection
from tokgen_jax.nn.transformer import LlamaStack, llama_mlp_dim

BLOCKS = ("llama", "bert")
Dtype = Any

_embedding_init = nn.initializers.truncated_normal(stddev=0.02)  # MaskGIT's and BERT's initializer_range


class MaskedTransformer(nn.Module):
  """Bidirectional token model with a [MASK] token (see module doc).

  `__call__(tokens [B, N, F] int, masked [B, N] bool, cond, unconditional=None, train=False)` returns float32
  logits `[B, N, F, max(vocab_sizes)]` for every position. Tokens under `masked` are ignored, so any value
  may fill them. `cond` is `{"label": [B]}`, `{"text": [B, L, D], "text_mask": [B, L]}` or `{}`.
  """

  vocab_sizes: tuple[int, ...]
  grid: tuple[int, ...]
  embed_dim: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 0  # 0: 4E for bert blocks (MaskGIT 768 → 3072), Llama's 2/3·4E rounded to 256 for llama blocks
  block: str = "llama"
  conditioning: str = "class"
  num_classes: int = 0
  text_length: int = 0
  text_dim: int = 0
  cond_dropout_rate: float = 0.1
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  scan_layers: bool = True
  remat_policy: str = "none"  # "full" recomputes each block in the backward pass (paper sizes on 16 GiB chips)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_tokens(self) -> int:
    return math.prod(self.grid)

  @property
  def num_factors(self) -> int:
    return len(self.vocab_sizes)

  @property
  def max_vocab(self) -> int:
    return max(self.vocab_sizes)

  @property
  def prefix_length(self) -> int:
    return {"class": 1, "text": self.text_length, "none": 0}[self.conditioning]

  @property
  def tied_head(self) -> bool:
    return self.block == "bert"

  def validate(self) -> None:
    name = "MaskedTransformer"
    if not self.vocab_sizes or min(self.vocab_sizes) < 2:
      raise ConfigError(f"{name}: vocab_sizes={self.vocab_sizes} must list each sub-token's vocabulary (>= 2).")
    if not self.grid or min(self.grid) < 1 or self.num_tokens < 2:
      raise ConfigError(f"{name}: grid={self.grid} must be a token grid of at least 2 positions.")
    if self.block not in BLOCKS:
      raise ConfigError(f"{name}: block={self.block!r} is not one of {BLOCKS}.")
    validate_conditioning(self, name)

  def setup(self):
    self.validate()
    embed = lambda rows, name: nn.Embed(rows, self.embed_dim, embedding_init=nn.with_logical_partitioning(
        _embedding_init, ("vocab", "embed")), dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    self.token_embeddings = [embed(v + 1, f"token_embedding_{f}") for f, v in enumerate(self.vocab_sizes)]
    self.positions = self.param("position_embedding", nn.with_logical_partitioning(_embedding_init, (None, "embed")),
                                (self.prefix_length + self.num_tokens, self.embed_dim), self.param_dtype)
    setup_prefix(self, _embedding_init)
    self.embedding_dropout = nn.Dropout(self.dropout_rate)
    if self.block == "bert":
      self.embedding_norm = layer_norm("embedding_norm", self.dtype, self.param_dtype)
      self.stack = BertStack(self.num_layers, self.num_heads, self.mlp_dim or 4 * self.embed_dim,
                             dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                             scan_layers=self.scan_layers, remat_policy=self.remat_policy, dtype=self.dtype,
                             param_dtype=self.param_dtype)
      self.head_transform = Projection((self.embed_dim,), ("embed", None), use_bias=True, dtype=self.dtype,
                                       param_dtype=self.param_dtype, name="head_transform")
      self.head_norm = layer_norm("head_norm", self.dtype, self.param_dtype)
      self.head_biases = [self.param(f"head_bias_{f}", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                                    ("vocab",)), (v,), self.param_dtype)
                          for f, v in enumerate(self.vocab_sizes)]
    else:
      self.stack = LlamaStack(self.num_layers, self.num_heads, self.mlp_dim or llama_mlp_dim(self.embed_dim),
                              mask=masks.Bidirectional(), dropout_rate=self.dropout_rate,
                              attention_dropout_rate=self.attention_dropout_rate, scan_layers=self.scan_layers,
                              remat_policy=self.remat_policy, dtype=self.dtype, param_dtype=self.param_dtype)
      self.heads = [Projection((v,), ("embed", "vocab"), dtype=self.dtype, param_dtype=self.param_dtype,
                               name=f"head_{f}") for f, v in enumerate(self.vocab_sizes)]

  def condition_embeddings(self, cond: dict[str, jax.Array], batch: int, unconditional: jax.Array | None,
                           train: bool) -> jax.Array:
    """`[B, P, E]`: the condition positions (`generators/conditioning.py`; none for `conditioning='none'`)."""
    prefix = prefix_embeddings(self, cond, batch, unconditional, train)
    return jnp.zeros((batch, 0, self.embed_dim), self.dtype) if prefix is None else prefix

  def token_embedding(self, tokens: jax.Array, masked: jax.Array) -> jax.Array:
    """`[B, N, E]`: the sum over sub-tokens of their embeddings, [MASK] (each table's last row) where masked."""
    total = 0.0
    for f, vocab in enumerate(self.vocab_sizes):
      ids = jnp.where(masked, vocab, jnp.clip(tokens[..., f].astype(jnp.int32), 0, vocab - 1))
      total = total + self.token_embeddings[f](ids)
    return total

  def _logits(self, hidden: jax.Array) -> jax.Array:
    per_factor = []
    for f, vocab in enumerate(self.vocab_sizes):
      if self.tied_head:
        h = self.head_norm(nn.gelu(self.head_transform(hidden)))
        table = self.token_embeddings[f].embedding[:vocab]  # sliced to the codebook: [MASK] is never predicted
        logits = h.astype(jnp.float32) @ table.astype(jnp.float32).T + self.head_biases[f].astype(jnp.float32)
      else:
        logits = self.heads[f](hidden).astype(jnp.float32)
      pad = self.max_vocab - vocab
      per_factor.append(jnp.pad(logits, ((0, 0), (0, 0), (0, pad)), constant_values=INVALID_LOGIT) if pad
                        else logits)
    return jnp.stack(per_factor, axis=2)

  def __call__(self, tokens: jax.Array, masked: jax.Array, cond: dict[str, jax.Array],
               unconditional: jax.Array | None = None, train: bool = False) -> jax.Array:
    expected = (self.num_tokens, self.num_factors)
    if tokens.ndim != 3 or tokens.shape[1:] != expected or masked.shape != tokens.shape[:2]:
      raise ConfigError(f"MaskedTransformer: tokens {tokens.shape} must be [B, {expected[0]}, {expected[1]}] "
                        f"(grid {self.grid} in row-major order, {self.num_factors} sub-token(s)) and masked "
                        f"{masked.shape} [B, {expected[0]}].")
    batch = tokens.shape[0]
    x = jnp.concatenate([self.condition_embeddings(cond, batch, unconditional, train).astype(self.dtype),
                         self.token_embedding(tokens, masked).astype(self.dtype)], axis=1)
    x = x + self.positions.astype(self.dtype)[None]
    if self.block == "bert":
      x = self.embedding_norm(x)
    x = self.embedding_dropout(x, deterministic=not train)
    if self.block == "bert":
      hidden = self.stack(x, deterministic=not train)
    else:
      hidden, _ = self.stack(x, deterministic=not train)
    return self._logits(hidden[:, self.prefix_length:])
