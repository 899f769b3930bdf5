"""Bits accounting: how many bits a tokenizer spends per pixel."""

import math
from typing import Sequence


def tokens_per_image(quantizer, latent_grid: Sequence[int]) -> int:
  """Tokens one image becomes: the latent grid size, or a multi-scale quantizer's own count over all scales.

  Multi-level indices (residual depth, LFQ index words) are not extra tokens: `bits_per_token` already counts them.
  """
  return int(getattr(quantizer, "num_tokens", math.prod(latent_grid)))


def bits_per_pixel(num_tokens: int, bits_per_token: float, num_pixels: int) -> float:
  """`num_tokens · bits_per_token / num_pixels` (pixels of one image or clip: T·H·W)."""
  if num_pixels <= 0:
    raise ValueError(f"bits_per_pixel needs a positive pixel count, got {num_pixels}.")
  return num_tokens * bits_per_token / num_pixels
