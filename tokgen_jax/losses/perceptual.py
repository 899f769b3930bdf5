"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features"), VGG variant.

`LPIPS` follows the `lpips` package, version 0.1, net "vgg": shift and scale the `[-1, 1]` input (ScalingLayer),
run torchvision's VGG16 `features` up to relu5_3, unit-normalize every tap over channels, square the difference
of the two images' taps, weigh the channels with a learned 1x1 head per tap, average over space and sum over
taps. With the ImageNet VGG16 and the released heads (`convert/lpips.py` imports both) it gives the package's
numbers; freshly initialized it is an untrained network, useful only for shapes and tests.

Layouts are NHWC and computation is float32 whatever the input dtype. The module reads no files; its params are
meant to stay frozen (pass them through `jax.lax.stop_gradient` or leave them out of the optimizer), while
gradients flow to the images.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError

# Output channels of each conv, one tuple per VGG16 block; a 2x2 max-pool separates consecutive blocks.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# The last ReLU of each block, in order: the features LPIPS compares.
LPIPS_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# lpips v0.1 ScalingLayer: maps [-1, 1] input to roughly ImageNet-normalized values.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10
_MIN_SIZE = 2 ** (len(VGG16_BLOCKS) - 1)  # four floor-halvings must leave at least one pixel


def vgg16_conv_names() -> list[str]:
  """Flax names of the 13 convs in order ("conv1_1", ..., "conv5_3"): torchvision's features.0, .2, ..., .28."""
  return [f"conv{block}_{layer}" for block, widths in enumerate(VGG16_BLOCKS, start=1)
          for layer in range(1, len(widths) + 1)]


class VGG16Features(nn.Module):
  """torchvision's `vgg16().features` without its final max-pool: `[B, H, W, 3]` → the 5 `LPIPS_TAPS` maps.

  Each block is conv3x3 (padding 1) + ReLU layers; a 2x2, stride-2 max-pool (floor, like PyTorch) comes before
  blocks 2-5. Tap k has `VGG16_BLOCKS[k][-1]` channels at `H // 2**k` x `W // 2**k`. Init is torchvision's
  (He normal over fan-out, zero bias), so activations keep their scale through the untrained stack.
  """

  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    h = x.astype(jnp.float32)
    names = iter(vgg16_conv_names())
    taps = []
    for block, widths in enumerate(VGG16_BLOCKS):
      if block:
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
      for width in widths:
        h = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=jnp.float32, param_dtype=jnp.float32,
                            precision=self.precision, name=next(names),
                            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))(h))
      taps.append(h)
    return tuple(taps)


def _unit_normalize(x: jax.Array) -> jax.Array:
  """`x / (‖x‖ + 1e-10)` over channels, as `lpips.normalize_tensor` does.

  The double `where` keeps the value exact but gives a finite gradient where a feature vector is all zero
  (common after ReLU), where the plain `sqrt` would give 0 * inf = NaN.
  """
  squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  positive = squared > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  return x / (norm + _NORM_EPS)


def _check_inputs(x: jax.Array, y: jax.Array) -> None:
  if x.shape != y.shape:
    raise ConfigError(f"LPIPS: the two inputs have shapes {x.shape} and {y.shape}; compare images (or videos) of "
                      "the same shape")
  if x.ndim not in (4, 5) or x.shape[-1] != 3:
    raise ConfigError(f"LPIPS: input shape {x.shape} must be RGB [B, H, W, 3] or [B, T, H, W, 3]; reshape, or "
                      "repeat a grayscale channel 3 times")
  if min(x.shape[-3:-1]) < _MIN_SIZE:
    raise ConfigError(f"LPIPS: input {x.shape[-3]}x{x.shape[-2]} is too small; VGG16's four 2x2 pools need H and W "
                      f">= {_MIN_SIZE} (>= 64 gives meaningful distances): resize the input")


def _distance(x: jax.Array, y: jax.Array, precision: jax.lax.Precision | None) -> jax.Array:
  """LPIPS of two image batches; called inside `LPIPS.__call__`, so the layers it creates belong to that module.

  Both batches go through VGG (and the normalization) as one batch: one conv call per layer instead of two.
  `LPIPS(x, x)` is 0 up to float rounding (~1e-15: XLA may compile the two halves' arithmetic differently).
  """
  shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
  scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
  both = (jnp.concatenate([x, y]).astype(jnp.float32) - shift) / scale
  taps = VGG16Features(precision, name="vgg")(both)
  total = jnp.zeros((x.shape[0],), jnp.float32)
  for k, tap in enumerate(taps):
    features_x, features_y = jnp.split(_unit_normalize(tap), 2)
    difference = jnp.square(features_x - features_y)
    weighted = nn.Dense(1, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32, precision=precision,
                        kernel_init=nn.initializers.ones, name=f"lin{k}")(difference)
    total = total + jnp.mean(weighted, axis=(1, 2, 3))
  return total


class LPIPS(nn.Module):
  """LPIPS v0.1 "vgg": `(x, y)` in `[-1, 1]` → distance per example `[B]` (~0 when `x == y`, symmetric).

  Images are `[B, H, W, 3]`; videos `[B, T, H, W, 3]` get the mean over frames of the per-frame distance. Params:
  `vgg` (a `VGG16Features`) and `lin0`..`lin4` (bias-free 1x1 heads, kernel `[C, 1]`). The released heads are
  non-negative, which makes the distance non-negative; that is not enforced. Fresh heads are all ones, which
  makes an untrained LPIPS the package's `lpips=False` baseline (channel sums) on the same backbone.
  """

  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_inputs(x, y)
    if x.ndim == 5:
      batch, frames = x.shape[:2]
      frames_x, frames_y = (v.reshape((batch * frames,) + v.shape[2:]) for v in (x, y))
      return _distance(frames_x, frames_y, self.precision).reshape(batch, frames).mean(axis=1)
    return _distance(x, y, self.precision)
