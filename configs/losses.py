"""Autoencoder loss presets."""

import ml_collections


def autoencoder_loss(l1_weight: float = 1.0, l2_weight: float = 0.0, perceptual_weight: float = 0.0,
                     lpips_weights: str = "") -> ml_collections.ConfigDict:
  """Reconstruction weights, and LPIPS at `perceptual_weight` (Open-MAGVIT2 uses 1.0) from a converted weights
  file (`python -m tokgen_jax.convert.lpips`); with no file the perceptual term is off and the log says so."""
  return ml_collections.ConfigDict(dict(l1_weight=l1_weight, l2_weight=l2_weight,
                                        perceptual_weight=perceptual_weight, lpips_weights=lpips_weights))
