"""Attention masks as small hashable builders: `builder(query_positions, key_positions) -> [Lq, Lk]` booleans.

True means "the query at sequence position p may read the key at position s". Positions are indices into the
full sequence, so one builder serves the full forward (`arange(L)` both ways) and cached decoding (queries at
`[index, index + n)`, keys at every cache slot; `Attention` hides the slots not yet written). Builders are frozen
dataclasses so they can be fields of Flax modules and parts of jit cache keys.

- `Causal`: autoregressive LMs (LlamaGen, HiTVideo's AR model).
- `PrefixCausal`: prefix-LM (Raffel et al. 2020, §3.2.1): a condition prefix read bidirectionally, the rest causal.
- `BlockCausal`: groups of consecutive positions (VAR's scales, SIT's spectral scales): bidirectional within a
  group, causal across groups (VAR, Tian et al. 2024, §3.2 "block-wise causal attention mask").
- `Windowed`: non-overlapping windows over a `(t, h, w)` grid flattened in row-major order (W.A.L.T., Gupta et al.
  2023, §3.2): `spatial(grid)` is one frame, `spatiotemporal(grid, patch)` is all frames of an `h × w` patch.
- `Bidirectional`: full attention (DiT, the ViT encoders of ViTok, LARP and the dual encoder).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError


def _pairs(query_positions: jax.Array, key_positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  return jnp.asarray(query_positions)[:, None], jnp.asarray(key_positions)[None, :]


class _Mask:

  def check_length(self, length: int) -> None:
    """Raise ConfigError when the mask cannot describe a sequence of `length` keys (most masks fit any length)."""
    del length


@dataclasses.dataclass(frozen=True)
class Causal(_Mask):
  """Key s is readable from query p when `s <= p`."""

  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    p, s = _pairs(query_positions, key_positions)
    return s <= p


@dataclasses.dataclass(frozen=True)
class PrefixCausal(_Mask):
  """Causal, and the first `prefix_len` keys are readable by every query (so the prefix attends to itself fully).

  `prefix_len=0` is plain causal. A cached decoder must prefill the whole prefix in one call: a query never sees
  keys written after it.
  """

  prefix_len: int = 0

  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    p, s = _pairs(query_positions, key_positions)
    return (s <= p) | (s < self.prefix_len)


@dataclasses.dataclass(frozen=True)
class BlockCausal(_Mask):
  """Consecutive groups of `group_sizes` positions: a query reads every key of its own group and earlier ones.

  Positions past the last group (padding) read every group and themselves; no other position reads them.
  """

  group_sizes: tuple[int, ...]

  def __post_init__(self):
    if not self.group_sizes or min(self.group_sizes) < 1:
      raise ConfigError(f"BlockCausal: group_sizes={self.group_sizes} must be a non-empty tuple of positive sizes "
                        f"(one per scale, e.g. (1, 4, 9, 16) for VAR's 1,2,3,4 patch grids).")

  def group_of(self, positions: jax.Array) -> jax.Array:
    """The group index of each position (`len(group_sizes)` past the end)."""
    ends = np.cumsum(self.group_sizes)
    return jnp.searchsorted(jnp.asarray(ends), jnp.asarray(positions), side="right")

  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    gp, gs = _pairs(self.group_of(query_positions), self.group_of(key_positions))
    p, s = _pairs(query_positions, key_positions)
    inside = gs < len(self.group_sizes)
    return ((gs <= gp) & inside) | (p == s)


@dataclasses.dataclass(frozen=True)
class Windowed(_Mask):
  """Positions index a row-major `grid = (t, h, w)`; p and s read each other when they share a `window` tile.

  Windows tile the grid without overlap (each window size must divide its grid size), as in W.A.L.T.'s spatial
  and spatiotemporal window attention.
  """

  grid: tuple[int, int, int]
  window: tuple[int, int, int]

  def __post_init__(self):
    if len(self.grid) != 3 or len(self.window) != 3 or any(g % w for g, w in zip(self.grid, self.window)):
      raise ConfigError(f"Windowed: window={self.window} must be 3 sizes that divide grid={self.grid} (t, h, w) "
                        f"so the windows tile the grid; pick divisors of each grid size.")

  @classmethod
  def spatial(cls, grid: tuple[int, int, int]) -> "Windowed":
    """Each frame is one window (attention within a frame)."""
    return cls(tuple(grid), (1, grid[1], grid[2]))

  @classmethod
  def spatiotemporal(cls, grid: tuple[int, int, int], patch: tuple[int, int]) -> "Windowed":
    """All frames of each `patch = (h, w)` tile form a window."""
    return cls(tuple(grid), (grid[0], patch[0], patch[1]))

  def tile_of(self, positions: jax.Array) -> jax.Array:
    """A single index naming the window tile of each position."""
    coords = jnp.unravel_index(jnp.asarray(positions), self.grid)
    tiles_per_axis = [g // w for g, w in zip(self.grid, self.window)]
    tile = jnp.zeros_like(jnp.asarray(positions))
    for coord, size, count in zip(coords, self.window, tiles_per_axis):
      tile = tile * count + coord // size
    return tile

  def check_length(self, length: int) -> None:
    if length != math.prod(self.grid):
      raise ConfigError(f"Windowed: a sequence of {length} positions does not flatten the grid {self.grid} "
                        f"({math.prod(self.grid)} positions); build the mask for the sequence's own grid.")

  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    tp, ts = _pairs(self.tile_of(query_positions), self.tile_of(key_positions))
    return tp == ts


@dataclasses.dataclass(frozen=True)
class Bidirectional(_Mask):
  """Every query reads every key."""

  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    p, s = _pairs(query_positions, key_positions)
    return jnp.ones((p.shape[0], s.shape[1]), bool)


MaskBuilder = Causal | PrefixCausal | BlockCausal | Windowed | Bidirectional
