"""Codebook usage and perplexity over a stream of token batches equal their closed forms."""

import itertools

import numpy as np
import pytest

from tokgen_jax.metrics import CodebookUsage, uniform_coverage


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


@pytest.mark.parametrize("codebook_size,draws", [(3, 4), (4, 2), (2, 5), (5, 5), (1, 3)])
def test_uniform_coverage_is_the_mean_distinct_count_over_every_equally_likely_draw(codebook_size, draws):
  sequences = itertools.product(range(codebook_size), repeat=draws)
  expected = np.mean([len(set(sequence)) for sequence in sequences])
  np.testing.assert_allclose(uniform_coverage(codebook_size, draws), expected, rtol=1e-12)


def test_uniform_coverage_limits_and_bad_arguments():
  assert uniform_coverage(512, 0) == 0.0 and uniform_coverage(512, 1) == pytest.approx(1.0)
  np.testing.assert_allclose(uniform_coverage(512, 500), 512 * (1 - (511 / 512) ** 500), rtol=1e-12)
  np.testing.assert_allclose(uniform_coverage(2 ** 18, 10 ** 9), 2 ** 18, rtol=1e-9)
  with pytest.raises(ValueError, match="codebook_size"):
    uniform_coverage(0, 5)


def test_no_code_distribution_expects_more_distinct_codes_than_the_uniform_one():
  rng = np.random.default_rng(0)
  for concentration in (0.1, 1.0, 30.0):
    shares = rng.dirichlet(np.full(512, concentration))
    assert np.sum(1 - (1 - shares) ** 500) < uniform_coverage(512, 500)
