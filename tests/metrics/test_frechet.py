"""Fréchet distance against pytorch-fid's SciPy formula, and streaming feature statistics against NumPy."""

import zipfile

import numpy as np
import pytest
import scipy.linalg

from tokgen_jax.metrics import FeatureStatistics, frechet_distance


def reference_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
  """pytorch-fid's `calculate_frechet_distance`: sqrtm of the non-symmetric product, eps * I fallback."""
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_sets(num: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Two non-negative, correlated, differently distributed feature sets, like pooled CNN activations."""
  rng = np.random.default_rng(seed)
  real = np.abs(rng.standard_normal((num, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim))
  fake = np.abs(rng.standard_normal((num, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim) + 0.1)
  return real, fake


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return np.mean(features, axis=0), np.cov(features, rowvar=False)


@pytest.mark.parametrize(
    "num, dim",
    [(2000, 32), (500, 128), (60, 128), (10, 64)],  # the last two: fewer samples than dimensions, singular
)
def test_frechet_distance_matches_scipy_reference(num, dim):
  real, fake = feature_sets(num, dim, seed=num + dim)
  mu1, sigma1 = stats(real)
  mu2, sigma2 = stats(fake)
  distance = frechet_distance(mu1, sigma1, mu2, sigma2)
  assert np.isfinite(distance) and distance > 0
  np.testing.assert_allclose(distance, reference_frechet_distance(mu1, sigma1, mu2, sigma2), rtol=1e-6)


def test_frechet_distance_of_identical_statistics_is_zero():
  for num in (1000, 20):  # full rank, then rank 19 of 64
    mu, sigma = stats(feature_sets(num, 64, seed=3)[0])
    scale = np.trace(sigma)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * scale
    # Of a shifted mean, exactly the squared shift.
    shift = np.full(64, 0.01)
    np.testing.assert_allclose(frechet_distance(mu, sigma, mu + shift, sigma), shift @ shift, atol=1e-9 * scale)


def test_frechet_distance_closed_form_for_commuting_covariances():
  """Diagonal covariances: d^2 = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2, zeros included."""
  a = np.array([4.0, 1.0, 0.0, 9.0])
  b = np.array([1.0, 1.0, 2.0, 0.0])
  mu1, mu2 = np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 2.0, 0.0])
  expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-12)


def test_frechet_distance_accepts_float32_and_rejects_bad_inputs():
  mu, sigma = stats(feature_sets(200, 16, seed=4)[0])
  mu2, sigma2 = stats(feature_sets(200, 16, seed=5)[1])
  float32 = frechet_distance(mu.astype(np.float32), sigma.astype(np.float32), mu2, sigma2)
  np.testing.assert_allclose(float32, frechet_distance(mu, sigma, mu2, sigma2), rtol=1e-5)
  with pytest.raises(ValueError, match="same feature network"):
    frechet_distance(mu, sigma, mu2[:8], sigma2[:8, :8])
  with pytest.raises(ValueError, match="shape"):
    frechet_distance(mu, sigma[0], mu2, sigma2)
  with pytest.raises(ValueError, match="NaN"):
    frechet_distance(mu, np.full_like(sigma, np.nan), mu2, sigma2)
  with pytest.raises(ValueError, match="not positive semi-definite"):
    frechet_distance(mu, -sigma, mu2, sigma2)


def test_streaming_statistics_equal_one_shot_numpy():
  rng = np.random.default_rng(6)
  # A large common offset: raw sums of outer products would lose digits to cancellation here.
  features = 50.0 + rng.standard_normal((1000, 48)) @ rng.standard_normal((48, 48))
  streamed = FeatureStatistics()
  for chunk in np.array_split(features, [1, 7, 300, 301, 650]):  # uneven chunks, one of a single vector
    streamed.update(chunk.astype(np.float64))
  streamed.update(np.zeros((0, 48)))  # an empty batch is a no-op
  assert streamed.count == 1000 and streamed.dim == 48
  np.testing.assert_allclose(streamed.mean, features.mean(axis=0), rtol=0, atol=1e-10)
  np.testing.assert_allclose(streamed.covariance, np.cov(features, rowvar=False), rtol=0, atol=1e-10)
  # Two hosts' accumulators merged equal one accumulator over everything.
  left = FeatureStatistics().update(features[:333])
  right = FeatureStatistics().update(features[333:500]).update(features[500:])
  merged = left.merge(right).merge(FeatureStatistics())
  assert merged.count == 1000
  np.testing.assert_allclose(merged.mean, features.mean(axis=0), rtol=0, atol=1e-10)
  np.testing.assert_allclose(merged.covariance, np.cov(features, rowvar=False), rtol=0, atol=1e-10)
  # Merging into an empty accumulator copies.
  np.testing.assert_allclose(FeatureStatistics().merge(right).mean, features[333:].mean(axis=0), atol=1e-12)


def test_streaming_statistics_accept_float32_and_jax_arrays():
  import jax.numpy as jnp

  features = np.random.default_rng(7).standard_normal((64, 8)).astype(np.float32)
  stats_ = FeatureStatistics().update(jnp.asarray(features[:30])).update(features[30:])
  one_shot = features.astype(np.float64)
  np.testing.assert_allclose(stats_.covariance, np.cov(one_shot, rowvar=False), rtol=0, atol=1e-10)


def test_statistics_errors():
  stats_ = FeatureStatistics()
  with pytest.raises(ValueError, match="no features yet"):
    stats_.mean
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    stats_.update(np.zeros(5))
  stats_.update(np.ones((1, 4)))
  with pytest.raises(ValueError, match="at least 2"):
    stats_.covariance
  with pytest.raises(ValueError, match="dimension 3"):
    stats_.update(np.ones((2, 3)))
  with pytest.raises(ValueError, match="NaN"):
    stats_.update(np.full((2, 4), np.nan))
  with pytest.raises(ValueError, match="dimensions differ"):
    stats_.merge(FeatureStatistics().update(np.ones((2, 5))))


def test_save_load_round_trip(tmp_path):
  features = np.random.default_rng(8).standard_normal((300, 16))
  stats_ = FeatureStatistics().update(features[:200])
  path = tmp_path / "reference_stats"  # no suffix: written exactly here, not to reference_stats.npz
  stats_.save(path)
  with np.load(path) as data:
    assert sorted(data.files) == ["count", "mu", "sigma"]
    np.testing.assert_array_equal(data["mu"], stats_.mean)
    np.testing.assert_array_equal(data["sigma"], stats_.covariance)
  loaded = FeatureStatistics.load(path)
  assert loaded.count == 200
  np.testing.assert_array_equal(loaded.mean, stats_.mean)
  np.testing.assert_allclose(loaded.covariance, stats_.covariance, rtol=1e-14)
  # A loaded accumulator keeps accumulating as if never saved.
  loaded.update(features[200:])
  np.testing.assert_allclose(loaded.covariance, np.cov(features, rowvar=False), rtol=0, atol=1e-10)


def test_load_reference_statistics_without_count(tmp_path):
  """pytorch-fid's --save-stats files hold only mu and sigma: usable for the distance, not extendable."""
  mu, sigma = stats(np.random.default_rng(9).standard_normal((100, 8)))
  path = tmp_path / "fid_stats.npz"
  np.savez(path, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
  loaded = FeatureStatistics.load(path)
  assert loaded.count is None and loaded.mean.dtype == np.float64
  np.testing.assert_allclose(frechet_distance(loaded.mean, loaded.covariance, mu, sigma), 0.0, atol=1e-5)
  with pytest.raises(ValueError, match="without a count"):
    loaded.update(np.zeros((2, 8)))
  loaded.save(tmp_path / "again.npz")
  assert FeatureStatistics.load(tmp_path / "again.npz").count is None


def test_load_errors_name_the_path_and_fix(tmp_path):
  missing = tmp_path / "missing.npz"
  with pytest.raises(FileNotFoundError, match=r"missing\.npz.*save\(path\)"):
    FeatureStatistics.load(missing)
  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(b"not a zip file at all")
  with pytest.raises(ValueError, match=r"corrupt\.npz.*not a readable"):
    FeatureStatistics.load(corrupt)
  truncated = tmp_path / "truncated.npz"
  FeatureStatistics().update(np.random.default_rng(10).standard_normal((10, 4))).save(truncated)
  truncated.write_bytes(truncated.read_bytes()[:-40])
  with pytest.raises(ValueError, match="truncated"):
    FeatureStatistics.load(truncated)
  wrong_keys = tmp_path / "wrong_keys.npz"
  np.savez(wrong_keys, mean=np.zeros(4), cov=np.eye(4))
  with pytest.raises(ValueError, match=r"wrong_keys\.npz.*'mu' and 'sigma'"):
    FeatureStatistics.load(wrong_keys)
  wrong_shape = tmp_path / "wrong_shape.npz"
  np.savez(wrong_shape, mu=np.zeros(4), sigma=np.eye(5), count=10)
  with pytest.raises(ValueError, match=r"wrong_shape\.npz.*\[D, D\]"):
    FeatureStatistics.load(wrong_shape)
  bad_count = tmp_path / "bad_count.npz"
  np.savez(bad_count, mu=np.zeros(4), sigma=np.eye(4), count=1)
  with pytest.raises(ValueError, match=r"bad_count\.npz.*count"):
    FeatureStatistics.load(bad_count)
  assert zipfile.is_zipfile(wrong_shape)  # the errors above came from content checks, not from the reader


def test_kept_features_are_the_first_rows_across_updates_merges_and_a_save(tmp_path):
  features = np.random.default_rng(3).normal(size=(30, 4))
  first, second = FeatureStatistics(keep=12).update(features[:8]), FeatureStatistics(keep=12).update(features[8:10])
  first.merge(second).update(features[10:])
  np.testing.assert_array_equal(first.kept, features[:12].astype(np.float32))
  first.save(tmp_path / "s.npz")
  loaded = FeatureStatistics.load(tmp_path / "s.npz")
  np.testing.assert_array_equal(loaded.kept, features[:12].astype(np.float32))
  np.testing.assert_allclose(loaded.covariance, first.covariance)
  assert FeatureStatistics().update(features).kept is None  # keep=0: nothing kept, nothing saved


def test_kept_features_of_another_width_are_refused(tmp_path):
  np.savez(tmp_path / "bad.npz", mu=np.zeros(4), sigma=np.eye(4), features=np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"features \(5, 3\), expected finite \[n, 4\]"):
    FeatureStatistics.load(tmp_path / "bad.npz")
