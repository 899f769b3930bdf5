"""Two JAX processes x two CPU devices on 127.0.0.1 (gloo) train, checkpoint and resume through the CLI, and
encode a dataset into one latent part each."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import portpicker
import pytest

from tests.helpers import (QUICKSTART, TINY_SHAPES_TOKENIZER, cli_overrides, create_bucket, set_fields,
                           tiny_shapes_tokenizer)
from tokgen_jax import trainer
from tokgen_jax.config import load_experiment
from tokgen_jax.configs import data as data_presets
from tokgen_jax.data import files
from tokgen_jax.data import latents as latent_data

pytestmark = pytest.mark.slow  # every test launches `tokgen` processes (jax.distributed)


def _quickstart(total_steps):
  return [f"--config={QUICKSTART}", *cli_overrides(total_steps=total_steps, eval_every_steps=total_steps)]


def _launch(workdir, flags):
  port = portpicker.pick_unused_port()
  processes = []
  for process_id in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               TOKGEN_COORDINATOR=f"127.0.0.1:{port}", TOKGEN_NUM_PROCESSES="2", TOKGEN_PROCESS_ID=str(process_id))
    command = [sys.executable, "-m", "tokgen_jax.main", f"--workdir={workdir}", *flags]
    # Output to files, not pipes: a pipe nobody reads yet (the second process's, while the first is awaited)
    # fills, blocks its writer mid-collective and hangs both.
    log = tempfile.TemporaryFile("w+")
    processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log))
  outputs = []
  for process, log in processes:
    process.wait(timeout=300)
    log.seek(0)
    outputs.append(log.read())
    assert process.returncode == 0, outputs[-1][-3000:]
  return outputs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """One 4-step run of 2 processes x 2 devices: its workdir, outputs and the records it logged (copied before any
  test resumes it)."""
  workdir = tmp_path_factory.mktemp("two_processes")
  outputs = _launch(workdir, _quickstart(total_steps=4))
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return workdir, outputs, records


def test_two_processes_train_evaluate_and_resume(two_process_run):
  workdir, outputs, records = two_process_run
  assert "step 4/4" in outputs[0] and "step 4/4" not in outputs[1]  # only process 0 prints and writes
  assert [r["step"] for r in records if "loss" in r] == [2, 4]
  assert json.loads((workdir / "eval" / "step_4.json").read_text())["num_examples"] == 88
  outputs = _launch(workdir, _quickstart(total_steps=6))  # resumes from step 4 on both processes
  assert "step 6/6" in outputs[0] and "step 2/6" not in outputs[0]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "6"]


def _losses(workdir):
  return [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_processes_match_one_process_with_the_same_devices(two_process_run, tmp_path):
  """2 processes x 2 devices and 1 process x 4 devices see the same global batches (`streams.global_stream`)
  and the same 4-device mesh, so they log the same losses."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  command = [sys.executable, "-m", "tokgen_jax.main", f"--config={QUICKSTART}", f"--workdir={tmp_path / 'one'}",
             *cli_overrides(total_steps=4, eval_every_steps=0, log_every_steps=1)]
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  two = [r["loss"] for r in two_process_run[2] if "loss" in r]
  one = _losses(tmp_path / "one")
  assert len(two) == 2 and len(one) == 4
  # The two-process run logs the mean of steps (1, 2) and (3, 4).
  np.testing.assert_allclose(two, [np.mean(one[:2]), np.mean(one[2:])], rtol=1e-5)


def _shapes_flags(prefix: str) -> list[str]:
  data = data_presets.shapes(16, num_shapes=1, train_examples=48, eval_examples=8)
  return [f"--config.{prefix}.{key}={data[key]}" for key in ("name", "image_size", "eval_image_size")]


def test_two_processes_encode_one_part_each_and_read_as_one_process_writes(tmp_path):
  """--mode=encode on 2 processes: each encodes its contiguous half into its own part; read back, the split is the
  one a single process writes."""
  tokenizer_dir = tmp_path / "tokenizer"
  trainer.run(tiny_shapes_tokenizer(), str(tokenizer_dir), "train")
  generator = [f"--config=experiments/ar_shapes.py:local,tokenizer_workdir={tokenizer_dir}",
               *[f"--config.tokenizer.experiment.{key}={value}" for key, value in TINY_SHAPES_TOKENIZER.items()],
               *_shapes_flags("tokenizer.experiment.data"), *_shapes_flags("tokenize.data"),
               "--config.tokenize.batch_size=8", "--config.tokenize.shard_size=10",
               "--config.tokenize.text_encoder=False", "--mode=encode"]
  _launch(tmp_path / "two", generator)
  single = set_fields(load_experiment(f"experiments/ar_shapes.py:local,tokenizer_workdir={tokenizer_dir}"), {
      "tokenizer.experiment": tiny_shapes_tokenizer(), "tokenize.data": tiny_shapes_tokenizer().data,
      "tokenize.batch_size": 8, "tokenize.shard_size": 10, "tokenize.text_encoder": False, "eval.batch_size": 8})
  trainer.run(single, str(tmp_path / "one"), "encode")
  for split, count in (("train", 48), ("eval", 8)):
    two = latent_data.LatentSource(tmp_path / "two" / "tokens", split)
    one = latent_data.LatentSource(tmp_path / "one" / "tokens", split)
    assert (two.metadata["num_parts"], one.metadata["num_parts"]) == (2, 1) and len(two) == len(one) == count
    for index in range(count):
      assert two.caption(index) == one.caption(index)
      for name in ("tokens", "label"):
        np.testing.assert_array_equal(two[index][name], one[index][name])


def test_two_processes_share_a_bucket_workdir(two_process_run, gcs_server):
  """The same run with its workdir in a bucket (the emulator): multi-host Orbax checkpoints there, metrics from
  process 0 only, the same losses as on local disk, and a resume from the bucket on both processes."""
  workdir = files.as_path(create_bucket(gcs_server.url) + "/run")
  outputs = _launch(workdir, _quickstart(total_steps=4))
  assert "step 4/4" in outputs[0] and "step 4/4" not in outputs[1]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["loss"] for r in records if "loss" in r] == [r["loss"] for r in two_process_run[2] if "loss" in r]
  saved = files.relative_files(workdir / "checkpoints" / "4" / "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(saved)  # each process saved its input position
  outputs = _launch(workdir, _quickstart(total_steps=6))
  assert "step 6/6" in outputs[0] and "step 2/6" not in outputs[0]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "6"]
