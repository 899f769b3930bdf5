"""The codebook coverage figures against their closed forms."""

import numpy as np
import pytest

from tokgen_jax.bench.codebook_coverage import assignment_figures


def test_usage_perplexity_and_distortion_of_a_known_assignment():
  codes = np.eye(4, dtype=np.float32)
  vectors = codes[[0, 0, 1, 2]] + np.array([[0.0, 0.1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.2]],
                                           np.float32)
  figures = assignment_figures(vectors, codes)
  assert figures["usage"] == 0.75
  shares = np.array([0.5, 0.25, 0.25])
  assert figures["perplexity"] == pytest.approx(np.exp(-np.sum(shares * np.log(shares))), rel=1e-6)
  assert figures["distortion"] == pytest.approx((0.01 + 0.04) / 4, rel=1e-5)
