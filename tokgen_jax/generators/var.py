"""VAR, next-scale prediction (Tian et al. 2024, "Visual Autoregressive Modeling", `FoundationVision/VAR`).

The sequence is the S token maps of a multi-scale residual quantizer (`quantizers/multiscale.py`), each flattened
row-major and concatenated coarse first: L = Σ s_k² positions (680 for VAR's scales 1, 2, 3, 4, 5, 6, 8, 10, 13,
16). Output position i predicts token i; its input is

- at scale 0 (s_0² positions): the class embedding plus a learned start position (`start`);
- at scale k > 0: `Linear(D_vae → C)` of the quantizer's reconstruction f̂ of scales < k area-downsampled to scale k
  (`MultiScaleResidualQuantizer.next_scale_inputs`: VAR's `idxBl_to_var_input`), so the model sees what it
  generated so far in the tokenizer's own feature space;

plus a learned position per token (`positions` `[L, C]`) and a learned embedding per scale (`level_embedding`).

Each block (VAR's `AdaLNSelfAttn`, `shared_aln=False`): `x + γ₁·Attn(LN(x)(1 + scale₁) + shift₁)`, then the same
with a GELU(tanh) MLP of ratio 4, the six vectors from `SiLU → Linear` of the class embedding (adaLN); LayerNorm
without affine, eps 1e-6. Attention is block-causal over the scales (`masks.BlockCausal`: a token reads every
token of its own and coarser scales) and, with `normalized_attention`, VAR's l2-normalized attention
(`nn/attention.py`). The head is `Linear(LN(x)(1 + scale) + shift)` with its own adaLN. Stochastic depth grows
linearly over the blocks to `drop_path_rate` (VAR: 0.1·depth/24). The class table has a null row
(`num_classes`) for classifier-free guidance, taken with probability `cond_dropout_rate` in training (VAR: 0.1).

`__call__` scores a whole sequence from its teacher-forced inputs; `step(scale, ...)` runs one scale against a
KV cache (every block its own `KVCache`), which is how `var_sampling.py` draws an image in S steps.

Initialisation is ours (lecun / xavier, adaLN-Zero: zero modulation), not VAR's scaled truncated normals.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion.dit import MLP
from tokgen_jax.nn import masks
from tokgen_jax.nn.adaln import AdaLNModulation, gate, layer_norm, modulate
from tokgen_jax.nn.attention import HIDDEN_AXES, Attention, KVCache, attention_dims
from tokgen_jax.nn.projection import Projection
from tokgen_jax.nn.transformer import remat_policy

Dtype = Any
NORM_EPS = 1e-6  # VAR's norm_eps
CONDITIONINGS = ("class",)

_embedding_init = nn.initializers.normal(stddev=0.02)


class VARBlock(nn.Module):
  """One adaLN block over `[B, n, C]` given the condition vector `[B, C]`: `(x, c, cache, deterministic) ->
  (x, cache)`."""

  num_heads: int
  mask: masks.BlockCausal
  mlp_ratio: float = 4.0
  normalized_attention: bool = True
  drop_path_rate: float = 0.0
  attention_implementation: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, cache: KVCache | None = None,
               deterministic: bool = True) -> tuple[jax.Array, KVCache | None]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # One mask per example: stochastic depth drops a whole residual branch (timm's DropPath).
    drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2))
    x = nn.with_logical_constraint(x, HIDDEN_AXES)
    shift1, scale1, gate1, shift2, scale2, gate2 = AdaLNModulation(6, name="modulation", **kw)(c)
    h, cache = Attention(self.num_heads, mask=self.mask, use_bias=True, key_bias=False,
                         normalized=self.normalized_attention,
                         implementation=self.attention_implementation, name="attention", **kw)(
                             modulate(layer_norm(x, NORM_EPS), shift1, scale1), cache=cache)
    x = x + drop_path(gate(h, gate1), deterministic=deterministic)
    h = MLP(int(x.shape[-1] * self.mlp_ratio), name="mlp", **kw)(modulate(layer_norm(x, NORM_EPS), shift2, scale2))
    x = x + drop_path(gate(h, gate2), deterministic=deterministic)
    return nn.with_logical_constraint(x.astype(self.dtype), HIDDEN_AXES), cache


class VARTransformer(nn.Module):
  """Next-scale prediction over `scales` (see the module docstring).

  `cond` is `{"label": int [B]}`; `unconditional` (bool [B]) gives those rows the null class (CFG).
  """

  scales: tuple[int, ...]
  codebook_size: int
  vae_dim: int
  embed_dim: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  conditioning: str = "class"
  num_classes: int = 1000
  cond_dropout_rate: float = 0.1
  normalized_attention: bool = True
  drop_path_rate: float = 0.0
  attention_implementation: str = "xla"
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  # ------------------------------------------------------------------------------------------ static layout

  text_length = 0  # the class-conditional generators' second-stage fields (SecondStage reads them)

  @property
  def scale_lengths(self) -> tuple[int, ...]:
    return tuple(s * s for s in self.scales)

  @property
  def num_tokens(self) -> int:
    return sum(self.scale_lengths)

  @property
  def num_scales(self) -> int:
    return len(self.scales)

  def scale_bounds(self) -> np.ndarray:
    """`[S + 1]` start of every scale in the sequence, and L."""
    return np.cumsum((0,) + self.scale_lengths)

  def level_ids(self) -> np.ndarray:
    """`[L]` int32: the scale of every position."""
    return np.repeat(np.arange(self.num_scales), self.scale_lengths).astype(np.int32)

  def mask(self) -> masks.BlockCausal:
    return masks.BlockCausal(self.scale_lengths)

  def drop_path_rates(self) -> np.ndarray:
    """Per block, linear from 0 to `drop_path_rate` (VAR's `torch.linspace(0, drop_path_rate, depth)`)."""
    return np.linspace(0.0, self.drop_path_rate, self.num_layers)

  def validate(self) -> None:
    name = "VARTransformer"
    scales = tuple(self.scales)
    if len(scales) < 2 or min(scales) < 1 or list(scales) != sorted(set(scales)):
      raise ConfigError(f"{name}: scales={scales} must be at least two strictly increasing sizes (the tokenizer's "
                        f"model.quantizer.scales, e.g. VAR's (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)).")
    if self.conditioning not in CONDITIONINGS:
      raise ConfigError(f"{name}: conditioning={self.conditioning!r} is not one of {CONDITIONINGS} (VAR is "
                        f"class-conditional; a single class gives an unconditional model).")
    if self.num_classes < 1:
      raise ConfigError(f"{name}: num_classes={self.num_classes} must be at least 1.")
    if self.codebook_size < 2 or self.vae_dim < 1:
      raise ConfigError(f"{name}: codebook_size={self.codebook_size} and vae_dim={self.vae_dim} must come from "
                        f"the tokenizer's quantizer (at least 2 codes, 1 channel).")
    if not 0.0 <= self.drop_path_rate < 1.0 or not 0.0 <= self.cond_dropout_rate < 1.0:
      raise ConfigError(f"{name}: drop_path_rate={self.drop_path_rate} and cond_dropout_rate="
                        f"{self.cond_dropout_rate} must be in [0, 1).")
    attention_dims(self.embed_dim, self.num_heads)

  # ------------------------------------------------------------------------------------------------ modules

  def setup(self):
    self.validate()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    param = lambda name, shape, axes: self.param(name, nn.with_logical_partitioning(_embedding_init, axes), shape,
                                                 self.param_dtype)
    self.class_embedding = nn.Embed(self.num_classes + 1, self.embed_dim, embedding_init=nn.with_logical_partitioning(
        _embedding_init, ("vocab", "embed")), name="class_embedding", **kw)
    self.start = param("start", (self.scale_lengths[0], self.embed_dim), (None, "embed"))
    self.positions = param("positions", (self.num_tokens, self.embed_dim), (None, "embed"))
    self.level_embedding = param("level_embedding", (self.num_scales, self.embed_dim), (None, "embed"))
    self.input_projection = Projection((self.embed_dim,), (None, "embed"), use_bias=True, name="input_projection",
                                       **kw)
    # `deterministic` (argument 4, counting self) is a Python bool: static under remat.
    block = VARBlock if self.remat_policy == "none" else nn.remat(
        VARBlock, policy=remat_policy(self.remat_policy), static_argnums=(4,))
    self.blocks = [block(self.num_heads, self.mask(), self.mlp_ratio, self.normalized_attention, float(rate),
                         attention_implementation=self.attention_implementation, name=f"blocks_{i}", **kw)
                   for i, rate in enumerate(self.drop_path_rates())]
    self.head_modulation = AdaLNModulation(2, name="head_modulation", **kw)
    self.head = Projection((self.codebook_size,), ("embed", "vocab"), use_bias=True, name="head", **kw)

  def init_cache(self, batch: int) -> tuple[KVCache, ...]:
    """An empty KV cache per block for `batch` sequences (callable on the unbound module)."""
    _, kv_heads, head_dim = attention_dims(self.embed_dim, self.num_heads)
    return tuple(KVCache.zeros(batch, self.num_tokens, kv_heads, head_dim, self.dtype)
                 for _ in range(self.num_layers))

  # ------------------------------------------------------------------------------------------------- pieces

  def condition_vector(self, cond: dict[str, jax.Array], unconditional: jax.Array | None, train: bool) -> jax.Array:
    """`[B, C]` class embedding; the null row for `unconditional` rows and, in training, dropped conditions."""
    if "label" not in cond:
      raise ConfigError(f"VARTransformer: class conditioning needs cond['label'] (int [B]); got keys {sorted(cond)}.")
    labels = cond["label"].astype(jnp.int32)
    drop = jnp.zeros(labels.shape, bool) if unconditional is None else unconditional.astype(bool)
    if train and self.cond_dropout_rate:
      drop = drop | jax.random.bernoulli(self.make_rng("dropout"), self.cond_dropout_rate, labels.shape)
    return self.class_embedding(jnp.where(drop, self.num_classes, labels))

  def _inputs(self, c: jax.Array, scale_inputs: jax.Array | None, start: int) -> jax.Array:
    """Block inputs of the positions from `start` on: the start tokens (`start == 0`) then the projected
    `scale_inputs` `[B, n, D_vae]` (None: only scale 0), plus their positions and level embeddings."""
    parts = [c[:, None, :] + self.start[None].astype(c.dtype)] if start == 0 else []
    if scale_inputs is not None:
      parts.append(self.input_projection(scale_inputs).astype(c.dtype))
    x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    end = start + x.shape[1]
    levels = jnp.asarray(self.level_ids()[start:end])
    return (x + (self.positions[start:end] + self.level_embedding[levels])[None].astype(x.dtype)).astype(self.dtype)

  def _logits(self, hidden: jax.Array, c: jax.Array) -> jax.Array:
    shift, scale = self.head_modulation(c)
    return self.head(modulate(layer_norm(hidden, NORM_EPS), shift, scale)).astype(jnp.float32)

  def _blocks(self, x: jax.Array, c: jax.Array, caches: tuple[KVCache, ...] | None,
              train: bool) -> tuple[jax.Array, tuple[KVCache, ...] | None]:
    new_caches = []
    for i, block in enumerate(self.blocks):
      x, cache = block(x, c, None if caches is None else caches[i], not train)
      new_caches.append(cache)
    return x, None if caches is None else tuple(new_caches)

  # ------------------------------------------------------------------------------------------------- calls

  def __call__(self, scale_inputs: jax.Array, cond: dict[str, jax.Array], unconditional: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """Teacher-forced logits `[B, L, V]` (float32) from the inputs of scales 1..S-1 `[B, L - s_0², D_vae]`."""
    expected = (self.num_tokens - self.scale_lengths[0], self.vae_dim)
    if scale_inputs.ndim != 3 or scale_inputs.shape[1:] != expected:
      raise ConfigError(f"VARTransformer: scale_inputs {scale_inputs.shape} must be [B, {expected[0]}, "
                        f"{expected[1]}] (the quantizer's next_scale_inputs of full token sequences).")
    c = self.condition_vector(cond, unconditional, train)
    hidden, _ = self._blocks(self._inputs(c, scale_inputs, 0), c, None, train)
    return self._logits(hidden, c)

  def step(self, scale: int, scale_inputs: jax.Array | None, cond: dict[str, jax.Array],
           unconditional: jax.Array | None, caches: tuple[KVCache, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
    """Logits `[B, n_k, V]` of scale `scale` (a Python int) from its inputs, reading and extending the caches
    that hold scales < `scale`."""
    c = self.condition_vector(cond, unconditional, train=False)
    x = self._inputs(c, scale_inputs if scale else None, int(self.scale_bounds()[scale]))
    hidden, caches = self._blocks(x, c, caches, train=False)
    return self._logits(hidden, c), caches

