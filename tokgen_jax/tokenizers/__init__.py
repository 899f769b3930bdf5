"""Autoencoders that map pixels to named latent arrays and back (`tokenizers/base.py`), chosen by name."""

from tokgen_jax.tokenizers.base import LATENTS, TOKENS, Factors, LatentSpec, Tokenizer
from tokgen_jax.tokenizers.factorized import FactorizedMagvit
from tokgen_jax.tokenizers.magvit2 import MagvitV2
from tokgen_jax.tokenizers.vqgan import VQGAN

REGISTRY: dict[str, type[Tokenizer]] = {
    "vqgan": VQGAN,
    "magvit2": MagvitV2,
    "factorized_magvit2": FactorizedMagvit,
}

__all__ = ["Factors", "LatentSpec", "Tokenizer", "TOKENS", "LATENTS", "VQGAN", "MagvitV2", "FactorizedMagvit", "REGISTRY"]
