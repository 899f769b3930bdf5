"""Damaged checkpoints, checkpoints of another model, and a disk that fills while saving.

A truncated, deleted or emptied file in the newest step: the rerun warns naming the step and the file, moves the
step whole to checkpoints_damaged/ (bytes unchanged), resumes from the previous step and finishes. A checkpoint
whose shapes do not fit the model: ConfigError naming the parameter, nothing moved. ENOSPC while a save is written
in the background: CheckpointError naming the step and the last complete checkpoint, which stays intact and is
where the rerun resumes.
"""

import errno
import filecmp
import shutil

import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from tests.helpers import tiny_config
from tests.reliability import faults
from tokgen_jax import checkpoint, trainer
from tokgen_jax.errors import CheckpointError, ConfigError

# Each test trains through the trainer for several steps (multi-step runs: the slow tier).
pytestmark = pytest.mark.slow

SETTINGS = dict(total_steps=6, log_every_steps=1, checkpoint_every_steps=3, eval_every_steps=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run with checkpoints at steps 3 and 6 (a pristine copy per test)."""
  workdir = tmp_path_factory.mktemp("trained")
  trainer.run(tiny_config(**SETTINGS), str(workdir), "train")
  return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def _largest_state_file(step_dir):
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path):
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _delete(path):
  path.unlink()


def _empty(path):
  path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _delete, _empty])
def test_damaged_newest_step_falls_back_to_the_previous(run_copy, damage, capsys):
  step_dir = run_copy / "checkpoints" / "6"
  victim = _largest_state_file(step_dir)
  if damage is _empty:  # as if killed before the sizes were recorded: empty files are still caught
    (step_dir / checkpoint.FILE_SIZES).unlink()
  damage(victim)
  evidence = run_copy.parent / "evidence"
  shutil.copytree(step_dir, evidence)
  logged_before = faults.metrics_size(run_copy)
  trainer.run(tiny_config(**SETTINGS), str(run_copy), "train")
  warning = capsys.readouterr().out
  assert "checkpoint step 6" in warning and victim.name in warning
  moved = run_copy / checkpoint.DAMAGED_DIRNAME / "6"
  assert not filecmp.dircmp(moved, evidence).diff_files and sorted(p.name for p in moved.rglob("*")) == sorted(
      p.name for p in evidence.rglob("*"))  # the evidence is kept as it was
  assert faults.logged_steps(run_copy, logged_before) == [4, 5, 6]  # resumed from step 3
  assert faults.saved_steps(run_copy) == [3, 6]
  faults.restore_state(run_copy, tiny_config(**SETTINGS), 6)  # the new step 6 is whole


def test_eval_of_a_damaged_step_names_the_file_and_moves_nothing(run_copy):
  victim = _largest_state_file(run_copy / "checkpoints" / "6")
  _truncate(victim)
  with pytest.raises(CheckpointError, match=rf"checkpoint step 6: file .*{victim.name} has \d+ bytes, \d+ were written"):
    trainer.run(tiny_config(**SETTINGS), str(run_copy), "eval")
  assert faults.saved_steps(run_copy) == [3, 6]  # eval reports; only a resuming run moves a damaged step aside


def test_damage_twice_keeps_both_copies(run_copy):
  for _ in range(2):
    _truncate(_largest_state_file(run_copy / "checkpoints" / "6"))
    trainer.run(tiny_config(**SETTINGS), str(run_copy), "train")
  assert len(list((run_copy / checkpoint.DAMAGED_DIRNAME).iterdir())) == 2


def test_checkpoint_of_another_model_is_a_config_error(run_copy):
  wider = tiny_config(**SETTINGS, **{"model.channels": 16})
  with pytest.raises(ConfigError, match=r"does not fit the current model .*bias: saved \(8,\), model \(16,\)"):
    trainer.run(wider, str(run_copy), "train")
  assert faults.saved_steps(run_copy) == [3, 6] and not (run_copy / checkpoint.DAMAGED_DIRNAME).exists()


def test_disk_full_while_saving_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  """The JSON item of step 6 fails with ENOSPC in the background writer, as a full disk would fail any write."""
  original = json_checkpoint_handler.JsonCheckpointHandler._save_fn

  async def full_disk(self, item, directory):
    if "/6" in str(directory):
      raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await original(self, item, directory)

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_disk)
  config = tiny_config(**SETTINGS)
  with pytest.raises(CheckpointError, match=r"step 6 .*No space left on device.*last complete checkpoint, step 3, "
                                            r"is intact. Free disk space"):
    trainer.run(config, str(tmp_path), "train")
  assert faults.saved_steps(tmp_path) == [3]
  faults.restore_state(tmp_path, config, 3)
  monkeypatch.undo()
  logged_before = faults.metrics_size(tmp_path)
  trainer.run(config, str(tmp_path), "train")
  assert faults.logged_steps(tmp_path, logged_before) == [4, 5, 6]
  assert faults.saved_steps(tmp_path) == [3, 6] and faults.temporary_dirs(tmp_path) == []
