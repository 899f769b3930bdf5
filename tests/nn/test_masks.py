"""Mask builders against their brute-force definitions, written as loops over (query, key) pairs."""

import itertools

import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn import masks


def _brute(length, readable):
  return np.array([[readable(p, s) for s in range(length)] for p in range(length)])


def _built(builder, length):
  return np.asarray(builder(np.arange(length), np.arange(length)))


def test_causal_and_bidirectional():
  np.testing.assert_array_equal(_built(masks.Causal(), 7), _brute(7, lambda p, s: s <= p))
  np.testing.assert_array_equal(_built(masks.Bidirectional(), 7), np.ones((7, 7), bool))


@pytest.mark.parametrize("prefix_len", (0, 1, 3))
def test_prefix_causal_reads_the_whole_prefix_and_the_past(prefix_len):
  expected = _brute(8, lambda p, s: s <= p or s < prefix_len)
  np.testing.assert_array_equal(_built(masks.PrefixCausal(prefix_len), 8), expected)
  if prefix_len == 0:
    np.testing.assert_array_equal(expected, _built(masks.Causal(), 8))


def test_block_causal_reads_its_own_scale_and_every_coarser_one():
  sizes = (1, 4, 9)  # VAR's 1×1, 2×2, 3×3 token maps
  scale_of = [i for i, size in enumerate(sizes) for _ in range(size)]
  expected = _brute(sum(sizes), lambda p, s: scale_of[s] <= scale_of[p])
  np.testing.assert_array_equal(_built(masks.BlockCausal(sizes), sum(sizes)), expected)
  padded = _built(masks.BlockCausal(sizes), sum(sizes) + 2)
  np.testing.assert_array_equal(padded[:14, :14], expected)
  np.testing.assert_array_equal(padded[:, 14:], np.eye(16, dtype=bool)[:, 14:])  # nobody else reads padding
  np.testing.assert_array_equal(padded[14:, :14], True)


def test_block_causal_rows_slice_for_cached_queries():
  builder = masks.BlockCausal((2, 3, 4))
  full = _built(builder, 9)
  np.testing.assert_array_equal(np.asarray(builder(np.arange(5, 9), np.arange(9))), full[5:])


def _coords(grid):
  return list(itertools.product(*(range(g) for g in grid)))  # row-major (t, h, w), as the sequence flattens


def test_spatial_window_is_one_frame():
  grid = (3, 2, 4)
  cells = _coords(grid)
  expected = _brute(len(cells), lambda p, s: cells[p][0] == cells[s][0])
  np.testing.assert_array_equal(_built(masks.Windowed.spatial(grid), len(cells)), expected)


def test_spatiotemporal_window_is_every_frame_of_a_local_patch():
  grid, patch = (3, 4, 6), (2, 3)
  cells = _coords(grid)
  same_patch = lambda a, b: a[1] // patch[0] == b[1] // patch[0] and a[2] // patch[1] == b[2] // patch[1]
  expected = _brute(len(cells), lambda p, s: same_patch(cells[p], cells[s]))
  np.testing.assert_array_equal(_built(masks.Windowed.spatiotemporal(grid, patch), len(cells)), expected)


def test_general_window_tiles():
  grid, window = (4, 2, 2), (2, 1, 2)
  cells = _coords(grid)
  tile = lambda c: tuple(x // w for x, w in zip(c, window))
  expected = _brute(len(cells), lambda p, s: tile(cells[p]) == tile(cells[s]))
  np.testing.assert_array_equal(_built(masks.Windowed(grid, window), len(cells)), expected)


def test_builders_are_hashable_module_fields():
  assert masks.BlockCausal((1, 4)) == masks.BlockCausal((1, 4))
  assert len({masks.Causal(), masks.Causal(), masks.PrefixCausal(2), masks.Windowed.spatial((2, 2, 2))}) == 3


def test_bad_builders_name_the_fix():
  with pytest.raises(ConfigError, match="sizes that divide grid"):
    masks.Windowed((2, 4, 4), (1, 3, 4))
  with pytest.raises(ConfigError, match="non-empty tuple of positive sizes"):
    masks.BlockCausal((1, 0))
  with pytest.raises(ConfigError, match="does not flatten the grid"):
    masks.Windowed.spatial((2, 2, 2)).check_length(9)
