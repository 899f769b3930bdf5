"""Pixel reconstruction losses, averaged over every element."""

import jax
import jax.numpy as jnp

RECONSTRUCTION_LOSSES = {
    "l1": lambda x, y: jnp.mean(jnp.abs(x - y)),
    "l2": lambda x, y: jnp.mean(jnp.square(x - y)),
}


def reconstruction_loss(reconstruction: jax.Array, target: jax.Array, l1_weight: float, l2_weight: float) -> jax.Array:
  """`l1_weight·mean|x̂-x| + l2_weight·mean(x̂-x)²`, in float32."""
  reconstruction = reconstruction.astype(jnp.float32)
  target = target.astype(jnp.float32)
  return (l1_weight * RECONSTRUCTION_LOSSES["l1"](reconstruction, target)
          + l2_weight * RECONSTRUCTION_LOSSES["l2"](reconstruction, target))
