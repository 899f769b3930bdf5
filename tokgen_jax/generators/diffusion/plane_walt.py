"""The W.A.L.T. denoiser over factorized latent planes (seed 000, Part I: the diffusion model runs over the
concatenated tokens of the two spatial and two spatiotemporal planes).

- Input: the planes packed by `LatentLayout` into `[B, N, c]` (N = 672 for four planes of a 5×16×16 latent), one
  token per plane position (patch 1, so the token count is the seed's), channel-concatenated as in `walt.py` with
  the self-conditioning x0 estimate and, with `frame_condition`, the conditioning planes (the planes of a clip
  that shows the given frames) and a per-token mask channel (1 where the token is read from given frames).
- Embedding: a linear map of each token, a learned plane-type embedding `[planes, D]` and a learned position
  table per plane `[rows·cols, D]` (normal(0.02) init, as W.A.L.T.'s learned positions).
- Blocks: W.A.L.T.'s adaLN-Zero blocks with AdaLN-LoRA (`walt.WALTBlock`). Where the volumetric model alternates
  spatial and spatiotemporal windows, this one alternates attention within each plane (even blocks: a spatial
  plane is its own h×w window, a spatiotemporal plane its t×w or t×h window) and attention across all planes (odd
  blocks), which is what lets the planes agree on one video. Our reading: the seed says it uses W.A.L.T.'s
  transformer over the concatenated planes and leaves the attention pattern open.
- Conditioning (timestep, class or text cross-attention, null rows for CFG) and the final layer are `walt.py`'s.

`__call__(x [B, N, c], t [B], cond, unconditional, self_cond [B, N, c], train, frames [B, N, c],
frame_mask [B, N]) -> [B, N, out_channels]`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion.dit import FinalLayer, _normal, _zeros, validate_conditioning
from tokgen_jax.generators.diffusion.latent_layout import LatentLayout
from tokgen_jax.generators.diffusion.walt import WALTBlock, condition_vector, denoiser_inputs
from tokgen_jax.nn.attention import HIDDEN_AXES

Dtype = Any


class PlaneWALT(nn.Module):
  """The plane denoiser of the module docstring; `planes` is a `LatentLayout.arrays` tuple."""

  planes: tuple[tuple[str, tuple[int, ...]], ...]
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
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
  def layout(self) -> LatentLayout:
    return LatentLayout(tuple((name, tuple(shape)) for name, shape in self.planes))

  @property
  def input_shape(self) -> tuple[int, int]:
    return self.layout.packed_shape

  @property
  def num_patches(self) -> int:
    """Tokens the transformer reads: one per plane position (the seed's 672 for four planes of 5×16×16)."""
    return self.layout.num_tokens

  @property
  def out_channels(self) -> int:
    channels = self.layout.channels
    return 2 * channels if self.learn_sigma else channels

  def segments_of(self, index: int) -> tuple[int, ...]:
    """Block `index`'s attention runs: each plane alone (even) or all tokens together (odd)."""
    return self.layout.sizes if index % 2 == 0 else (self.layout.num_tokens,)

  def validate(self) -> None:
    name = "PlaneWALT"
    LatentLayout.from_shapes(dict(self.planes))  # same channels, positive grids
    if self.num_heads < 1 or self.hidden_size < 1 or self.hidden_size % self.num_heads:
      raise ConfigError(f"{name}: config.model.hidden_size={self.hidden_size} is not divisible by "
                        f"config.model.num_heads={self.num_heads}; pick a head count that divides it.")
    if self.depth < 1 or self.mlp_ratio <= 0 or self.adaln_rank < 0:
      raise ConfigError(f"{name}: config.model.depth={self.depth} must be >= 1, mlp_ratio={self.mlp_ratio} > 0 and "
                        f"adaln_rank={self.adaln_rank} >= 0.")
    validate_conditioning(self, name)

  def _check_inputs(self, x: jax.Array, t: jax.Array, self_cond: jax.Array | None) -> None:
    expected = self.input_shape
    if x.ndim != 3 or tuple(x.shape[1:]) != expected:
      raise ConfigError(f"PlaneWALT: x {x.shape} must be the packed planes [B, {expected[0]}, {expected[1]}] "
                        f"(LatentLayout.pack of {list(self.layout.names)}).")
    if jnp.shape(t) != (x.shape[0],):
      raise ConfigError(f"PlaneWALT: timesteps t {jnp.shape(t)} must be [B] = [{x.shape[0]}], one per example.")
    if self_cond is not None and self_cond.shape != x.shape:
      raise ConfigError(f"PlaneWALT: self_cond {self_cond.shape} must match x {x.shape}.")

  def _frame_channels(self, x: jax.Array, frames: jax.Array | None, frame_mask: jax.Array | None) -> jax.Array:
    """`[frames·mask, mask]` `[B, N, c + 1]`: zeros where no token is given."""
    frames = jnp.zeros_like(x) if frames is None else jnp.asarray(frames, x.dtype)
    mask = jnp.zeros(x.shape[:2], x.dtype) if frame_mask is None else jnp.asarray(frame_mask).astype(x.dtype)
    if frames.shape != x.shape or mask.shape != x.shape[:2]:
      raise ConfigError(f"PlaneWALT: frame conditioning needs frames {x.shape} (packed like x) and frame_mask "
                        f"{list(x.shape[:2])}; got {frames.shape} and {mask.shape}.")
    return jnp.concatenate([frames * mask[..., None], mask[..., None]], axis=-1)

  def _embed(self, x: jax.Array) -> jax.Array:
    """Token projection + plane-type embedding + each plane's own learned positions: `[B, N, D]`."""
    layout, features = self.layout, self.hidden_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.Dense(features, kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                                    (None, "embed")),
                 bias_init=nn.with_logical_partitioning(_zeros, ("embed",)), name="token_embed", **kw)(
                     x.astype(self.dtype))
    plane_type = self.param("plane_type", nn.with_logical_partitioning(_normal, (None, "embed")),
                            (len(layout.arrays), features), self.param_dtype)
    positions = [self.param(f"position_{name}", nn.with_logical_partitioning(_normal, (None, "embed")),
                            (size, features), self.param_dtype) for name, size in zip(layout.names, layout.sizes)]
    table = jnp.concatenate(positions) + plane_type[jnp.asarray(layout.array_ids())]
    return nn.with_logical_constraint(h + table.astype(self.dtype)[None], HIDDEN_AXES)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, cond: dict[str, jax.Array], unconditional: jax.Array | None = None,
               self_cond: jax.Array | None = None, train: bool = False, frames: jax.Array | None = None,
               frame_mask: jax.Array | None = None) -> jax.Array:
    del train  # no dropout
    self.validate()
    self._check_inputs(x, t, self_cond)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = self._embed(denoiser_inputs(self, x, self_cond, frames, frame_mask))
    c, context, context_mask = condition_vector(self, t, cond, unconditional)

    block = nn.remat(WALTBlock) if self.remat else WALTBlock
    for i in range(self.depth):
      h = block(self.num_heads, mlp_ratio=self.mlp_ratio, adaln_rank=self.adaln_rank, qk_norm=self.qk_norm,
                segments=self.segments_of(i), name=f"blocks_{i}", **kw)(h, c, context, context_mask)
    return FinalLayer(self.out_channels, name="final_layer", **kw)(h, c).astype(jnp.float32)
