"""Improved precision/recall against a brute-force float64 reading of Kynkäänniemi et al. 2019."""

import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.metrics.precision_recall import manifold_radii, precision_recall


def _reference(real, samples, k):
  def radii(x):
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

  def covered(points, centres):
    d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
    return float((d <= radii(centres)[None]).any(1).mean())

  return covered(samples, real), covered(real, samples)


@pytest.mark.parametrize("block", [7, 2048])
def test_precision_and_recall_equal_the_papers_definition(block):
  rng = np.random.default_rng(0)
  real = rng.normal(size=(60, 5))
  samples = np.concatenate([rng.normal(size=(30, 5)) * 0.5, rng.normal(size=(20, 5)) + 4.0])  # half off-manifold
  ours = precision_recall(real, samples, k=3, block=block)
  np.testing.assert_allclose(ours, _reference(real, samples, 3), atol=1e-12)
  assert 0.3 < ours[0] < 0.9 and ours[1] < 0.9  # shrunk samples miss the real tails: recall below 1


def test_identical_sets_have_full_precision_and_recall_and_radii_skip_the_point_itself():
  features = np.random.default_rng(1).normal(size=(40, 4))
  assert precision_recall(features, features) == (1.0, 1.0)
  distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
  np.testing.assert_allclose(np.sqrt(manifold_radii(features, k=1)), np.sort(distances, 1)[:, 1], rtol=1e-5)


@pytest.mark.parametrize("real, samples, match", [
    (np.zeros((3, 4)), np.zeros((10, 4)), "N > k=3"),
    (np.zeros((10, 4)), np.zeros((10, 5)), "4-d.*5-d"),
    (np.full((10, 4), np.nan), np.zeros((10, 4)), "NaN"),
])
def test_bad_features_are_refused(real, samples, match):
  with pytest.raises(ConfigError, match=match):
    precision_recall(real, samples)
