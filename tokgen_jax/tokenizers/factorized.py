"""Four-plane and tri-plane factorized video latents (seed 000, Part I; NUMERICS "Factorized video latents").

MAGVIT-v2's causal 3D VAE with its latent volume `[B, t, h, w, c]` factorized at the bottleneck into planes, each
its own named latent array, and recomposed before the decoder:

- four-plane: two spatial planes, the latent frames split at `time_split` into two non-overlapping segments, each
  pooled over time (`xy0` `[h, w]`, `xy1` `[h, w]`), and two spatiotemporal planes pooled over H (`tw` `[t, w]`)
  and over W (`th` `[t, h]`). 17×128² → 5×16×16: 2·256 + 2·80 = 672 positions instead of 1280. `time_split` 1
  keeps the causal image frame alone in `xy0` (the seed leaves the split open).
- tri-plane (the baseline): one spatial plane over all frames (`xy`), with `tw` and `th`.

Pooling (`pooling`): 'mean' (the seed's choice, which generalized best), 'linear' (learned weights over the pooled
positions, initialised to the mean) or 'attention' (PVDM's: a learned query per plane attends over the pooled
positions).

Recomposition broadcasts every plane back over the axis it was pooled on and concatenates the planes along
channels. A spatial plane of the four-plane split is broadcast over its own segment only (zeros over the other):
our reading, so that with `time_split` 1 the first frame's reconstruction reads the first frame alone, as in the
volumetric causal VAE; broadcast over all frames, `xy1` would carry later frames into frame 0. Tri-plane's `xy`
spans all frames, so it is not causal (the seed: four-plane supports frame prediction, tri-plane does not).

The bottleneck (KL for the seed's 8-channel latents, or any single-level quantizer) acts on each plane with shared
weights; its losses add up over the planes (the KL is a sum over positions) and its metrics are averaged.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.quantizers import QuantizerOutput
from tokgen_jax.tokenizers.base import LATENTS, TOKENS
from tokgen_jax.tokenizers.magvit2 import MagvitV2

FACTORIZATIONS = ("four_plane", "tri_plane")
POOLINGS = ("mean", "linear", "attention")
# Plane name → (the volume axis pooled away: 1 time, 2 H, 3 W; the latent frames it covers: "all" or a segment).
_PLANES = {
    "four_plane": {"xy0": (1, "first"), "xy1": (1, "rest"), "tw": (2, "all"), "th": (3, "all")},
    "tri_plane": {"xy": (1, "all"), "tw": (2, "all"), "th": (3, "all")},
}


def plane_names(factorization: str) -> tuple[str, ...]:
  return tuple(_PLANES[factorization])


def _frames(segment: str, num_frames: int, time_split: int) -> slice:
  return {"first": slice(0, time_split), "rest": slice(time_split, num_frames), "all": slice(0, num_frames)}[segment]


def plane_shapes(factorization: str, grid: tuple[int, int, int], time_split: int) -> dict[str, tuple[int, int]]:
  """Each plane's positions `(rows, cols)` for a latent grid `(t, h, w)`."""
  t, h, w = grid
  shapes = {1: (h, w), 2: (t, w), 3: (t, h)}
  return {name: shapes[axis] for name, (axis, _) in _PLANES[factorization].items()}


def plane_frame_spans(factorization: str, grid: tuple[int, int, int], time_split: int) -> dict[str, np.ndarray]:
  """Each plane position's latent frames `[start, stop)` (int32 `[rows, cols, 2]`): a spatial plane reads its whole
  segment at every position, a spatiotemporal plane's row t reads frame t."""
  spans = {}
  for name, (axis, segment) in _PLANES[factorization].items():
    rows, cols = plane_shapes(factorization, grid, time_split)[name]
    if axis == 1:
      frames = _frames(segment, grid[0], time_split)
      start, stop = np.full((rows, cols), frames.start), np.full((rows, cols), frames.stop)
    else:
      start = np.broadcast_to(np.arange(rows)[:, None], (rows, cols))
      stop = start + 1
    spans[name] = np.stack([start, stop], axis=-1).astype(np.int32)
  return spans


def check_factorization(factorization: str, time_split: int, num_frames: int) -> None:
  if factorization not in FACTORIZATIONS:
    raise ConfigError(f"config.model.factorization={factorization!r} is not known; choose one of {FACTORIZATIONS} "
                      "(or the plain 'magvit2' tokenizer for volumetric latents).")
  if factorization == "four_plane" and not 1 <= time_split < num_frames:
    raise ConfigError(f"config.model.time_split={time_split} must lie in [1, {num_frames}) to split the "
                      f"{num_frames} latent frames into two non-empty segments (1: the first frame alone).")


class PlanePooling(nn.Module):
  """`z [B, t, h, w, c]` → `{plane: [B, rows, cols, c]}` by `pooling` over each plane's axis and frames."""

  factorization: str
  time_split: int
  pooling: str = "mean"

  @nn.compact
  def __call__(self, z: jax.Array) -> dict[str, jax.Array]:
    if self.pooling not in POOLINGS:
      raise ConfigError(f"config.model.pooling={self.pooling!r} is not known; choose one of {POOLINGS}.")
    check_factorization(self.factorization, self.time_split, z.shape[1])
    planes = {}
    for name, (axis, segment) in _PLANES[self.factorization].items():
      volume = z[:, _frames(segment, z.shape[1], self.time_split)]
      planes[name] = self._pool(jnp.moveaxis(volume, axis, -2), name)
    return planes

  def _pool(self, x: jax.Array, name: str) -> jax.Array:
    """Reduces `x [..., L, c]` over L."""
    length, channels = x.shape[-2:]
    if self.pooling == "mean":
      return jnp.mean(x, axis=-2)
    if self.pooling == "linear":
      weights = self.param(f"{name}_weights", nn.initializers.constant(1.0 / length), (length,))
      return jnp.einsum("...lc,l->...c", x, weights)
    # PVDM's squeeze: one learned query per plane attends over the L positions (with learned positions).
    query = self.param(f"{name}_query", nn.initializers.normal(0.02), (channels,))
    positions = self.param(f"{name}_positions", nn.initializers.normal(0.02), (length, channels))
    keys = nn.LayerNorm(name=f"{name}_norm")(x) + positions
    attended = nn.MultiHeadDotProductAttention(num_heads=1, name=f"{name}_attention")(
        jnp.broadcast_to(query, x.shape[:-2] + (1, channels)), keys)
    return attended[..., 0, :]


def recompose(planes: dict[str, jax.Array], factorization: str, time_split: int, num_frames: int) -> jax.Array:
  """The planes broadcast back to the volume `[B, t, h, w, k·c]` and concatenated along channels; a four-plane
  spatial plane covers its own segment of frames (zeros over the other)."""
  blocks = []
  for name, (axis, segment) in _PLANES[factorization].items():
    plane = planes[name]
    if axis == 1:
      frames, covers = jnp.arange(num_frames), _frames(segment, num_frames, time_split)
      covered = (frames >= covers.start) & (frames < covers.stop)
      block = plane[:, None] * covered[None, :, None, None, None].astype(plane.dtype)
    elif axis == 2:  # [B, t, w, c] over H
      block = plane[:, :, None]
    else:  # [B, t, h, c] over W
      block = plane[:, :, :, None]
    blocks.append(block)
  batch, _, height, width, channels = jnp.broadcast_shapes(*(b.shape for b in blocks))
  return jnp.concatenate([jnp.broadcast_to(b, (batch, num_frames, height, width, b.shape[-1])) for b in blocks],
                         axis=-1)


class FactorizedMagvit(MagvitV2):
  """MAGVIT-v2 with four-plane or tri-plane latents: `encode(videos)` → `{"latents_<plane>": [B, rows, cols, c]}`
  (`tokens_<plane>` behind a discrete quantizer), `decode` from them; see the module docstring."""

  factorization: str = "four_plane"
  time_split: int = 1
  pooling: str = "mean"

  def setup(self):
    super().setup()
    self.pool = PlanePooling(self.factorization, self.time_split, self.pooling)

  def _latent_frames(self, videos: jax.Array) -> int:
    if videos.ndim != 5:
      raise ConfigError(f"FactorizedMagvit: factorized latents are for videos [B, T, H, W, 3]; got shape "
                        f"{videos.shape}. Use the 'magvit2' tokenizer for images.")
    return 1 + (videos.shape[1] - 1) // self.factors.temporal

  def _quantize_planes(self, videos: jax.Array, train: bool) -> tuple[dict, dict[str, QuantizerOutput]]:
    self._latent_frames(videos)
    planes = self.pool(self.encoder(self._as_video(videos)))
    quantized = {name: self.quantizer(plane, train=train) for name, plane in planes.items()}
    return {name: z for name, (z, _) in quantized.items()}, {name: out for name, (_, out) in quantized.items()}

  def quantize(self, videos: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    codes, outputs = self._quantize_planes(videos, train)
    indices = jnp.concatenate([out.indices.reshape(out.indices.shape[0], -1) for out in outputs.values()], axis=1)
    metrics = jax.tree.map(lambda *values: sum(values) / len(values), *(out.metrics for out in outputs.values()))
    combined = QuantizerOutput(indices=indices, loss=sum(out.loss for out in outputs.values()), metrics=metrics)
    return self.recompose(codes, self._latent_frames(videos)), combined

  def recompose(self, codes: dict[str, jax.Array], num_frames: int) -> jax.Array:
    return recompose(codes, self.factorization, self.time_split, num_frames)

  def encode(self, x: jax.Array) -> dict[str, jax.Array]:
    codes, outputs = self._quantize_planes(x, train=False)
    if self.is_discrete:
      return {f"{TOKENS}_{name}": out.indices for name, out in outputs.items()}
    return {f"{LATENTS}_{name}": z for name, z in codes.items()}

  def decode(self, latents: dict[str, jax.Array]) -> jax.Array:
    prefix = TOKENS if self.is_discrete else LATENTS
    missing = [f"{prefix}_{name}" for name in plane_names(self.factorization) if f"{prefix}_{name}" not in latents]
    if missing:
      raise ConfigError(f"FactorizedMagvit.decode: missing planes {missing} (got {sorted(latents)}).")
    codes = {name: latents[f"{prefix}_{name}"] for name in plane_names(self.factorization)}
    if self.is_discrete:
      codes = {name: self.quantizer.codes_from_indices(ids) for name, ids in codes.items()}
    return self.decode_codes(self.recompose(codes, self._frames_of(codes)))

  def _frames_of(self, codes: dict[str, jax.Array]) -> int:
    return codes["tw"].shape[1]  # every factorization keeps the t×w plane

  def latent_frame_spans(self, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    prefix = TOKENS if self.is_discrete else LATENTS
    spans = plane_frame_spans(self.factorization, self.latent_grid(input_shape), self.time_split)
    return {f"{prefix}_{name}": value for name, value in spans.items()}

  def num_latent_positions(self, input_shape: tuple[int, ...]) -> int:
    grid = self.latent_grid(input_shape)
    return sum(rows * cols for rows, cols in plane_shapes(self.factorization, grid, self.time_split).values())
