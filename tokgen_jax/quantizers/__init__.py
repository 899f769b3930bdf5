"""Quantizers: one interface `z_q, out = quantizer(z, train=...)`, chosen by name from a registry.

Every quantizer returns `z_q` with the straight-through gradient of `z` and a `QuantizerOutput` (indices, loss,
metrics), and has `codes_from_indices(indices)`, `bits_per_token`, `codebook_size` (0: continuous) and `dim`.
"""

from typing import Any

import flax.linen as nn

from tokgen_jax.errors import ConfigError
from tokgen_jax.quantizers.base import QuantizerOutput, codebook_statistics
from tokgen_jax.quantizers.bits import bits_per_pixel, tokens_per_image
from tokgen_jax.quantizers.fsq import FiniteScalarQuantizer
from tokgen_jax.quantizers.kl import KLBottleneck
from tokgen_jax.quantizers.lfq import LookupFreeQuantizer, factorize_indices, merge_indices
from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer
from tokgen_jax.quantizers.residual import ResidualQuantizer
from tokgen_jax.quantizers.vq import VectorQuantizer

REGISTRY: dict[str, type[nn.Module]] = {
    "vq": VectorQuantizer,
    "lfq": LookupFreeQuantizer,
    "fsq": FiniteScalarQuantizer,
    "rvq": ResidualQuantizer,
    "msrq": MultiScaleResidualQuantizer,
    "kl": KLBottleneck,  # continuous: no tokens, for latent diffusion
}


def build(name: str, **kwargs: Any) -> nn.Module:
  """Construct the quantizer registered as `name` with its constructor arguments."""
  if name not in REGISTRY:
    raise ConfigError(f"config.model.quantizer.name={name!r} is not a known quantizer; "
                      f"choose one of {sorted(REGISTRY)}.")
  try:
    return REGISTRY[name](**kwargs)
  except TypeError as error:
    raise ConfigError(f"config.model.quantizer ({name}) has arguments {sorted(kwargs)} that "
                      f"{REGISTRY[name].__name__} does not take ({error}); use the preset in "
                      f"configs/quantizers.py for {name!r}.") from error


__all__ = [
    "QuantizerOutput", "VectorQuantizer", "LookupFreeQuantizer", "FiniteScalarQuantizer", "ResidualQuantizer",
    "MultiScaleResidualQuantizer", "KLBottleneck", "REGISTRY", "build", "codebook_statistics", "bits_per_pixel",
    "tokens_per_image", "factorize_indices", "merge_indices",
]
