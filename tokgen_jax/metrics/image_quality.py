"""Full-reference image quality: PSNR and SSIM, batched, jittable, pure jax.numpy.

Both take images `[B, H, W, C]` or videos `[B, T, H, W, C]` and return one score per example, `[B]`.

Model outputs live in [-1, 1], so the default `data_range` is 2. PSNR and SSIM are invariant to the affine map
[-1, 1] -> [0, 1] once `data_range` scales with it (both only see differences and ratios measured in units of
`data_range`), so the scores equal those of the [0, 1] images with `data_range=1`.

Everything is computed in float32 whatever the input dtype: bfloat16 outputs would otherwise lose most of the
precision that separates two good reconstructions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Wang et al. 2004, Sec. III-C: an 11x11 circular-symmetric Gaussian window with sigma 1.5, and the stabilizing
# constants C1 = (K1 L)^2, C2 = (K2 L)^2 of Eq. 13 with K1 = 0.01, K2 = 0.03.
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# scikit-image truncates its Gaussian at 3.5 sigma, radius int(3.5 * 1.5 + 0.5) = 5, i.e. an 11-tap window.
SSIM_TRUNCATE = 3.5


def _as_float32(x) -> jnp.ndarray:
    return jnp.asarray(x).astype(jnp.float32)


def _check_pair(x: jnp.ndarray, y: jnp.ndarray, name: str) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{name}: x and y must have the same shape, got {x.shape} and {y.shape}.")
    if x.ndim not in (4, 5):
        raise ValueError(
            f"{name}: expected images [B, H, W, C] or videos [B, T, H, W, C], got shape {x.shape}; "
            "add a batch axis with x[None] for a single example."
        )


# Jitted at definition: eager callers (eval loops, notebooks) get one compiled kernel per shape instead of
# dispatching ~50 small ops; jitting again from inside a train step simply inlines it.
@jax.jit
def psnr(x, y, data_range: float = 2.0) -> jnp.ndarray:
    """Peak signal-to-noise ratio in dB, one value per example: `10 log10(data_range^2 / MSE)`.

    Args:
      x, y: `[B, H, W, C]` images or `[B, T, H, W, C]` videos; for videos the MSE is taken over all frames at
        once, giving one PSNR per video (not the mean of per-frame PSNRs).
      data_range: max - min of the value range; 2.0 for the [-1, 1] model range.

    Returns:
      `[B]` float32. Identical inputs give MSE 0 and PSNR `+inf`, the same as scikit-image; average PSNR over
      a batch with care (or filter with `jnp.isfinite`) if exact copies can occur.
    """
    x, y = _as_float32(x), _as_float32(y)
    _check_pair(x, y, "psnr")
    reduce_axes = tuple(range(1, x.ndim))
    mse = jnp.mean(jnp.square(x - y), axis=reduce_axes)
    return 10.0 * jnp.log10(jnp.square(jnp.asarray(data_range, jnp.float32)) / mse)


def _gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """The normalized 1D Gaussian scipy.ndimage (hence scikit-image) uses: radius int(truncate * sigma + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _blur_axis_valid(maps: jnp.ndarray, taps: np.ndarray, axis: int) -> jnp.ndarray:
    """1D depthwise Gaussian along `axis`, keeping only fully covered positions (VALID): a weighted sum of
    `len(taps)` shifted slices. XLA fuses the sum into one elementwise kernel on every backend; on CPU this is
    ~25x faster than the equivalent grouped `lax.conv_general_dilated` (13 ms vs 320 ms for 8x128x128x15 maps),
    and unlike a convolution on TPU/GPU it never drops to reduced-precision matmul passes, which the variance
    (a difference of nearly equal moments) cannot afford.
    """
    out_length = maps.shape[axis] - taps.shape[0] + 1
    blurred = None
    for offset, weight in enumerate(taps.tolist()):
        term = weight * lax.slice_in_dim(maps, offset, offset + out_length, axis=axis)
        blurred = term if blurred is None else blurred + term
    return blurred


def _separable_gaussian_valid(maps: jnp.ndarray, taps: np.ndarray) -> jnp.ndarray:
    """Depthwise Gaussian blur of `[N, H, W, K]` keeping only fully covered pixels: `[N, H - 10, W - 10, K]`.

    scikit-image filters with reflect padding and then drops a border of (win - 1) // 2 pixels before averaging;
    that border is exactly where the padding is felt, so a VALID filter gives the same kept pixels.
    The 2D Gaussian is separable: two 1D passes cost 2 * 11 instead of 121 multiplies per pixel.
    """
    return _blur_axis_valid(_blur_axis_valid(maps, taps, axis=1), taps, axis=2)


def _ssim_images(x: jnp.ndarray, y: jnp.ndarray, data_range: float) -> jnp.ndarray:
    """Mean SSIM of `[N, H, W, C]` image pairs, per channel then averaged over channels: `[N]`."""
    taps = _gaussian_taps()
    window_size = taps.shape[0]
    height, width = x.shape[1:3]
    if height < window_size or width < window_size:
        raise ValueError(
            f"ssim: images must be at least {window_size}x{window_size} for the 11-tap Gaussian window, "
            f"got {height}x{width}; compare larger crops or use psnr."
        )
    # Blur the five first and second moments in one pass: [N, H, W, 5C].
    moments = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)
    mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(_separable_gaussian_valid(moments, taps), 5, axis=-1)
    # Population (biased) variances and covariance under the Gaussian weights, as in Wang et al. Eqs. 14-16.
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # Wang et al. 2004, Eq. 13.
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    # Mean over pixels per channel, then over channels (scikit-image's channel_axis loop); every channel has
    # the same pixel count, so this is one mean over H, W, C.
    return jnp.mean(ssim_map, axis=(1, 2, 3))


@jax.jit
def ssim(x, y, data_range: float = 2.0) -> jnp.ndarray:
    """Structural similarity (Wang et al. 2004), one value per example.

    Matches `skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range)` per image: 11x11 Gaussian window (sigma 1.5, truncated
    at 3.5 sigma), K1 = 0.01, K2 = 0.03, population covariance, SSIM map cropped by 5 pixels on each side,
    averaged per channel and then over channels.

    Args:
      x, y: `[B, H, W, C]` images or `[B, T, H, W, C]` videos (mean of per-frame SSIM over frames); H and W
        at least 11.
      data_range: max - min of the value range; 2.0 for the [-1, 1] model range.

    Returns:
      `[B]` float32 in [-1, 1]; 1 for identical inputs (up to float32 rounding).
    """
    x, y = _as_float32(x), _as_float32(y)
    _check_pair(x, y, "ssim")
    if x.ndim == 4:
        return _ssim_images(x, y, data_range)
    batch, frames = x.shape[:2]
    per_frame = _ssim_images(
        x.reshape((batch * frames,) + x.shape[2:]), y.reshape((batch * frames,) + y.shape[2:]), data_range
    )
    return jnp.mean(per_frame.reshape(batch, frames), axis=1)


__all__ = ["psnr", "ssim", "SSIM_SIGMA", "SSIM_K1", "SSIM_K2"]
