"""Everything the trainer writes for people to read: metrics (JSON lines + TensorBoard), progress lines, JSON
files, and image/video grids of reconstructions and samples.

Only JAX process 0 should write; the trainer passes `enabled=jax.process_index() == 0` so this module stays free
of JAX. Files that are replaced as a whole (JSON, images, videos) are written atomically: to a temporary file in
the same directory, then `os.replace`, so a crash or preemption never leaves a truncated file behind.

Non-finite numbers: JSON has no NaN/Infinity, so they are written as the strings "nan", "inf" and "-inf".
Unlike `null` this keeps which one happened (a loss that overflowed vs. one that became NaN), and
`float(value)` turns each back into the number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import imageio.v3 as iio
import numpy as np

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
GUTTER_PIXELS = 2
VIDEO_SUFFIXES = (".gif", ".mp4")


# ---------------------------------------------------------------------------------------------------------------
# JSON values


def _json_float(value: float) -> float | str:
    """A float JSON can hold: finite floats unchanged, NaN/inf as the strings "nan", "inf", "-inf"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def _scalar_to_float(name: str, value: Any) -> float:
    """Python, numpy and jax scalars (or one-element arrays) to a Python float."""
    try:
        return float(np.asarray(value).reshape(()))
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"metric {name!r} must be a number or one-element array, got {type(value).__name__} {value!r}; "
            "reduce it (e.g. with .mean()) before writing."
        ) from error


def _to_json_compatible(obj: Any) -> Any:
    """Recursively turn numpy/jax values into Python ones and non-finite floats into strings."""
    if isinstance(obj, Mapping):
        return {str(key): _to_json_compatible(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json_compatible(value) for value in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _json_float(float(obj))
    if hasattr(obj, "__array__"):  # numpy and jax arrays
        return _to_json_compatible(np.asarray(obj).tolist())
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Atomic files


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success move it over `path`, on failure delete it.

    The temporary name keeps the final extension so format-sniffing writers (imageio, PIL) still see it, and
    lives in the same directory so `os.replace` is a rename within one filesystem, which is atomic.
    """
    path = os.fspath(path)
    directory, filename = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    stem, suffix = os.path.splitext(filename)
    temporary = os.path.join(directory, f".{stem}.{uuid.uuid4().hex}.tmp{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically, creating parent directories.

    numpy/jax values are converted; NaN/inf become "nan"/"inf"/"-inf" so the file stays valid JSON.
    """
    text = json.dumps(_to_json_compatible(obj), indent=2, allow_nan=False) + "\n"
    with _atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            # Data on disk before the rename, so a power loss cannot leave the new name with empty content.
            os.fsync(file.fileno())


# ---------------------------------------------------------------------------------------------------------------
# Metric writer


def drop_partial_last_line(path: str) -> None:
    """Cut a line a killed run left half-written, so appended lines stay one JSON record each."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as file:
        content = file.read()
        if not content.endswith(b"\n"):
            file.truncate(content.rfind(b"\n") + 1)


class MetricWriter:
    """Writes scalars per step to `workdir/metrics.jsonl` and to TensorBoard events in `workdir/tensorboard/`.

    Each `write` appends one line `{"step": step, **scalars}` and flushes both sinks, so a killed run keeps every
    step it logged. Re-opening the same workdir (a resumed run) appends after the earlier lines.
    With `enabled=False` (JAX processes other than 0) nothing is created or written.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
        self.enabled = enabled
        self.metrics_path = os.path.join(os.fspath(workdir), METRICS_FILENAME)
        self._jsonl = None
        self._tensorboard = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        drop_partial_last_line(self.metrics_path)
        self._jsonl = open(self.metrics_path, "a", encoding="utf-8")
        # Imported here: non-writing processes never pay for the protobuf import.
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIRNAME))

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if "step" in scalars:
            raise ValueError("scalars must not contain the key 'step': it is the write() step argument.")
        values = {name: _scalar_to_float(name, value) for name, value in scalars.items()}
        record = {"step": int(step), **{name: _json_float(value) for name, value in values.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tensorboard.add_scalar(name, value, global_step=int(step))
        self._tensorboard.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Progress line


def _format_number(value: Any) -> str:
    """Compact: integers as is, 4 significant digits in [1e-3, 1e5), scientific outside (lr 3.0e-04)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(np.asarray(value).reshape(()))
    if number == 0.0 or not math.isfinite(number):
        return f"{number:g}"
    if 1e-3 <= abs(number) < 1e5:
        return f"{number:.4g}"
    return f"{number:.1e}"


def format_progress(step: int, total_steps: int, scalars: Mapping[str, Any]) -> str:
    """One log line: `step 120/2000 | loss 0.1234 | lr 3.0e-04 | steps/s 4.21 | data_wait 3.1%`.

    Keys appear in the given order; `data_wait_frac` (fraction of time spent waiting on input) prints as a
    percentage named `data_wait`.
    """
    parts = [f"step {int(step)}/{int(total_steps)}"]
    for name, value in scalars.items():
        if name == "data_wait_frac":
            parts.append(f"data_wait {100.0 * float(np.asarray(value)):.1f}%")
        else:
            parts.append(f"{name} {_format_number(value)}")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Image and video grids


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
    with _atomic_path(path) as temporary:
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
