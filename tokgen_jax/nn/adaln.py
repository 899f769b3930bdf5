"""Adaptive LayerNorm modulation of transformer blocks by a conditioning vector (diffusion transformers).

- `layer_norm`: LayerNorm without its own affine (DiT's `elementwise_affine=False`, eps 1e-6); the conditioning
  supplies scale and shift instead.
- `modulate`: `x·(1 + scale) + shift` (DiT, Peebles & Xie 2023, §3.2 "adaLN"); `gate`: the per-channel residual
  scale α of adaLN-Zero.
- `AdaLNModulation`: the conditioning vector → `num_outputs` per-channel vectors (shift, scale, gate, ...). rank 0
  is DiT's adaLN-Zero `SiLU → Linear(D, n·D)`; rank r > 0 is AdaLN-LoRA `SiLU → Linear(D, r) → Linear(r, n·D)`
  (W.A.L.T., Gupta et al. 2023, §3.2; NVIDIA Cosmos uses r = 256), which saves (D - r)·n·D weights per block.
  The last Linear is zero-initialised (`zero_init`), so a modulated residual block starts as the identity.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.projection import Projection

Dtype = Any

_xavier = nn.initializers.xavier_uniform()


def layer_norm(x: jax.Array, epsilon: float = 1e-6) -> jax.Array:
  """`(x - mean) / sqrt(var + eps)` over the last axis, no scale or bias; statistics in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + epsilon)).astype(x.dtype)


def _per_token(a: jax.Array, x: jax.Array) -> jax.Array:
  """`a` `[B, D]` (or already x's rank) with singleton token axes after the batch, as DiT's `unsqueeze(1)`."""
  missing = x.ndim - a.ndim
  return a.reshape(a.shape[:1] + (1,) * missing + a.shape[1:]).astype(x.dtype) if missing else a.astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """`x·(1 + scale) + shift` (DiT `modulate`): x `[B, ..., D]`, shift and scale `[B, D]` or broadcastable to x.

  `1 + scale` rather than `scale` so zero-initialised modulation leaves the normalised x unchanged.
  """
  return x * (1 + _per_token(scale, x)) + _per_token(shift, x)


def gate(x: jax.Array, alpha: jax.Array) -> jax.Array:
  """`α·x`, the adaLN-Zero residual gate (DiT §3.2): α `[B, D]` or broadcastable to x `[B, ..., D]`."""
  return x * _per_token(alpha, x)


class AdaLNModulation(nn.Module):
  """`num_outputs` modulation vectors from a conditioning vector c `[B, D_c]`, each `[B, features]`.

  rank 0: `SiLU → Linear(D_c, n·F)` with bias (DiT's adaLN-Zero). rank r > 0: `SiLU → Linear(D_c, r) →
  Linear(r, n·F)` (AdaLN-LoRA); the first Linear has no bias since a bias before a linear map only adds a constant
  the second Linear's bias already holds. `features` defaults to D_c. With `zero_init` the last Linear (kernel and
  bias) starts at zero, so every output is zero for any c (adaLN-Zero); otherwise it is xavier-uniform as DiT's
  other Linears. The kernel is `[D_c, n, F]` so the n outputs split along an unsharded axis.
  """

  num_outputs: int
  rank: int = 0
  zero_init: bool = True
  features: int | None = None
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, c: jax.Array) -> tuple[jax.Array, ...]:
    if self.num_outputs < 1 or self.rank < 0:
      raise ConfigError(f"AdaLNModulation: num_outputs={self.num_outputs} must be >= 1 and rank={self.rank} >= 0 "
                        f"(0: a full Linear, as DiT's adaLN-Zero; r > 0: a rank-r AdaLN-LoRA).")
    features = self.features or c.shape[-1]
    h = nn.silu(c.astype(self.dtype))
    in_axis = "embed"
    if self.rank:
      h = nn.Dense(self.rank, use_bias=False, kernel_init=nn.with_logical_partitioning(_xavier, ("embed", None)),
                   dtype=self.dtype, param_dtype=self.param_dtype, name="down")(h)
      in_axis = None
    out = Projection((self.num_outputs, features), (in_axis, None, "mlp"), use_bias=self.use_bias,
                     kernel_init="zeros" if self.zero_init else "xavier", dtype=self.dtype,
                     param_dtype=self.param_dtype, name="up" if self.rank else "linear")(h)
    return tuple(out[..., i, :] for i in range(self.num_outputs))
