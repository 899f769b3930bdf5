"""Token orderings: the order in which an autoregressive generator visits the cells of a token grid.

An ordering is a permutation `perm` of the row-major flat indices of a grid: sequence element `s` is grid cell
`perm[s]`. The names follow Esser et al. 2021 (Taming Transformers, "row-major, spiral in/out, z-curve,
subsample, alternate"); on a 4x4 grid each ordering reproduces the table of visiting steps in source 001
("Different ordering of tokens for image synthesis"), and other grid sizes follow the same rule:

- `row_major`: raster scan.
- `spiral_in`: anticlockwise from the top-left corner (down the left column first), ring by ring towards the
  centre.
- `spiral_out`: `spiral_in` reversed: from the centre outwards, ending at the top-left corner.
- `z_curve`: Morton order, bits of the coordinates interleaved (first axis most significant).
- `subsample`: coarse-to-fine interleaving. The finest-level 2x2 phase `(r mod 2, c mod 2)` is the most
  significant key, then the phase of `(r // 2, c // 2)`, and so on (Morton order of the bit-reversed
  coordinates), so the first quarter of the sequence is the stride-2 subsampled grid, itself in subsample order.
- `alternate`: boustrophedon, rows alternately left-to-right and right-to-left.

Video grids `(t, h, w)`: `per_frame=True` (default) visits frames in time order, each in the 2D ordering, as
HiTVideo-style AR does; `per_frame=False` orders the whole volume, which row_major, z_curve, subsample (bits of all
three axes) and alternate (a continuous 3D snake) support; a 3D spiral is not defined.

The permutation is a static numpy array (computed at trace time); `apply`/`undo` gather with it, and
`positions` gives each sequence element's grid coordinates for multi-axis RoPE.
"""

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError

ORDERINGS = ("row_major", "spiral_in", "spiral_out", "z_curve", "subsample", "alternate")
_VOLUME_ORDERINGS = ("row_major", "z_curve", "subsample", "alternate")


def _spiral_in(height: int, width: int) -> list[int]:
  """Anticlockwise spiral from (0, 0), as in the seed's 4x4 table: down the left column, along the bottom row,
  up the right column, back along the top row, then the next ring inwards."""
  top, bottom, left, right = 0, height - 1, 0, width - 1
  cells = []
  while top <= bottom and left <= right:
    cells += [(r, left) for r in range(top, bottom + 1)]
    cells += [(bottom, c) for c in range(left + 1, right + 1)]
    if left < right:
      cells += [(r, right) for r in range(bottom - 1, top - 1, -1)]
    if top < bottom:
      cells += [(top, c) for c in range(right - 1, left, -1)]
    top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
  return [r * width + c for r, c in cells]


def _interleaved_bits(coords: np.ndarray, bits: int) -> np.ndarray:
  """Morton key of `[N, A]` coordinates: bit b of axis a lands at position `b·A + (A - 1 - a)`."""
  num_axes = coords.shape[1]
  key = np.zeros(len(coords), np.int64)
  for b in range(bits):
    for a in range(num_axes):
      key |= ((coords[:, a] >> b) & 1).astype(np.int64) << (b * num_axes + num_axes - 1 - a)
  return key


def _bit_reverse(values: np.ndarray, bits: int) -> np.ndarray:
  out = np.zeros_like(values)
  for b in range(bits):
    out |= ((values >> b) & 1) << (bits - 1 - b)
  return out


def _grid_coords(grid: Sequence[int]) -> np.ndarray:
  return np.stack(np.unravel_index(np.arange(math.prod(grid)), grid), axis=-1)


def _snake(grid: Sequence[int]) -> list[int]:
  """Continuous snake: each outer step reverses the traversal of the inner axes (2D: boustrophedon)."""
  if len(grid) == 1:
    return list(range(grid[0]))
  inner, inner_size = _snake(grid[1:]), math.prod(grid[1:])
  return [i * inner_size + j for i in range(grid[0]) for j in (inner if i % 2 == 0 else inner[::-1])]


def _order_nd(name: str, grid: tuple[int, ...]) -> np.ndarray:
  """The ordering over all axes of `grid` at once."""
  if name == "row_major":
    return np.arange(math.prod(grid))
  if name == "alternate":
    return np.asarray(_snake(grid))
  if name in ("spiral_in", "spiral_out"):
    spiral = np.asarray(_spiral_in(*grid))
    return spiral if name == "spiral_in" else spiral[::-1].copy()
  coords = _grid_coords(grid)
  bits = max(1, max(math.ceil(math.log2(n)) for n in grid))
  if name == "subsample":
    coords = _bit_reverse(coords, bits)
  return np.argsort(_interleaved_bits(coords, bits), kind="stable")


def order(name: str, grid: Sequence[int], per_frame: bool = True) -> np.ndarray:
  """The permutation (int32 `[N]`, N = prod(grid)) of row-major grid indices that ordering `name` visits."""
  grid = tuple(int(n) for n in grid)
  if name not in ORDERINGS:
    raise ConfigError(f"Token ordering {name!r} is unknown; set the generator's ordering to one of {ORDERINGS}.")
  if len(grid) not in (2, 3) or min(grid) < 1:
    raise ConfigError(f"Token ordering: grid {grid} must be (h, w) or (t, h, w) with positive sizes; pass the "
                      f"token grid shape without batch.")
  if len(grid) == 3 and per_frame:
    frame = _order_nd(name, grid[1:])
    frame_size = math.prod(grid[1:])
    return np.concatenate([t * frame_size + frame for t in range(grid[0])]).astype(np.int32)
  if len(grid) == 3 and name not in _VOLUME_ORDERINGS:
    raise ConfigError(f"Token ordering {name!r} has no volume (t, h, w) form; use per_frame=True or one of "
                      f"{_VOLUME_ORDERINGS}.")
  return _order_nd(name, grid).astype(np.int32)


def apply(tokens: jnp.ndarray, perm: np.ndarray, grid_ndim: int | None = None) -> jnp.ndarray:
  """Grid `[B, *grid]` to sequence `[B, N]` in ordering `perm`.

  All dims after batch are the grid unless `grid_ndim` says fewer (then trailing feature dims are kept:
  `[B, h, w, C] -> [B, N, C]` with `grid_ndim=2`).
  """
  grid_ndim = tokens.ndim - 1 if grid_ndim is None else grid_ndim
  grid = tokens.shape[1:1 + grid_ndim]
  if math.prod(grid) != len(perm):
    raise ConfigError(f"Token ordering apply: tokens {tokens.shape} have a grid {grid} of {math.prod(grid)} cells "
                      f"but the permutation has {len(perm)}; build the ordering for this grid (or set grid_ndim).")
  flat = tokens.reshape((tokens.shape[0], len(perm)) + tokens.shape[1 + grid_ndim:])
  return jnp.take(flat, jnp.asarray(perm), axis=1)


def undo(seq: jnp.ndarray, perm: np.ndarray, grid: Sequence[int]) -> jnp.ndarray:
  """Sequence `[B, N]` in ordering `perm` back to the grid `[B, *grid]` (the inverse of `apply`)."""
  grid = tuple(grid)
  if seq.shape[1] != len(perm) or len(perm) != math.prod(grid):
    raise ConfigError(f"Token ordering undo: sequence {seq.shape} [B, N] and permutation of {len(perm)} do not "
                      f"match grid {grid} (N = {math.prod(grid)}); pass the grid the ordering was built for.")
  inverse = np.argsort(perm)
  flat = jnp.take(seq, jnp.asarray(inverse), axis=1)
  return flat.reshape((seq.shape[0],) + grid + seq.shape[2:])


def positions(perm: np.ndarray, grid: Sequence[int]) -> np.ndarray:
  """`[N, A]` int32 grid coordinates of each sequence element, for `nn.rope.rope_frequencies`."""
  return np.stack(np.unravel_index(np.asarray(perm), tuple(grid)), axis=-1).astype(np.int32)

