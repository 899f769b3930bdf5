"""I3D, the Inflated Inception-V1 video classifier (Carreira & Zisserman 2017) whose outputs FVD compares.

FVD (Unterthiner et al. 2018) embeds clips with the Kinetics-400 RGB I3D of DeepMind's kinetics-i3d, published
as the TF-Hub module `deepmind/i3d-kinetics-400/1`. `I3D` is that network, endpoint for endpoint
(Conv3d_1a_7x7 ... Mixed_5c, average pool, dropout, 1x1x1 logits conv, mean over time), so the importer
(`convert/i3d.py`) can fill it from the PyTorch port's weight file and reproduce the TF model. Freshly
initialized it is an untrained network, useful only for shapes and tests.

Choices that decide the numbers:
- Padding is TensorFlow's "SAME" for every conv and max-pool: along an axis of size `s`, with kernel `k` and
  stride `d`, pad `max((ceil(s / d) - 1) * d + k - s, 0)` in total, `total // 2` before and the rest after
  (the extra one on the high side). `lax` implements exactly this rule for `padding="SAME"`; pytorch-i3d
  emulates it with an explicit asymmetric `F.pad` before unpadded layers. Max-pools pad with -inf (TF); the
  PyTorch port pads with zeros, which gives the same result because every pool follows a ReLU.
- BatchNorm in inference mode with eps 1e-3 (Sonnet's default, kept by pytorch-i3d): running statistics live
  in the `batch_stats` collection, so `apply` takes `{"params": ..., "batch_stats": ...}`.
- Inputs are RGB videos `[B, T, H, W, 3]` in `[-1, 1]`, the range the TF-Hub module expects (FVD's
  `preprocess` maps uint8 frames with `2 x / 255 - 1`; `preprocess_for_i3d` does the same and resizes). The
  trained network expects 224x224 frames; FVD uses 16-frame clips.
- After Mixed_5c the TF model average-pools with a 2x7x7 window, stride 1, VALID, applies dropout (identity
  at evaluation; left out here), the logits conv, squeezes space and averages over the remaining time steps.
  At 224x224 Mixed_5c is 7x7 in space; smaller inputs (used by tests) get the window clamped to the feature
  map, and any leftover spatial positions are averaged like the time steps. The logits conv is linear, so
  averaging the pooled features first and applying the conv as a dense layer gives the same logits; that
  average is the exposed `pooled` (1024-d) embedding.

Outputs: `I3DOutputs(logits [B, 400], pooled [B, 1024])`; `.features` is the logits, the 400-d embedding the
FVD reference (TF-Hub module's default output) and the common public PyTorch implementations use.

Layouts are channels-last (NTHWC) and computation is float32 whatever the input dtype. The module reads no
files and is meant to stay frozen.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError

NUM_CLASSES = 400  # Kinetics-400
POOLED_DIM = 1024  # Mixed_5c's channels: 384 + 384 + 128 + 128
FVD_SIZE = (224, 224)  # the frame size FVD resizes to, and the trained network's input size
BN_EPSILON = 1e-3
# Stem convs: out channels, kernel (T, H, W), stride.
STEM_CONVS = {
    "Conv3d_1a_7x7": (64, (7, 7, 7), (2, 2, 2)),
    "Conv3d_2b_1x1": (64, (1, 1, 1), (1, 1, 1)),
    "Conv3d_2c_3x3": (192, (3, 3, 3), (1, 1, 1)),
}
# Max-pools between stages: window (T, H, W), stride. The first two leave time alone.
MAX_POOLS = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}
# Inception blocks: widths of branch 0 (1x1), branch 1 (1x1 → 3x3x3), branch 2 (1x1 → 3x3x3; DeepMind inflates
# GoogLeNet's 5x5 branch as 3x3x3), branch 3 (3x3x3 max-pool → 1x1).
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
ENDPOINTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
             "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
             "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")
AVG_POOL = (2, 7, 7)  # the TF model's final average-pool window (T, H, W), stride 1, VALID


# The convs of a Mixed block, in the order of its widths: (name, input: -1 for the block's input or the index of
# the width that feeds it, kernel size). Names are pytorch-i3d's; `b3a` is the parameter-free max-pool.
BRANCH_UNITS = (("b0", -1, 1), ("b1a", -1, 1), ("b1b", 1, 3), ("b2a", -1, 1), ("b2b", 3, 3), ("b3b", -1, 1))


def unit_layout() -> list[tuple[str, int, int, tuple[int, int, int]]]:
  """(Flax path, in channels, out channels, kernel) of every conv + BN unit in order, e.g.
  `("Mixed_3b/b1b", 96, 128, (3, 3, 3))`; the importer checks a weight file against it."""
  layout, channels = [], 3
  for name in ENDPOINTS:
    if name in STEM_CONVS:
      out, kernel, _ = STEM_CONVS[name]
      layout.append((name, channels, out, kernel))
      channels = out
    elif name in MIXED:
      widths = MIXED[name]
      for (branch, source, size), out in zip(BRANCH_UNITS, widths):
        layout.append((f"{name}/{branch}", channels if source < 0 else widths[source], out, (size,) * 3))
      channels = widths[0] + widths[2] + widths[4] + widths[5]
  assert channels == POOLED_DIM
  return layout


class I3DOutputs(NamedTuple):
  """What `I3D` returns: `logits` `[B, num_classes]` (time-averaged, pre-softmax) and `pooled` `[B, 1024]`
  (the time- and space-averaged Mixed_5c features the logits layer reads)."""

  logits: jax.Array
  pooled: jax.Array

  @property
  def features(self) -> jax.Array:
    """The FVD embedding: the 400 logits, as the TF-Hub module and the common FVD code use."""
    return self.logits


class Unit3D(nn.Module):
  """Conv (no bias, TF "SAME" padding) → BatchNorm (running stats, eps 1e-3) → ReLU, named like pytorch-i3d's
  `Unit3D` (`conv3d`, `bn`) so the importer maps keys one to one."""

  features: int
  kernel: tuple[int, int, int]
  strides: tuple[int, int, int] = (1, 1, 1)
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel, self.strides, padding="SAME", use_bias=False, dtype=jnp.float32,
                param_dtype=jnp.float32, precision=self.precision, name="conv3d")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=jnp.float32, param_dtype=jnp.float32,
                     name="bn")(x)
    return nn.relu(x)


def _max_pool(x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...]) -> jax.Array:
  return nn.max_pool(x, window, strides=strides, padding="SAME")  # pads with -inf, as TF does


class InceptionBlock(nn.Module):
  """A Mixed block: four branches (`b0`; `b1a`→`b1b`; `b2a`→`b2b`; 3x3x3 max-pool→`b3b`) concatenated."""

  widths: tuple[int, ...]
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    units = {branch: Unit3D(width, (size,) * 3, precision=self.precision, name=branch)
             for (branch, _, size), width in zip(BRANCH_UNITS, self.widths)}
    return jnp.concatenate([units["b0"](x), units["b1b"](units["b1a"](x)), units["b2b"](units["b2a"](x)),
                            units["b3b"](_max_pool(x, (3, 3, 3), (1, 1, 1)))], axis=-1)


def _check_videos(videos: jax.Array) -> None:
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise ConfigError(f"I3D: input shape {videos.shape} must be RGB videos [B, T, H, W, 3] in [-1, 1]; add a "
                      "time axis to images (FVD uses clips of 16+ frames) and repeat a grayscale channel 3 times")


class I3D(nn.Module):
  """Kinetics-400 I3D: videos `[B, T, H, W, 3]` in `[-1, 1]` → `I3DOutputs(logits, pooled)`.

  Variables: `params` (convs `conv3d/kernel` `[kT, kH, kW, in, out]`, BN `bn/{scale,bias}`, dense
  `logits/{kernel,bias}` `[1024, num_classes]`) and `batch_stats` (BN `bn/{mean,var}`). Any T, H, W >= 1 run
  (TF "SAME" padding never empties a map); the trained weights mean what they should at 224x224 with 16+
  frames, FVD's setting.
  """

  num_classes: int = NUM_CLASSES
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, videos: jax.Array) -> I3DOutputs:
    _check_videos(videos)
    h = videos.astype(jnp.float32)
    for name in ENDPOINTS:
      if name in STEM_CONVS:
        features, kernel, strides = STEM_CONVS[name]
        h = Unit3D(features, kernel, strides, self.precision, name=name)(h)
      elif name in MAX_POOLS:
        h = _max_pool(h, *MAX_POOLS[name])
      else:
        h = InceptionBlock(MIXED[name], self.precision, name=name)(h)
    pooled = _average_pool(h)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, precision=self.precision,
                      name="logits")(pooled)
    return I3DOutputs(logits=logits, pooled=pooled)


def _average_pool(h: jax.Array) -> jax.Array:
  """The TF model's 2x7x7 VALID average pool (window clamped to smaller maps), then the mean over the remaining
  positions: time steps (what TF averages its logits over) and, below or above 224x224, space."""
  window = tuple(min(size, extent) for size, extent in zip(AVG_POOL, h.shape[1:4]))
  return jnp.mean(nn.avg_pool(h, window, strides=(1, 1, 1), padding="VALID"), axis=(1, 2, 3))


def _bilinear_taps(in_size: int, out_size: int, half_pixel_centers: bool) -> tuple[np.ndarray, ...]:
  """Source indices (low, high) and the high weight per output pixel, as TF's bilinear resize computes them."""
  scale = in_size / out_size
  out = np.arange(out_size, dtype=np.float64)
  source = (out + 0.5) * scale - 0.5 if half_pixel_centers else out * scale
  source = np.maximum(source, 0.0)
  low = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  return low, high, (source - low).astype(np.float32)


def _resize_axis(x: jax.Array, axis: int, out_size: int, half_pixel_centers: bool) -> jax.Array:
  low, high, weight = _bilinear_taps(x.shape[axis], out_size, half_pixel_centers)
  shape = [1] * x.ndim
  shape[axis] = out_size
  weight = jnp.asarray(weight).reshape(shape)
  return jnp.take(x, low, axis=axis) * (1.0 - weight) + jnp.take(x, high, axis=axis) * weight


def resize_bilinear(videos: jax.Array, size: tuple[int, int] = FVD_SIZE, half_pixel_centers: bool = False
                    ) -> jax.Array:
  """Bilinear resize of the frames of `[..., H, W, C]` to `size`, without antialiasing, in float32.

  `half_pixel_centers=False` is TF1's `tf.image.resize_bilinear` (align_corners=False), which FVD's reference
  `preprocess` calls: output pixel `i` samples source coordinate `i * in / out`. `True` is TF2's
  `tf.image.resize(..., "bilinear", antialias=False)` and PyTorch's `F.interpolate(mode="bilinear",
  align_corners=False)`, which PyTorch FVD ports use: `(i + 0.5) * in / out - 0.5`. Neither filters before
  downsampling, unlike `jax.image.resize`, so this is written out rather than taken from there.
  """
  h = jnp.asarray(videos).astype(jnp.float32)
  h = _resize_axis(h, h.ndim - 3, size[0], half_pixel_centers)
  return _resize_axis(h, h.ndim - 2, size[1], half_pixel_centers)


def preprocess_for_i3d(videos: jax.Array, size: tuple[int, int] = FVD_SIZE, half_pixel_centers: bool = False
                       ) -> jax.Array:
  """FVD's preprocessing: `[B, T, H, W, 3]` videos → 224x224 frames in `[-1, 1]`, float32, ready for `I3D`.

  Float videos are taken to be in `[-1, 1]` already (the tokgen_jax convention); uint8 videos in `[0, 255]` are
  mapped with `2 x / 255 - 1` after resizing, as the reference does. See `resize_bilinear` for the two
  resampling conventions; the default matches the TF reference.
  """
  videos = jnp.asarray(videos)
  _check_videos(videos)
  resized = resize_bilinear(videos, size, half_pixel_centers)
  if videos.dtype == jnp.uint8:
    resized = 2.0 * resized / 255.0 - 1.0
  return resized
