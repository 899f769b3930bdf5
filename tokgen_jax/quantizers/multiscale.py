"""VAR multi-scale residual quantization (Tian et al. 2024): token maps from 1×1 up to H×W over one codebook
(or one per scale).

Scale k quantizes the area-downsampled residual, upsamples its code map back to H×W, refines it with φ and
removes it from the residual, so the token maps of all scales sum (through φ) to the feature map f̂.

Resampling (`resize`):
- "exact" (default, our choice): exact area averaging for any ratio (`area_weights`, which preserves the mean)
  and `jax.image.resize`'s bicubic (Keys a = -0.5, weights renormalized at the borders).
- "torch": what VAR runs, PyTorch's `F.interpolate(..., size=s, mode="area")` (adaptive average pooling over whole
  pixels, `torch_area_weights`) and `mode="bicubic", align_corners=False` (a = -0.75, edge pixels repeated,
  `torch_bicubic_weights`), so weights imported from VAR reproduce its f̂. The two agree on downsampling by
  integer ratios and differ elsewhere (up to ~1.4 on unit noise for bicubic).
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.nn.conv import Conv
from tokgen_jax.quantizers.base import QuantizerOutput, codebook_statistics
from tokgen_jax.quantizers.vq import STATS, VectorQuantizer


def area_weights(in_size: int, out_size: int) -> np.ndarray:
  """`[out_size, in_size]` exact area-averaging weights: output cell i covers `[i·n/s, (i+1)·n/s)` of the input.

  Entry (i, j) is the length of that cell's overlap with input pixel `[j, j+1)` over the cell length, so each row
  sums to 1 and every input pixel contributes `s/n` in total, which preserves the global mean for any ratio.
  (PyTorch's `mode="area"` is adaptive average pooling over whole pixels: the same for integer ratios, not for
  e.g. 16→13.)
  """
  cell = in_size / out_size
  lo = np.arange(out_size)[:, None] * cell
  pixel = np.arange(in_size)[None, :]
  overlap = np.clip(np.minimum(lo + cell, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
  return (overlap / cell).astype(np.float32)


def torch_area_weights(in_size: int, out_size: int) -> np.ndarray:
  """`[out_size, in_size]` weights of PyTorch's adaptive average pooling (`mode="area"`): output cell i averages
  the whole input pixels `floor(i·n/s) .. ceil((i+1)·n/s) - 1` equally (neighbouring cells may share a pixel)."""
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start, end = (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def _cubic(distance: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel (Keys 1981, eq. 15) with parameter a (PyTorch: -0.75)."""
  d = np.abs(distance)
  near = ((a + 2) * d - (a + 3)) * d * d + 1
  far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def torch_bicubic_weights(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
  """`[out_size, in_size]` weights of PyTorch's `mode="bicubic", align_corners=False` given an output size:
  output pixel i samples source `(i + 0.5)·n/s - 0.5` (not clamped), from the 4 taps around it with
  `_cubic(·, a)`, tap indices clamped to the image (edge pixels repeated)."""
  source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(source).astype(np.int64)
  weights = np.zeros((out_size, in_size), np.float64)
  for offset in (-1, 0, 1, 2):
    taps = base + offset
    np.add.at(weights, (np.arange(out_size), np.clip(taps, 0, in_size - 1)), _cubic(source - taps, a))
  return weights.astype(np.float32)


def _separable(x: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
  """`R · x · Cᵀ` over the two spatial axes of `x [B, H, W, D]`."""
  return jnp.einsum("ih,bhwd,jw->bijd", jnp.asarray(rows), x, jnp.asarray(cols),
                    precision=jax.lax.Precision.HIGHEST)


def area_downsample(x: jax.Array, size: int) -> jax.Array:
  """Area-average `x [B, H, W, D]` to `[B, size, size, D]` as `A_h · x · A_wᵀ` with `area_weights`."""
  return _separable(x, area_weights(x.shape[1], size), area_weights(x.shape[2], size))


RESIZES = ("exact", "torch")


def downsample(x: jax.Array, size: int, resize: str = "exact") -> jax.Array:
  """`x [B, H, W, D]` area-averaged to `[B, size, size, D]` (see the module docstring for `resize`)."""
  if resize == "torch":
    return _separable(x, torch_area_weights(x.shape[1], size), torch_area_weights(x.shape[2], size))
  return area_downsample(x, size)


def upsample(x: jax.Array, size: int, resize: str = "exact") -> jax.Array:
  """`x [B, h, w, D]` bicubically upsampled to `[B, size, size, D]` (see the module docstring for `resize`)."""
  if resize == "torch":
    return _separable(x, torch_bicubic_weights(x.shape[1], size), torch_bicubic_weights(x.shape[2], size))
  return jax.image.resize(x, x.shape[:1] + (size, size) + x.shape[3:], "bicubic")


def _balanced(vectors: list[jax.Array], indices: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Every scale's lookup vectors `[n_k, D]` and codes `[n_k]`, each cycled to the finest scale's count, then
  concatenated: restarts and the k-means start draw as often from the 1×1 scale as from the finest, so the coarse
  scales keep codes of their own (pooled as they come, a 1×1 scale gives 1 of Σ s² vectors)."""
  count = max(v.shape[0] for v in vectors)
  rows = lambda a: a[jnp.arange(count) % a.shape[0]]
  return jnp.concatenate([rows(v) for v in vectors]), jnp.concatenate([rows(i) for i in indices])


class MultiScaleResidualQuantizer(nn.Module):
  """VAR's residual quantizer on `z [B, H, W, D]` with `H = W = scales[-1]`, one codebook shared by all scales
  (or, with `codebook_per_scale`, one per scale: params `scale_vqs_k` in place of `vq`).

  For each scale s (VAR §3.2, algorithm 1): `r_s = nearest(area(f, s))`, `h = φ(bicubic(e(r_s), H))`,
  `f̂ += h`, `f -= h`, with `φ(h) = (1-phi_mix)·h + phi_mix·conv(h)`. VAR keeps a few φ convs shared across
  neighbouring scales; here ONE conv is shared by every scale. The loss is the mean over scales of
  `β‖sg(f̂_k) - f‖² + ‖f̂_k - sg(f)‖²` (VAR's form: β on the encoder term), and `z_q = f + sg(f̂ - f)`.
  With `standardize_scales` (ours) each scale looks up `(r_s - μ_s) / σ_s` and adds `φ(bicubic(μ_s + σ_s·e))`.

  Indices are ONE int32 array `[B, num_tokens]`: the s×s maps flattened row-major and concatenated from the
  coarsest scale (680 tokens for the default scales); `split_scales` undoes it. A tokenizer names the maps
  `tokens_0` (1×1) .. `tokens_{S-1}` (`named_indices`, `indices_from_named`), and writes them so to its latent
  shards. Training metrics add `codebook_usage_scale_k` and `perplexity_scale_k` of each scale's batch histogram.

  A next-scale generator (VAR, `generators/var.py`) reads the same f̂: `next_scale_inputs` are its teacher-forced
  inputs and `advance` is one step of its sampling loop.
  """

  codebook_size: int
  dim: int
  scales: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
  beta: float = 0.25
  phi_mix: float = 0.5
  phi_kernel: int = 3
  resize: str = "exact"
  # Keeping codes alive (`VectorQuantizer`'s options; 0 = off): restarts from the step's residual vectors of all
  # scales in equal shares (`_balanced`), and a k-means start on them. Without them the coarse scales collapse
  # (Infinity#80).
  restart_after_steps: int = 0
  restart_below_usage: float = 0.0
  kmeans_init_iterations: int = 0
  # Per-scale standardized lookup (ours; VAR has none): scale k looks codes up for `(r_k - μ_k) / σ_k` and adds
  # `φ(bicubic(μ_k + σ_k·e))`, with μ_k `[D]` and σ_k running means of that scale's lookup vectors (see
  # `_standardizer`). The shared codebook then sees every scale at one spread, so the 1×1 map's large global
  # means do not fall into a few outlying codes while the small fine residuals crowd the rest.
  standardize_scales: bool = False
  standardize_decay: float = 0.99
  # One codebook per scale (ours; VAR shares one, as here by default), as SoundStream's residual VQ gives each
  # stage its own. A shared codebook spends its codes where most lookup vectors are, the fine scales, and leaves
  # the 1×1 scale a few far codes; its own codebook lets each scale keep (and restart) codes among its vectors.
  codebook_per_scale: bool = False

  def setup(self):
    if self.resize not in RESIZES:
      raise ValueError(f"MultiScaleResidualQuantizer: resize={self.resize!r} is not known; set "
                       f"config.model.quantizer.resize to one of {RESIZES}.")
    scales = tuple(self.scales)
    if not scales or any(s < 1 for s in scales) or list(scales) != sorted(set(scales)):
      raise ValueError(f"MultiScaleResidualQuantizer: scales={scales} must be positive and strictly increasing.")
    codebook = functools.partial(VectorQuantizer, self.codebook_size, self.dim, commitment_weight=self.beta,
                                 restart_after_steps=self.restart_after_steps,
                                 restart_below_usage=self.restart_below_usage,
                                 kmeans_init_iterations=self.kmeans_init_iterations)
    if self.codebook_per_scale:
      self.scale_vqs = tuple(codebook() for _ in scales)
    else:
      self.vq = codebook()
    self.phi = Conv(self.dim, (self.phi_kernel, self.phi_kernel))
    if self.standardize_scales:
      if not 0.0 <= self.standardize_decay < 1.0:
        raise ValueError(f"MultiScaleResidualQuantizer: standardize_decay={self.standardize_decay} must be in "
                         "[0, 1); set config.model.quantizer.standardize_decay.")
      # σ = 0 marks a scale not yet measured: its first training step sets μ, σ from the batch outright.
      self.scale_mean = self.variable(STATS, "scale_mean", lambda: jnp.zeros((len(scales), self.dim), jnp.float32))
      self.scale_std = self.variable(STATS, "scale_std", lambda: jnp.zeros((len(scales),), jnp.float32))

  def _codebook(self, scale: int) -> VectorQuantizer:
    """The VQ that scale `scale` (0 = coarsest) looks its codes up in."""
    return self.scale_vqs[scale] if self.codebook_per_scale else self.vq

  @property
  def num_tokens(self) -> int:
    return sum(s * s for s in self.scales)

  @property
  def bits_per_token(self) -> float:
    return float(np.log2(self.codebook_size))

  def _num_scales(self, num_tokens: int) -> int:
    """How many leading scales a flat token sequence of this length holds."""
    prefix = np.cumsum([s * s for s in self.scales])
    if num_tokens not in prefix:
      raise ValueError(f"MultiScaleResidualQuantizer: {num_tokens} tokens is not a whole number of scales; "
                       f"valid lengths for scales={tuple(self.scales)} are {prefix.tolist()}.")
    return int(np.searchsorted(prefix, num_tokens)) + 1

  def split_scales(self, indices: jax.Array) -> list[jax.Array]:
    """`[B, n]` → `[B, s, s]` per scale; n may cover only the first scales (a coarse-to-fine prefix)."""
    maps, start = [], 0
    for s in self.scales[:self._num_scales(indices.shape[-1])]:
      maps.append(indices[:, start:start + s * s].reshape(indices.shape[0], s, s))
      start += s * s
    return maps

  @property
  def scale_names(self) -> tuple[str, ...]:
    """The named token arrays of the scales, coarse to fine."""
    return tuple(f"tokens_{k}" for k in range(len(self.scales)))

  @property
  def scale_lengths(self) -> tuple[int, ...]:
    return tuple(s * s for s in self.scales)

  def named_indices(self, indices: jax.Array) -> dict[str, jax.Array]:
    """Flat indices `[B, n]` (n covering a prefix of the scales) as `{tokens_k: [B, s_k, s_k]}`."""
    return dict(zip(self.scale_names, self.split_scales(indices)))

  def indices_from_named(self, arrays: dict[str, jax.Array]) -> jax.Array:
    """The inverse of `named_indices`: the maps of a prefix of the scales (coarse first) as flat `[B, n]`."""
    present = [name for name in self.scale_names if name in arrays]
    if not present or tuple(present) != self.scale_names[:len(present)] or len(present) != len(arrays):
      raise ValueError(f"MultiScaleResidualQuantizer: token arrays {sorted(arrays)} are not a coarse-to-fine prefix "
                       f"of {self.scale_names}; pass the maps of the first k scales by those names.")
    return jnp.concatenate([arrays[name].reshape(arrays[name].shape[0], -1) for name in present], axis=1)

  def add_scale(self, f_hat: jax.Array, code_map: jax.Array) -> jax.Array:
    """`f̂ + φ(bicubic(e(r)))`: the reconstruction after one more scale, from that scale's ids `[B, s, s]`."""
    scale = tuple(self.scales).index(code_map.shape[1])
    mean, std = self._standardizer(scale)
    return f_hat + self._contribution(mean + std * self._codebook(scale).codes_from_indices(code_map))

  def _standardizer(self, scale: int, vectors: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(μ, σ) of scale `scale`'s lookup, `(0, 1)` without `standardize_scales`. Given that scale's lookup vectors
    `[N, D]` in a training step (the state mutable, not initializing), the running values move towards their batch
    mean and RMS deviation from it first, and that step looks up with the moved values, so training and eval
    standardize alike (to within one step's EMA update)."""
    if not self.standardize_scales:
      return jnp.zeros((self.dim,), jnp.float32), jnp.ones((), jnp.float32)
    mean, std = self.scale_mean.value[scale], self.scale_std.value[scale]
    if vectors is not None and self.is_mutable_collection(STATS) and not self.is_initializing():
      vectors = jax.lax.stop_gradient(vectors)
      batch_mean = jnp.mean(vectors, axis=0)
      batch_std = jnp.sqrt(jnp.mean(jnp.square(vectors - batch_mean)))
      keep = jnp.where(std > 0, self.standardize_decay, 0.0)
      mean, std = keep * mean + (1 - keep) * batch_mean, keep * std + (1 - keep) * batch_std
      self.scale_mean.value = self.scale_mean.value.at[scale].set(mean)
      self.scale_std.value = self.scale_std.value.at[scale].set(std)
    return mean, jnp.where(std > 0, std, 1.0)

  def _update_codebooks(self, looked_up: list[jax.Array], chosen: list[jax.Array]) -> dict[str, jax.Array]:
    """One step's restarts and k-means start: the shared codebook's from every scale's vectors in
    equal shares, or each scale's own codebook's from that scale's vectors; `dead_codes` sums the scales'."""
    if not self.codebook_per_scale:
      return self.vq.update_statistics(*_balanced(looked_up, chosen))
    updates = [vq.update_statistics(v, i) for vq, v, i in zip(self.scale_vqs, looked_up, chosen)]
    return {name: sum(u[name] for u in updates) for name in updates[0]}

  def next_scale_inputs(self, indices: jax.Array) -> jax.Array:
    """VAR's teacher-forced inputs `[B, num_tokens - scales[0]², D]` of full token sequences `[B, num_tokens]`:
    for k = 1 .. S-1, the reconstruction f̂ of scales < k area-downsampled to scale k, flattened row-major and
    concatenated (VAR's `idxBl_to_var_input`). Scale 0 has no input (it is the class token)."""
    f_hat = self.empty_reconstruction(indices.shape[0])
    inputs = [jnp.zeros((indices.shape[0], 0, self.dim), jnp.float32)]  # one scale: no inputs
    for k, code_map in enumerate(self.split_scales(indices)[:-1]):
      f_hat, next_inputs = self.advance(f_hat, code_map, k)
      inputs.append(next_inputs)
    return jnp.concatenate(inputs, axis=1)

  def empty_reconstruction(self, batch: int) -> jax.Array:
    """f̂ before any scale: zeros `[B, H, W, D]`."""
    return jnp.zeros((batch, self.scales[-1], self.scales[-1], self.dim), jnp.float32)

  def advance(self, f_hat: jax.Array, code_map: jax.Array, scale: int) -> tuple[jax.Array, jax.Array]:
    """One step of next-scale generation: f̂ with scale `scale`'s ids `[B, s, s]` added, and the next scale's
    inputs `area(f̂, s_{scale+1})` as `[B, s_{scale+1}², D]` (VAR's `get_next_autoregressive_input`)."""
    f_hat = self.add_scale(f_hat, code_map)
    next_size = self.scales[scale + 1]
    return f_hat, downsample(f_hat, next_size, self.resize).reshape(f_hat.shape[0], next_size * next_size, self.dim)

  def _contribution(self, code_map: jax.Array) -> jax.Array:
    """φ(bicubic(code_map)) at full resolution: what one scale adds to f̂."""
    size = self.scales[-1]
    if code_map.shape[1] != size:  # the finest scale is already full size (VAR skips the resize too)
      code_map = upsample(code_map, size, self.resize)
    return (1.0 - self.phi_mix) * code_map + self.phi_mix * self.phi(code_map)

  def codes_from_indices(self, indices: jax.Array) -> jax.Array:
    """f̂ `[B, H, W, D]` from flat indices `[B, n]`; a prefix of scales gives the coarser reconstruction."""
    f_hat = jnp.zeros((indices.shape[0], self.scales[-1], self.scales[-1], self.dim), jnp.float32)
    for scale_indices in self.split_scales(indices):
      f_hat = self.add_scale(f_hat, scale_indices)
    return f_hat

  def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    size = self.scales[-1]
    if z.ndim != 4 or z.shape[1:] != (size, size, self.dim):
      raise ValueError(f"MultiScaleResidualQuantizer: expected z of shape [B, {size}, {size}, {self.dim}] "
                       f"(H = W = scales[-1]), got {z.shape}; match the encoder's latent size to scales[-1].")
    f = z.astype(jnp.float32)
    rest = jax.lax.stop_gradient(f)  # only picks codes: no gradient flows through the argmin path
    f_hat = jnp.zeros_like(f)
    indices, commitment, codebook_loss, per_scale, looked_up, chosen = [], 0.0, 0.0, {}, [], []
    for k, s in enumerate(self.scales):
      down = rest if s == size else downsample(rest, s, self.resize)
      mean, std = self._standardizer(k, down.reshape(-1, self.dim) if train else None)
      standardized = (down - mean) / std
      _, out = self._codebook(k)(standardized, train=False)  # this step's codes; the state update follows
      looked_up.append(standardized.reshape(-1, self.dim))
      chosen.append(out.indices.reshape(-1))
      h = self._contribution(mean + std * self._codebook(k).codes_from_indices(out.indices))
      f_hat = f_hat + h
      rest = rest - jax.lax.stop_gradient(h)
      indices.append(out.indices.reshape(z.shape[0], s * s))
      statistics = codebook_statistics(out.indices, self.codebook_size)
      per_scale |= {f"codebook_usage_scale_{k}": statistics["codebook_usage"],
                    f"perplexity_scale_{k}": statistics["perplexity"]}
      commitment = commitment + jnp.mean(jnp.square(jax.lax.stop_gradient(f_hat) - f))
      codebook_loss = codebook_loss + jnp.mean(jnp.square(f_hat - jax.lax.stop_gradient(f)))
    commitment = commitment / len(self.scales)
    codebook_loss = codebook_loss / len(self.scales)
    indices = jnp.concatenate(indices, axis=1)
    metrics = {"codebook_loss": codebook_loss, "commitment": commitment,
               **codebook_statistics(indices, self.codebook_size), **per_scale}
    if train and self._codebook(0).writes_codes:
      metrics |= self._update_codebooks(looked_up, chosen)
    z_q = f + jax.lax.stop_gradient(f_hat - f)  # straight-through: d z_q / d z = identity
    return z_q, QuantizerOutput(indices=indices, loss=codebook_loss + self.beta * commitment, metrics=metrics)
