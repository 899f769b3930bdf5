"""Everything the trainer writes for people to read: metrics (JSON lines + TensorBoard), progress lines, JSON
files (image and video grids of reconstructions and samples: `data.grids`).

Only JAX process 0 should write; the trainer passes `enabled=jax.process_index() == 0` so this module stays free
of JAX. Files that are replaced as a whole (JSON, images, videos) are written atomically (`files.atomic_path`: a
rename on local disk, one object upload on `gs://`), so a crash or preemption never leaves a truncated file
behind. The JSON-lines log and TensorBoard events are appended in a `files.MirroredDirectory`: in place on local
disk, uploaded whole (at most once a second and on close) to a `gs://` workdir.

Non-finite numbers: JSON has no NaN/Infinity, so they are written as the strings "nan", "inf" and "-inf".
Unlike `null` this keeps which one happened (a loss that overflowed vs. one that became NaN), and
`float(value)` turns each back into the number.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tokgen_jax.data import files

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"


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


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Write `obj` as indented JSON to `path` atomically, creating parent directories.

  numpy/jax values are converted; NaN/inf become "nan"/"inf"/"-inf" so the file stays valid JSON.
  """
  files.write_text(path, json.dumps(_to_json_compatible(obj), indent=2, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Metric writer


def drop_partial_last_line(path: str | os.PathLike) -> None:
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
  step it logged (on `gs://`: every line uploaded up to the last second). Re-opening the same workdir (a resumed
  run) appends after the earlier lines. With `enabled=False` (JAX processes other than 0) nothing is created or
  written.
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
    self.enabled = enabled
    self.metrics_path = files.as_path(workdir) / METRICS_FILENAME
    self._jsonl = None
    self._tensorboard = None
    self._mirror = None
    if not enabled:
      return
    self._mirror = files.MirroredDirectory(workdir)
    local_metrics = self._mirror.fetch(METRICS_FILENAME)
    drop_partial_last_line(local_metrics)
    self._jsonl = open(local_metrics, "a", encoding="utf-8")
    # Imported here: non-writing processes never pay for the protobuf import.
    from tensorboardX import SummaryWriter

    self._tensorboard = SummaryWriter(logdir=os.fspath(self._mirror.local / TENSORBOARD_DIRNAME))

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
    self._mirror.sync()

  def upload(self) -> None:
    """Upload the logs written so far (a gs:// workdir), whatever the interval (see `BatchRecord.upload`)."""
    if self.enabled and self._mirror is not None:
      self._mirror.sync(force=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None
    if self._mirror is not None:
      self._mirror.close()
      self._mirror = None

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
