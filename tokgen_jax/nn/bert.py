"""Post-LN BERT blocks (Devlin et al. 2019), the transformer of MaskGIT (`google-research/maskgit`, maskgit_transformer.py).

Each block is `x = LN(x + Drop(Attn(x)))`, then `x = LN(x + Drop(W_2 gelu(W_1 x)))`: LayerNorm after the residual
add (eps 1e-12), biases on every projection, GELU MLP. The attention is the package's one `Attention` (with
`use_bias`, no RoPE: MaskGIT adds learned absolute positions to its embeddings) under any mask builder;
bidirectional by default, as a masked token model reads the whole grid.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.nn import masks
from tokgen_jax.nn.attention import HIDDEN_AXES, Attention
from tokgen_jax.nn.projection import Projection
from tokgen_jax.nn.transformer import remat_policy as checkpoint_policy

Dtype = Any
LAYER_NORM_EPS = 1e-12  # MaskGIT / BERT


def layer_norm(name: str, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


class BertBlock(nn.Module):
  """One post-LN block; `__call__(x, _) -> (x, None)` is shaped as an `nn.scan` body like `LlamaBlock`."""

  num_heads: int
  mlp_dim: int
  mask: masks.MaskBuilder = masks.Bidirectional()
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
    dropout = nn.Dropout(self.dropout_rate)
    dense = lambda features, axes, name: Projection((features,), axes, use_bias=True, dtype=self.dtype,
                                                    param_dtype=self.param_dtype, name=name)
    x = nn.with_logical_constraint(x, HIDDEN_AXES)
    h, _ = Attention(self.num_heads, mask=self.mask, attention_dropout_rate=self.attention_dropout_rate,
                     use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, name="attention")(
                         x, deterministic=self.deterministic)
    x = layer_norm("attention_norm", self.dtype, self.param_dtype)(x + dropout(h, deterministic=self.deterministic))
    h = dense(x.shape[-1], ("mlp", "embed"), "down")(nn.gelu(dense(self.mlp_dim, ("embed", "mlp"), "up")(x)))
    x = layer_norm("mlp_norm", self.dtype, self.param_dtype)(x + dropout(h, deterministic=self.deterministic))
    return nn.with_logical_constraint(x.astype(self.dtype), HIDDEN_AXES), None


class BertStack(nn.Module):
  """`num_layers` BertBlocks, scanned (parameters gain a leading "layers" axis) or unrolled (`layers_{i}`);
  `remat_policy` recomputes activations in the backward pass as `LlamaStack`'s does."""

  num_layers: int
  num_heads: int
  mlp_dim: int
  mask: masks.MaskBuilder = masks.Bidirectional()
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  scan_layers: bool = True
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    policy = checkpoint_policy(self.remat_policy)
    block = BertBlock if self.remat_policy == "none" else nn.remat(BertBlock, policy=policy,
                                                                     prevent_cse=not self.scan_layers)
    kwargs = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, mask=self.mask, dropout_rate=self.dropout_rate,
                  attention_dropout_rate=self.attention_dropout_rate, deterministic=deterministic,
                  dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    if self.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      return scanned(**kwargs, name="layers")(x, None)[0]
    for i in range(self.num_layers):
      x, _ = block(**kwargs, name=f"layers_{i}")(x)
    return x
