"""Rotary position embeddings (RoPE; Su et al. 2021, RoFormer eq. 34) over 1, 2 or 3 coordinate axes.

RoFormer rotates each consecutive pair of features `(x_{2i}, x_{2i+1})` of a query or key at position `m` by the
angle `m·θ_i`, with `θ_i = theta^(-2i/d)`, so that `<R_m q, R_n k>` depends on `m - n` only (eq. 34).

Multi-axis RoPE splits the head dimension into contiguous chunks, one per coordinate axis, and runs 1D RoPE in
each chunk on that axis's coordinate (chunk `a` has `axis_dims[a]` features and its own frequencies
`theta^(-2i/axis_dims[a])`). The relative-position property then holds per axis: `q·k` depends only on the
coordinate differences. The default split gives every axis the same number of feature pairs, any remainder going
to the first axis:

- 2D `(h, w)`: `D/2` features each, as LlamaGen's 2D RoPE (`precompute_freqs_cis_2d`).
- 3D `(t, h, w)`: about `D/3` each, as HiTVideo "allocating feature dimensions across three axes"; pass
  `axis_dims` to weight space over time (e.g. `(D/4, 3D/8, 3D/8)`).

Positions are explicit integer coordinates `[L, A]` rather than `arange(L)`, so a sequence in any token order (a
permutation of grid positions, see `generators/orderings.py`) or a decode step at `[index, index + n)` gets the
rotation of the grid cell each token stands for.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError


def default_axis_dims(head_dim: int, num_axes: int) -> tuple[int, ...]:
  """Split `head_dim` into `num_axes` even chunks with equal pair counts; the first axis takes the remainder."""
  if head_dim % 2:
    raise ConfigError(f"RoPE: head_dim={head_dim} is odd; rotary embeddings rotate feature pairs, so use an even "
                      f"head dimension (embed width / num_heads).")
  pairs, rest = divmod(head_dim // 2, num_axes)
  if pairs == 0:
    raise ConfigError(f"RoPE: head_dim={head_dim} has fewer than one feature pair per axis for {num_axes} axes; "
                      f"use head_dim >= {2 * num_axes}.")
  return tuple(2 * (pairs + (rest if a == 0 else 0)) for a in range(num_axes))


def _check_axis_dims(head_dim: int, axis_dims: Sequence[int], num_axes: int) -> tuple[int, ...]:
  axis_dims = tuple(int(d) for d in axis_dims)
  if len(axis_dims) != num_axes or sum(axis_dims) != head_dim or any(d <= 0 or d % 2 for d in axis_dims):
    raise ConfigError(f"RoPE: axis_dims={axis_dims} must be {num_axes} positive even sizes (one per position "
                      f"axis) summing to head_dim={head_dim}; leave axis_dims=None for an even split.")
  return axis_dims


def rope_frequencies(head_dim: int, positions: jax.Array, axis_dims: Sequence[int] | None = None,
                     theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
  """`cos, sin` of the rotation angles, each `[..., L, head_dim / 2]` (one angle per feature pair), float32.

  `positions` is `[..., L, A]` (or `[L]` for 1D): integer coordinates along A axes. Angle of pair `i` in the
  chunk of axis `a` is `positions[..., a] · theta^(-2i/axis_dims[a])` (RoFormer eq. 15 per axis).
  """
  positions = jnp.asarray(positions)
  if positions.ndim == 1:
    positions = positions[:, None]
  num_axes = positions.shape[-1]
  axis_dims = default_axis_dims(head_dim, num_axes) if axis_dims is None else _check_axis_dims(
      head_dim, axis_dims, num_axes)
  angles = []
  for a, dim in enumerate(axis_dims):
    inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles.append(positions[..., a:a + 1].astype(jnp.float32) * inv_freq)
  angles = jnp.concatenate(angles, axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate the feature pairs of `x` `[B, L, H, D]` by the angles behind `cos, sin` (`[L, D/2]` or `[B, L, D/2]`).

  Pairs are interleaved `(x_{2i}, x_{2i+1})` as in RoFormer eq. 34 (and Meta's Llama / LlamaGen complex view):
  `(x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)`. Computed in float32, returned in `x.dtype`.
  """
  if cos.shape[-1] * 2 != x.shape[-1] or cos.shape[-2] != x.shape[-3]:
    raise ConfigError(f"apply_rope: x {x.shape} [B, L, H, D] needs cos/sin of shape [L, D/2] = "
                      f"[{x.shape[-3]}, {x.shape[-1] // 2}], got {cos.shape}; compute them with rope_frequencies "
                      f"from the positions of exactly these tokens.")
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
  x0, x1 = pairs[..., 0], pairs[..., 1]
  rotated = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return rotated.reshape(x.shape).astype(x.dtype)
