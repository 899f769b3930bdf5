"""Topology change (issue 8, item 5): a checkpoint moves between 1 process x 8 devices and 2 processes x 2 devices.

What it proves, with one workdir through three phases of `topology_worker.py` (each its own JAX process or
processes, CPU devices, gloo collectives):
1. 1 process x 8 devices (mesh fsdp=8) trains 3 steps with `trainer.run` and checkpoints step 3; the checkpoint read
   back there is the reference.
2. 2 processes x 2 devices (mesh fsdp=2 x tensor=2) restore step 3 with `Manager.restore` and the abstract state of
   `run.setup` on their mesh: every leaf (params, Adam moments, EMA, step, rng) carries that mesh's sharding,
   and every shard each process holds equals the reference slice at `shard.index`. The layouts really differ (conv
   kernels split 8 ways on fsdp before, 2 x 2 on fsdp and tensor after), so Orbax resharded. They then add 1 to
   every leaf in a jitted function on their mesh and save the result as step 4 (each process writes its shards).
3. And back: 1 process x 8 devices restores step 4 with its fsdp=8 shardings; every leaf equals the reference + 1.
The data iterator moves too: Grain names its files by process count (`process_0-of-1.json`), and
`checkpoint.Manager.restore` applies the saved position under another count, since `streams.global_stream` makes
it a count of global batches; each phase checks the restored position.
"""

import json
import pathlib
import subprocess
import sys
import time

import portpicker
import pytest

from tests.reliability import faults
from tests.reliability.topology_worker import STEPS, load_reference

pytestmark = pytest.mark.slow  # launches topology_worker processes (jax.distributed)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


def _command(phase: str, workdir: pathlib.Path, *flags: str) -> list[str]:
  return [sys.executable, "-m", "tests.reliability.topology_worker", phase, str(workdir), *flags]


def _launch(phase: str, workdir: pathlib.Path, devices: int, flags: list[list[str]]) -> None:
  """One worker process per entry of `flags`; all must exit 0 within TIMEOUT_S. When one fails the others are
  killed at once (they would wait for it at a barrier), and the output of each is shown."""
  logs = [workdir / f"log_{phase}_{i}.txt" for i in range(len(flags))]
  processes = []
  for log, extra in zip(logs, flags):
    with open(log, "w") as out:
      processes.append(subprocess.Popen(_command(phase, workdir, *extra), cwd=ROOT, env=faults.child_env(devices), stdout=out,
                                        stderr=subprocess.STDOUT))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in processes):
        break
      time.sleep(0.2)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
      p.wait()
  for index, (process, log) in enumerate(zip(processes, logs)):
    assert process.returncode == 0, (f"{phase} worker {index} exited {process.returncode} (negative: killed after a "
                                     f"failure or the {TIMEOUT_S} s timeout):\n{log.read_text()[-4000:]}")


def _one_process(phase: str, workdir: pathlib.Path) -> dict:
  _launch(phase, workdir, 8, [[]])
  return json.loads((workdir / f"report_{phase}_0.json").read_text())


def _two_processes(phase: str, workdir: pathlib.Path) -> list[dict]:
  flags = ["--coordinator", f"127.0.0.1:{portpicker.pick_unused_port()}", "--num_processes", "2"]
  _launch(phase, workdir, 2, [flags + ["--process_id", str(i)] for i in range(2)])
  return [json.loads((workdir / f"report_{phase}_{i}.json").read_text()) for i in range(2)]


def _assert_resharded(before: dict, after: dict) -> None:
  """Some sharded leaves change both their partition spec and their per-device shard shape."""
  changed = [path for path, (spec, shape) in after["layout"].items() if [spec, shape] != before["layout"][path]]
  kernels = [path for path in changed if path.startswith(".params") and path.endswith("['kernel']")]
  assert len(kernels) >= 10, changed


def test_checkpoint_moves_between_one_process_x8_and_two_processes_x2(tmp_path):
  trained = _one_process("train", tmp_path)
  assert trained["process_count"] == 1 and trained["local_devices"] == 8
  assert trained["sharded_leaves"] >= 100 and trained["sharded_bytes"] > 0.9  # fsdp=8 really splits the state
  assert trained["shards"] == 8 * trained["leaves"]
  reference = load_reference(tmp_path / f"ref_{STEPS}.npz")
  assert int(reference[".step"]) == STEPS and int(reference[".opt_state['autoencoder'][1][0].count"]) == STEPS

  resharded = _two_processes("reshard", tmp_path)
  for report in resharded:
    assert report["process_count"] == 2 and report["local_devices"] == 2
    assert report["leaves"] == trained["leaves"] and report["shards"] == 2 * report["leaves"]
    assert report["sharded_leaves"] > trained["sharded_leaves"] and report["sharded_bytes"] > 0.9
    _assert_resharded(trained, report)
  data_files = sorted((tmp_path / "checkpoints" / str(STEPS + 1) / "data").glob("process_*"))
  assert [p.name for p in data_files] == ["process_0-of-2.json", "process_1-of-2.json"]  # Grain: per process count
  assert all(json.loads(p.read_text()) == {"next_index": STEPS + 1} for p in data_files)

  restored = _one_process("restore", tmp_path)
  assert restored["leaves"] == trained["leaves"] and restored["layout"] == trained["layout"]
  _assert_resharded(resharded[0], restored)
