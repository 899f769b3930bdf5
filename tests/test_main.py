"""The `tokgen` command line: flags, config overrides and error messages (SIGTERM: tests/reliability)."""

import os
import subprocess
import sys

import pytest

from tests.helpers import QUICKSTART

pytestmark = pytest.mark.slow  # every test starts a `tokgen` process

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
