"""Metric writer, progress line, atomic JSON, and image/video grids."""

import json
import math
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from tokgen_jax import guard
from tokgen_jax.data import files
from tokgen_jax.writers import MetricWriter, format_progress, write_json_atomic


def read_jsonl(path):
  with open(path, encoding="utf-8") as file:
    return [json.loads(line) for line in file]


def read_tensorboard_scalars(logdir):
  """{tag: [(step, value), ...]} from every event file in `logdir`.

  TFRecord framing: uint64 length, uint32 length CRC, payload (an Event proto), uint32 payload CRC.
  """
  scalars = {}
  for filename in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, filename), "rb") as file:
      data = file.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      payload = data[offset + 12 : offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


# ---------------------------------------------------------------------------------------------------------------
# MetricWriter


def test_jsonl_lines_parse_and_match(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    writer.write(1, {"loss": 0.5, "lr": np.float32(1e-3)})
    writer.write(2, {"loss": np.array(0.25), "accuracy": np.int64(1)})
  lines = read_jsonl(tmp_path / "metrics.jsonl")
  assert lines[0] == {"step": 1, "loss": 0.5, "lr": pytest.approx(1e-3)}
  assert lines[1] == {"step": 2, "loss": 0.25, "accuracy": 1.0}


def test_jsonl_is_flushed_before_close(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write(7, {"loss": 1.0})
  # Read while the writer is still open: a run killed here keeps the line.
  assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 7, "loss": 1.0}]
  writer.close()


def test_appending_across_writers_keeps_earlier_lines(tmp_path):
  with MetricWriter(tmp_path) as first:
    first.write(1, {"loss": 1.0})
  with MetricWriter(tmp_path) as resumed:
    resumed.write(2, {"loss": 0.5})
  assert [line["step"] for line in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_non_finite_values_are_valid_json_strings(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write(3, {"loss": float("nan"), "grad_norm": np.float32("inf"), "neg": -math.inf, "ok": 2.0})
  raw = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" not in raw and "Infinity" not in raw
  (line,) = read_jsonl(tmp_path / "metrics.jsonl")
  assert line == {"step": 3, "loss": "nan", "grad_norm": "inf", "neg": "-inf", "ok": 2.0}
  assert math.isnan(float(line["loss"])) and float(line["neg"]) == -math.inf


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write(10, {"loss": 0.75, "lr": 3e-4})
    writer.write(20, {"loss": 0.5})
  logdir = tmp_path / "tensorboard"
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(logdir))
  scalars = read_tensorboard_scalars(logdir)
  assert scalars["loss"] == [(10, 0.75), (20, 0.5)]
  assert scalars["lr"] == [(10, pytest.approx(3e-4))]


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "process1"
  with MetricWriter(workdir, enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
  assert not workdir.exists()


def test_bad_scalars_raise_clear_errors(tmp_path):
  with MetricWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="'step'"):
      writer.write(1, {"step": 1.0})
    with pytest.raises(TypeError, match="'per_example'"):
      writer.write(1, {"per_example": np.ones(3)})


# ---------------------------------------------------------------------------------------------------------------
# format_progress


def test_format_progress_order_and_number_formats():
  line = format_progress(
      120,
      2000,
      {"loss": 0.12341, "lr": 3e-4, "steps/s": 4.21, "examples/s": 67.4, "data_wait_frac": 0.031},
  )
  assert line == "step 120/2000 | loss 0.1234 | lr 3.0e-04 | steps/s 4.21 | examples/s 67.4 | data_wait 3.1%"


def test_format_progress_large_integer_and_non_finite_values():
  line = format_progress(5, 10, {"tokens/s": 1234567.0, "count": np.int64(42), "loss": float("nan"), "z": 0.0})
  assert line == "step 5/10 | tokens/s 1.2e+06 | count 42 | loss nan | z 0"


# ---------------------------------------------------------------------------------------------------------------
# write_json_atomic


def test_write_json_atomic_round_trips_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "nested" / "dir" / "config.json"
  write_json_atomic(path, {"a": 1, "b": [1.5, np.float32(2.0)], "c": np.arange(2), "bad": float("nan")})
  write_json_atomic(path, {"a": 2})  # replacing an existing file
  assert json.loads(path.read_text()) == {"a": 2}
  assert os.listdir(path.parent) == ["config.json"]
  write_json_atomic(path, {"b": [1.5, np.float32(2.0)], "c": np.arange(2), "bad": float("nan")})
  assert json.loads(path.read_text()) == {"b": [1.5, 2.0], "c": [0, 1], "bad": "nan"}


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
  path = tmp_path / "state.json"
  write_json_atomic(path, {"version": 1})
  with pytest.raises(TypeError):
    write_json_atomic(path, {"version": object()})
  assert json.loads(path.read_text()) == {"version": 1}
  assert os.listdir(tmp_path) == ["state.json"]


def test_upload_puts_every_written_line_in_the_bucket_within_the_interval(gcs_bucket):
  """Before each checkpoint the trainer uploads its logs whatever the once-a-second interval, so a kill after the
  checkpoint loses no line of a step the resumed run will not repeat."""
  workdir = gcs_bucket + "/run"
  writer, record = MetricWriter(workdir), guard.BatchRecord(workdir, enabled=True)
  for step in (1, 2):
    writer.write(step, {"loss": float(step)})
    record.write(step, {"x": np.full((2,), step)})
    for mirror in (writer._mirror, record._mirror):  # pylint: disable=protected-access
      mirror.min_interval_s = 3600.0  # after the first upload, the next lines wait out a long interval
  stored = lambda name: [json.loads(line)["step"] for line in files.as_path(f"{workdir}/{name}").read_text().splitlines()]
  assert stored("metrics.jsonl") == [1] and stored("batches.jsonl") == [1]
  writer.upload()
  record.upload()
  assert stored("metrics.jsonl") == [1, 2] and stored("batches.jsonl") == [1, 2]
  writer.close()
  record.close()
