"""Attention layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.nn.conv import Conv
from tokgen_jax.nn.norms import group_norm


class SpatialSelfAttention(nn.Module):
  """Single-head self-attention over all H·W positions with a residual (VQGAN's mid-block AttnBlock)."""

  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = group_norm(x, self.num_groups)
    q, k, v = (Conv(channels, (1, 1), name=n)(h).reshape(batch, height * width, channels) for n in "qkv")
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(channels).astype(q.dtype), axis=-1)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(batch, height, width, channels)
    return x + Conv(channels, (1, 1), name="proj")(out)
