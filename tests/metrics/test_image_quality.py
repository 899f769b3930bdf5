"""PSNR, SSIM and MS-SSIM against scikit-image, on random data and on real photographs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tokgen_jax.metrics import ms_ssim, psnr, ssim
from tokgen_jax.metrics.image_quality import MS_SSIM_WEIGHTS

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
  # PSNR: mean of per-frame PSNR.
  per_frame_psnr = np.stack([reference_psnr(videos[:, t], recon[:, t]) for t in range(3)], axis=1)
  np.testing.assert_allclose(video_psnr, per_frame_psnr.mean(axis=1), atol=ATOL)


def test_video_psnr_is_mean_of_per_frame_psnr_closed_form():
  """Frame t of video b is off by a constant d_bt, so its MSE is d_bt^2 and its PSNR 10 log10(4 / d_bt^2)."""
  offsets = np.array([[0.1, 0.2, 0.4, 0.05], [0.01, 0.01, 0.3, 0.3]])
  videos = np.zeros((2, 4, 8, 8, 3), np.float32)
  recon = videos + offsets[:, :, None, None, None].astype(np.float32)
  expected = np.mean(10 * np.log10(4.0 / offsets**2), axis=1)
  np.testing.assert_allclose(psnr(videos, recon), expected, atol=ATOL)
  # The PSNR of the whole-video MSE is smaller (Jensen), so the two conventions are told apart.
  whole_video = 10 * np.log10(4.0 / np.mean(offsets**2, axis=1))
  assert np.all(expected - whole_video > 1.0)


def test_bad_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match="same shape"):
    ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 17, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    psnr(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))
  with pytest.raises(ValueError, match="at least 11x11"):
    ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))


# MS-SSIM reference: an independent float64 NumPy implementation of Wang et al. 2003 with TF's
# `tf.image.ssim_multiscale` conventions, whose per-scale pieces are checked against scikit-image.


def reference_ssim_cs(a: np.ndarray, b: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean SSIM and mean contrast-structure of one [H, W, C] pair, scikit-image's way."""
  ssims, css = [], []
  for channel in range(a.shape[-1]):
    x, y = a[..., channel], b[..., channel]
    mssim, ssim_map = structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, full=True
    )
    # skimage.filters.gaussian(mode="reflect", truncate=3.5) is this ndimage call.
    blur = lambda z: ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    cs_map = (2 * cov_xy + c2) / (var_x + var_y + c2)
    # Our split reproduces scikit-image's SSIM map exactly, so cs is computed the way its SSIM is.
    np.testing.assert_allclose(luminance * cs_map, ssim_map, rtol=0, atol=1e-12)
    ssims.append(mssim)
    css.append(cs_map[5:-5, 5:-5].mean())  # scikit-image's crop of (win_size - 1) // 2
  return np.array(ssims), np.array(css)


def reference_downsample(image: np.ndarray) -> np.ndarray:
  """2x2 mean of [H, W, C]; odd sizes repeat the last row/column first (TF's SYMMETRIC padding)."""
  height, width = image.shape[:2]
  image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="symmetric")
  return image.reshape(image.shape[0] // 2, 2, image.shape[1] // 2, 2, -1).mean(axis=(1, 3))


def reference_ms_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> np.ndarray:
  """MS-SSIM of each [H, W, C] pair of a batch, in float64."""
  scores = []
  for a, b in zip(x.astype(np.float64), y.astype(np.float64)):
    factors = []
    for scale in range(5):
      if scale:
        a, b = reference_downsample(a), reference_downsample(b)
      ssim_c, cs_c = reference_ssim_cs(a, b, data_range)
      factors.append(ssim_c if scale == 4 else cs_c)
    # Wang et al. 2003, Eq. 7, with TF's relu on every per-channel factor; then the mean over channels.
    per_channel = np.prod(np.maximum(np.stack(factors), 0.0) ** np.array(MS_SSIM_WEIGHTS)[:, None], axis=0)
    scores.append(per_channel.mean())
  return np.array(scores)


def test_ms_ssim_weights_are_the_papers():
  assert MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
  np.testing.assert_allclose(sum(MS_SSIM_WEIGHTS), 1.0, atol=1e-4)


# Every MS-SSIM test below scores a batch of two 176x176x3 (or 181x197x3) pairs, so the five-scale kernel compiles
# only twice (~5 s each on CPU).


def two_photos(height: int, width: int) -> np.ndarray:
  astronaut = skimage.data.astronaut()[20 : 20 + height, 150 : 150 + width]
  chelsea = skimage.data.chelsea()[40 : 40 + height, 120 : 120 + width]
  return to_model_range(np.stack([astronaut, chelsea]))


@pytest.mark.parametrize("size", [(176, 176), (181, 197)])
def test_ms_ssim_matches_reference_on_photos(size):
  """Real photographs, a mild and a strong distortion; (181, 197) exercises the odd-size padding at every
  coarser scale (181 -> 91 -> 46 -> 23 -> 12, 197 -> 99 -> 50 -> 25 -> 13)."""
  clean = two_photos(*size)
  distorted = np.concatenate([degrade(clean[:1], 0.05, 0.7, seed=7), degrade(clean[1:], 0.4, 2.0, seed=8)])
  scores = np.asarray(ms_ssim(clean, distorted))
  np.testing.assert_allclose(scores, reference_ms_ssim(clean, distorted), atol=ATOL)
  assert np.all((scores > 0.0) & (scores < 1.0))
  # The same photos on the [0, 1] scale with data_range=1, as papers report it.
  unit_clean, unit_distorted = (clean + 1) / 2, (distorted + 1) / 2
  np.testing.assert_allclose(
      ms_ssim(unit_clean, unit_distorted, data_range=1.0),
      reference_ms_ssim(unit_clean, unit_distorted, 1.0),
      atol=ATOL,
  )


def test_ms_ssim_identical_inputs_and_ordering():
  clean = two_photos(176, 176)
  np.testing.assert_allclose(ms_ssim(clean, clean), np.ones(2), atol=1e-6)
  same_photo = np.repeat(clean[:1], 2, axis=0)
  noisier = np.concatenate([degrade(clean[:1], 0.05, 0.0, seed=9), degrade(clean[:1], 0.3, 0.0, seed=9)])
  mild, strong = np.asarray(ms_ssim(same_photo, noisier))
  assert 1.0 > mild > strong, (mild, strong)


def test_ms_ssim_clamps_negative_contrast_structure_to_zero():
  """Mirrored fluctuations around one mean make cs < 0 at the finest scale; TF's relu scores that 0, where
  an unclamped fractional power would give NaN."""
  texture = np.random.default_rng(10).uniform(-1, 1, (2, 176, 176, 3)).astype(np.float32)
  x, y = 0.5 + 0.4 * texture, 0.5 - 0.4 * texture
  scores = np.asarray(ms_ssim(x, y))
  assert np.all(np.isfinite(scores))
  np.testing.assert_allclose(scores, reference_ms_ssim(x, y), atol=ATOL)
  np.testing.assert_allclose(scores, 0.0, atol=1e-6)


def test_ms_ssim_video_is_mean_of_frames():
  videos = two_photos(176, 176)[None]  # two photos become the two frames of one video
  noise_std = np.array([0.05, 0.3])[None, :, None, None, None]
  noise = noise_std * np.random.default_rng(11).standard_normal(videos.shape)
  recon = np.clip(videos + noise, -1, 1).astype(np.float32)
  video_score = np.asarray(ms_ssim(videos, recon))
  assert video_score.shape == (1,)
  per_frame = np.asarray(ms_ssim(videos[0], recon[0]))
  np.testing.assert_allclose(video_score, per_frame.mean(keepdims=True), atol=1e-6)
  np.testing.assert_allclose(per_frame, reference_ms_ssim(videos[0], recon[0]), atol=ATOL)
  assert abs(per_frame[0] - per_frame[1]) > 0.01  # distinct frames, so the mean is not trivially either one


def test_ms_ssim_too_small_raises_naming_the_minimum():
  with pytest.raises(ValueError, match="at least 176x176"):
    ms_ssim(np.zeros((1, 175, 200, 3)), np.zeros((1, 175, 200, 3)))
  with pytest.raises(ValueError, match="at least 176x176"):
    ms_ssim(np.zeros((1, 2, 200, 96, 3)), np.zeros((1, 2, 200, 96, 3)))
  with pytest.raises(ValueError, match="same shape"):
    ms_ssim(np.zeros((1, 176, 176, 3)), np.zeros((1, 176, 177, 3)))
