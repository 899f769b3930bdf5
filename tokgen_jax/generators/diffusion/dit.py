"""DiT, the diffusion transformer over latent patches (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers", §3, Fig. 3), with PixArt-α's cross-attention for text conditioning.

- Input: the noisy latent `[B, h, w, c]` (with `self_condition`, concatenated with an x0 estimate, Chen et al.
  2022) is cut into p×p patches by a conv (kernel = stride = p) to `hidden_size`, plus a fixed 2D sin-cos position
  embedding (MAE's `get_2d_sincos_pos_embed`, not a parameter).
- Conditioning vector c `[B, D]`: the timestep embedding (sinusoidal 256-d features → Linear → SiLU → Linear, DiT's
  `TimestepEmbedder`) plus, for class conditioning, a row of a `num_classes + 1` table whose last row is the null
  class of classifier-free guidance. Text conditioning keeps c = timestep embedding and lets every block read the
  projected text states with cross-attention after self-attention (PixArt-α, Chen et al. 2023, §2.3, Fig. 4);
  unconditional rows read a learned `[text_length, text_dim]` null text, all of it visible.
- Blocks, adaLN-Zero (DiT §3.2, Fig. 3 right): `x += α₁·Attn(modulate(LN(x), β₁, γ₁))`, then for text
  `x += CrossAttn(x, text)` (unmodulated, as PixArt-α), then `x += α₂·MLP(modulate(LN(x), β₂, γ₂))`, with
  (β₁, γ₁, α₁, β₂, γ₂, α₂) = Linear(SiLU(c)) zero-initialised, so each block starts as the identity.
- Final layer: `Linear(modulate(LN(x), β, γ))` to p·p·out_channels, zero-initialised, unpatchified to
  `[B, h, w, out_channels]`; with `learn_sigma` the first c channels are the prediction and the last c the variance
  interpolation of Improved DDPM (Nichol & Dhariwal 2021, eq. 15), DiT's default.

Initialisation follows DiT's `initialize_weights`: xavier-uniform Linear kernels with zero biases (the patch conv as
a Linear over its flattened kernel), normal(0.02) class table and timestep MLP, zero adaLN Linears and final Linear;
PixArt's cross-attention output projection is zero too, and its caption MLP normal(0.02). Parameter layouts keep
the reference's flattening orders (qkv as (3, heads, head_dim), patches as (p, p, c)) so its weights port by
reshaping. Only blocks are unrolled (`blocks_{i}`), not scanned.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.conditioning import validate_conditioning
from tokgen_jax.nn.adaln import AdaLNModulation, gate, layer_norm, modulate
from tokgen_jax.nn.attention import HEAD_AXES, HIDDEN_AXES, CrossAttention, attention_dims, dot_product_attention
from tokgen_jax.nn.projection import Projection

DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}  # depth, hidden, heads
TIMESTEP_FEATURES = 256  # DiT's frequency_embedding_size
MAX_PERIOD = 10000.0
NORM_EPS = 1e-6
Dtype = Any

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros_init()
_normal = nn.initializers.normal(stddev=0.02)
# torch's xavier_uniform_ on the conv weight viewed as [out, in·p·p], which DiT applies to its patch embedding.
_xavier_conv = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3)


# ------------------------------------------------------------------------------------------------- closed forms


def timestep_features(t: jax.Array, dim: int = TIMESTEP_FEATURES, max_period: float = MAX_PERIOD) -> jax.Array:
  """`[cos(t·f_i), sin(t·f_i)]` with `f_i = max_period^(-i/half)`, i < half = dim/2 (DiT's `timestep_embedding`,
  the transformer's sinusoid of Vaswani et al. 2017 §3.5 with cos first); float32 `[B, dim]`, zero-padded if odd."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  features = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(features, ((0, 0), (0, dim % 2)))


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """`[sin(p·ω_i), cos(p·ω_i)]`, `ω_i = 1/10000^(2i/dim)` for i < dim/2 (MAE's `get_1d_sincos_pos_embed_from_grid`);
  float64 `[n, dim]`."""
  omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  args = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None]
  return np.concatenate([np.sin(args), np.cos(args)], axis=1)


def sincos_2d_position_embedding(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2D position embedding `[grid_h·grid_w, dim]` (row-major patches): half the dims a 1D sin-cos of the
  column, half of the row (MAE/DiT `get_2d_sincos_pos_embed`, whose `meshgrid(w, h)` puts the column first; kept
  so DiT weights port unchanged). float32; dim must be a multiple of 4."""
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1).astype(np.float32)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
  """`[B, h, w, c]` → `[B, (h/p)·(w/p), p·p·c]`: row-major patches, each flattened (row in patch, column, channel)."""
  batch, height, width, channels = x.shape
  p = patch_size
  x = x.reshape(batch, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(tokens: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
  """The inverse of `patchify`: `[B, N, p·p·c]` → `[B, height, width, c]` (DiT's `unpatchify`, channels last)."""
  batch, _, features = tokens.shape
  p = patch_size
  channels = features // (p * p)
  x = tokens.reshape(batch, height // p, width // p, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, height, width, channels)


def _dense(features: int, axes: tuple[str | None, str | None], kernel_init: Any, name: str, dtype: Dtype,
           param_dtype: Dtype) -> nn.Dense:
  """A biased Linear with a named kernel `[in, out]` and a zero bias named as the output."""
  return nn.Dense(features, kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                  bias_init=nn.with_logical_partitioning(_zeros, axes[1:]), dtype=dtype, param_dtype=param_dtype,
                  name=name)


# ------------------------------------------------------------------------------------------------------ layers


class TimestepEmbedder(nn.Module):
  """`Linear(SiLU(Linear(timestep_features(t))))` to `features` (DiT's `TimestepEmbedder`), normal(0.02) kernels."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    h = timestep_features(t).astype(self.dtype)
    h = _dense(self.features, (None, "embed"), _normal, "linear_1", self.dtype, self.param_dtype)(h)
    return _dense(self.features, ("mlp", "embed"), _normal, "linear_2", self.dtype, self.param_dtype)(nn.silu(h))


class SelfAttention(nn.Module):
  """Full multi-head self-attention with biased qkv and output projections (timm's `Attention`, qkv_bias=True).

  The qkv kernel is `[D, 3, heads, head_dim]`, xavier-uniform over its flattened `[D, 3D]` matrix as torch's one
  `Linear(D, 3D)`, so the init bound and the parameter count are DiT's.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    heads, _, head_dim = attention_dims(x.shape[-1], self.num_heads)
    qkv = Projection((3, heads, head_dim), ("embed", None, "heads", "kv"), use_bias=True, kernel_init="xavier",
                     dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
    q, k, v = (nn.with_logical_constraint(qkv[:, :, i], HEAD_AXES) for i in range(3))
    out = dot_product_attention(q, k, v, None)
    out = Projection((x.shape[-1],), ("heads", "kv", "embed"), in_axes=2, use_bias=True, kernel_init="xavier",
                     dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
    return nn.with_logical_constraint(out, HIDDEN_AXES)


class MLP(nn.Module):
  """`Linear(GELU_tanh(Linear(x)))` with hidden width `hidden_dim` (timm's `Mlp` as DiT builds it)."""

  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _dense(self.hidden_dim, ("embed", "mlp"), _xavier, "fc1", self.dtype, self.param_dtype)(x)
    h = nn.with_logical_constraint(nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
    return _dense(x.shape[-1], ("mlp", "embed"), _xavier, "fc2", self.dtype, self.param_dtype)(h)


class DiTBlock(nn.Module):
  """One adaLN-Zero block (DiT Fig. 3 right), with PixArt-α's cross-attention when `context` is given.

  `__call__(x [B, N, D], c [B, D], context [B, L, D] | None, context_mask bool [B, L] | None) -> [B, N, D]`.
  """

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, context: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    features = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.with_logical_constraint(x, HIDDEN_AXES)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = AdaLNModulation(6, name="modulation", **kw)(c)
    h = SelfAttention(self.num_heads, name="attention", **kw)(modulate(layer_norm(x, NORM_EPS), shift_msa, scale_msa))
    x = x + gate(h, gate_msa)
    if context is not None:
      x = x + CrossAttention(self.num_heads, use_bias=True, zero_init_output=True, name="cross_attention",
                             **kw)(x, context, context_mask)
    h = MLP(int(features * self.mlp_ratio), name="mlp", **kw)(modulate(layer_norm(x, NORM_EPS), shift_mlp, scale_mlp))
    x = x + gate(h, gate_mlp)
    return nn.with_logical_constraint(x.astype(self.dtype), HIDDEN_AXES)


class FinalLayer(nn.Module):
  """`Linear(modulate(LN(x), shift, scale))` to `features` per token, Linear and modulation zero (DiT)."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    shift, scale = AdaLNModulation(2, features=x.shape[-1], name="modulation", dtype=self.dtype,
                                   param_dtype=self.param_dtype)(c)
    h = modulate(layer_norm(x, NORM_EPS), shift, scale)
    return _dense(self.features, ("embed", None), _zeros, "linear", self.dtype, self.param_dtype)(h)


# ------------------------------------------------------------------------------------------------------- model


class DiT(nn.Module):
  """The diffusion transformer of the module docstring: `(x_t, t, cond) -> [B, h, w, out_channels]` float32.

  `cond`: `{}` (none), `{"label": int [B]}` (class) or `{"text": [B, text_length, text_dim], "text_mask": bool
  [B, text_length]}` (text). `unconditional` (bool [B]) gives those rows the null class / null text (the task
  decides which rows drop their condition; the model obeys). `self_cond` `[B, h, w, c]` is the x0 estimate of a
  `self_condition` model (zeros when None). `train` is accepted for the task's interface; DiT has no dropout.
  """

  input_shape: tuple[int, int, int]
  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  conditioning: str = "class"
  num_classes: int = 1000
  text_length: int = 0
  text_dim: int = 0
  learn_sigma: bool = True
  self_condition: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def out_channels(self) -> int:
    channels = self.input_shape[-1]
    return 2 * channels if self.learn_sigma else channels

  @property
  def grid(self) -> tuple[int, int]:
    return self.input_shape[0] // self.patch_size, self.input_shape[1] // self.patch_size

  @property
  def num_patches(self) -> int:
    return math.prod(self.grid)

  def validate(self) -> None:
    name = "DiT"
    if len(self.input_shape) != 3 or min(self.input_shape) < 1:
      raise ConfigError(f"{name}: input_shape={self.input_shape} must be the latent (h, w, c); check the "
                        f"tokenizer's latent shape (config.tokenizer).")
    height, width, _ = self.input_shape
    if self.patch_size < 1 or height % self.patch_size or width % self.patch_size:
      raise ConfigError(f"{name}: config.model.patch_size={self.patch_size} must divide the latent height {height} "
                        f"and width {width}; choose a divisor of both (DiT uses 2, 4 or 8).")
    if self.hidden_size < 4 or self.hidden_size % 4:
      raise ConfigError(f"{name}: config.model.hidden_size={self.hidden_size} must be a multiple of 4 (the 2D "
                        f"sin-cos position embedding gives sin and cos of the row and the column a quarter each).")
    if self.num_heads < 1 or self.hidden_size % self.num_heads:
      raise ConfigError(f"{name}: config.model.hidden_size={self.hidden_size} is not divisible by "
                        f"config.model.num_heads={self.num_heads}; pick a head count that divides it.")
    if self.depth < 1 or self.mlp_ratio <= 0:
      raise ConfigError(f"{name}: config.model.depth={self.depth} must be >= 1 and config.model.mlp_ratio="
                        f"{self.mlp_ratio} > 0.")
    validate_conditioning(self, name)

  # ------------------------------------------------------------------------------------------ conditioning

  def _class_vector(self, cond: dict[str, jax.Array], drop: jax.Array) -> jax.Array:
    if "label" not in cond:
      raise ConfigError(f"DiT: class conditioning needs cond['label'] (int [B]); got keys {sorted(cond)}.")
    labels = jnp.where(drop, self.num_classes, cond["label"].astype(jnp.int32))  # row num_classes: null class
    return nn.Embed(self.num_classes + 1, self.hidden_size, embedding_init=nn.with_logical_partitioning(
        _normal, ("vocab", "embed")), dtype=self.dtype, param_dtype=self.param_dtype, name="class_embedding")(labels)

  def _text_context(self, cond: dict[str, jax.Array], drop: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Projected text states `[B, L, D]` and their key mask `[B, L]`; dropped rows read the null text."""
    expected = (drop.shape[0], self.text_length, self.text_dim)
    if "text" not in cond or "text_mask" not in cond or tuple(cond["text"].shape) != expected:
      got = {k: tuple(v.shape) for k, v in cond.items()}
      raise ConfigError(f"DiT: text conditioning needs cond['text'] {list(expected)} and cond['text_mask'] "
                        f"[B, {self.text_length}] (config.model.text_length / text_dim); got {got}.")
    # PixArt-α's null caption scale (randn / sqrt(text_dim)), learned here so CFG's null row can adapt.
    null = self.param("null_text", nn.with_logical_partitioning(nn.initializers.normal(self.text_dim ** -0.5),
                                                                (None, None)),
                      (self.text_length, self.text_dim), self.param_dtype)
    text = jnp.where(drop[:, None, None], null.astype(cond["text"].dtype), cond["text"]).astype(self.dtype)
    mask = cond["text_mask"].astype(bool) | drop[:, None]  # the null text has no padding
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _dense(self.hidden_size, (None, "embed"), _normal, "caption_fc1", **kw)(text)
    h = _dense(self.hidden_size, ("mlp", "embed"), _normal, "caption_fc2", **kw)(nn.gelu(h, approximate=True))
    return nn.with_logical_constraint(h, HIDDEN_AXES), mask

  # -------------------------------------------------------------------------------------------------- call

  def _check_inputs(self, x: jax.Array, t: jax.Array, self_cond: jax.Array | None) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
      raise ConfigError(f"DiT: x {x.shape} must be [B, {', '.join(map(str, self.input_shape))}] "
                        f"(config.model input_shape, the tokenizer's latent shape).")
    if jnp.shape(t) != (x.shape[0],):
      raise ConfigError(f"DiT: timesteps t {jnp.shape(t)} must be [B] = [{x.shape[0]}], one per example.")
    if self_cond is not None and self_cond.shape != x.shape:
      raise ConfigError(f"DiT: self_cond {self_cond.shape} must match x {x.shape} (an x0 estimate of the latent).")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, cond: dict[str, jax.Array], unconditional: jax.Array | None = None,
               self_cond: jax.Array | None = None, train: bool = False) -> jax.Array:
    self.validate()
    self._check_inputs(x, t, self_cond)
    batch = x.shape[0]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.self_condition:
      x = jnp.concatenate([x, jnp.zeros_like(x) if self_cond is None else self_cond.astype(x.dtype)], axis=-1)
    p = self.patch_size
    h = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                kernel_init=nn.with_logical_partitioning(_xavier_conv, (None, None, None, "embed")),
                bias_init=nn.with_logical_partitioning(_zeros, ("embed",)), name="patch_embed", **kw)(
                    x.astype(self.dtype))
    pos = sincos_2d_position_embedding(self.hidden_size, *self.grid)
    h = h.reshape(batch, self.num_patches, self.hidden_size) + jnp.asarray(pos, self.dtype)
    h = nn.with_logical_constraint(h, HIDDEN_AXES)

    c = TimestepEmbedder(self.hidden_size, name="timestep_embedder", **kw)(t)
    drop = jnp.zeros((batch,), bool) if unconditional is None else jnp.asarray(unconditional).astype(bool)
    context = context_mask = None
    if self.conditioning == "class":
      c = c + self._class_vector(cond, drop)
    elif self.conditioning == "text":
      context, context_mask = self._text_context(cond, drop)
    c = nn.with_logical_constraint(c, ("batch", "embed"))

    block = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      h = block(self.num_heads, self.mlp_ratio, name=f"blocks_{i}", **kw)(h, c, context, context_mask)
    out = FinalLayer(p * p * self.out_channels, name="final_layer", **kw)(h, c)
    return unpatchify(out.astype(jnp.float32), p, *self.input_shape[:2])


def example_arguments(model: DiT, batch: int = 1) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Zero `(x, t, cond)` of the shapes `model` takes, for `init` / `eval_shape`."""
  x = jnp.zeros((batch,) + tuple(model.input_shape), jnp.float32)
  cond = {}
  if model.conditioning == "class":
    cond = {"label": jnp.zeros((batch,), jnp.int32)}
  elif model.conditioning == "text":
    cond = {"text": jnp.zeros((batch, model.text_length, model.text_dim), jnp.float32),
            "text_mask": jnp.ones((batch, model.text_length), bool)}
  return x, jnp.zeros((batch,), jnp.int32), cond


def count_parameters(model: DiT) -> int:
  """Trainable parameters of `model`, from `jax.eval_shape` of `init` (nothing is allocated).

  The fixed position embedding is not a parameter here; DiT's reference counts it (an `nn.Parameter` with
  requires_grad=False, num_patches·hidden_size values), which is why its XL/2 total is 294,912 higher.
  """
  shapes = jax.eval_shape(lambda key: model.init(key, *example_arguments(model)), jax.random.key(0))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))
