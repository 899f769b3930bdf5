"""Space-to-depth / depth-to-space rearrangements and the causal depth-to-space upsampler of MAGVIT-v2.

Channel order. `space_to_depth` of `[B, *S, C]` with block `(b_1, ..., b_n)` gives `C · prod(b)` channels:
- "CRD" (default; column-row-depth, PyTorch's `pixel_shuffle` and magvit2-pytorch): channels major, i.e. output
  channel `c · prod(b) + flat(o_1, ..., o_n)`, where `flat` is the row-major index of the in-block offset.
- "DCR" (depth-column-row, TensorFlow's `depth_to_space` and Open-MAGVIT2): offsets major, output channel
  `flat(o) · C + c`.
The two give the same shapes but differ when importing weights of the conv that feeds `depth_to_space`.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.causal_conv import CausalConv3D

ORDERS = ("CRD", "DCR")


def _check(x: jax.Array, block: Sequence[int], order: str, where: str) -> tuple[int, ...]:
  block = tuple(int(b) for b in block)
  if order not in ORDERS:
    raise ConfigError(f"{where}: order={order!r} is not one of {ORDERS}.")
  if x.ndim != len(block) + 2 or min(block) < 1:
    raise ConfigError(f"{where}: block {block} needs a [B, *{len(block)} spatial axes, C] input with positive "
                      f"block sizes, got shape {x.shape}.")
  return block


def space_to_depth(x: jax.Array, block: Sequence[int], order: str = "CRD") -> jax.Array:
  """`[B, s_1·b_1, ..., s_n·b_n, C]` → `[B, s_1, ..., s_n, C·prod(b)]`, channels in `order` (module docstring)."""
  block = _check(x, block, order, "space_to_depth")
  n, sizes, channels = len(block), x.shape[1:-1], x.shape[-1]
  if any(size % b for size, b in zip(sizes, block)):
    raise ConfigError(f"space_to_depth: spatial shape {sizes} is not divisible by block {block}; crop or pad "
                      f"the input to multiples of the block.")
  split = [x.shape[0]]
  for size, b in zip(sizes, block):
    split += [size // b, b]
  x = x.reshape(split + [channels])  # [B, s_1, b_1, ..., s_n, b_n, C]
  outer = [1 + 2 * i for i in range(n)]
  offsets = [2 + 2 * i for i in range(n)]
  inner = [2 * n + 1] + offsets if order == "CRD" else offsets + [2 * n + 1]
  x = x.transpose([0] + outer + inner)
  return x.reshape(x.shape[:n + 1] + (-1,))


def depth_to_space(x: jax.Array, block: Sequence[int], order: str = "CRD") -> jax.Array:
  """The exact inverse of `space_to_depth`: `[B, s_1, ..., s_n, C·prod(b)]` → `[B, s_1·b_1, ..., s_n·b_n, C]`."""
  block = _check(x, block, order, "depth_to_space")
  n, volume = len(block), int(np.prod(block))
  if x.shape[-1] % volume:
    raise ConfigError(f"depth_to_space: {x.shape[-1]} channels are not divisible by the block volume {volume} "
                      f"of block {block}; the conv before it must output features·{volume} channels.")
  sizes, channels = x.shape[1:-1], x.shape[-1] // volume
  inner = [channels, *block] if order == "CRD" else [*block, channels]
  x = x.reshape(x.shape[:-1] + tuple(inner))
  # Axes now: 0 batch, 1..n outer, then the inner channel/offset axes; interleave each offset after its outer.
  channel_axis = n + 1 if order == "CRD" else 2 * n + 1
  offset_axes = [n + 2 + i for i in range(n)] if order == "CRD" else [n + 1 + i for i in range(n)]
  perm = [0]
  for i in range(n):
    perm += [1 + i, offset_axes[i]]
  x = x.transpose(perm + [channel_axis])
  return x.reshape((x.shape[0],) + tuple(s * b for s, b in zip(sizes, block)) + (channels,))


def nearest_init(base: nn.initializers.Initializer, volume: int) -> nn.initializers.Initializer:
  """Kernel init whose `volume` sub-positions per feature start equal (CRD order), so that conv → depth_to_space
  is nearest-neighbour upsampling of one conv at init: no checkerboard (Aitken et al. 2017, "Checkerboard
  artifact free sub-pixel convolution"; magvit2-pytorch does the same)."""

  def init(key, shape, dtype=jnp.float32):
    return jnp.repeat(base(key, shape[:-1] + (shape[-1] // volume,), dtype), volume, axis=-1)

  return init


class DepthToSpaceUpsample3D(nn.Module):
  """Causal conv to `features·b_t·b_h·b_w` channels, CRD depth_to_space, then drop the first `b_t - 1` frames.

  depth_to_space turns t latent frames into t·b_t frames; latent frame 0 stands for input frame 0 alone (the
  encoder's first frame is not merged with others), so only the last of its b_t sub-frames is kept. Output
  frame i then comes from latent frame ceil(i / b_t), and t frames map to `1 + (t - 1)·b_t`, the inverse of the
  encoder's `1 + (T - 1)/s_t`. With a causal conv, output frame i depends on latent frames ≤ ceil(i / b_t).
  """

  features: int
  block: Sequence[int] = (2, 2, 2)
  kernel_size: Sequence[int] = (3, 3, 3)
  temporal_padding: str = "replicate"
  nearest_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    block = tuple(self.block)
    if len(block) != 3 or min(block) < 1:
      raise ConfigError(f"DepthToSpaceUpsample3D: block={block} must be 3 positive sizes (b_t, b_h, b_w).")
    volume = int(np.prod(block))
    base = nn.initializers.lecun_normal()
    h = CausalConv3D(self.features * volume, self.kernel_size, temporal_padding=self.temporal_padding,
                     kernel_init=nearest_init(base, volume) if self.nearest_init else base, name="conv")(x)
    return depth_to_space(h, block)[:, block[0] - 1:]
