"""Vector quantization (VQ-VAE, VQGAN, ViT-VQGAN): nearest codebook entry with straight-through gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.quantizers.base import QuantizerOutput, codebook_statistics


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """argmin_k ‖z - e_k‖² via ‖z‖² - 2<z, e_k> + ‖e_k‖² for z `[N, D]`, codebook `[K, D]` → int32 `[N]`."""
  distances = (
      jnp.sum(z * z, axis=-1, keepdims=True)
      - 2.0 * z @ codebook.T
      + jnp.sum(codebook * codebook, axis=-1)[None, :]
  )
  return jnp.argmin(distances, axis=-1).astype(jnp.int32)


class VectorQuantizer(nn.Module):
  """Nearest-code VQ with the loss `‖sg(z) - e‖² + β‖z - sg(e)‖²` (van den Oord et al. 2017, eq. 3).

  The commitment weight β multiplies the encoder term (the usual form; taming-transformers' legacy default puts
  it on the codebook term instead). With `l2_normalize` both z and the codes live on the unit sphere, so the
  distance is cosine (ViT-VQGAN, LlamaGen), which keeps codebook usage high.
  """

  codebook_size: int
  dim: int
  commitment_weight: float = 0.25
  l2_normalize: bool = False

  def setup(self):
    init = nn.initializers.uniform(scale=2.0 / self.codebook_size)
    self.codebook = self.param(
        "codebook",
        nn.with_logical_partitioning(lambda key, shape: init(key, shape) - 1.0 / self.codebook_size,
                                     ("vocab", "embed")),
        (self.codebook_size, self.dim),
    )

  def codes(self) -> jax.Array:
    return _l2_normalize(self.codebook) if self.l2_normalize else self.codebook

  def codes_from_indices(self, indices: jax.Array) -> jax.Array:
    return jnp.take(self.codes(), indices, axis=0)

  @property
  def bits_per_token(self) -> float:
    return float(jnp.log2(self.codebook_size))

  def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    del train  # same computation in training and evaluation
    if z.shape[-1] != self.dim:
      raise ValueError(f"VectorQuantizer: input has {z.shape[-1]} channels, the codebook has dim {self.dim}.")
    z = z.astype(jnp.float32)
    if self.l2_normalize:
      z = _l2_normalize(z)
    codes = self.codes()
    indices = nearest_code(z.reshape(-1, self.dim), codes).reshape(z.shape[:-1])
    quantized = jnp.take(codes, indices, axis=0)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - quantized))
    commitment = jnp.mean(jnp.square(z - jax.lax.stop_gradient(quantized)))
    z_q = z + jax.lax.stop_gradient(quantized - z)  # straight-through: d z_q / d z = identity
    metrics = {"codebook_loss": codebook_loss, "commitment": commitment,
               **codebook_statistics(indices, self.codebook_size)}
    loss = codebook_loss + self.commitment_weight * commitment
    return z_q, QuantizerOutput(indices=indices, loss=loss, metrics=metrics)
