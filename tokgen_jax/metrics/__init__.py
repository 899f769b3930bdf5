"""Metrics for tokenizers and generators."""

from tokgen_jax.metrics.image_quality import psnr, ssim

__all__ = ["psnr", "ssim"]
