"""What every mode shares: `setup` builds the mesh, the task and the sharded state layout into a `Run`;
`compile_step` compiles one phase of the train step; `Timer` splits wall time into work and input waits.

`Run` is also what a task's evaluator and extra modes see of the run (`tasks.base.RunContext`): the config and
workdir, the mesh context, checkpoint restores (its own or another experiment's, e.g. a generator's frozen
tokenizer), eval batches, host gathers. trainer, aot and bench import this module and not each other.
"""

import contextlib
import dataclasses
import functools
import time
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokgen_jax import checkpoint, data, guard, perf, sharding, tasks
from tokgen_jax.data import files
from tokgen_jax.errors import ConfigError


@dataclasses.dataclass
class Run:
  """The mesh, the task and the (abstract) state layout of one experiment in one workdir."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: Mesh
  rules: tuple
  task: tasks.Task
  abstract_state: Any
  state_shardings: Any

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0

  def context(self):
    """Mesh and logical-axis rules in force while functions trace, so activation constraints apply."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  @functools.cached_property
  def eval_fn(self):
    return jax.jit(self.task.eval_step, in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)))

  def init_state(self) -> Any:
    example = self.task.example_batch()
    init = jax.jit(lambda rng: nn.unbox(self.task.init(rng, example)), out_shardings=self.state_shardings)
    with self.context():
      return init(jax.random.PRNGKey(self.config.seed))

  def restore(self, step: int = 0) -> tuple[Any, int]:
    """The checkpoint of `step` (0: the latest) in the workdir."""
    manager = checkpoint.Manager(str(self.workdir), keep=self.config.keep_checkpoints)
    steps = manager.all_steps()
    if not steps:
      raise ConfigError(f"no checkpoint in {manager.directory}: --mode=eval and --mode=sample need a trained run. "
                        f"Train first with --mode=train --workdir={self.workdir}, or point --workdir at a run.")
    if step and step not in steps:
      raise ConfigError(f"config.eval.checkpoint_step={step} is not a checkpoint in {manager.directory}; it has "
                        f"steps {sorted(steps)}. Pick one of them, or 0 for the latest.")
    step = step or max(steps)
    state = manager.restore(step, self.abstract_state)
    manager.close()
    return state, step

  def load_experiment(self, config: ml_collections.ConfigDict, workdir: str, step: int = 0) -> tuple[Any, Any, int]:
    """`(task, state, step)` of another trained experiment (e.g. a generator's frozen tokenizer), on this mesh."""
    other = setup(config, workdir, devices=list(self.mesh.devices.flat))
    state, step = other.restore(step)
    return other.task, state, step

  def gather(self, tree: Any) -> Any:
    """Host numpy copies of globally sharded arrays (all processes take part)."""
    if jax.process_count() == 1:
      return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)

  def replicate(self, host_array: np.ndarray) -> jax.Array:
    """A host array every process holds whole, as one replicated global array."""
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, PartitionSpec()), host_array)

  def map_local(self, fn, state: Any, local_batch: Any) -> Any:
    """`fn(state, batch)` (jitted) over the global batch whose rows each process contributes from its own
    `local_batch`; returns this process's rows of every output, on the host. Each process thus works through its
    own share of a dataset (`--mode=encode`). Local rows must divide over the local devices."""
    rows = sharding.batch_sharding(self.mesh)
    with self.context():
      outputs = _batch_parallel(fn, rows)(state, sharding.global_batch(local_batch, self.mesh))
    return jax.tree.map(np.asarray, multihost_utils.global_array_to_host_local_array(outputs, self.mesh, rows.spec))

  def eval_batches(self) -> Iterator[tuple[dict[str, jax.Array], dict[str, np.ndarray], np.ndarray]]:
    """(global batch without its mask, the same batch on the host, host mask) of every held-out batch. One process
    already holds the whole batch; several gather it."""
    for local_batch in data.make_pipeline(self.config.data, "eval", global_batch_size=self.config.eval.batch_size):
      batch = sharding.global_batch(local_batch, self.mesh)
      mask = batch.pop("mask")
      host = dict(local_batch) if jax.process_count() == 1 else self.gather(dict(batch, mask=mask))
      host_mask = np.asarray(host.pop("mask")).astype(bool)
      yield batch, host, host_mask


@functools.lru_cache(maxsize=8)
def _batch_parallel(fn, batch_sharding: NamedSharding):
  return jax.jit(fn, out_shardings=batch_sharding)


def setup(config: ml_collections.ConfigDict, workdir: str, devices: list | None = None) -> Run:
  if config.data.source in data.LATENT_SOURCES and not config.data.path:
    config.data.path = str(files.as_path(workdir) / "tokens")  # encode writes, train reads, here
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
  rules = sharding.logical_rules(config.mesh)
  task = tasks.build(config)
  example = task.example_batch()
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # abstract: nothing may run eagerly on a compile-only mesh
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda rng: task.init(rng, example), key)
  state_shardings = sharding.state_shardings(boxed, mesh, rules)
  abstract_state = checkpoint.abstract_with_shardings(nn.unbox(boxed), state_shardings)
  return Run(config, files.as_path(workdir), mesh, rules, task, abstract_state, state_shardings)


def abstract_batch(example: dict[str, Any], batch_size: int,
                   sharding: Any = None) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch of `batch_size` examples shaped like `example` (a one-example batch), with `sharding`."""
  return {key: jax.ShapeDtypeStruct((batch_size,) + tuple(np.shape(value)[1:]), np.asarray(value).dtype,
                                    sharding=sharding) for key, value in example.items()}


def count_elements(tree: Any) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def count_params(abstract_state: Any) -> int:
  return count_elements(abstract_state.params)


def compile_step(run_: Run, state: Any, batch: Any, nonfinite: str = "stop", phase: str | None = None):
  """The compiled train step of `phase` (default: the phase of step 0), guarded per `config.guard.nonfinite`, and
  its FLOPs per device (`perf.count_flops`: scan bodies counted per layer)."""
  step_fn = tasks.phase_step(run_.task, phase or run_.task.phases()[0].name)
  guarded = guard.guarded_step(step_fn, nonfinite)
  jitted = jax.jit(guarded, in_shardings=(run_.state_shardings, sharding.batch_sharding(run_.mesh)),
                   out_shardings=(run_.state_shardings, None), donate_argnums=0)
  with run_.context():
    compiled = jitted.lower(state, batch).compile()
    flops = perf.count_flops(step_fn, state, batch) / run_.mesh.size
  return compiled, flops


def _is_ready(tree: Any) -> bool:
  return all(leaf.is_ready() for leaf in jax.tree.leaves(tree) if isinstance(leaf, jax.Array))


class Timer:
  """Wall time between log lines and the part of it spent waiting for input."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.start = time.perf_counter()
    self.data_wait = 0.0

  @contextlib.contextmanager
  def waiting(self, previous_outputs: Any = None):
    """Time an input fetch as waiting when the device has run out of work by its end: the previous step's
    `previous_outputs` are ready (None: no step in flight). Under asynchronous dispatch the loop runs ahead of the
    device, so a fetch that overlaps a running step costs nothing and is not counted; one that outlasts it is
    counted whole (an upper bound on the device's idle time)."""
    begin = time.perf_counter()
    yield
    if _is_ready(previous_outputs):
      self.data_wait += time.perf_counter() - begin

  @contextlib.contextmanager
  def paused(self):
    """Leave out of the throughput figures (evaluation, checkpoint writes, compiling a later phase)."""
    begin = time.perf_counter()
    yield
    self.start += time.perf_counter() - begin

  def figures(self, steps: int, flops_per_step: float, examples_per_step: int) -> dict[str, float]:
    """steps/s, examples/s, TFLOP/s and MFU per device, and the data-wait share since the last reset."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    steps_per_sec = steps / elapsed
    return {"steps_per_sec": steps_per_sec, "examples_per_sec": steps_per_sec * examples_per_step,
            "tflops_per_device": flops_per_step * steps_per_sec / 1e12,
            "mfu": perf.mfu(flops_per_step * steps_per_sec, jax.devices()[0]),
            "data_wait_frac": self.data_wait / elapsed}
