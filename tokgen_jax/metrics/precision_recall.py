"""Improved precision and recall of generated samples (Kynkäänniemi et al. 2019), on feature vectors.

Each set's manifold is the union of balls around its features, each ball's radius the distance to that feature's
k-th nearest neighbour within its own set (k = 3, the paper's and ADM's evaluator's choice). Precision is the
share of sample features inside the real manifold (are samples realistic?); recall the share of real features
inside the sample manifold (is the real variety covered?). ADM's evaluator (Dhariwal & Nichol 2021), whose
figures VAR and LlamaGen report, computes them on InceptionV3 pool features against 10,000 real images.

Distances run in float32 blocks of `block` rows through jitted matmuls (`|a|² + |b|² − 2a·b`), so 10k-by-50k
comparisons stay within memory on any device; results are exact up to float32 rounding of the distances.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError

NEIGHBOURS = 3
BLOCK = 2048


@jax.jit
def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  squared = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * jnp.matmul(
      a, b.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(squared, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_smallest(squared: jax.Array, k: int) -> jax.Array:
  return -jax.lax.top_k(-squared, k)[0][:, -1]


def _blocks(n: int, block: int):
  return ((start, min(start + block, n)) for start in range(0, n, block))


def manifold_radii(features: np.ndarray, k: int = NEIGHBOURS, block: int = BLOCK) -> np.ndarray:
  """Squared distance of each feature to its k-th nearest other feature of the same set `[N]`."""
  features = jnp.asarray(features)
  # The (k+1)-th smallest distance counts the feature itself (distance 0) as its first neighbour.
  return np.concatenate([np.asarray(_kth_smallest(_squared_distances(features[s:e], features), k + 1))
                         for s, e in _blocks(len(features), block)])


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> float:
  """Share of `points` inside at least one ball (centre, squared radius)."""
  centres, radii = jnp.asarray(centres), jnp.asarray(radii)
  inside = [np.asarray((_squared_distances(jnp.asarray(points[s:e]), centres) <= radii[None]).any(-1))
            for s, e in _blocks(len(points), block)]
  return float(np.concatenate(inside).mean())


def _check(features: np.ndarray, name: str, k: int) -> np.ndarray:
  features = np.asarray(features)
  if features.ndim != 2 or features.shape[0] <= k:
    raise ConfigError(f"precision_recall: {name} features have shape {features.shape}; pass [N, D] with N > "
                      f"k={k} (ADM's evaluator uses 10,000 real and 50,000 sample features).")
  if not np.all(np.isfinite(features)):
    raise ConfigError(f"precision_recall: {name} features contain NaN or inf; check the images fed to the network.")
  return features


def precision_recall(real: np.ndarray, samples: np.ndarray, k: int = NEIGHBOURS,
                     block: int = BLOCK) -> tuple[float, float]:
  """(precision, recall) of `samples` `[M, D]` against `real` `[N, D]` (Kynkäänniemi et al. 2019, eq. 1-3)."""
  real, samples = _check(real, "real", k), _check(samples, "sample", k)
  if real.shape[1] != samples.shape[1]:
    raise ConfigError(f"precision_recall: real features are {real.shape[1]}-d and sample features "
                      f"{samples.shape[1]}-d; compute both with the same network.")
  precision = _coverage(samples, real, manifold_radii(real, k, block), block)
  recall = _coverage(real, samples, manifold_radii(samples, k, block), block)
  return precision, recall
