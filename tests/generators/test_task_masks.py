"""MAGVIT's conditional tasks as given-position masks over token grids."""

import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import task_masks

GRID = (3, 4, 4)


def _given(task, grid=GRID, frames=1):
  return task_masks.given_positions(task, grid, frames).reshape(grid)


def test_each_task_gives_its_region():
  assert not _given("generation").any()
  prediction = _given("frame_prediction", frames=2)
  assert prediction[:2].all() and not prediction[2].any()
  interpolation = _given("interpolation")
  assert interpolation[0].all() and interpolation[2].all() and not interpolation[1].any()
  box = np.zeros((4, 4), bool)
  box[1:3, 1:3] = True
  for frame in range(3):
    np.testing.assert_array_equal(_given("outpainting")[frame], box)
    np.testing.assert_array_equal(_given("inpainting")[frame], ~box)
  np.testing.assert_array_equal(_given("outpainting", (5, 5)), np.pad(np.ones((3, 3), bool), 1))


def test_task_table_rows_and_errors():
  table = task_masks.task_table(("generation", "outpainting"), (4, 4))
  assert table.shape == (2, 16) and table[1].sum() == 4
  with pytest.raises(ConfigError, match="video token grid"):
    task_masks.task_table(("frame_prediction",), (4, 4))
  with pytest.raises(ConfigError, match="given_frames=3"):
    task_masks.task_table(("frame_prediction",), GRID, 3)
  with pytest.raises(ConfigError, match="choose from"):
    task_masks.task_table(("denoising",), GRID)
