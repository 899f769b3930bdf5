"""Two JAX processes x two CPU devices on 127.0.0.1 (gloo) train, checkpoint and resume through the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from tests.helpers import QUICKSTART, cli_overrides

pytestmark = pytest.mark.slow  # every test launches `tokgen` processes (jax.distributed)


def _launch(workdir, total_steps):
  port = portpicker.pick_unused_port()
  processes = []
  for process_id in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               TOKGEN_COORDINATOR=f"127.0.0.1:{port}", TOKGEN_NUM_PROCESSES="2", TOKGEN_PROCESS_ID=str(process_id))
    command = [sys.executable, "-m", "tokgen_jax.main", f"--config={QUICKSTART}", f"--workdir={workdir}",
               *cli_overrides(total_steps=total_steps, eval_every_steps=total_steps)]
    processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  return outputs


def test_two_processes_train_evaluate_and_resume(tmp_path):
  outputs = _launch(tmp_path, total_steps=4)
  assert "step 4/4" in outputs[0] and "step 4/4" not in outputs[1]  # only process 0 prints and writes
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [2, 4]
  assert json.loads((tmp_path / "eval" / "step_4.json").read_text())["num_examples"] == 88
  outputs = _launch(tmp_path, total_steps=6)  # resumes from step 4 on both processes
  assert "step 6/6" in outputs[0] and "step 2/6" not in outputs[0]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "6"]


def _losses(workdir):
  return [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
  """2 processes x 2 devices and 1 process x 4 devices see the same global batches (`streams.global_stream`)
  and the same 4-device mesh, so they log the same losses."""
  _launch(tmp_path / "two", total_steps=4)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  command = [sys.executable, "-m", "tokgen_jax.main", f"--config={QUICKSTART}", f"--workdir={tmp_path / 'one'}",
             *cli_overrides(total_steps=4, eval_every_steps=0, log_every_steps=1)]
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  two = _losses(tmp_path / "two")
  one = _losses(tmp_path / "one")
  assert len(two) == 2 and len(one) == 4
  # The two-process run logs the mean of steps (1, 2) and (3, 4).
  np.testing.assert_allclose(two, [np.mean(one[:2]), np.mean(one[2:])], rtol=1e-5)
