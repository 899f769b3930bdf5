"""Quantizers: one interface `z_q, out = quantizer(z, train=...)`, chosen by name from a registry."""

from typing import Any

import flax.linen as nn

from tokgen_jax.errors import ConfigError
from tokgen_jax.quantizers.base import QuantizerOutput, codebook_statistics
from tokgen_jax.quantizers.vq import VectorQuantizer

REGISTRY: dict[str, type[nn.Module]] = {
    "vq": VectorQuantizer,
}


def build(name: str, **kwargs: Any) -> nn.Module:
  """Construct the quantizer registered as `name` with its constructor arguments."""
  if name not in REGISTRY:
    raise ConfigError(f"config.model.quantizer.name={name!r} is not a known quantizer; "
                      f"choose one of {sorted(REGISTRY)}.")
  return REGISTRY[name](**kwargs)


__all__ = ["QuantizerOutput", "VectorQuantizer", "REGISTRY", "build", "codebook_statistics"]
