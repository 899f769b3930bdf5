"""PSNR and SSIM against scikit-image, on random data and on real photographs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tokgen_jax.metrics import psnr, ssim

ATOL = 1e-4


def reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """scikit-image SSIM in float64, one value per image of a [B, H, W, C] batch."""
    return np.array(
        [
            structural_similarity(
                a.astype(np.float64),
                b.astype(np.float64),
                channel_axis=-1,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=data_range,
            )
            for a, b in zip(x, y)
        ]
    )


def reference_psnr(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    return np.array(
        [peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=data_range) for a, b in zip(x, y)]
    )


def to_model_range(photo_uint8: np.ndarray) -> np.ndarray:
    return photo_uint8.astype(np.float32) / 127.5 - 1.0


def photo_crops(size: int = 96) -> np.ndarray:
    """Two real RGB photographs cropped to `size`, in [-1, 1]: [2, size, size, 3]."""
    astronaut = skimage.data.astronaut()[40 : 40 + size, 180 : 180 + size]
    chelsea = skimage.data.chelsea()[50 : 50 + size, 100 : 100 + size]
    return to_model_range(np.stack([astronaut, chelsea]))


def degrade(clean: np.ndarray, noise_std: float, blur_sigma: float, seed: int) -> np.ndarray:
    """Blur spatially, add Gaussian noise, clip to [-1, 1]: a plausible reconstruction error."""
    rng = np.random.default_rng(seed)
    blurred = ndimage.gaussian_filter(clean, sigma=(0, blur_sigma, blur_sigma, 0)) if blur_sigma else clean
    noisy = blurred + noise_std * rng.standard_normal(clean.shape)
    return np.clip(noisy, -1.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def random_pair():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 32, 40, 3)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    return x, y


def test_psnr_matches_skimage_on_random(random_pair):
    x, y = random_pair
    np.testing.assert_allclose(psnr(x, y), reference_psnr(x, y), atol=ATOL)


def test_ssim_matches_skimage_on_random(random_pair):
    x, y = random_pair
    np.testing.assert_allclose(ssim(x, y), reference_ssim(x, y), atol=ATOL)


@pytest.mark.parametrize("noise_std, blur_sigma", [(0.05, 0.0), (0.0, 1.0), (0.1, 0.7)])
def test_metrics_match_skimage_on_photos(noise_std, blur_sigma):
    clean = photo_crops()
    distorted = degrade(clean, noise_std, blur_sigma, seed=1)
    np.testing.assert_allclose(psnr(clean, distorted), reference_psnr(clean, distorted), atol=ATOL)
    np.testing.assert_allclose(ssim(clean, distorted), reference_ssim(clean, distorted), atol=ATOL)


def test_psnr_of_model_range_equals_psnr_of_unit_range():
    clean = photo_crops()
    distorted = degrade(clean, 0.1, 0.5, seed=2)
    unit_clean, unit_distorted = (clean + 1) / 2, (distorted + 1) / 2
    np.testing.assert_allclose(psnr(clean, distorted), psnr(unit_clean, unit_distorted, data_range=1.0), atol=ATOL)


def test_ssim_depends_on_value_offset_so_unit_range_needs_mapping():
    """SSIM's luminance term sees absolute means, so [-1, 1] and [0, 1] scores differ; the documented recipe
    `ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0)` gives the [0, 1] score papers report."""
    clean = photo_crops()
    distorted = degrade(clean, 0.1, 0.5, seed=2)
    unit_clean, unit_distorted = (clean + 1) / 2, (distorted + 1) / 2
    unit_scores = ssim(unit_clean, unit_distorted, data_range=1.0)
    np.testing.assert_allclose(unit_scores, reference_ssim(unit_clean, unit_distorted, 1.0), atol=ATOL)
    assert np.all(np.abs(np.asarray(ssim(clean, distorted)) - np.asarray(unit_scores)) > 1e-3)


def test_grayscale_and_uint8_range():
    """One channel and a 0..255 range with data_range=255 match scikit-image too."""
    gray = skimage.data.camera()[100:164, 200:264].astype(np.float32)[None, :, :, None]
    noisy = np.clip(gray + np.random.default_rng(3).normal(0, 10, gray.shape), 0, 255).astype(np.float32)
    np.testing.assert_allclose(ssim(gray, noisy, data_range=255.0), reference_ssim(gray, noisy, 255.0), atol=ATOL)
    np.testing.assert_allclose(psnr(gray, noisy, data_range=255.0), reference_psnr(gray, noisy, 255.0), atol=ATOL)


def test_identical_inputs(random_pair):
    x, _ = random_pair
    np.testing.assert_allclose(ssim(x, x), np.ones(len(x)), atol=1e-6)
    # MSE 0 gives +inf dB, as scikit-image does.
    assert np.all(np.isposinf(np.asarray(psnr(x, x))))


def test_symmetry(random_pair):
    x, y = random_pair
    np.testing.assert_allclose(ssim(x, y), ssim(y, x), atol=1e-6)
    np.testing.assert_allclose(psnr(x, y), psnr(y, x), atol=1e-6)


def test_ssim_bounded_and_negative_for_inverted_structure():
    rng = np.random.default_rng(4)
    texture = rng.uniform(-1, 1, (3, 24, 24, 3)).astype(np.float32)
    # Same local means, mirrored fluctuations: luminance term ~1, structure term ~-1.
    x, y = 0.5 + 0.4 * texture, 0.5 - 0.4 * texture
    scores = np.asarray(ssim(x, y))
    assert np.all(scores >= -1.0) and np.all(scores <= 1.0)
    assert np.all(scores < -0.5), scores
    np.testing.assert_allclose(scores, reference_ssim(x, y), atol=ATOL)
    random_scores = np.asarray(ssim(texture, rng.uniform(-1, 1, texture.shape).astype(np.float32)))
    assert np.all(np.abs(random_scores) <= 1.0)


def test_scores_decrease_with_noise():
    clean = photo_crops(64)[:1]
    noise_levels = [0.01, 0.05, 0.1, 0.2, 0.4]
    ssims = [float(ssim(clean, degrade(clean, s, 0.0, seed=5))[0]) for s in noise_levels]
    psnrs = [float(psnr(clean, degrade(clean, s, 0.0, seed=5))[0]) for s in noise_levels]
    assert all(a > b for a, b in zip(ssims, ssims[1:])), ssims
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs


def test_jit_and_low_precision_inputs(random_pair):
    x, y = random_pair
    jitted_ssim, jitted_psnr = jax.jit(ssim), jax.jit(psnr)
    np.testing.assert_allclose(jitted_ssim(x, y), ssim(x, y), atol=1e-6)
    np.testing.assert_allclose(jitted_psnr(x, y), psnr(x, y), atol=1e-5)
    # bfloat16 inputs are upcast, so outputs are float32 and equal the float32 scores of the rounded inputs.
    x16, y16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    assert jitted_ssim(x16, y16).dtype == jnp.float32
    np.testing.assert_allclose(
        jitted_ssim(x16, y16), ssim(np.asarray(x16, np.float32), np.asarray(y16, np.float32)), atol=1e-6
    )


def test_video_shapes_and_reductions():
    rng = np.random.default_rng(6)
    videos = rng.uniform(-1, 1, (2, 3, 16, 20, 3)).astype(np.float32)
    recon = np.clip(videos + 0.1 * rng.standard_normal(videos.shape), -1, 1).astype(np.float32)
    video_ssim, video_psnr = ssim(videos, recon), psnr(videos, recon)
    assert video_ssim.shape == (2,) and video_psnr.shape == (2,)
    # SSIM: mean of per-frame SSIM.
    per_frame = np.stack([reference_ssim(videos[:, t], recon[:, t]) for t in range(3)], axis=1)
    np.testing.assert_allclose(video_ssim, per_frame.mean(axis=1), atol=ATOL)
    # PSNR: one MSE over the whole video.
    mse = np.mean((videos.astype(np.float64) - recon) ** 2, axis=(1, 2, 3, 4))
    np.testing.assert_allclose(video_psnr, 10 * np.log10(4.0 / mse), atol=ATOL)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 17, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        psnr(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
