"""The one training loop: every experiment runs through `run(config, workdir, mode)`.

train:   init or resume → jitted, sharded train step (one compiled program per phase of the task) → log / eval /
         checkpoint on their schedules; SIGTERM saves the current step and returns; non-finite steps stop or are
         skipped (`guard`).
eval:    restore config.eval.checkpoint_step (0: the latest) and evaluate it on the held-out split.
compile: lower and compile the train step (and sampler) for a TPU pod topology, ahead of time (`aot`).
bench:   time N train steps after warm-up (`bench.training`): step time, TFLOP/s and MFU per device, data-wait and
         checkpoint-blocking shares.
summary: parameters, shapes, sequence lengths, bits per pixel and FLOPs per example, from abstract shapes alone.
Every other mode is the task's (`task.modes()`): a tokenizer's `sample` (reconstruct files) and `stats`
(reference feature statistics), a generator's `encode` (alias `tokenize`: write latent shards with its frozen
tokenizer) and `sample` (draw samples of prompts).

The loop sees the task only through `tasks.Task`: it knows no model family.
"""

import functools
import signal
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from tokgen_jax import aot, checkpoint, config as config_lib, data, guard, sharding, summary, tasks, writers
from tokgen_jax.bench import training as bench_training
from tokgen_jax.data import files
from tokgen_jax.errors import ConfigError
from tokgen_jax.run import Run, Timer, compile_step, count_params, setup


def run(config: ml_collections.ConfigDict, workdir: str, mode: str, topology: str = "") -> dict[str, Any]:
  """Run `mode` and return its summary (final metrics for train, eval metrics for eval, paths for sample).
  `topology` (compile mode) overrides `config.topology`."""
  files.check_writable(workdir)  # an unreachable bucket fails here, not at the first checkpoint
  if mode == "compile":
    return aot.compile_experiment(config, workdir, topology)
  state_run = setup(config, workdir)
  modes = {"train": train, "eval": evaluate_checkpoint, "bench": bench_training.bench,
           "summary": summary.summarize} | state_run.task.modes()
  if mode not in modes:
    raise ConfigError(f"--mode={mode!r} is not a mode of config.task={config.task!r}; choose one of "
                      f"{sorted(set(modes) | {'compile'})}.")
  logging.info("mesh %s; %d parameters", dict(state_run.mesh.shape), count_params(state_run.abstract_state))
  return modes[mode](state_run)


# ---------------------------------------------------------------------------------------------------- training


class _Preemption:
  """When to save and exit on preemption. One process: SIGTERM sets a flag the loop polls. Several: JAX's
  preemption service (its notifier catches SIGTERM on any host) picks one step at which every process saves,
  `multihost_utils.reached_preemption_sync_point`, as Orbax's `reached_preemption` does."""

  def __init__(self):
    self.requested = False
    self._single = jax.process_count() == 1
    if self._single:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if self._single:
      return self.requested
    return multihost_utils.reached_preemption_sync_point(step)

  def restore_handler(self) -> None:
    if self._single:
      signal.signal(signal.SIGTERM, self._previous)


def _initial_state(run_: Run, manager: checkpoint.Manager, train_iter: Any) -> Any:
  """Resume order: the workdir's latest good checkpoint (damaged newer ones are moved aside) → config.init_from
  (parameters, EMA weights and model state of every group the source run has) → scratch. A fresh state then
  goes through the task's `prepare`."""
  restored = manager.restore_latest(run_.abstract_state, train_iter)
  if restored is not None:
    logging.info("resuming from %s/%d", manager.directory, restored[1])
    return restored[0]
  state = run_.init_state()
  if run_.config.init_from:  # parameters of the groups the source has; a group it lacks keeps its fresh init
    loaded = checkpoint.restore_params(run_.config.init_from, run_.abstract_state)
    state = state.replace(**{name: {**getattr(state, name), **getattr(loaded, name)}
                             for name in ("params", "ema_params", "model_state")})
  return run_.task.prepare(run_, state)


def _last_good(manager: checkpoint.Manager) -> str:
  manager.wait()
  step = manager.latest_step()
  if step is None:
    return "there is no checkpoint yet"
  return f"the last good checkpoint is step {step} ({manager.directory / str(step)})"


def train(run_: Run) -> dict[str, Any]:
  config = run_.config
  settings = guard.settings(config)
  train_iter = data.make_pipeline(config.data, "train", global_batch_size=config.batch_size)
  manager = checkpoint.Manager(str(run_.workdir), keep=config.keep_checkpoints)
  state = _initial_state(run_, manager, train_iter)
  step = int(state.step)
  writer = writers.MetricWriter(str(run_.workdir), enabled=run_.is_chief)
  record = guard.BatchRecord(run_.workdir, enabled=settings.record_batches and run_.is_chief)
  monitor = guard.NonFiniteMonitor(settings)
  preemption = _Preemption()
  config_json = config_lib.to_json(config)
  summary: dict[str, Any] = {"step": step}
  last_good = functools.partial(_last_good, manager)
  try:
    timer = Timer()
    pending: list[tuple[int, Any]] = []
    phases, compiled = run_.task.phases(), {}  # phase name -> (compiled step, FLOPs per device)
    metrics = None
    while step < config.total_steps:
      with timer.waiting(metrics):
        local_batch = next(train_iter)
        record.write(step + 1, local_batch)
        batch = sharding.global_batch(local_batch, run_.mesh)
      phase = tasks.active_phase(phases, step).name
      if phase not in compiled:
        with timer.paused():
          compiled[phase] = compile_step(run_, state, batch, settings.nonfinite, phase)
        if len(compiled) == 1:
          timer.reset()
      step_fn, flops = compiled[phase]
      state, metrics = step_fn(state, batch)
      step += 1
      pending.append((step, metrics))
      if step % config.log_every_steps == 0 or step == config.total_steps:
        summary = _log(step, config, len(pending), monitor.screen(pending, last_good), monitor, timer, flops, writer)
        pending = []
      if config.eval_every_steps and (step % config.eval_every_steps == 0 or step == config.total_steps):
        with timer.paused():
          summary |= evaluate(run_, state, step, writer)
      preempted = preemption.reached(step)
      if preempted or step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        with timer.paused():
          monitor.screen(pending, last_good)  # never checkpoint a diverged state
          guard.check_state_finite(state, step, last_good())
          writer.upload()  # the logs of every step up to this one reach a bucket before its checkpoint commits
          record.upload()
          manager.save(step, state, train_iter, config_json)
      if preempted:
        logging.warning("preemption: saved step %d, exiting", step)
        print(f"preempted: saved step {step}; rerun the same command to resume", flush=True)
        summary["preempted"] = True
        break
    manager.wait()  # a failed background save is reported here, not lost
  finally:
    _close_quietly(manager, writer, record)
    preemption.restore_handler()
  summary["step"] = step
  return summary


def _close_quietly(manager: checkpoint.Manager, writer: writers.MetricWriter, record: guard.BatchRecord) -> None:
  """Finish writing on any exit; a failed save was already reported by `manager.wait` or is reported now."""
  try:
    manager.wait()
    manager.close()
  finally:
    writer.close()
    record.close()


def _log(step, config, num_steps, applied, monitor, timer, flops, writer) -> dict[str, float]:
  """One log line over the `num_steps` steps since the last: means of those whose update was applied (`applied`:
  host metrics), throughput figures, and under config.guard.nonfinite=skip the number of steps skipped so far."""
  scalars = {}
  if applied:
    means = jax.tree.map(lambda *xs: float(np.mean(xs)), *applied)
    scalars = {"loss": means.pop("loss"), "lr": means.pop("lr"), **means}
  scalars |= timer.figures(num_steps, flops, config.batch_size)
  if monitor.policy == "skip":
    scalars["skipped_steps"] = monitor.skipped
  writer.write(step, scalars)
  if jax.process_index() == 0:
    print(writers.format_progress(step, config.total_steps, scalars), flush=True)
  timer.reset()
  return scalars


# -------------------------------------------------------------------------------------------------- evaluation


def evaluate(run_: Run, state: Any, step: int, writer: writers.MetricWriter | None = None) -> dict[str, float]:
  """The task's evaluator over the held-out split; writes eval/step_<N>.json (with the evaluation protocol) and
  the evaluator's sample grids."""
  evaluator = run_.task.evaluator(run_, state)
  count = 0
  for batch, host_batch, mask in run_.eval_batches():
    with run_.context():
      outputs = run_.gather(run_.eval_fn(state, batch))
    evaluator.update(outputs, host_batch, mask)
    count += int(mask.sum())
  results = evaluator.results()
  if run_.is_chief:
    evaluator.write_samples(run_.workdir / "samples", step)
    record = {"step": step, "num_examples": count, "protocol": run_.config.eval.protocol.to_dict(), **results}
    writers.write_json_atomic(run_.workdir / "eval" / f"step_{step}.json", record)
    print(f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
  if writer is not None:
    writer.write(step, {f"eval_{name}": value for name, value in results.items()})
  return {f"eval_{name}": value for name, value in results.items()}


def evaluate_checkpoint(run_: Run) -> dict[str, float]:
  """--mode=eval: config.eval.checkpoint_step (0: the latest), with results in eval/ and TensorBoard."""
  state, step = run_.restore(run_.config.eval.checkpoint_step)
  writer = writers.MetricWriter(str(run_.workdir), enabled=run_.is_chief)
  try:
    return evaluate(run_, state, step, writer)
  finally:
    writer.close()
