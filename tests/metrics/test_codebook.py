"""Codebook usage and perplexity over a stream of token batches equal their closed forms."""

import numpy as np
import pytest

from tokgen_jax.metrics import CodebookUsage


def test_usage_and_perplexity_of_a_known_histogram_over_two_batches():
  usage = CodebookUsage(8)
  usage.update(np.array([0, 0, 1, 1]))
  usage.update(np.array([2, 3, 2, 3]))
  results = usage.results()
  assert results["codebook_usage"] == 4 / 8
  np.testing.assert_allclose(results["codebook_perplexity"], 4.0)  # four codes used equally


def test_levels_are_separate_codebooks_and_are_averaged():
  usage = CodebookUsage(4)
  usage.update(np.array([[0, 0], [1, 0], [2, 0], [3, 0]]))  # level 0 uses all 4 codes, level 1 one code
  results = usage.results()
  assert results["codebook_usage"] == (1.0 + 0.25) / 2
  np.testing.assert_allclose(results["codebook_perplexity"], (4.0 + 1.0) / 2)


def test_huge_vocabularies_count_sparsely():
  usage = CodebookUsage(2 ** 30)
  usage.update(np.array([5, 7, 7, 2 ** 29]))
  np.testing.assert_allclose(usage.results()["codebook_usage"], 3 / 2 ** 30)
  h = np.array([1, 2, 1]) / 4
  np.testing.assert_allclose(usage.results()["codebook_perplexity"], np.exp(-np.sum(h * np.log(h))))


def test_no_tokens_gives_no_results_and_bad_size_fails():
  assert CodebookUsage(4).results() == {}
  with pytest.raises(ValueError, match="codebook_size"):
    CodebookUsage(0)
