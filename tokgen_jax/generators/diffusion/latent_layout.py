"""Several named latent arrays as one token sequence (seed 000, Part I: the diffusion model runs over the
concatenated tokens of the four (or three) planes).

A factorized tokenizer encodes a clip into planes `{"latents_xy0": [h, w, c], "latents_tw": [t, w, c], ...}`; a
volumetric one into a single `[t, h, w, c]`. `LatentLayout` flattens each array's grid row-major and concatenates
them in name order into `[N, c]`, and keeps what a transformer over those tokens needs to tell them apart: which
array each token came from (the plane-type embedding) and its grid coordinates inside that array (the per-plane
positions). The order is fixed by the layout, so packing and unpacking are exact inverses.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LatentLayout:
  """`arrays`: `(name, shape)` pairs, each shape `(*grid, channels)` with the same channels, in packing order."""

  arrays: tuple[tuple[str, tuple[int, ...]], ...]

  @classmethod
  def from_shapes(cls, shapes: Mapping[str, Sequence[int]]) -> "LatentLayout":
    """The layout of `shapes` (name → one example's shape), sorted by name so every caller agrees on the order."""
    if not shapes:
      raise ConfigError("LatentLayout: no latent arrays to lay out.")
    arrays = tuple((name, tuple(int(n) for n in shapes[name])) for name in sorted(shapes))
    channels = {shape[-1] for _, shape in arrays}
    if len(channels) != 1 or any(len(shape) < 2 or min(shape) < 1 for _, shape in arrays):
      raise ConfigError(f"LatentLayout: latent arrays {dict(arrays)} must each be (*grid, channels) with the same "
                        "channel count to share one token sequence; give the planes one latent width.")
    return cls(arrays)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.arrays)

  @property
  def channels(self) -> int:
    return self.arrays[0][1][-1]

  @property
  def sizes(self) -> tuple[int, ...]:
    """Tokens per array: the product of its grid."""
    return tuple(int(np.prod(shape[:-1])) for _, shape in self.arrays)

  @property
  def num_tokens(self) -> int:
    return sum(self.sizes)

  @property
  def packed_shape(self) -> tuple[int, int]:
    return (self.num_tokens, self.channels)

  def pack(self, arrays: Mapping[str, Any]) -> Any:
    """`{name: [B, *grid, c]}` → `[B, N, c]` (numpy in, numpy out; otherwise jax)."""
    missing = [name for name in self.names if name not in arrays]
    if missing:
      raise ConfigError(f"LatentLayout.pack: missing latent arrays {missing} (got {sorted(arrays)}).")
    xp = np if all(isinstance(arrays[name], np.ndarray) for name in self.names) else jnp
    flat = []
    for name, shape in self.arrays:
      value = arrays[name]
      if tuple(value.shape[1:]) != shape:
        raise ConfigError(f"LatentLayout.pack: {name!r} has shape {list(value.shape)}; the layout expects "
                          f"[batch, {', '.join(map(str, shape))}] (was it encoded by another tokenizer?).")
      flat.append(value.reshape(value.shape[0], -1, shape[-1]))
    return xp.concatenate(flat, axis=1)

  def unpack(self, packed: Any) -> dict[str, Any]:
    """`[B, N, c]` → `{name: [B, *grid, c]}`, the inverse of `pack`."""
    if tuple(packed.shape[1:]) != self.packed_shape:
      raise ConfigError(f"LatentLayout.unpack: got shape {list(packed.shape)}; the layout packs "
                        f"[batch, {self.num_tokens}, {self.channels}].")
    bounds = np.cumsum((0,) + self.sizes)
    return {name: packed[:, start:stop].reshape((packed.shape[0],) + shape)
            for (name, shape), start, stop in zip(self.arrays, bounds[:-1], bounds[1:])}

  def pack_per_position(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """`{name: [*grid, k]}` (one value per latent position, no batch, e.g. `latent_frame_spans`) → `[N, k]` in the
    token order of `pack`."""
    rows = []
    for name, shape in self.arrays:
      value = np.asarray(values[name])
      if value.shape[:len(shape) - 1] != shape[:-1] or value.ndim != len(shape):
        raise ConfigError(f"LatentLayout.pack_per_position: {name!r} has shape {list(value.shape)}; expected "
                          f"[{', '.join(map(str, shape[:-1]))}, k].")
      rows.append(value.reshape(-1, value.shape[-1]))
    return np.concatenate(rows)

  def array_ids(self) -> np.ndarray:
    """`[N]` int32: the index (in `names`) of the array each token came from."""
    return np.repeat(np.arange(len(self.arrays), dtype=np.int32), self.sizes)

  def grid_positions(self) -> np.ndarray:
    """`[N, d]` int32: each token's grid coordinates inside its own array, `d` the largest grid rank (arrays of
    lower rank are padded with leading zeros)."""
    rank = max(len(shape) - 1 for _, shape in self.arrays)
    rows = []
    for _, shape in self.arrays:
      grid = np.indices(shape[:-1]).reshape(len(shape) - 1, -1).T
      rows.append(np.pad(grid, ((0, 0), (rank - grid.shape[1], 0))))
    return np.concatenate(rows).astype(np.int32)


def given_token_mask(spans: np.ndarray, frame_mask: Any) -> jax.Array:
  """`[B, N]` float32: 1 where every latent frame a token reads is given. `spans` `[N, 2]` are the tokens'
  frames `[start, stop)` (a tokenizer's `latent_frame_spans`, packed), `frame_mask` `[B, T]` marks given frames.
  For four-plane latents with the first frame given, that is all of `xy0` and row 0 of `tw` and `th`; tri-plane's
  `xy` reads every frame, so no given frame fixes it."""
  given = jnp.asarray(frame_mask, jnp.float32)
  counts = jnp.concatenate([jnp.zeros((given.shape[0], 1)), jnp.cumsum(given, axis=1)], axis=1)
  start, stop = np.asarray(spans[:, 0]), np.asarray(spans[:, 1])
  return (counts[:, stop] - counts[:, start] == (stop - start)[None]).astype(jnp.float32)
