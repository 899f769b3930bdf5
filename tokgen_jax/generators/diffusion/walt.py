"""W.A.L.T., the windowed-attention latent transformer denoiser (Gupta et al. 2023, "Photorealistic Video
Generation with Diffusion Models", §3, Fig. 3). There is no public code: what the paper leaves open is a field here.

- Input (§3.2 "Patchify"): the noisy latent `[B, T, h, w, c]` of a causal 3D autoencoder (an image is T = 1),
  channel-concatenated with the self-conditioning x0 estimate (Chen et al. 2022, "Analog Bits", §3; W.A.L.T. §3.3)
  and, with `frame_condition`, the given latent frames (zeros elsewhere) and a per-frame mask channel (§3.4 frame
  prediction, also image-to-video and interpolation). Each frame is cut into p×p patches by a conv (kernel = stride
  = p, temporal patch 1), plus a learned position embedding made of a spatial `[h/p·w/p, D]` and a temporal
  `[T, D]` part, each broadcast over the other axis (normal(0.02) init).
- Conditioning vector c `[B, D]` and text: DiT's (`dit.py`): the timestep embedding, plus a class row of a
  `num_classes + 1` table (last row null) for class conditioning; text is read with PixArt-α cross-attention in
  every block, unconditional rows reading a learned null text.
- Blocks (§3.2 "Window attention"): DiT's adaLN-Zero block whose self-attention runs inside non-overlapping windows
  of the `(T, h/p, w/p)` token grid. Even blocks use spatial windows (all tokens of one frame), odd blocks
  spatiotemporal windows (all frames over a `window` tile of patches). The modulation is AdaLN-LoRA (§3.3:
  `SiLU → Linear(D, r) → Linear(r, 6D)`, rank `adaln_rank`; 0 gives DiT's full Linear), zero at init so each block
  starts as the identity. Windowing reshapes the tokens into `[B·windows, window_length, D]` and attends densely
  there, which equals full attention under `masks.Windowed` (the tests check it) at a fraction of the cost.
- Final layer: DiT's zero-initialised `Linear(modulate(LN(x)))`, unpatchified to `[B, T, h, w, out_channels]`.
  W.A.L.T. predicts v with a fixed variance, so `learn_sigma` defaults off (on: 2c channels as DiT).

Our choices where the paper is silent: the spatiotemporal window (`window`, default 4×4 patches; clipped to the
grid when larger), qk-norm (off by default; on, an RMSNorm with a learned per-channel scale over each head's q
and k, as SD3 / Cosmos), RMS eps 1e-6, and the depth/width of the 214M UCF-101 model (see `WALT_214M`).
A model built for T frames also takes fewer (T' <= T, e.g. T' = 1 images for joint image-video training): the
temporal embedding's first T' rows are used and spatiotemporal windows span the T' frames given.
"""

import itertools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import dit
from tokgen_jax.generators.diffusion.dit import (MLP, NORM_EPS, FinalLayer, TimestepEmbedder, _normal, _xavier_conv,
                                                 _zeros, example_arguments, unpatchify, validate_conditioning)
from tokgen_jax.nn.adaln import AdaLNModulation, gate, layer_norm, modulate
from tokgen_jax.nn.attention import HEAD_AXES, HIDDEN_AXES, CrossAttention, attention_dims, dot_product_attention
from tokgen_jax.nn.projection import Projection

Dtype = Any

# Ours (the paper gives no size): class-conditional UCF-101 on (5, 16, 16, 8) latents, patch 2, AdaLN-LoRA 256,
# 101 classes, mlp_ratio 4: hidden 864, depth 20 (10 spatial + 10 spatiotemporal blocks), 12 heads of 72 is
# 213,079,712 parameters, the 214M of seed 000 within 0.5%. Width 1024 misses ±2% at any depth (14: 205.8M, 15:
# 220.2M, and an odd depth would leave the window kinds unpaired).
WALT_214M = dict(hidden_size=864, depth=20, num_heads=12)

__all__ = ["WALT", "WALT_214M", "WindowSelfAttention", "WALTBlock", "count_parameters", "example_arguments",
           "window_partition", "window_merge"]


# ------------------------------------------------------------------------------------------------- windows


def window_partition(x: jax.Array, window: tuple[int, int, int]) -> jax.Array:
  """`[B, T, H, W, D]` → `[B·n_windows, wt·wh·ww, D]`: non-overlapping `window = (wt, wh, ww)` tiles (each divides its
  grid size), windows in row-major (t, h, w) tile order, tokens row-major inside a tile (W.A.L.T. §3.2)."""
  batch, frames, height, width, features = x.shape
  wt, wh, ww = window
  x = x.reshape(batch, frames // wt, wt, height // wh, wh, width // ww, ww, features)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(-1, wt * wh * ww, features)


def window_merge(x: jax.Array, window: tuple[int, int, int], grid: tuple[int, int, int]) -> jax.Array:
  """The inverse of `window_partition`: `[B·n_windows, wt·wh·ww, D]` → `[B, T, H, W, D]` for `grid = (T, H, W)`."""
  frames, height, width = grid
  wt, wh, ww = window
  features = x.shape[-1]
  x = x.reshape(-1, frames // wt, height // wh, width // ww, wt, wh, ww, features)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(-1, frames, height, width, features)


def rms_norm(x: jax.Array, scale: jax.Array, epsilon: float = NORM_EPS) -> jax.Array:
  """`x / sqrt(mean(x²) + eps) · scale` over the last axis, statistics in float32 (Zhang & Sennrich 2019)."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + epsilon)
  return (normed * scale.astype(jnp.float32)).astype(x.dtype)


# ------------------------------------------------------------------------------------------------------ layers


class WindowSelfAttention(nn.Module):
  """Multi-head self-attention inside non-overlapping `window` tiles of the token `grid` (W.A.L.T. §3.2).

  `__call__(x [B, T·H·W, D]) -> [B, T·H·W, D]` with tokens row-major over `grid = (T, H, W)`; `window = (wt, wh,
  ww)` divides it. Projections are DiT's `SelfAttention` (biased qkv `[D, 3, heads, head_dim]` and output,
  xavier), so the parameter count is DiT's; `qk_norm` adds a learned `[head_dim]` RMS scale for q and for k.
  With `segments` (token counts summing to N), the tokens are instead cut into those contiguous runs, each
  attended alone with the same projections: the planes of a factorized latent (`plane_walt.py`), which differ in
  size and so cannot be batched as windows; `grid` and `window` are then unused.
  """

  num_heads: int
  grid: tuple[int, int, int] = (1, 1, 1)
  window: tuple[int, int, int] = (1, 1, 1)
  qk_norm: bool = False
  segments: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _norm_scale(self, name: str, head_dim: int) -> jax.Array:
    return self.param(name, nn.with_logical_partitioning(nn.initializers.ones_init(), ("kv",)), (head_dim,),
                      self.param_dtype)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, _, features = x.shape
    heads, _, head_dim = attention_dims(features, self.num_heads)
    kw = dict(use_bias=True, kernel_init="xavier", dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = Projection((3, heads, head_dim), ("embed", None, "heads", "kv"), name="qkv", **kw)
    project_out = Projection((features,), ("heads", "kv", "embed"), in_axes=2, name="out", **kw)
    if self.qk_norm:
      q_scale, k_scale = self._norm_scale("query_norm", head_dim), self._norm_scale("key_norm", head_dim)

    def attend(groups: jax.Array) -> jax.Array:
      q, k, v = (nn.with_logical_constraint(part, HEAD_AXES) for part in jnp.unstack(qkv(groups), axis=2))
      if self.qk_norm:
        q, k = rms_norm(q, q_scale), rms_norm(k, k_scale)
      return project_out(dot_product_attention(q, k, v, None))

    if self.segments:
      bounds = [0, *itertools.accumulate(self.segments)]
      out = jnp.concatenate([attend(x[:, start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])], axis=1)
    else:
      windows = window_partition(x.reshape((batch,) + tuple(self.grid) + (features,)), self.window)
      out = window_merge(attend(windows), self.window, self.grid).reshape(batch, -1, features)
    return nn.with_logical_constraint(out, HIDDEN_AXES)


class WALTBlock(nn.Module):
  """DiT's adaLN-Zero block (Fig. 3 right) with windowed self-attention and AdaLN-LoRA (W.A.L.T. §3.2-3.3).

  `x += α₁·WinAttn(modulate(LN(x), β₁, γ₁))`, `x += CrossAttn(x, text)` when `context` is given, `x +=
  α₂·MLP(modulate(LN(x), β₂, γ₂))`; the six vectors from `AdaLNModulation(6, rank=adaln_rank)`, zero at init.
  `__call__(x [B, N, D], c [B, D], context [B, L, D] | None, context_mask bool [B, L] | None) -> [B, N, D]`.
  `segments` replaces the windows by contiguous token runs (`WindowSelfAttention`).
  """

  num_heads: int
  grid: tuple[int, int, int] = (1, 1, 1)
  window: tuple[int, int, int] = (1, 1, 1)
  mlp_ratio: float = 4.0
  adaln_rank: int = 256
  qk_norm: bool = False
  segments: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, context: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.with_logical_constraint(x, HIDDEN_AXES)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = AdaLNModulation(
        6, rank=self.adaln_rank, name="modulation", **kw)(c)
    attention = WindowSelfAttention(self.num_heads, tuple(self.grid), tuple(self.window), self.qk_norm,
                                    tuple(self.segments), name="attention", **kw)
    x = x + gate(attention(modulate(layer_norm(x, NORM_EPS), shift_msa, scale_msa)), gate_msa)
    if context is not None:
      x = x + CrossAttention(self.num_heads, use_bias=True, zero_init_output=True, name="cross_attention",
                             **kw)(x, context, context_mask)
    h = MLP(int(x.shape[-1] * self.mlp_ratio), name="mlp", **kw)(modulate(layer_norm(x, NORM_EPS), shift_mlp,
                                                                           scale_mlp))
    x = x + gate(h, gate_mlp)
    return nn.with_logical_constraint(x.astype(self.dtype), HIDDEN_AXES)


# ------------------------------------------------------------------------------------------------------- model


class WALT(nn.Module):
  """The W.A.L.T. denoiser of the module docstring: `(x_t, t, cond) -> [B, T, h, w, out_channels]` float32.

  `cond`, `unconditional` and `train` as `DiT`. `self_cond` `[B, T, h, w, c]` is the x0 estimate of a
  `self_condition` model (zeros when None). With `frame_condition`, `frames` `[B, T, h, w, c]` are the given
  latent frames and `frame_mask` `[B, T]` (bool or float, 1 = given) marks them; None means none is given.
  Block i uses spatial windows when i is even, spatiotemporal ones when odd.
  """

  input_shape: tuple[int, int, int, int]
  patch_size: int = 2
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  window: tuple[int, int] = (4, 4)
  adaln_rank: int = 256
  qk_norm: bool = False
  conditioning: str = "text"
  num_classes: int = 0
  text_length: int = 0
  text_dim: int = 0
  learn_sigma: bool = False
  self_condition: bool = True
  frame_condition: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def out_channels(self) -> int:
    channels = self.input_shape[-1]
    return 2 * channels if self.learn_sigma else channels

  @property
  def grid(self) -> tuple[int, int, int]:
    """The token grid (T, h/p, w/p) of a full-length input."""
    frames, height, width, _ = self.input_shape
    return frames, height // self.patch_size, width // self.patch_size

  @property
  def num_patches(self) -> int:
    return math.prod(self.grid)

  @property
  def in_channels(self) -> int:
    """Channels entering the patch embedding: x, the self-conditioning estimate, the given frames and the mask."""
    channels = self.input_shape[-1]
    return channels * (1 + self.self_condition + self.frame_condition) + self.frame_condition

  def spatial_window(self) -> tuple[int, int]:
    """`window` clipped to the patch grid: a window larger than the grid is the whole frame."""
    return min(self.window[0], self.grid[1]), min(self.window[1], self.grid[2])

  def window_of(self, index: int, frames: int) -> tuple[int, int, int]:
    """Block `index`'s 3D window over a grid of `frames` frames: one frame (even) or all frames × a tile (odd)."""
    if index % 2 == 0:
      return 1, self.grid[1], self.grid[2]
    return (frames,) + self.spatial_window()

  # -------------------------------------------------------------------------------------------- validation

  def validate(self) -> None:
    name = "WALT"
    if len(self.input_shape) != 4 or min(self.input_shape) < 1:
      raise ConfigError(f"{name}: config.model.input_shape={self.input_shape} must be the latent (t, h, w, c); "
                        f"check the tokenizer's latent shape (config.tokenizer); an image is t = 1.")
    _, height, width, _ = self.input_shape
    if self.patch_size < 1 or height % self.patch_size or width % self.patch_size:
      raise ConfigError(f"{name}: config.model.patch_size={self.patch_size} must divide the latent height {height} "
                        f"and width {width}; choose a divisor of both (W.A.L.T. uses 2).")
    if self.num_heads < 1 or self.hidden_size < 1 or self.hidden_size % self.num_heads:
      raise ConfigError(f"{name}: config.model.hidden_size={self.hidden_size} is not divisible by "
                        f"config.model.num_heads={self.num_heads}; pick a head count that divides it.")
    if self.depth < 1 or self.mlp_ratio <= 0:
      raise ConfigError(f"{name}: config.model.depth={self.depth} must be >= 1 and config.model.mlp_ratio="
                        f"{self.mlp_ratio} > 0.")
    self._validate_window(name)
    if self.adaln_rank < 0:
      raise ConfigError(f"{name}: config.model.adaln_rank={self.adaln_rank} must be >= 0 (0: DiT's full adaLN, "
                        f"r > 0: AdaLN-LoRA of rank r; W.A.L.T./Cosmos use 256).")
    validate_conditioning(self, name)

  def _validate_window(self, name: str) -> None:
    window = tuple(self.window)
    if len(window) != 2 or min(window) < 1:
      raise ConfigError(f"{name}: config.model.window={window} must be two positive sizes (h, w) in patches, the "
                        f"spatiotemporal window's tile, e.g. (4, 4).")
    clipped, grid = self.spatial_window(), self.grid[1:]
    if grid[0] % clipped[0] or grid[1] % clipped[1]:
      raise ConfigError(f"{name}: config.model.window={window} must divide the patch grid {grid} (latent h, w over "
                        f"patch_size={self.patch_size}) so windows tile each frame; pick divisors of {grid}.")

  # ------------------------------------------------------------------------------------------------ inputs

  def _check_inputs(self, x: jax.Array, t: jax.Array, self_cond: jax.Array | None) -> None:
    frames = self.input_shape[0]
    if x.ndim != 5 or tuple(x.shape[2:]) != tuple(self.input_shape[1:]) or not 1 <= x.shape[1] <= frames:
      raise ConfigError(f"WALT: x {x.shape} must be [B, T', {', '.join(map(str, self.input_shape[1:]))}] with "
                        f"1 <= T' <= {frames} (config.model.input_shape, the tokenizer's latent shape).")
    if jnp.shape(t) != (x.shape[0],):
      raise ConfigError(f"WALT: timesteps t {jnp.shape(t)} must be [B] = [{x.shape[0]}], one per example.")
    if self_cond is not None and self_cond.shape != x.shape:
      raise ConfigError(f"WALT: self_cond {self_cond.shape} must match x {x.shape} (an x0 estimate of the latent).")

  def _frame_channels(self, x: jax.Array, frames: jax.Array | None, frame_mask: jax.Array | None) -> jax.Array:
    """`[frames·mask, mask]` `[B, T, h, w, c + 1]` (W.A.L.T. §3.4): zeros where no frame is given."""
    batch, length = x.shape[:2]
    frames = jnp.zeros_like(x) if frames is None else jnp.asarray(frames, x.dtype)
    mask = jnp.zeros((batch, length), x.dtype) if frame_mask is None else jnp.asarray(frame_mask).astype(x.dtype)
    if frames.shape != x.shape or mask.shape != (batch, length):
      raise ConfigError(f"WALT: frame conditioning needs frames {x.shape} (like x) and frame_mask [{batch}, "
                        f"{length}]; got {frames.shape} and {mask.shape}.")
    mask = jnp.broadcast_to(mask[:, :, None, None, None], x.shape[:-1] + (1,))
    return jnp.concatenate([frames * mask, mask], axis=-1)

  def _embed(self, x: jax.Array) -> jax.Array:
    """Per-frame patch embedding plus the spatial and temporal position embeddings: `[B, T·h/p·w/p, D]`."""
    batch, length, height, width, channels = x.shape
    p, features = self.patch_size, self.hidden_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.Conv(features, (p, p), strides=(p, p), padding="VALID",
                kernel_init=nn.with_logical_partitioning(_xavier_conv, (None, None, None, "embed")),
                bias_init=nn.with_logical_partitioning(_zeros, ("embed",)), name="patch_embed", **kw)(
                    x.reshape(batch * length, height, width, channels).astype(self.dtype))
    _, grid_h, grid_w = self.grid
    spatial = self.param("spatial_position", nn.with_logical_partitioning(_normal, (None, "embed")),
                         (grid_h * grid_w, features), self.param_dtype)
    temporal = self.param("temporal_position", nn.with_logical_partitioning(_normal, (None, "embed")),
                          (self.input_shape[0], features), self.param_dtype)
    h = h.reshape(batch, length, grid_h * grid_w, features) + spatial.astype(self.dtype)[None, None]
    h = h + temporal[:length].astype(self.dtype)[None, :, None]
    return nn.with_logical_constraint(h.reshape(batch, -1, features), HIDDEN_AXES)

  # -------------------------------------------------------------------------------------------------- call

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, cond: dict[str, jax.Array], unconditional: jax.Array | None = None,
               self_cond: jax.Array | None = None, train: bool = False, frames: jax.Array | None = None,
               frame_mask: jax.Array | None = None) -> jax.Array:
    del train  # no dropout
    self.validate()
    self._check_inputs(x, t, self_cond)
    batch, length = x.shape[:2]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = self._embed(denoiser_inputs(self, x, self_cond, frames, frame_mask))
    c, context, context_mask = condition_vector(self, t, cond, unconditional)

    grid = (length,) + self.grid[1:]
    block = nn.remat(WALTBlock) if self.remat else WALTBlock
    for i in range(self.depth):
      h = block(self.num_heads, grid, self.window_of(i, length), self.mlp_ratio, self.adaln_rank, self.qk_norm,
                name=f"blocks_{i}", **kw)(h, c, context, context_mask)
    p = self.patch_size
    out = FinalLayer(p * p * self.out_channels, name="final_layer", **kw)(h, c).astype(jnp.float32)
    out = unpatchify(out.reshape(batch * length, -1, out.shape[-1]), p, *self.input_shape[1:3])
    return out.reshape((batch, length) + out.shape[1:])


def denoiser_inputs(module: nn.Module, x: jax.Array, self_cond: jax.Array | None, frames: jax.Array | None,
                    frame_mask: jax.Array | None) -> jax.Array:
  """x channel-concatenated with the self-conditioning estimate (zeros when None) and, with `frame_condition`,
  the module's `_frame_channels` (W.A.L.T. §3.3-3.4)."""
  inputs = [x]
  if module.self_condition:
    inputs.append(jnp.zeros_like(x) if self_cond is None else self_cond.astype(x.dtype))
  if module.frame_condition:
    inputs.append(module._frame_channels(x, frames, frame_mask))
  return jnp.concatenate(inputs, axis=-1)


def condition_vector(module: nn.Module, t: jax.Array, cond: dict[str, jax.Array], unconditional: jax.Array | None
                     ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
  """(c `[B, D]`, text context, its mask) of a W.A.L.T.-style denoiser, built inside its compact `__call__`:
  DiT's timestep embedding plus a class row, or PixArt-α text states (null rows where `unconditional`)."""
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  c = TimestepEmbedder(module.hidden_size, name="timestep_embedder", **kw)(t)
  drop = jnp.zeros((t.shape[0],), bool) if unconditional is None else jnp.asarray(unconditional).astype(bool)
  context = context_mask = None
  if module.conditioning == "class":
    c = c + dit.DiT._class_vector(module, cond, drop)  # DiT's helpers read only fields the denoisers share
  elif module.conditioning == "text":
    context, context_mask = dit.DiT._text_context(module, cond, drop)
  return nn.with_logical_constraint(c, ("batch", "embed")), context, context_mask


def count_parameters(model: WALT) -> int:
  """Trainable parameters of `model` from `jax.eval_shape` of `init` (nothing is allocated), as `dit`'s."""
  return dit.count_parameters(model)
