"""The InceptionV3 that FID and Inception Score are computed with, and Inception Score from its logits.

`FIDInceptionV3` is the network of pytorch-fid 0.3 (`pytorch_fid.inception.fid_inception_v3`), itself a port of the
TensorFlow graph `inception-2015-12-05` that the original FID and IS code use: torchvision's InceptionV3 layout
with the FID blocks patched in (3x3 average pools that do not count padding, as TensorFlow's; a max-pool, not an
average pool, in the pool branch of the last block, `Mixed_7c`) and a 1008-way classifier `fc`, as in the TF graph.
Its weights are NOT torchvision's ImageNet InceptionV3; `convert/inception.py` imports pytorch-fid's file.

Every conv is followed by an inference-mode BatchNorm (eps 1e-3) and a ReLU. The importer folds each BatchNorm
into its conv (`kernel * γ/√(σ²+ε)`, bias `β - μ·γ/√(σ²+ε)`, in float64), so the Flax tree is one `params`
collection of plain biased convs, with no `batch_stats` to carry: the network is frozen, and that form is also
the cheapest to run. Param names follow the PyTorch modules: `Mixed_6b/branch7x7_2/kernel` is
`Mixed_6b.branch7x7_2.conv.weight` (OIHW → HWIO) with `Mixed_6b.branch7x7_2.bn.*` folded in.

Input is `[B, H, W, 3]` in `[-1, 1]`, NHWC, computed in float32. pytorch-fid takes `[0, 1]`, resizes to 299x299 with
`F.interpolate(mode="bilinear", align_corners=False)` and then maps to `[-1, 1]` (`2x - 1`, its `normalize_input`).
Bilinear weights sum to one, so resizing commutes with that affine map: resizing our `[-1, 1]` input directly gives
the same network input, and no normalization is applied here. `resize_to_input` is that `F.interpolate`, up and down
(half-pixel centers, edges clamped, no antialiasing of a downsample: a 512→299 resize mixes two pixels per output,
like torch's; tests/metrics/test_inception.py checks both ways against a float64 torch resize to 1e-6).
`jax.image.resize(..., "bilinear", antialias=False)` has the same weights but rounds its sample positions in float32
(see `resize_to_input`). torch-fidelity and the TF code resize differently (TF1's `resize_bilinear`, without
half-pixel centers), so FIDs of images that are not already 299x299 match pytorch-fid's, not torch-fidelity's.

Convs run at `Precision.HIGHEST` by default: GPUs (TF32) and TPUs (bf16 passes) otherwise round float32 convs,
and a reported FID should not depend on the accelerator it was computed on. The module carries no sharding annotations: it is small and
frozen, so it is replicated.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError

INPUT_SIZE = 299  # the resolution the network was trained at and pytorch-fid resizes to
MIN_SIZE = 75  # the smallest input the stride-2 stages leave at least one pixel for (torchvision's limit too)
NUM_CLASSES = 1008  # the TF graph's classifier: 1000 ImageNet classes, a background class and 7 unused ones
BN_EPS = 1e-3


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """`[out_size, in_size]` float64 weights of torch's bilinear resize along one axis (align_corners=False).

  Output pixel `o` samples the input at `(o + 0.5) * in_size / out_size - 0.5`, clamped below at 0, and mixes
  its two neighbours (the last pixel repeats past the far edge). No antialiasing: a downsample still mixes only
  two input pixels, as `F.interpolate` does.
  """
  source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = source - low
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), low), 1.0 - frac)
  np.add.at(matrix, (np.arange(out_size), high), frac)
  return matrix


def resize_to_input(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """`[B, H, W, C]` → `[B, size, size, C]`: pytorch-fid's `F.interpolate(mode="bilinear", align_corners=False)`.

  Applied as two matmuls with `bilinear_matrix` weights, built in float64 at trace time (shapes are static).
  `jax.image.resize(..., "bilinear", antialias=False)` computes the same weights (equal to 1e-16 under x64, up
  and down), but in float32 it rounds the sample positions, as torch's own float32 `F.interpolate` does: each
  lands ~5e-5 off the exact (float64) resize of a 512→299 noise image, in different places; these weights land
  within ~2e-7 of it. An input already `size` x `size` is returned unchanged.
  """
  if images.shape[1:3] == (size, size):
    return images
  rows = jnp.asarray(bilinear_matrix(images.shape[1], size), images.dtype)
  columns = jnp.asarray(bilinear_matrix(images.shape[2], size), images.dtype)
  highest = jax.lax.Precision.HIGHEST
  resized = jnp.einsum("oh,bhwc->bowc", rows, images, precision=highest)
  return jnp.einsum("pw,bowc->bopc", columns, resized, precision=highest)


def _conv(x: jax.Array, name: str, features: int, kernel: tuple[int, int] = (1, 1), strides: int = 1,
          padding: tuple[int, int] = (0, 0), precision: jax.lax.Precision | None = None) -> jax.Array:
  """BasicConv2d with its BatchNorm folded in: conv + bias + ReLU. Called inside a compact method, so the conv
  belongs to the calling module under `name` (the PyTorch module's name)."""
  pad_h, pad_w = padding
  conv = nn.Conv(features, kernel, strides=(strides, strides), padding=((pad_h, pad_h), (pad_w, pad_w)),
                 dtype=jnp.float32, param_dtype=jnp.float32, precision=precision, name=name)
  return nn.relu(conv(x))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1, averaging over the in-image pixels only (TF's pool; count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 max-pool; stride 2 reduces with no padding (floor), stride 1 keeps the size (padding is -inf)."""
  padding = "VALID" if stride == 2 else ((1, 1), (1, 1))
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
  """35x35 block (`Mixed_5b-d`): 1x1, 5x5, double 3x3 and avg-pool branches; 224 + `pool_features` channels."""

  pool_features: int
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_conv, precision=self.precision)
    branch1x1 = conv(x, "branch1x1", 64)
    branch5x5 = conv(conv(x, "branch5x5_1", 48), "branch5x5_2", 64, (5, 5), padding=(2, 2))
    branch3x3dbl = conv(x, "branch3x3dbl_1", 64)
    branch3x3dbl = conv(branch3x3dbl, "branch3x3dbl_2", 96, (3, 3), padding=(1, 1))
    branch3x3dbl = conv(branch3x3dbl, "branch3x3dbl_3", 96, (3, 3), padding=(1, 1))
    branch_pool = conv(_avg_pool_3x3(x), "branch_pool", self.pool_features)
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35→17 (`Mixed_6a`): strided 3x3, double 3x3 and max-pool branches; 480 + input channels."""

  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_conv, precision=self.precision)
    branch3x3 = conv(x, "branch3x3", 384, (3, 3), strides=2)
    branch3x3dbl = conv(x, "branch3x3dbl_1", 64)
    branch3x3dbl = conv(branch3x3dbl, "branch3x3dbl_2", 96, (3, 3), padding=(1, 1))
    branch3x3dbl = conv(branch3x3dbl, "branch3x3dbl_3", 96, (3, 3), strides=2)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block (`Mixed_6b-e`) with factorized 7x7 convs (1x7 then 7x1) of width `channels_7x7`; 768 channels."""

  channels_7x7: int
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_conv, precision=self.precision)
    c7, row, column = self.channels_7x7, dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    branch1x1 = conv(x, "branch1x1", 192)
    branch7x7 = conv(x, "branch7x7_1", c7)
    branch7x7 = conv(branch7x7, "branch7x7_2", c7, **row)
    branch7x7 = conv(branch7x7, "branch7x7_3", 192, **column)
    branch7x7dbl = conv(x, "branch7x7dbl_1", c7)
    branch7x7dbl = conv(branch7x7dbl, "branch7x7dbl_2", c7, **column)
    branch7x7dbl = conv(branch7x7dbl, "branch7x7dbl_3", c7, **row)
    branch7x7dbl = conv(branch7x7dbl, "branch7x7dbl_4", c7, **column)
    branch7x7dbl = conv(branch7x7dbl, "branch7x7dbl_5", 192, **row)
    branch_pool = conv(_avg_pool_3x3(x), "branch_pool", 192)
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17→8 (`Mixed_7a`): 3x3/2, 7x7-then-3x3/2 and max-pool branches; 512 + input channels."""

  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_conv, precision=self.precision)
    branch3x3 = conv(conv(x, "branch3x3_1", 192), "branch3x3_2", 320, (3, 3), strides=2)
    branch7x7x3 = conv(x, "branch7x7x3_1", 192)
    branch7x7x3 = conv(branch7x7x3, "branch7x7x3_2", 192, (1, 7), padding=(0, 3))
    branch7x7x3 = conv(branch7x7x3, "branch7x7x3_3", 192, (7, 1), padding=(3, 0))
    branch7x7x3 = conv(branch7x7x3, "branch7x7x3_4", 192, (3, 3), strides=2)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block (`Mixed_7b`, `Mixed_7c`) with split 1x3/3x1 outputs; 2048 channels.

  `max_pool` selects FIDInceptionE_2 (`Mixed_7c`), whose pool branch max-pools where the paper and torchvision
  average: the TF graph does so, and the FID weights were trained with it.
  """

  max_pool: bool = False
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_conv, precision=self.precision)
    row, column = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    branch1x1 = conv(x, "branch1x1", 320)
    branch3x3 = conv(x, "branch3x3_1", 384)
    branch3x3 = [conv(branch3x3, "branch3x3_2a", 384, **row), conv(branch3x3, "branch3x3_2b", 384, **column)]
    branch3x3dbl = conv(x, "branch3x3dbl_1", 448)
    branch3x3dbl = conv(branch3x3dbl, "branch3x3dbl_2", 384, (3, 3), padding=(1, 1))
    branch3x3dbl = [conv(branch3x3dbl, "branch3x3dbl_3a", 384, **row),
                    conv(branch3x3dbl, "branch3x3dbl_3b", 384, **column)]
    pooled = _max_pool_3x3(x, 1) if self.max_pool else _avg_pool_3x3(x)
    branch_pool = conv(pooled, "branch_pool", 192)
    return jnp.concatenate([branch1x1, *branch3x3, *branch3x3dbl, branch_pool], axis=-1)


class Classifier(nn.Module):
  """The 1008-way `fc` (kernel `[2048, 1008]`, bias): returns the logits with and without the bias."""

  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, pool: jax.Array) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (pool.shape[-1], NUM_CLASSES), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (NUM_CLASSES,), jnp.float32)
    unbiased = jnp.dot(pool, kernel, precision=self.precision)
    return unbiased + bias, unbiased


def _check_images(images: jax.Array, resize_to: int | None) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ConfigError(f"FIDInceptionV3: input shape {images.shape} must be RGB images [B, H, W, 3] in [-1, 1]; "
                      "fold video frames into the batch and repeat a grayscale channel 3 times")
  size = min(images.shape[1:3]) if resize_to is None else resize_to
  if size < MIN_SIZE:
    where = f"input {images.shape[1]}x{images.shape[2]}" if resize_to is None else f"resize_to={resize_to}"
    raise ConfigError(f"FIDInceptionV3: {where} is too small; InceptionV3's stride-2 stages need at least "
                      f"{MIN_SIZE}x{MIN_SIZE}: keep the default resize_to={INPUT_SIZE} (what FID uses)")


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3: images `[B, H, W, 3]` in `[-1, 1]` → a dict of float32 arrays:

  - `pool`: `[B, 2048]`, pool3, the global average of `Mixed_7c`: the features FID compares.
  - `logits`: `[B, 1008]`, `fc(pool)`, what the PyTorch module's `fc` gives.
  - `logits_unbiased`: `[B, 1008]`, `pool @ fc.kernel` without the bias: what the original TF Inception Score
    code and torch-fidelity feed to the softmax; pass these to `inception_score`.

  `resize_to=299` (the default, what FID means) resizes the input bilinearly first; `None` runs the network at
  the input's own size (at least 75x75), which gives different features and is meant for tests and probes.
  """

  resize_to: int | None = INPUT_SIZE
  precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    _check_images(images, self.resize_to)
    x = images.astype(jnp.float32)
    if self.resize_to is not None:
      x = resize_to_input(x, self.resize_to)
    conv = functools.partial(_conv, precision=self.precision)
    x = conv(x, "Conv2d_1a_3x3", 32, (3, 3), strides=2)
    x = conv(x, "Conv2d_2a_3x3", 32, (3, 3))
    x = conv(x, "Conv2d_2b_3x3", 64, (3, 3), padding=(1, 1))
    x = conv(_max_pool_3x3(x, 2), "Conv2d_3b_1x1", 80)
    x = _max_pool_3x3(conv(x, "Conv2d_4a_3x3", 192, (3, 3)), 2)
    x = self._mixed(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits, unbiased = Classifier(self.precision, name="fc")(pool)
    return {"pool": pool, "logits": logits, "logits_unbiased": unbiased}

  def _mixed(self, x: jax.Array) -> jax.Array:
    """Mixed_5b ... Mixed_7c, named as in torchvision (submodules are created in `__call__`'s compact scope)."""
    p = self.precision
    blocks = [InceptionA(32, p, name="Mixed_5b"), InceptionA(64, p, name="Mixed_5c"),
              InceptionA(64, p, name="Mixed_5d"), InceptionB(p, name="Mixed_6a"),
              InceptionC(128, p, name="Mixed_6b"), InceptionC(160, p, name="Mixed_6c"),
              InceptionC(160, p, name="Mixed_6d"), InceptionC(192, p, name="Mixed_6e"),
              InceptionD(p, name="Mixed_7a"), InceptionE(False, p, name="Mixed_7b"),
              InceptionE(True, p, name="Mixed_7c")]
    for block in blocks:
      x = block(x)
    return x


def _check_logits(logits: np.ndarray, splits: int) -> None:
  if logits.ndim != 2:
    raise ConfigError(f"inception_score: logits have shape {logits.shape}; pass [N, classes] (the "
                      "`logits_unbiased` output of FIDInceptionV3, concatenated over all samples)")
  if not isinstance(splits, (int, np.integer)) or splits < 1 or splits > logits.shape[0]:
    raise ConfigError(f"inception_score: splits={splits} must be an integer in [1, N={logits.shape[0]}]; the "
                      "standard is 10 splits of 50000 samples")
  if not np.all(np.isfinite(logits)):
    raise ConfigError("inception_score: logits contain NaN or inf; check the images fed to the network")


def inception_score(logits: np.ndarray | jax.Array, splits: int = 10) -> tuple[float, float]:
  """Inception Score (Salimans et al. 2016) of `[N, classes]` logits: `(mean, std)` over `splits` parts.

  Per part, `exp(mean_i KL(p(y|x_i) || p(y)))` with `p(y)` the part's mean prediction; parts are consecutive
  `N * k // splits` slices and the std is numpy's population std, as in the original TF code
  (openai/improved-gan `inception_score.py`) and torch-fidelity. The softmax runs over all 1008 classes, not the
  first 1000, as both of those do: they take pool3 times the classifier's weights, without its bias, which is
  this module's `logits_unbiased`; keeping all 1008 keeps scores comparable with theirs. Computed on the host in
  float64, in one go over all samples; no shuffling (torch-fidelity shuffles with a fixed seed first: shuffle
  samples yourself if they arrive ordered by class).
  """
  logits = np.asarray(logits, np.float64)
  _check_logits(logits, splits)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_p = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
  p = np.exp(log_p)
  n = logits.shape[0]
  scores = []
  for k in range(splits):
    part, log_part = p[k * n // splits:(k + 1) * n // splits], log_p[k * n // splits:(k + 1) * n // splits]
    # A class no sample of the part gives mass has p = 0 everywhere, so its term is 0 whatever log p(y) is: the
    # floor only keeps log(0) = -inf from turning 0 · inf into NaN.
    log_marginal = np.log(np.maximum(part.mean(axis=0, keepdims=True), np.finfo(np.float64).tiny))
    kl = np.sum(part * (log_part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
