"""Image and video grids of reconstructions and samples: PNG for images, MP4 and GIF for videos, written atomically
(`files.atomic_path`)."""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Sequence

import imageio.v3 as iio
import numpy as np

from tokgen_jax.data import files

GUTTER_PIXELS = 2
VIDEO_SUFFIXES = (".gif", ".mp4")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
  """[-1, 1] floats to uint8: clip (decoders overshoot), map -1 -> 0 and 1 -> 255, round to nearest."""
  unit = (np.clip(np.asarray(pixels, dtype=np.float32), -1.0, 1.0) + 1.0) / 2.0
  return np.round(unit * 255.0).astype(np.uint8)


def _as_rgb_video_column(column: np.ndarray, index: int, is_video: bool) -> np.ndarray:
  """Check one column and return it as `[N, T, H, W, 3]` (images get T = 1; gray is repeated to RGB)."""
  column = np.asarray(column)
  expected_ndim = 5 if is_video else 4
  if column.ndim != expected_ndim:
    layout = "[N, T, H, W, C] for a .gif/.mp4 path" if is_video else "[N, H, W, C] for an image path"
    raise ValueError(
        f"save_image_grid: column {index} has shape {column.shape}, expected {layout} "
        "(images go to .png, videos [N, T, H, W, C] to .gif or .mp4)."
    )
  if not is_video:
    column = column[:, None]
  channels = column.shape[-1]
  if channels == 1:
    column = np.repeat(column, 3, axis=-1)
  elif channels != 3:
    raise ValueError(f"save_image_grid: column {index} has {channels} channels; expected 1 (gray) or 3 (RGB).")
  return column


def _compose_grid(columns: list[np.ndarray]) -> np.ndarray:
  """Lay `[N, T, H, W, 3]` uint8 columns out as `[T, rows, cols, 3]` frames with white gutters between cells."""
  num_rows, frames, height, width = columns[0].shape[:4]
  num_columns = len(columns)
  grid_height = num_rows * height + (num_rows - 1) * GUTTER_PIXELS
  grid_width = num_columns * width + (num_columns - 1) * GUTTER_PIXELS
  grid = np.full((frames, grid_height, grid_width, 3), 255, dtype=np.uint8)
  for column_index, column in enumerate(columns):
    left = column_index * (width + GUTTER_PIXELS)
    for row in range(num_rows):
      top = row * (height + GUTTER_PIXELS)
      grid[:, top : top + height, left : left + width] = column[row]
  return grid


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
  """H.264 with yuv420p needs even sizes; pad with white rather than let the encoder rescale the grid."""
  pad_bottom = frames.shape[1] % 2
  pad_right = frames.shape[2] % 2
  return np.pad(frames, ((0, 0), (0, pad_bottom), (0, pad_right), (0, 0)), constant_values=255)


def _write_frames(path: str, frames: np.ndarray, fps: float) -> None:
  """Write `[T, H, W, 3]` uint8: PNG (T == 1) or an animated GIF / MP4 chosen by the suffix."""
  suffix = os.path.splitext(path)[1].lower()
  with files.atomic_path(path) as temporary:
    if suffix == ".gif":
      # loop=0 repeats forever; duration is per frame in milliseconds.
      iio.imwrite(temporary, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    elif suffix == ".mp4":
      # imageio-ffmpeg starts an ffmpeg subprocess; JAX (if loaded) warns on any fork, but the child execs
      # ffmpeg at once and never touches JAX state, so the warning is noise here.
      with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        iio.imwrite(temporary, _pad_to_even(frames), extension=".mp4", fps=fps, macro_block_size=2)
    else:
      iio.imwrite(temporary, frames[0], extension=suffix or ".png")


def save_image_grid(
    path: str | os.PathLike,
    columns: Sequence[np.ndarray],
    *,
    max_rows: int = 8,
    fps: float = 8.0,
) -> None:
  """Save examples side by side: one row per example, one column per array (e.g. original | reconstruction).

  Args:
    path: `.png` for images; `.gif` (animated, looping) or `.mp4` (H.264) for videos. Parent directories are
      created and the file is replaced atomically.
    columns: arrays of the same shape, float in [-1, 1] (values outside are clipped): images `[N, H, W, C]`
      or, for .gif/.mp4, videos `[N, T, H, W, C]`; C is 1 or 3.
    max_rows: only the first `max_rows` examples are drawn.
    fps: frames per second of a video.

  Cells are separated by 2-pixel white gutters (none around the outside). MP4 grids with an odd size get one
  extra white row/column, since the encoder needs even sizes.
  """
  path = os.fspath(path)
  if not columns:
    raise ValueError("save_image_grid: columns is empty; pass at least one [N, H, W, C] array.")
  is_video = os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES
  checked = [_as_rgb_video_column(column, index, is_video) for index, column in enumerate(columns)]
  for index, column in enumerate(checked[1:], start=1):
    if column.shape != checked[0].shape:
      raise ValueError(
          f"save_image_grid: column {index} has shape {np.shape(columns[index])} but column 0 has "
          f"{np.shape(columns[0])}; resize or crop so all columns match."
      )
  rows = [_to_uint8(column[:max_rows]) for column in checked]
  _write_frames(path, _compose_grid(rows), fps)


def save_examples(directory: pathlib.Path, stem: str, columns: list[np.ndarray], max_rows: int, fps: float) -> None:
  """Examples side by side, one row each (e.g. original | reconstruction, or reference | samples). Images: one
  PNG grid. Videos: the same as MP4 and GIF, plus a PNG strip with one column per frame and the columns of each
  clip as rows one above the other."""
  first = columns[0]
  if first.ndim == 4:
    save_image_grid(directory / f"{stem}.png", columns, max_rows=max_rows)
    return
  for suffix in VIDEO_SUFFIXES:
    save_image_grid(directory / f"{stem}{suffix}", columns, max_rows=max_rows, fps=fps)
  rows = min(max_rows, len(first))
  interleaved = np.stack([c[:rows] for c in columns], axis=1).reshape((len(columns) * rows,) + first.shape[1:])
  save_image_grid(
      directory / f"{stem}_frames.png", list(interleaved.transpose(1, 0, 2, 3, 4)), max_rows=len(columns) * rows
  )
