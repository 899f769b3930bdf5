"""Residual quantization (RQ-VAE, Lee et al. 2022): quantize what the previous codes left over, depth times."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.quantizers.base import QuantizerOutput
from tokgen_jax.quantizers.vq import VectorQuantizer

_AVERAGED = ("codebook_usage", "perplexity")


class ResidualQuantizer(nn.Module):
  """`depth` VQ levels on successive residuals; `ẑ = Σ_k e_k` (RQ-VAE eq. 2-3), indices `[..., depth]`.

  Level k quantizes `r_k = z - sg(Σ_{j<k} e_j)`. The residual keeps z's gradient while the earlier codes are
  stop-gradiented, so each level's VQ loss `‖sg(r_k) - e_k‖² + β‖r_k - sg(e_k)‖²` has the commitment term
  `‖z - sg(ẑ_k)‖²` of RQ-VAE eq. 6 on the partial sum `ẑ_k`. The loss is the SUM over depths of the level
  losses (RQ-VAE sums its commitment over depths), not their mean. With `shared_codebook` every level uses one
  codebook (RQ-VAE's choice); otherwise each level has its own.
  """

  depth: int
  codebook_size: int
  dim: int
  shared_codebook: bool = False
  commitment_weight: float = 0.25
  l2_normalize: bool = False

  def setup(self):
    if self.depth < 1:
      raise ValueError(f"ResidualQuantizer: depth={self.depth} must be at least 1.")
    make = lambda name: VectorQuantizer(self.codebook_size, self.dim, commitment_weight=self.commitment_weight,
                                        l2_normalize=self.l2_normalize, name=name)
    # One VectorQuantizer per distinct codebook; `_level(k)` maps a depth to its codebook.
    count = 1 if self.shared_codebook else self.depth
    self.codebooks = [make("shared" if self.shared_codebook else f"level_{k}") for k in range(count)]

  def _level(self, k: int) -> VectorQuantizer:
    return self.codebooks[0 if self.shared_codebook else k]

  @property
  def bits_per_token(self) -> float:
    return float(self.depth * np.log2(self.codebook_size))

  def codes_from_indices(self, indices: jax.Array) -> jax.Array:
    """Σ of the level codes for indices `[..., n]`; n < depth decodes the first n levels (coarse-to-fine)."""
    num_levels = indices.shape[-1]
    if not 1 <= num_levels <= self.depth:
      raise ValueError(f"ResidualQuantizer: indices have {num_levels} levels in the last axis; expected 1 to "
                       f"{self.depth}.")
    return sum(self._level(k).codes_from_indices(indices[..., k]) for k in range(num_levels))

  def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    if z.shape[-1] != self.dim:
      raise ValueError(f"ResidualQuantizer: input has {z.shape[-1]} channels, the codebooks have dim {self.dim}.")
    z = z.astype(jnp.float32)
    residual = z
    quantized = jnp.zeros_like(z)
    indices, loss, metrics = [], jnp.zeros((), jnp.float32), {}
    for k in range(self.depth):
      level = self._level(k)
      _, out = level(residual, train=train)
      # The exact code e_k; stop-gradient so later levels and ẑ do not train this codebook (its loss does).
      code = jax.lax.stop_gradient(level.codes_from_indices(out.indices))
      quantized = quantized + code
      residual = residual - code
      indices.append(out.indices)
      loss = loss + out.loss
      metrics.update({f"{name}_{k}": value for name, value in out.metrics.items()})
    for name in out.metrics:
      total = sum(metrics[f"{name}_{k}"] for k in range(self.depth))
      # Loss terms add up like the loss; usage statistics report the average level.
      metrics[name] = total / self.depth if name in _AVERAGED else total
    z_q = z + jax.lax.stop_gradient(quantized - z)  # straight-through against z as a whole
    return z_q, QuantizerOutput(indices=jnp.stack(indices, axis=-1), loss=loss, metrics=metrics)
