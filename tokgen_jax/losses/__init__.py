"""Training losses: reconstruction, perceptual (LPIPS), adversarial (with discriminators), and their regularizers."""

from tokgen_jax.losses.adversarial import (
    hinge_discriminator_loss, hinge_generator_loss, lecam_regularization, non_saturating_discriminator_loss,
    non_saturating_generator_loss, r1_penalty, update_lecam_ema)
from tokgen_jax.losses.discriminator import StyleGANDiscriminator2D, StyleGANDiscriminator3D
from tokgen_jax.losses.perceptual import LPIPS, LPIPS_TAPS, VGG16Features
from tokgen_jax.losses.reconstruction import RECONSTRUCTION_LOSSES, reconstruction_loss

__all__ = [
    "RECONSTRUCTION_LOSSES", "reconstruction_loss", "hinge_discriminator_loss", "hinge_generator_loss",
    "non_saturating_generator_loss", "non_saturating_discriminator_loss", "lecam_regularization",
    "update_lecam_ema", "r1_penalty", "StyleGANDiscriminator2D", "StyleGANDiscriminator3D", "LPIPS", "LPIPS_TAPS",
    "VGG16Features",
]
