"""Building blocks shared by tokenizers and generators."""

from tokgen_jax.nn.conv import Conv, Downsample2D, Upsample2D
from tokgen_jax.nn.norms import group_norm
from tokgen_jax.nn.resblock import ResBlock2D
from tokgen_jax.nn.attention import SpatialSelfAttention

__all__ = ["Conv", "Downsample2D", "Upsample2D", "group_norm", "ResBlock2D", "SpatialSelfAttention"]
