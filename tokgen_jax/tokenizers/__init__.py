"""Autoencoders that map pixels to tokens and back, chosen by name from a registry."""

import flax.linen as nn

from tokgen_jax.tokenizers.vqgan import VQGAN

REGISTRY: dict[str, type[nn.Module]] = {
    "vqgan": VQGAN,
}

__all__ = ["VQGAN", "REGISTRY"]
