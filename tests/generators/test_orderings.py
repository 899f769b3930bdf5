"""Token orderings: permutations, apply/undo round trips, hand-written 4x4 orders, positions, video grids."""

import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import orderings
from tokgen_jax.generators.orderings import ORDERINGS, apply, order, positions, undo

# Source 001, "Different ordering of tokens for image synthesis", verbatim: the step at which each cell
# (row, col) of a 4x4 grid is visited.
SEED_4X4_STEPS = {
    "row_major": [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]],
    "spiral_in": [[0, 11, 10, 9], [1, 12, 15, 8], [2, 13, 14, 7], [3, 4, 5, 6]],
    "spiral_out": [[15, 4, 5, 6], [14, 3, 0, 7], [13, 2, 1, 8], [12, 11, 10, 9]],
    "z_curve": [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]],
    "subsample": [[0, 4, 1, 5], [8, 12, 9, 13], [2, 6, 3, 7], [10, 14, 11, 15]],
    "alternate": [[0, 1, 2, 3], [7, 6, 5, 4], [8, 9, 10, 11], [15, 14, 13, 12]],
}
# The same orders as sequences: flat row-major index of the cell visited at each step.
EXPECTED_4X4 = {name: np.argsort(np.ravel(steps)).tolist() for name, steps in SEED_4X4_STEPS.items()}
GRIDS_2D = ((4, 4), (3, 5), (1, 1), (2, 8), (5, 2))


@pytest.mark.parametrize("name", ORDERINGS)
def test_4x4_orders_reproduce_the_seed_tables(name):
  steps = np.empty(16, np.int64)
  steps[order(name, (4, 4))] = np.arange(16)  # the step at which each cell is visited
  np.testing.assert_array_equal(steps.reshape(4, 4), SEED_4X4_STEPS[name])


def test_spiral_in_on_other_grids_follows_the_seed_rule():
  """Down the left column first, anticlockwise, ring by ring: the 4x4 rule on a 3x5 and a 5x2 grid."""
  np.testing.assert_array_equal(positions(order("spiral_in", (3, 5)), (3, 5)).tolist(),
                                [[0, 0], [1, 0], [2, 0], [2, 1], [2, 2], [2, 3], [2, 4], [1, 4], [0, 4], [0, 3],
                                 [0, 2], [0, 1], [1, 1], [1, 2], [1, 3]])
  np.testing.assert_array_equal(positions(order("spiral_in", (5, 2)), (5, 2)).tolist(),
                                [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [4, 1], [3, 1], [2, 1], [1, 1], [0, 1]])
  np.testing.assert_array_equal(order("spiral_in", (1, 4)), [0, 1, 2, 3])
  np.testing.assert_array_equal(order("spiral_in", (4, 1)), [0, 1, 2, 3])


@pytest.mark.parametrize("name", ORDERINGS)
@pytest.mark.parametrize("grid", GRIDS_2D + ((2, 3, 4),))
def test_every_ordering_is_a_permutation_and_undo_inverts_apply(name, grid):
  perm = order(name, grid)
  assert perm.dtype == np.int32
  np.testing.assert_array_equal(np.sort(perm), np.arange(np.prod(grid)))
  tokens = np.random.default_rng(0).integers(0, 1000, size=(2,) + grid)
  seq = np.asarray(apply(tokens, perm))
  np.testing.assert_array_equal(seq, tokens.reshape(2, -1)[:, perm])
  np.testing.assert_array_equal(undo(seq, perm, grid), tokens)


@pytest.mark.parametrize("name", ("spiral_in", "spiral_out", "alternate"))
@pytest.mark.parametrize("grid", GRIDS_2D)
def test_spirals_and_boustrophedon_are_continuous_paths(name, grid):
  steps = np.abs(np.diff(positions(order(name, grid), grid), axis=0)).sum(-1)
  np.testing.assert_array_equal(steps, 1 if len(steps) else steps)


def test_subsample_starts_with_the_stride_2_grid():
  first_quarter = positions(order("subsample", (8, 8)), (8, 8))[:16]
  assert np.all(first_quarter % 2 == 0)
  np.testing.assert_array_equal(first_quarter[:4], [[0, 0], [0, 4], [4, 0], [4, 4]])


def test_positions_are_grid_coordinates_of_each_sequence_element():
  perm = order("spiral_in", (4, 4))
  pos = positions(perm, (4, 4))
  assert pos.shape == (16, 2) and pos.dtype == np.int32
  np.testing.assert_array_equal(pos[:6], [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1], [3, 2]])
  np.testing.assert_array_equal(pos[:, 0] * 4 + pos[:, 1], perm)


def test_video_per_frame_repeats_the_2d_order_frame_by_frame():
  perm = order("spiral_in", (3, 4, 4))
  np.testing.assert_array_equal(perm.reshape(3, 16) - 16 * np.arange(3)[:, None], [EXPECTED_4X4["spiral_in"]] * 3)
  pos = positions(perm, (3, 4, 4))
  assert pos.shape == (48, 3) and np.all(np.diff(pos[:, 0]) >= 0)


@pytest.mark.parametrize("name", ("row_major", "z_curve", "subsample", "alternate"))
def test_volume_orders_are_permutations_over_all_three_axes(name):
  grid = (2, 4, 4)
  perm = order(name, grid, per_frame=False)
  np.testing.assert_array_equal(np.sort(perm), np.arange(32))
  tokens = np.arange(64).reshape(2, *grid)
  np.testing.assert_array_equal(undo(apply(tokens, perm), perm, grid), tokens)


def test_volume_z_curve_and_snake():
  pos = positions(order("z_curve", (2, 2, 2), per_frame=False), (2, 2, 2))
  np.testing.assert_array_equal(pos, [[t, h, w] for t in (0, 1) for h in (0, 1) for w in (0, 1)])
  snake = positions(order("alternate", (2, 3, 3), per_frame=False), (2, 3, 3))
  np.testing.assert_array_equal(np.abs(np.diff(snake, axis=0)).sum(-1), 1)


def test_apply_keeps_trailing_feature_dims():
  perm = order("z_curve", (4, 4))
  embeddings = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
  seq = np.asarray(apply(embeddings, perm, grid_ndim=2))
  assert seq.shape == (2, 16, 3)
  np.testing.assert_array_equal(undo(seq, perm, (4, 4)), embeddings)


def test_bad_names_and_grids_name_the_fix():
  with pytest.raises(ConfigError, match="'hilbert' is unknown"):
    order("hilbert", (4, 4))
  with pytest.raises(ConfigError, match="no volume"):
    order("spiral_in", (2, 4, 4), per_frame=False)
  with pytest.raises(ConfigError, match=r"must be \(h, w\) or \(t, h, w\)"):
    order("row_major", (16,))
  with pytest.raises(ConfigError, match="do not match grid"):
    undo(np.zeros((1, 15)), orderings.order("row_major", (4, 4)), (4, 4))
  with pytest.raises(ConfigError, match="permutation has 16"):
    apply(np.zeros((1, 4, 5)), order("row_major", (4, 4)))
