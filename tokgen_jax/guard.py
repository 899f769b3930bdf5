"""What training does about non-finite steps (`config.guard.nonfinite`), and the record of batches it saw.

'stop': the host screens each step's metrics when it logs or checkpoints; the first step with a NaN/Inf stops the
run with its number, the non-finite terms and the last good checkpoint. 'skip': `guarded_step` drops the update
inside the compiled step when its loss or a metric is non-finite (parameters, optimizer and model state keep their
previous values; the step counter and the data stream move on), flags the step in its metrics, and the host counts
and logs the skips. Either way, no
state with a NaN/Inf is ever checkpointed (`check_state_finite` before every save).
"""

import functools
import json
import os
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokgen_jax import writers
from tokgen_jax.data import files
from tokgen_jax.errors import ConfigError

NONFINITE_POLICIES = ("stop", "skip")
DEFAULTS = {"nonfinite": "stop", "max_skips_in_a_row": 20, "record_batches": False}  # see configs/guard.py
SKIPPED = "skipped"  # metric: 1.0 when the step's update was dropped
BATCHES_FILENAME = "batches.jsonl"


class NonFiniteError(FloatingPointError):
  """Training produced NaN/Inf under config.guard.nonfinite='stop' (or too many skips in a row)."""


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.guard` (DEFAULTS where a config has none), validated."""
  merged = ml_collections.ConfigDict(DEFAULTS | dict(config.get("guard") or {}))
  if merged.nonfinite not in NONFINITE_POLICIES:
    raise ConfigError(f"config.guard.nonfinite={merged.nonfinite!r} is not a policy; choose one of "
                      f"{NONFINITE_POLICIES}.")
  return merged


def _all_finite(tree: Any) -> jax.Array:
  checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return functools.reduce(jnp.logical_and, checks, jnp.bool_(True))


def guarded_step(train_step: Callable, policy: str) -> Callable:
  """`train_step` unchanged under 'stop'; under 'skip', one that keeps the old state when the loss or a metric is
  not finite, and reports it as `SKIPPED`. The gradient and update norms every task reports catch a non-finite
  gradient or update; checking the metrics rather than the whole new state keeps compiling fast (a reduction over
  every state leaf inside the step took ten times longer to compile on CPU)."""
  if policy != "skip":
    return train_step

  def step(state, batch):
    new_state, metrics = train_step(state, batch)
    finite = _all_finite(metrics)
    kept = jax.lax.cond(finite, lambda: new_state, lambda: state.replace(step=new_state.step))
    return kept, metrics | {SKIPPED: 1.0 - finite.astype(jnp.float32)}

  return step


@jax.jit
def _state_finite(state: Any) -> jax.Array:
  return _all_finite(state)


def check_state_finite(state: Any, step: int, last_good: str) -> None:
  """Refuse to checkpoint a state holding NaN/Inf."""
  if not bool(_state_finite(state)):
    raise NonFiniteError(f"the state at step {step} holds NaN/Inf, so it was not checkpointed; {last_good}. "
                         f"{_ADVICE}")


_ADVICE = ("Rerun the same command to resume from the last good checkpoint after lowering "
           "config.optimizer.learning_rate or raising config.optimizer.warmup_steps, or set "
           "config.guard.nonfinite=skip to drop such steps.")


class NonFiniteMonitor:
  """Screens logged steps on the host: raises under 'stop', counts skips under 'skip'."""

  def __init__(self, guard: ml_collections.ConfigDict):
    self.policy = guard.nonfinite
    self.max_in_a_row = int(guard.max_skips_in_a_row)
    self.skipped = 0
    self._in_a_row = 0
    self._screened_through = -1

  def screen(self, pending: list[tuple[int, Any]], last_good: Callable[[], str]) -> list[dict[str, float]]:
    """The host metrics of the steps in `pending` whose update was applied (counting the others once)."""
    applied = []
    for (step, _), metrics in zip(pending, jax.device_get([m for _, m in pending])):
      bad = sorted(name for name, value in metrics.items() if not np.all(np.isfinite(value)))
      skipped = bool(metrics.pop(SKIPPED, 0.0))
      if bad and self.policy == "stop":
        raise NonFiniteError(f"non-finite {', '.join(bad)} at step {step} (config.guard.nonfinite=stop); "
                             f"{last_good()}. {_ADVICE}")
      if not skipped:
        self._in_a_row = 0
        applied.append(metrics)
      elif step > self._screened_through:
        self.skipped += 1
        self._in_a_row += 1
        if self._in_a_row > self.max_in_a_row:
          raise NonFiniteError(f"{self._in_a_row} steps in a row up to step {step} were non-finite ({', '.join(bad)})"
                               f" and skipped, more than config.guard.max_skips_in_a_row={self.max_in_a_row}: the "
                               f"run has diverged; {last_good()}. {_ADVICE}")
      self._screened_through = max(self._screened_through, step)
    return applied


class BatchRecord:
  """Appends `{"step", "crc32"}` of each batch (this process's share) to WORKDIR/batches.jsonl when enabled."""

  def __init__(self, workdir: str | os.PathLike, enabled: bool):
    self._file = None
    self._mirror = None
    if enabled:
      self._mirror = files.MirroredDirectory(workdir)  # a gs:// workdir gets the file whole, once a second
      path = self._mirror.fetch(BATCHES_FILENAME)
      writers.drop_partial_last_line(path)
      self._file = open(path, "a", encoding="utf-8")

  def write(self, step: int, batch: dict[str, Any]) -> None:
    if self._file is None:
      return
    crc = 0
    for key in sorted(batch):
      crc = zlib.crc32(np.ascontiguousarray(batch[key]).tobytes(), zlib.crc32(key.encode(), crc))
    self._file.write(json.dumps({"step": step, "crc32": crc}) + "\n")
    self._file.flush()
    self._mirror.sync()

  def upload(self) -> None:
    """Upload what is written now (a gs:// workdir), whatever the interval: called before each checkpoint, so no
    record of a step a resumed run will not repeat is lost to a kill."""
    if self._mirror is not None:
      self._mirror.sync(force=True)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
      self._mirror.close()
