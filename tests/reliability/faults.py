"""Shared by the fault tests: launching `tokgen` as a child process, reading what it wrote, restoring a state."""

import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests.helpers import QUICKSTART, cli_overrides
from tokgen_jax import checkpoint
from tokgen_jax import run as run_lib

TMP_SUFFIX = ".orbax-checkpoint-tmp"


def command(workdir: pathlib.Path, **overrides) -> list[str]:
  return [sys.executable, "-m", "tokgen_jax.main", f"--config={QUICKSTART}", f"--workdir={workdir}",
          *cli_overrides(**overrides)]


# Children of one test session share JAX's persistent compilation cache: a rerun after a kill loads the train step
# it compiled before instead of compiling it again (the same executable, so results stay bit-identical).
_COMPILE_CACHE = tempfile.mkdtemp(prefix="tokgen_reliability_jax_cache_")
atexit.register(shutil.rmtree, _COMPILE_CACHE, ignore_errors=True)


def child_env(devices: int = 1, **extra) -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_COMPILATION_CACHE_DIR=_COMPILE_CACHE, **extra)


def run_child(workdir: pathlib.Path, **overrides) -> subprocess.CompletedProcess:
  result = subprocess.run(command(workdir, **overrides), env=child_env(), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result


def last_by_step(path: pathlib.Path, key: str) -> dict[int, object]:
  """`{step: record[key]}` of a JSON-lines file, the last record of each step winning (a resumed run repeats the
  steps after its checkpoint)."""
  values = {}
  for line in path.read_text().splitlines():
    record = json.loads(line)
    if key in record:
      values[record["step"]] = record[key]
  return values


def metrics_size(workdir: pathlib.Path) -> int:
  path = workdir / "metrics.jsonl"
  return path.stat().st_size if path.exists() else 0


def logged_steps(workdir: pathlib.Path, after_byte: int = 0) -> list[int]:
  """Steps logged to metrics.jsonl (from byte `after_byte` on: what a run started then has logged)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  steps = []
  for line in path.read_bytes()[after_byte:].decode().splitlines():
    if line.endswith("}"):  # not the line being written right now
      steps.append(json.loads(line)["step"])
  return steps


def temporary_dirs(workdir: pathlib.Path) -> list[str]:
  directory = workdir / "checkpoints"
  return sorted(p.name for p in directory.iterdir() if TMP_SUFFIX in p.name) if directory.is_dir() else []


def wait_for(condition, process: subprocess.Popen, timeout: float = 240.0, poll: float = 0.002) -> bool:
  """Poll `condition()` until it holds (True) or the process exits first (False)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    if process.poll() is not None:
      return False
    time.sleep(poll)
  raise TimeoutError("the child neither reached the condition nor exited")


def saved_steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def restore_state(workdir: pathlib.Path, config, step: int):
  """The full TrainState at `step` of `workdir`, read only (nothing is cleaned or moved), after the same integrity
  check a resuming run makes."""
  step_dir = workdir / "checkpoints" / str(step)
  checkpoint.check_file_sizes(step_dir)
  return ocp.StandardCheckpointer().restore(step_dir / "state", run_lib.setup(config, str(workdir)).abstract_state)


def assert_states_equal(first, second) -> None:
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(first), jax.device_get(second))
