"""Generators over tokens: the Llama-style AR transformer (`ar`), its samplers (`sampling`), token orderings."""

from tokgen_jax.generators.ar import ARTransformer
from tokgen_jax.generators.sampling import (CFG_CONVENTIONS, SamplingSettings, guidance_scale_from, sample_with_cache,
                                            sample_without_cache)

__all__ = ["ARTransformer", "CFG_CONVENTIONS", "SamplingSettings", "guidance_scale_from", "sample_with_cache",
           "sample_without_cache"]
