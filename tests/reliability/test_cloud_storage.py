"""A `gs://` workdir (the fake-gcs-server emulator, a real GCS JSON API): the quickstart trains there, is SIGKILLed
at a step and inside a checkpoint write, resumes and ends bit-identical to an uninterrupted local run;
`--mode=eval`, `--mode=sample` and `config.init_from` read their checkpoint from the bucket; a damaged newest step
in the bucket is set aside; a missing bucket, an unreachable endpoint and a bucket this account may only read fail
before any step, naming the path and the fix.
"""

import json
import signal
import subprocess

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.helpers import create_bucket, tiny_config
from tests.reliability import faults
from tokgen_jax.data import files

pytestmark = pytest.mark.slow  # launches and SIGKILLs `tokgen` child processes

TOTAL_STEPS = 12
SETTINGS = dict(total_steps=TOTAL_STEPS, log_every_steps=1, checkpoint_every_steps=3, eval_every_steps=0,
                keep_checkpoints=3, **{"guard.record_batches": True})
COMMIT_MARKER = "commit_success.txt"  # Orbax's last write of a step on GCS (which has no rename)


def _steps(workdir, committed: bool = True) -> list[int]:
  directory = workdir / "checkpoints"
  if not directory.exists():
    return []
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
  return sorted(s for s in steps if not committed or (directory / str(s) / COMMIT_MARKER).exists())


def _logged(workdir) -> list[int]:
  path = workdir / "metrics.jsonl"
  return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _run_and_kill(workdir, condition) -> bool:
  process = subprocess.Popen(faults.command(workdir, **SETTINGS), env=faults.child_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    landed = faults.wait_for(condition, process, poll=0.05)
    process.send_signal(signal.SIGKILL)
  finally:
    process.wait(timeout=60)
  return landed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("local_reference")
  faults.run_child(workdir, **SETTINGS)
  return workdir


@pytest.fixture(scope="module")
def bucket_run(gcs_server, reference):
  """The same run in a bucket, killed twice (once step 3's asynchronous save has committed and step 4 is logged;
  while a later step is being saved) and rerun to the end. Returns its workdir and what each kill left."""
  workdir = files.as_path(create_bucket(gcs_server.url) + "/run")
  # Step 3's commit may land after step 4 under load (the save runs in the background), so wait for both.
  assert _run_and_kill(workdir, lambda: 4 in _logged(workdir) and 3 in _steps(workdir))
  after_step_kill = _steps(workdir)
  started = set(_steps(workdir, committed=False))
  inside_save = _run_and_kill(workdir, lambda: bool(set(_steps(workdir, committed=False)) - started - set(
      _steps(workdir))))
  after_save_kill = (_steps(workdir), _steps(workdir, committed=False))
  final = faults.run_child(workdir, **SETTINGS)
  return workdir, after_step_kill, inside_save, after_save_kill, final


def test_bucket_run_survives_kills_and_equals_the_local_run(bucket_run, reference):
  workdir, after_step_kill, inside_save, (committed, started), final = bucket_run
  assert after_step_kill[0] == 3  # a committed step to resume from
  assert inside_save, "the second kill never landed inside a checkpoint write"
  assert set(started) - set(committed), "the kill inside a save left no uncommitted step"
  assert "damaged" not in final.stdout + final.stderr
  assert _steps(workdir) == [6, 9, 12] == _steps(workdir, committed=False)  # the killed save was cleaned up
  config = tiny_config(**SETTINGS)
  faults.assert_states_equal(faults.restore_state(workdir, config, TOTAL_STEPS),
                             faults.restore_state(reference, config, TOTAL_STEPS))
  losses = faults.last_by_step(workdir / "metrics.jsonl", "loss")
  assert losses == faults.last_by_step(reference / "metrics.jsonl", "loss")
  assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
  assert faults.last_by_step(workdir / "batches.jsonl", "crc32") == faults.last_by_step(
      reference / "batches.jsonl", "crc32")
  assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())


def test_eval_and_sample_read_the_checkpoint_from_the_bucket(bucket_run, tmp_path):
  workdir = bucket_run[0]
  image = tmp_path / "astronaut.png"
  Image.fromarray(skimage.data.astronaut()[:64, :64]).save(image)
  for mode, extra in (("eval", []), ("sample", [f"--config.sample.inputs={image}"])):
    result = subprocess.run(faults.command(workdir, **SETTINGS) + [f"--mode={mode}", *extra], env=faults.child_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / "eval" / f"step_{TOTAL_STEPS}.json").read_text())
  assert np.isfinite(record["psnr"])
  assert (workdir / "samples" / "recon_astronaut.png").exists()


def test_init_from_a_bucket_run_equals_init_from_the_same_run_on_disk(bucket_run, reference, tmp_path):
  """`config.init_from=gs://...` loads the bucket run's parameters: two more steps from them match two steps from
  the identical local run's, and start far below a fresh run's first loss."""
  fine_tune = dict(SETTINGS, total_steps=2, checkpoint_every_steps=2)
  for name, source in (("from_bucket", bucket_run[0]), ("from_disk", reference)):
    faults.run_child(tmp_path / name, **fine_tune, init_from=source)
  config = tiny_config(**fine_tune)
  faults.assert_states_equal(faults.restore_state(tmp_path / "from_bucket", config, 2),
                             faults.restore_state(tmp_path / "from_disk", config, 2))
  first_losses = faults.last_by_step(tmp_path / "from_bucket" / "metrics.jsonl", "loss")
  assert first_losses[1] < 0.9 * faults.last_by_step(reference / "metrics.jsonl", "loss")[1]


def test_damaged_newest_step_in_the_bucket_is_set_aside(bucket_run, reference):
  workdir = bucket_run[0]
  newest = workdir / "checkpoints" / str(TOTAL_STEPS)
  sizes = files.file_sizes(newest / "state")
  largest = max(sizes, key=sizes.get)
  victim = newest / "state" / largest
  victim.write_bytes(victim.read_bytes()[:sizes[largest] // 2])
  result = faults.run_child(workdir, **SETTINGS)
  assert f"checkpoint step {TOTAL_STEPS}" in result.stdout and "damaged" in result.stdout
  moved = workdir / "checkpoints_damaged" / str(TOTAL_STEPS)
  assert files.file_sizes(moved / "state")[largest] == sizes[largest] // 2  # the evidence, as it was
  config = tiny_config(**SETTINGS)  # retrained from step 9 to the same final state
  faults.assert_states_equal(faults.restore_state(workdir, config, TOTAL_STEPS),
                             faults.restore_state(reference, config, TOTAL_STEPS))


@pytest.mark.parametrize("workdir, endpoint, message", [
    ("gs://no-such-bucket-q/run", None, "the bucket gs://no-such-bucket-q does not exist. Create it"),
    ("gs://bucket/run", "http://127.0.0.1:9", "the Cloud Storage endpoint http://127.0.0.1:9 cannot be reached"),
    ("<read-only bucket>/run", "<read-only proxy>", "no permission to write there (Forbidden: "),
])
def test_bad_bucket_endpoint_or_permission_fails_before_any_step(request, gcs_server, workdir, endpoint, message):
  if endpoint == "<read-only proxy>":
    workdir = workdir.replace("<read-only bucket>", create_bucket(gcs_server.url))
    endpoint = request.getfixturevalue("read_only_endpoint")
  env = faults.child_env() | ({"STORAGE_EMULATOR_HOST": endpoint} if endpoint else {})
  result = subprocess.run(faults.command(workdir, **SETTINGS), env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert f"--workdir={workdir}: {message}" in result.stderr
  assert "step 1/" not in result.stdout
