"""Training losses: reconstruction now; perceptual and adversarial terms plug in beside it."""

from tokgen_jax.losses.reconstruction import RECONSTRUCTION_LOSSES, reconstruction_loss

__all__ = ["RECONSTRUCTION_LOSSES", "reconstruction_loss"]
