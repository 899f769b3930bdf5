"""The pre-activation ResNet block of VQGAN / MAGVIT encoders and decoders."""

import flax.linen as nn
import jax

from tokgen_jax.nn.conv import Conv
from tokgen_jax.nn.norms import group_norm


class ResBlock2D(nn.Module):
  """GroupNorm → swish → conv3x3 → GroupNorm → swish → dropout → conv3x3, plus a 1x1-projected skip."""

  features: int
  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = nn.swish(group_norm(x, self.num_groups))
    h = Conv(self.features, (3, 3))(h)
    h = nn.swish(group_norm(h, self.num_groups))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = Conv(self.features, (3, 3))(h)
    if x.shape[-1] != self.features:
      x = Conv(self.features, (1, 1), name="skip")(x)
    return x + h
