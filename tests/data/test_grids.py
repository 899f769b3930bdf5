"""Sample grids: pixel layout, gray to RGB, video frame counts (MP4 and GIF), and shape errors."""

import os

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from tokgen_jax.data.grids import save_image_grid




def test_image_grid_pixel_layout(tmp_path):
  """Two examples, two columns of 2x2 images: exact pixels, 2-pixel white gutters, clipping, first max_rows."""
  originals = np.full((3, 2, 2, 3), -1.0, dtype=np.float32)  # black
  originals[1] = 1.0  # white
  reconstructions = np.zeros((3, 2, 2, 3), dtype=np.float32)
  reconstructions[0, :, :, 0] = 5.0  # overshoot clips to 255 in red
  reconstructions[0, :, :, 1:] = -1.0
  reconstructions[1, 0, 1] = [-1.0, 1.0, -1.0]  # one green pixel, rest mid gray
  path = tmp_path / "grids" / "recon.png"
  save_image_grid(path, [originals, reconstructions], max_rows=2)

  grid = np.asarray(Image.open(path))
  assert grid.dtype == np.uint8 and grid.shape == (2 * 2 + 2, 2 * 2 + 2, 3)
  gray = 128  # round(0.5 * 255)
  expected = np.full((6, 6, 3), 255, dtype=np.uint8)  # gutters are white
  expected[0:2, 0:2] = 0
  expected[4:6, 0:2] = 255
  expected[0:2, 4:6] = [255, 0, 0]
  expected[4:6, 4:6] = gray
  expected[4, 5] = [0, 255, 0]
  np.testing.assert_array_equal(grid, expected)
  assert os.listdir(path.parent) == ["recon.png"]


def test_grayscale_column_is_repeated_to_rgb(tmp_path):
  gray = np.linspace(-1, 1, 2 * 4 * 4).reshape(2, 4, 4, 1)
  save_image_grid(tmp_path / "gray.png", [gray])
  grid = np.asarray(Image.open(tmp_path / "gray.png"))
  assert grid.shape == (10, 4, 3)
  np.testing.assert_array_equal(grid[..., 0], grid[..., 2])


# Decoding MP4 starts an ffmpeg subprocess, which trips JAX's fork warning when JAX is loaded by other tests.
@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_video_grid_frame_count(tmp_path, suffix):
  rng = np.random.default_rng(0)
  frames = 5
  videos = rng.uniform(-1, 1, (3, frames, 16, 16, 3)).astype(np.float32)
  path = tmp_path / f"samples{suffix}"
  save_image_grid(path, [videos, videos], max_rows=2)
  decoded = iio.imread(path, index=None, extension=suffix)
  assert decoded.shape == (frames, 2 * 16 + 2, 2 * 16 + 2, 3)
  assert os.listdir(tmp_path) == [path.name]


def test_gif_frames_hold_the_video(tmp_path):
  """GIF is lossless for few colors: the middle frame decodes to the exact input pixels."""
  videos = np.full((1, 3, 12, 12, 3), -1.0, dtype=np.float32)
  videos[0, 1, 4:8, 4:8] = 1.0
  save_image_grid(tmp_path / "square.gif", [videos])
  decoded = iio.imread(tmp_path / "square.gif", index=None)
  np.testing.assert_array_equal(decoded[1][..., :3], ((videos[0, 1] + 1) * 127.5).astype(np.uint8))


def test_image_grid_rejects_mismatched_inputs(tmp_path):
  with pytest.raises(ValueError, match="column 1"):
    save_image_grid(tmp_path / "a.png", [np.zeros((2, 4, 4, 3)), np.zeros((2, 5, 4, 3))])
  with pytest.raises(ValueError, match=".gif or .mp4"):
    save_image_grid(tmp_path / "a.png", [np.zeros((2, 3, 4, 4, 3))])
  with pytest.raises(ValueError, match="channels"):
    save_image_grid(tmp_path / "a.png", [np.zeros((2, 4, 4, 2))])
  assert os.listdir(tmp_path) == []
