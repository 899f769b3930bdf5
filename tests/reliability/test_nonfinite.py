"""NaN/Inf steps under `config.guard.nonfinite`: 'stop' names the step, the terms and the last good checkpoint and
saves nothing after it; 'skip' drops exactly the bad step's update, counts it, and goes on; no checkpoint ever holds
a non-finite value.

The bad step is a batch of NaN pixels at a chosen step, injected inside the compiled train step.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from tests.reliability import faults
from tokgen_jax import guard, trainer
from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks import autoencoder

# Each test trains through the trainer for several steps (multi-step runs: the slow tier).
pytestmark = pytest.mark.slow

SETTINGS = dict(total_steps=6, log_every_steps=3, checkpoint_every_steps=2, eval_every_steps=0, keep_checkpoints=6)


@pytest.fixture
def nan_batches_at(monkeypatch):
  """`nan_batches_at(steps)`: the batches of those (1-based) steps become NaN."""
  original = autoencoder.AutoencoderTask.train_step

  def poison(steps):
    def train_step(self, state, batch, phase=None):
      bad = jnp.isin(state.step + 1, jnp.asarray(steps))
      return original(self, state, jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x), batch), phase)

    monkeypatch.setattr(autoencoder.AutoencoderTask, "train_step", train_step)

  return poison


def test_stop_names_step_terms_and_last_good_checkpoint(tmp_path, nan_batches_at):
  nan_batches_at([5])
  with pytest.raises(guard.NonFiniteError,
                     match=r"non-finite .*loss.* at step 5 \(config.guard.nonfinite=stop\); the last good checkpoint "
                           r"is step 4 .*config.guard.nonfinite=skip"):
    trainer.run(tiny_config(**SETTINGS), str(tmp_path), "train")
  assert faults.saved_steps(tmp_path) == [2, 4]  # step 6 (after the NaN) was never written


def test_skip_drops_exactly_the_bad_update(tmp_path, nan_batches_at):
  nan_batches_at([5])
  config = tiny_config(**(SETTINGS | {"checkpoint_every_steps": 1, "guard.nonfinite": "skip"}))
  assert trainer.run(config, str(tmp_path), "train")["step"] == 6
  states = {step: jax.device_get(faults.restore_state(tmp_path, config, step)) for step in (4, 5, 6)}
  assert int(states[5].step) == 5
  faults.assert_states_equal(states[5].replace(step=4), states[4])  # step 5 changed nothing but the counter
  assert not np.array_equal(jax.tree.leaves(states[6].params)[0], jax.tree.leaves(states[5].params)[0])
  for state in states.values():
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state) if np.issubdtype(leaf.dtype, np.floating))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["skipped_steps"] for r in records] == [0, 1]
  assert all(np.isfinite(r["loss"]) for r in records)  # the mean leaves the skipped step out


def test_skip_stops_when_the_run_has_diverged(tmp_path, nan_batches_at):
  nan_batches_at([3, 4, 5, 6])
  config = tiny_config(**SETTINGS, **{"guard.nonfinite": "skip", "guard.max_skips_in_a_row": 2})
  with pytest.raises(guard.NonFiniteError, match=r"3 steps in a row up to step 5 were non-finite .*diverged; the last "
                                                 r"good checkpoint is step 4"):
    trainer.run(config, str(tmp_path), "train")


def test_unknown_policy_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match=r"config.guard.nonfinite='ignore' is not a policy; choose one of"):
    trainer.run(tiny_config(**{"guard.nonfinite": "ignore"}), str(tmp_path), "train")
