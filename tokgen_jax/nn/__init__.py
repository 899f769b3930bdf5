"""Building blocks shared by tokenizers and generators."""

from tokgen_jax.nn.conv import Conv, Downsample2D, Upsample2D
from tokgen_jax.nn.norms import group_norm
from tokgen_jax.nn.resblock import ResBlock2D
from tokgen_jax.nn.attention import SpatialSelfAttention
from tokgen_jax.nn.adaptive_norm import AdaptiveGroupNorm, group_standardize
from tokgen_jax.nn.blur import BlurPool2D, BlurPool3D
from tokgen_jax.nn.causal_conv import CausalConv3D, check_frame_count
from tokgen_jax.nn.depth_to_space import DepthToSpaceUpsample3D, depth_to_space, space_to_depth

__all__ = [
    "Conv", "Downsample2D", "Upsample2D", "group_norm", "ResBlock2D", "SpatialSelfAttention", "AdaptiveGroupNorm",
    "group_standardize", "BlurPool2D", "BlurPool3D", "CausalConv3D", "check_frame_count", "DepthToSpaceUpsample3D",
    "depth_to_space", "space_to_depth",
]

from tokgen_jax.nn.rope import apply_rope, default_axis_dims, rope_frequencies
from tokgen_jax.nn import masks
from tokgen_jax.nn.attention import Attention, KVCache, attention_dims, dot_product_attention
from tokgen_jax.nn.projection import Projection
from tokgen_jax.nn.transformer import LlamaBlock, LlamaStack, RMSNorm, SwiGLU, llama_mlp_dim

__all__ += [
    "apply_rope", "default_axis_dims", "rope_frequencies", "masks", "Attention", "KVCache", "attention_dims",
    "dot_product_attention", "Projection", "LlamaBlock", "LlamaStack", "RMSNorm", "SwiGLU", "llama_mlp_dim",
]
