"""Finite scalar quantization (FSQ, Mentzer et al. 2023): round each bounded channel to a few levels.

The codebook is implicit: channel i takes one of `levels[i]` values, so there are prod(levels) codes and no
parameters, no codebook loss and no collapse to fight.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.quantizers.base import QuantizerOutput, codebook_statistics

# Shrinks the tanh range a hair so the extreme level is reached by rounding, never by tanh saturating to it.
_BOUND_EPS = 1e-3


def _round_straight_through(x: jax.Array) -> jax.Array:
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FiniteScalarQuantizer(nn.Module):
  """FSQ over `z [..., len(levels)]`: bound, round with straight-through, rescale to [-1, 1].

  Bound (paper §3, appendix A.1): `tanh(z + shift)·half_l - offset` with `half_l = (L-1)/2·(1-eps)`. For even L
  the grid is shifted by a half step (offset 0.5) so it holds L integers `-L/2 … L/2-1`; `shift = atanh(offset /
  half_l)` keeps z = 0 on the code 0 (L = 2 cannot and has shift 0). Rounded values are divided by `L // 2`, so
  codes lie in [-1, 1].
  """

  levels: Sequence[int]

  @property
  def dim(self) -> int:
    return len(self.levels)

  @property
  def codebook_size(self) -> int:
    return math.prod(self.levels)

  @property
  def bits_per_token(self) -> float:
    return float(np.log2(self.codebook_size))

  def _levels(self) -> np.ndarray:
    levels = np.asarray(self.levels, dtype=np.int64)
    if levels.ndim != 1 or levels.size == 0 or np.any(levels < 2):
      raise ValueError(f"FiniteScalarQuantizer: levels={tuple(self.levels)} must be a non-empty list of integers "
                       ">= 2, e.g. (8, 5, 5, 5).")
    return levels

  def _half_width(self) -> jax.Array:
    return jnp.asarray(self._levels() // 2, jnp.float32)

  def _basis(self) -> jax.Array:
    # Mixed-radix place values: the first channel varies fastest.
    return jnp.asarray(np.cumprod([1] + list(self._levels()[:-1])), jnp.int32)

  def bound(self, z: jax.Array) -> jax.Array:
    """Squash z into the open interval whose rounding gives exactly L integers per channel."""
    levels = self._levels().astype(np.float64)
    half_l = (levels - 1.0) * (1.0 - _BOUND_EPS) / 2.0
    offset = np.where(self._levels() % 2 == 0, 0.5, 0.0)
    ratio = offset / half_l
    # L = 2 has no such shift (its two levels straddle z = 0, ratio > 1): leave it unshifted.
    shift = np.arctanh(np.where(ratio < 1.0, ratio, 0.0))
    return (jnp.tanh(z.astype(jnp.float32) + jnp.asarray(shift, jnp.float32)) * jnp.asarray(half_l, jnp.float32)
            - jnp.asarray(offset, jnp.float32))

  def codes_to_indices(self, codes: jax.Array) -> jax.Array:
    """Codes on the [-1, 1] grid → int32 ids in [0, prod(levels)); the inverse of `codes_from_indices`."""
    half_width = self._half_width()
    digits = jnp.round(codes * half_width + half_width).astype(jnp.int32)  # per channel in [0, L)
    return jnp.sum(digits * self._basis(), axis=-1).astype(jnp.int32)

  def codes_from_indices(self, indices: jax.Array) -> jax.Array:
    levels = jnp.asarray(self._levels(), jnp.int32)
    digits = (indices[..., None] // self._basis()) % levels
    half_width = self._half_width()
    return (digits.astype(jnp.float32) - half_width) / half_width

  def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    del train  # FSQ has no state and no train-only behaviour
    if z.shape[-1] != self.dim:
      raise ValueError(f"FiniteScalarQuantizer: input has {z.shape[-1]} channels but levels={tuple(self.levels)} "
                       f"needs {self.dim}; project the encoder output to {self.dim} channels.")
    z_q = _round_straight_through(self.bound(z)) / self._half_width()
    indices = self.codes_to_indices(jax.lax.stop_gradient(z_q))
    metrics = codebook_statistics(indices, self.codebook_size)
    return z_q, QuantizerOutput(indices=indices, loss=jnp.zeros((), jnp.float32), metrics=metrics)
