"""Metrics for tokenizers and generators."""

from tokgen_jax.metrics.codebook import CodebookUsage, uniform_coverage
from tokgen_jax.metrics.frechet import FeatureStatistics, frechet_distance
from tokgen_jax.metrics.image_quality import ms_ssim, psnr, ssim

__all__ = ["psnr", "ssim", "ms_ssim", "frechet_distance", "FeatureStatistics", "CodebookUsage",
           "uniform_coverage"]
