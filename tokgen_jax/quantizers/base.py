"""What every quantizer returns."""

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class QuantizerOutput:
  """The side outputs of `z_q, out = quantizer(z, train=...)`.

  indices: int32 token ids, shape `z.shape[:-1]` (or `[..., levels]` for multi-level quantizers).
  loss: the weighted scalar loss the trainer adds to the objective.
  metrics: every loss term by name plus codebook usage statistics (scalars).
  """

  indices: jax.Array
  loss: jax.Array
  metrics: dict[str, Any]


def codebook_statistics(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
  """Usage (fraction of codes hit at least once) and perplexity `exp(H(p))` of the code histogram.

  Computed over the whole (global) batch: under a sharded jit the histogram is a cross-device reduction.
  """
  counts = jnp.bincount(indices.reshape(-1), length=codebook_size)
  probs = counts / jnp.maximum(counts.sum(), 1)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return {
      "codebook_usage": jnp.mean((counts > 0).astype(jnp.float32)),
      "perplexity": jnp.exp(entropy),
  }
