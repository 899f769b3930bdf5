"""The `tokgen` command line: flags, config overrides, SIGTERM handling and error messages."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.helpers import QUICKSTART, cli_overrides

_ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


def _tokgen(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", "tokgen_jax.main", *args], env=_ENV, capture_output=True,
                        text=True, timeout=300, **kwargs)


def test_help_lists_the_flags():
  result = _tokgen("--help")
  assert result.returncode in (0, 1)  # absl exits 1 after printing help
  for flag in ("--config", "--workdir", "--mode", "--coordinator_address", "--num_processes", "--process_id"):
    assert flag in result.stdout


def test_unknown_config_key_is_rejected(tmp_path):
  result = _tokgen(f"--config={QUICKSTART}", f"--workdir={tmp_path}", "--config.modle.channels=4")
  assert result.returncode != 0
  assert "modle" in result.stderr


def test_config_error_exits_with_the_message(tmp_path):
  result = _tokgen(f"--config={QUICKSTART}", f"--workdir={tmp_path}", "--mode=eval")
  assert result.returncode == 1
  assert "no checkpoint in" in result.stderr and "Train first" in result.stderr


def test_sigterm_saves_the_current_step_and_exits_zero(tmp_path):
  command = [sys.executable, "-m", "tokgen_jax.main", f"--config={QUICKSTART}", f"--workdir={tmp_path}",
             *cli_overrides(total_steps=100000, log_every_steps=1, checkpoint_every_steps=100000)]
  process = subprocess.Popen(command, env=_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=120)[0]
  assert process.returncode == 0, output[-3000:]
  steps = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(steps) == 1 and int(steps[0]) >= 3
  last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
  assert int(steps[0]) >= last_logged
