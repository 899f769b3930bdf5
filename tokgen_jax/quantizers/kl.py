"""A continuous KL (diagonal Gaussian) bottleneck: the VAE latent of latent diffusion, behind the quantizer API.

Latent diffusion (LDM, Rombach et al. 2022) and W.A.L.T. (Gupta et al. 2023, 8 latent channels) train their
autoencoders with a lightly KL-regularized Gaussian latent instead of a codebook. Registering it as "kl" lets the
same tokenizer models and trainer produce such latents: only the quantizer name changes.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.quantizers.base import QuantizerOutput

NOISE_RNG = "noise"  # the rng stream the training-time sample draws from: `rngs={"noise": key}`
STORAGE_BITS = 16  # a latent channel stored as float16


class KLBottleneck(nn.Module):
  """`z [..., dim]` → a 1x1 projection to (mean, logvar) → a sample of N(mean, exp(logvar)) in training.

  The projection is LDM's `quant_conv` (2·dim outputs: mean, then log-variance), and the log-variance is clipped
  to `logvar_clip` as in LDM's `DiagonalGaussianDistribution`, so exp() never overflows. In training
  `z_q = mean + exp(logvar/2)·ε` with ε ~ N(0, I) from the "noise" rng (the reparameterization keeps gradients
  flowing to z); with train=False `z_q = mean`, so encoding for a diffusion model's data set is deterministic.

  Loss = kl_weight · KL(N(mean, σ²) ‖ N(0, I)), with the KL in nats summed over channels and positions and
  averaged over the batch (axis 0): `0.5·Σ(mean² + σ² − 1 − logvar)`, LDM's
  `DiagonalGaussianDistribution.kl()` (ldm/modules/distributions/distributions.py) divided by the batch size as
  in its `LPIPSWithDiscriminator`. LDM uses kl_weight = 1e-6: the KL only keeps the latent scale bounded, it is
  not meant to reach a proper prior.

  There are no tokens: `indices` are int32 zeros of shape `z.shape[:-1]` (kept so every quantizer returns the
  same structure), `codebook_size` is 0 and `codes_from_indices` raises. `bits_per_token` is a storage figure (16·dim bits per latent
  position in float16), not an entropy.
  """

  dim: int = 8
  kl_weight: float = 1e-6
  logvar_clip: Sequence[float] = (-30.0, 20.0)

  @property
  def bits_per_token(self) -> float:
    return float(STORAGE_BITS * self.dim)

  @property
  def codebook_size(self) -> int:
    """0: continuous, there are no token ids (every quantizer has `codebook_size`)."""
    return 0

  def codes_from_indices(self, indices: jax.Array) -> jax.Array:
    del indices
    raise ConfigError("KLBottleneck has no token ids (its indices are placeholder zeros), so there are no codes "
                      "to look up; decode the continuous latents `z_q` it returns instead, or pick a discrete "
                      "quantizer (config.model.quantizer.name='vq', 'lfq', 'fsq', ...) for token generators.")

  def setup(self):
    self.proj = nn.Dense(
        2 * self.dim, dtype=jnp.float32, param_dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)))

  def _check(self, z: jax.Array):
    if self.dim < 1:
      raise ConfigError(f"KLBottleneck: config.model.quantizer.dim={self.dim} must be >= 1 (W.A.L.T. uses 8).")
    low, high = self.logvar_clip
    if not low < high:
      raise ConfigError(f"KLBottleneck: logvar_clip={tuple(self.logvar_clip)} must be (low, high) with low < high; "
                        "LDM uses (-30, 20).")
    if z.shape[-1] != self.dim:
      raise ConfigError(f"KLBottleneck: input has {z.shape[-1]} channels but dim={self.dim}; project the encoder "
                        f"output to {self.dim} channels or set config.model.quantizer.dim={z.shape[-1]}.")

  def moments(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The posterior's float32 mean and clipped log-variance, each `[..., dim]`."""
    self._check(z)
    mean, logvar = jnp.split(self.proj(z.astype(jnp.float32)), 2, axis=-1)
    low, high = self.logvar_clip
    return mean, jnp.clip(logvar, low, high)

  def _noise(self, shape: tuple[int, ...]) -> jax.Array:
    if not self.has_rng(NOISE_RNG):
      raise ConfigError(f"KLBottleneck samples its latent in training and needs the {NOISE_RNG!r} rng: call "
                        f"`apply(variables, z, train=True, rngs={{{NOISE_RNG!r}: key}})` (and add it to `init`'s "
                        "rngs when initializing with train=True), or pass train=False for the deterministic mean.")
    return jax.random.normal(self.make_rng(NOISE_RNG), shape, jnp.float32)

  def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    mean, logvar = self.moments(z)
    std = jnp.exp(0.5 * logvar)
    z_q = mean + std * self._noise(mean.shape) if train else mean
    terms = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    batch = terms.shape[0] if terms.ndim > 1 else 1
    kl = jnp.mean(jnp.sum(terms.reshape(batch, -1), axis=-1))
    metrics = {"kl": kl, "latent_std": jnp.mean(std), "mean_abs_mean": jnp.mean(jnp.abs(mean))}
    indices = jnp.zeros(z.shape[:-1], jnp.int32)
    return z_q, QuantizerOutput(indices=indices, loss=self.kl_weight * kl, metrics=metrics)
