"""The train state, the Task protocol that the one training loop drives, and the step helpers every task shares.

The trainer, `aot` and `bench` see a task only through `Task`:

  example_batch() / init(rng, batch)          abstract and real initialization
  prepare(run, state)                         a fresh state before step 0: what it reads from other runs
  phases()                                    step variants by step number, each compiled once
  train_step(state, batch, phase)             one optimizer step of that phase
  eval_step(state, batch)                     per-example outputs on device
  evaluator(run, state)                       host-side accumulation: update / results / write_samples
  example_conditions() / sample(...)          a generator's sampler (None: the task does not sample)
  sample_settings(config.sample)
  modes()                                     extra `--mode`s: name -> function(run) -> summary dict
  describe()                                  the task's own figures for `--mode=summary`

`run` is a `RunContext` (the trainer's `run.Run`), the only view of the run a task gets.
"""

import abc
import dataclasses
import functools
from typing import Any, Callable, Iterator, Protocol

import flax
import jax
import numpy as np
import optax
from etils import epath


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes, as one pytree (checkpointed whole).

  params and opt_state are keyed by parameter group ('autoencoder'; a GAN adds 'discriminator' with its own
  optimizer). ema_params holds EMA copies of the groups that keep one (empty when EMA is off); model_state holds
  non-trainable state by group (quantizer statistics, LeCAM anchors, frozen perceptual weights).
  Per-step randomness is `fold_in(rng, step)`, so a resumed run draws the same numbers.
  """

  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  ema_params: dict[str, Any]
  model_state: dict[str, Any]
  rng: jax.Array


def evaluation_params(state: TrainState, group: str, use_ema: bool = True) -> Any:
  """The weights of `group` that eval and sampling use: its EMA copy when `use_ema` and training kept one."""
  if use_ema and group in state.ema_params:
    return state.ema_params[group]
  return state.params[group]


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


@dataclasses.dataclass(frozen=True)
class GroupUpdate:
  """One parameter group after `apply_gradients`: new params, optimizer state, EMA copy (None: no EMA), norms."""

  params: Any
  opt_state: Any
  ema_params: Any
  metrics: dict[str, jax.Array]


def apply_gradients(optimizer: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any,
                    ema_params: Any = None, ema_decay: float = 0.0, prefix: str = "") -> GroupUpdate:
  """grads → optax update → new params, with `{prefix}grad_norm`, `{prefix}update_norm` and `{prefix}param_norm`
  (of the new params), and the EMA copy moved towards the new params when `ema_decay` > 0."""
  updates, opt_state = optimizer.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  metrics = {f"{prefix}grad_norm": optax.global_norm(grads), f"{prefix}update_norm": optax.global_norm(updates),
             f"{prefix}param_norm": optax.global_norm(params)}
  ema = ema_update(ema_params, params, ema_decay) if ema_decay else None
  return GroupUpdate(params, opt_state, ema, metrics)


def single_group_step(loss_fn: Callable, optimizer: optax.GradientTransformation, learning_rate: optax.Schedule,
                      ema_decay: float, group: str, state: TrainState, batch: Any) -> tuple[TrainState, dict]:
  """One optimizer step of the parameter group `group` (any other group is left as it is): `loss_fn(params, batch,
  rng) -> (loss, metrics)` with rng = fold_in(state.rng, step), then `apply_gradients`; metrics gain the norms
  and `lr`."""
  rng = jax.random.fold_in(state.rng, state.step)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params[group], batch, rng)
  update = apply_gradients(optimizer, state.params[group], state.opt_state[group], grads,
                           state.ema_params.get(group), ema_decay)
  metrics = metrics | update.metrics | {"lr": learning_rate(state.step)}
  ema = state.ema_params | ({group: update.ema_params} if ema_decay else {})
  return state.replace(step=state.step + 1, params=state.params | {group: update.params},
                       opt_state=state.opt_state | {group: update.opt_state}, ema_params=ema), metrics


@dataclasses.dataclass(frozen=True)
class Phase:
  """A step variant that runs from `start_step` until the next phase starts (e.g. a GAN before and after its
  discriminator starts). Each phase is compiled once; only the live phase's work executes."""

  name: str
  start_step: int = 0


def active_phase(phases: tuple[Phase, ...], step: int) -> Phase:
  """The phase whose step `step` is (phases sorted by start, the first starting at 0)."""
  live = phases[0]
  for phase in phases[1:]:
    if step >= phase.start_step:
      live = phase
  return live


def phase_step(task: "Task", phase: str) -> Callable:
  """`train_step` of one phase as `f(state, batch)`, for `jax.jit`."""
  return functools.partial(task.train_step, phase=phase)


class Evaluator(Protocol):
  """One evaluation pass: `update` per held-out batch (host arrays, padding rows masked out), then `results`."""

  def update(self, outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray], mask: np.ndarray) -> None:
    ...

  def results(self) -> dict[str, float]:
    ...

  def write_samples(self, directory: epath.Path, step: int) -> None:
    """Image/video grids of this pass under `directory` (called on the chief process only)."""


class RunContext(Protocol):
  """The run as a task's evaluator and modes see it (implemented by `run.Run`)."""

  config: Any
  workdir: epath.Path

  @property
  def is_chief(self) -> bool:
    ...

  def context(self) -> Any:
    ...

  def restore(self, step: int = 0) -> tuple[TrainState, int]:
    ...

  def load_experiment(self, config: Any, workdir: str, step: int = 0) -> tuple["Task", TrainState, int]:
    ...

  def gather(self, tree: Any) -> Any:
    ...

  def replicate(self, host_array: np.ndarray) -> jax.Array:
    ...

  def map_local(self, fn: Callable[[Any, Any], Any], state: Any, local_batch: Any) -> Any:
    ...

  def eval_batches(self) -> Iterator[tuple[dict[str, jax.Array], dict[str, np.ndarray], np.ndarray]]:
    ...


class Task(abc.ABC):
  """The protocol, with the defaults of a task that has one phase, does not sample and adds no modes."""

  @abc.abstractmethod
  def example_batch(self) -> dict[str, jax.Array]:
    """A one-example batch of the task's input shapes (zeros), for abstract and real initialization."""

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """A fresh state; parameters may be `nn.Partitioned` boxes carrying logical axis names."""

  def prepare(self, run: "RunContext", state: TrainState) -> TrainState:
    """A fresh state (from scratch or `config.init_from`, never a resumed one) before its first step, with what
    it needs from other runs: a next-scale generator copies in its tokenizer's quantizer. Default: unchanged."""
    del run
    return state

  def phases(self) -> tuple[Phase, ...]:
    return (Phase("train", 0),)

  @abc.abstractmethod
  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 phase: str = "train") -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of `phase`; returns the new state and scalar metrics (the same names in every phase)."""

  @abc.abstractmethod
  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-example outputs and metrics (leading dimension = batch)."""

  @abc.abstractmethod
  def evaluator(self, run: RunContext, state: TrainState) -> Evaluator:
    """A fresh evaluation pass over the held-out split for `state`."""

  def example_conditions(self) -> dict[str, jax.Array] | None:
    """A one-example batch of what `sample` is conditioned on ({} when unconditional); None: no sampler."""
    return None

  def sample_settings(self, sample_config: Any) -> Any:
    """`config.sample` (or an evaluation protocol) as the static settings `sample` takes."""
    return None

  def sample(self, state: TrainState, conditions: dict[str, jax.Array], rng: jax.Array, settings: Any,
             batch_size: int | None = None) -> Any:
    """Samples for a batch of conditions (jit the caller); only tasks whose `example_conditions` is not None."""
    raise TypeError(f"{type(self).__name__} does not sample (its example_conditions() is None).")

  def modes(self) -> dict[str, Callable[[RunContext], dict[str, Any]]]:
    """Extra `--mode`s this task offers, by name."""
    return {}

  def describe(self) -> dict[str, Any]:
    """The task's own figures for `--mode=summary` (JSON-able, from static shapes only)."""
    return {}
