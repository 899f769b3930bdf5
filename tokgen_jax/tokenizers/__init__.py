"""Autoencoders that map pixels to tokens and back, chosen by name from a registry."""

import flax.linen as nn

from tokgen_jax.tokenizers.magvit2 import MagvitV2
from tokgen_jax.tokenizers.vqgan import VQGAN

REGISTRY: dict[str, type[nn.Module]] = {
    "vqgan": VQGAN,
    "magvit2": MagvitV2,
}

__all__ = ["VQGAN", "MagvitV2", "REGISTRY"]
