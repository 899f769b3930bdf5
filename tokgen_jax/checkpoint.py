"""Orbax checkpoints of one run: items `state` (the TrainState), `data` (the Grain iterator) and `config` (JSON).

Checkpoints live in `workdir/checkpoints/<step>/` (a local path or `gs://`), are written asynchronously and
atomically, and are pruned to the newest `keep`. On local disk Orbax writes a temporary directory and renames it
when complete; on GCS, which has no rename, it marks a complete step with `commit_success.txt` last. Either way a
kill leaves an unfinished step that no restore reads and the next Manager deletes.

Damage after the fact (a truncated or deleted file) is caught on restore. Once a save is known complete, the
chief records the size of every file of the step in `<step>/file_sizes.json`; `restore_latest` checks the newest
step against it, and a step that fails the check or fails to restore is reported by step and file, moved whole to
`workdir/checkpoints_damaged/` (evidence kept, never overwritten; on GCS copied, then deleted) and the previous
step is tried. A checkpoint
that does not fit the model (other shapes or parameters) is a config problem, not damage: it raises ConfigError
and nothing is moved.
"""

import json
import os
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from tokgen_jax.data import files
from tokgen_jax.errors import CheckpointError, ConfigError

ITEMS = ("state", "data", "config")
FILE_SIZES = "file_sizes.json"
DAMAGED_DIRNAME = "checkpoints_damaged"


class DamagedCheckpoint(CheckpointError):
  """A step whose files are missing, truncated or unreadable; the message names the step and the file."""


class Manager:
  def __init__(self, workdir: str, *, keep: int, asynchronous: bool = True):
    self.workdir = files.as_path(workdir)
    self.directory = self.workdir / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True,
            cleanup_tmp_directories=True),  # what a killed save left behind
        item_names=ITEMS,
    )
    self._unrecorded: list[int] = []  # saves started whose file sizes are not written yet

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any, config_json: dict) -> bool:
    """Start an asynchronous save of `step` unless it is already saved; returns whether one started. Raises
    CheckpointError if this or the previous (background) save failed, e.g. on a full disk."""
    if step == self.latest_step():
      return False
    self.wait()
    try:
      started = self._manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          config=ocp.args.JsonSave(config_json)))
    except Exception as error:  # pylint: disable=broad-except  (any failure to write is reported the same way)
      raise self._save_error(step, error) from error
    if started:
      self._unrecorded.append(step)
    return started

  def wait(self) -> None:
    """Block until the background save is complete, then record its file sizes (chief)."""
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      raise self._save_error(self._unrecorded[-1] if self._unrecorded else None, error) from error
    if jax.process_index() == 0:
      for step in self._unrecorded:
        if step in self._manager.all_steps():
          _record_file_sizes(self.directory / str(step))
    self._unrecorded = []

  def _save_error(self, step: int | None, error: Exception) -> CheckpointError:
    self._unrecorded = []
    good = [s for s in self._manager.all_steps() if s != step]
    kept = f"the last complete checkpoint, step {max(good)}, is intact" if good else "no earlier checkpoint exists"
    first = _first_cause(error)
    then = "" if first is error else f" (then {error!r})"
    return CheckpointError(
        f"saving checkpoint step {step} under {self.directory} failed: {first!r}{then}; {kept}. Free disk space "
        f"(or fix the permissions) there and rerun the same command: training resumes from the last complete "
        f"checkpoint.")

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """The state saved at `step`, placed with the shardings of `abstract_state`; restores the iterator in place.
    Raises ConfigError if the checkpoint does not fit the model, DamagedCheckpoint if its files are damaged."""
    step_dir = self.directory / str(step)
    check_file_sizes(step_dir)
    _check_fits(step_dir, abstract_state)
    try:
      state = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as error:  # pylint: disable=broad-except  (TensorStore raises plain Exception on bad data)
      raise DamagedCheckpoint(f"checkpoint step {step} ({step_dir}) could not be read: "
                              f"{str(error).splitlines()[0][:300]}") from error
    if data_iterator is not None:
      _restore_data(step_dir / "data", data_iterator)
    return state.state

  def restore_latest(self, abstract_state: Any, data_iterator: Any | None = None) -> tuple[Any, int] | None:
    """The newest restorable (state, step), moving damaged newer steps aside; None if no step is left."""
    for step in reversed(self.all_steps()):
      damage = None
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except DamagedCheckpoint as error:
        damage = error
      if not _on_any_process(damage is not None):
        return state, step
      moved = self._move_aside(step)
      logging.warning("%s. Moved it to %s and falling back to the previous checkpoint.", damage, moved)
      print(f"warning: {damage or 'another process found checkpoint step %d damaged' % step}. Moved to {moved}; "
            f"falling back to the previous checkpoint.", flush=True)
    return None

  def _move_aside(self, step: int) -> epath.Path:
    target = self.workdir / DAMAGED_DIRNAME / str(step)
    if target.exists():  # the same step was damaged before: keep both
      target = target.with_name(f"{step}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}")
    if jax.process_index() == 0:
      files.move_tree(self.directory / str(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"tokgen_moved_damaged_step_{step}")
    self._manager.reload()
    return target

  def close(self) -> None:
    self._manager.close()


def _on_any_process(flag: bool) -> bool:
  """All processes take the same branch: whether `flag` holds on any of them."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.process_allgather(np.asarray(flag)).any())


# -------------------------------------------------------------------------------------------- integrity checks


def _files(step_dir: epath.Path) -> dict[str, int]:
  return files.file_sizes(step_dir, skip=(FILE_SIZES,))


def _record_file_sizes(step_dir: epath.Path) -> None:
  files.write_text(step_dir / FILE_SIZES, json.dumps(_files(step_dir), indent=0))


def check_file_sizes(step_dir: epath.Path) -> None:
  """Raise DamagedCheckpoint naming the first file of `step_dir` that is missing or not its recorded size (steps
  saved before sizes were recorded, or killed before recording them, are only checked for empty files)."""
  record = step_dir / FILE_SIZES
  try:
    expected = json.loads(record.read_text()) if record.exists() else None
  except (OSError, ValueError) as error:
    raise DamagedCheckpoint(f"checkpoint step {step_dir.name}: {record} is unreadable ({error})") from error
  actual = _files(step_dir)
  if expected is None:
    empty = [name for name, size in actual.items() if size == 0]  # Orbax writes no empty files
    if empty:
      raise DamagedCheckpoint(f"checkpoint step {step_dir.name}: file {step_dir / empty[0]} is empty")
    return
  for name, size in expected.items():
    if name not in actual:
      raise DamagedCheckpoint(f"checkpoint step {step_dir.name}: file {step_dir / name} is missing")
    if actual[name] != size:
      raise DamagedCheckpoint(f"checkpoint step {step_dir.name}: file {step_dir / name} has {actual[name]} bytes, "
                              f"{size} were written")


def _restore_data(directory: epath.Path, data_iterator: Any) -> None:
  """Set the iterator to its saved position. Grain names the file by process index and count; when the count has
  changed since the save, every saved file holds the same position (a count of global batches: each process's
  iterator yields its share of every global batch, `streams.global_stream`), which then applies to any layout."""
  own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  saved = sorted(directory.glob("process_*-of-*.json"))
  if own.exists():
    text = own.read_text()
  elif not saved:
    raise DamagedCheckpoint(f"checkpoint step {directory.parent.name}: the input position {own} is missing")
  else:
    positions = {path.read_text() for path in saved}
    if len(positions) != 1:
      raise ConfigError(f"{directory} holds different input positions for the {len(saved)} processes that saved it, "
                        f"so it resumes only with that many processes ({jax.process_count()} now).")
    text = positions.pop()
  try:
    data_iterator.set_state(json.loads(text))
  except ValueError as error:
    raise DamagedCheckpoint(f"checkpoint step {directory.parent.name}: the input position in {directory} is "
                            f"unreadable ({error})") from error
  if hasattr(data_iterator, "start_prefetch"):  # as Grain's own restore does
    data_iterator.start_prefetch()


def _key_name(entry: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def _check_fits(step_dir: epath.Path, abstract_state: Any) -> None:
  """ConfigError if the saved state's parameter names or shapes differ from the model's."""
  try:
    metadata = ocp.StandardCheckpointer().metadata(step_dir / "state")
  except Exception as error:  # pylint: disable=broad-except
    raise DamagedCheckpoint(f"checkpoint step {step_dir.name}: {step_dir / 'state'} has unreadable metadata "
                            f"({str(error).splitlines()[0][:300]})") from error
  saved = _leaf_shapes(getattr(metadata, "item_metadata", metadata))
  wanted = _leaf_shapes(abstract_state)
  problems = [f"{name}: saved {saved[name]}, model {shape}" for name, shape in wanted.items()
              if name in saved and saved[name] != shape]
  problems += [f"{name}: not in the checkpoint" for name in wanted if name not in saved]
  problems += [f"{name}: in the checkpoint, not in the model" for name in saved if name not in wanted]
  if problems:
    raise ConfigError(
        f"checkpoint {step_dir} does not fit the current model ({len(problems)} differences, e.g. "
        f"{'; '.join(problems[:3])}). It was written by a different config: use a fresh --workdir, or restore the "
        f"config it was trained with (saved in {step_dir / 'config'}).")


# ------------------------------------------------------------------------------------------------- init_from


GROUPED_FIELDS = ("params", "opt_state", "ema_params", "model_state")  # TrainState dicts keyed by parameter group


def _latest_state_directory(directory: epath.Path) -> epath.Path | None:
  if not directory.is_dir():
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_names=ITEMS)
  step = manager.latest_step()
  return None if step is None else directory / str(step) / "state"


def _stored_state(path: str) -> epath.Path:
  """The `state` item of the latest step under `path` (a workdir, its checkpoints/ folder or one step folder)."""
  root = files.as_path(path)
  for directory in (root / "checkpoints", root):
    found = _latest_state_directory(directory)
    if found is not None:
      return found
  if (root / "state").is_dir():
    return root / "state"
  raise ConfigError(f"config.init_from={path!r} holds no checkpoint; point it at a workdir, its checkpoints/ "
                    f"folder or a step folder of a finished run.")


def _stored_groups(abstract_state: Any, stored: Any, path: str) -> Any:
  """`abstract_state` cut to the parameter groups the stored state has (a run may add groups, such as a
  MarkovGen field trained on a frozen masked model, to the run it starts from)."""
  groups = set(stored["params"])
  extra = groups - set(abstract_state.params)
  if extra:
    raise ConfigError(f"config.init_from={path!r} holds parameter groups {sorted(extra)} this model does not have "
                      f"(it has {sorted(abstract_state.params)}); it was trained with another model.")
  cut = {name: {group: value for group, value in getattr(abstract_state, name).items() if group in stored[name]}
         for name in GROUPED_FIELDS}
  return abstract_state.replace(**cut)


def restore_params(path: str, abstract_state: Any) -> Any:
  """The latest state stored under `path` (a workdir, its checkpoints/ folder or one step folder), for init_from:
  a TrainState holding the parameter groups the stored run has (every group of `abstract_state`, or a subset)."""
  directory = _stored_state(path)
  checkpointer = ocp.StandardCheckpointer()
  target = _stored_groups(abstract_state, checkpointer.metadata(directory).item_metadata, path)
  try:
    return checkpointer.restore(directory, target)
  except (ValueError, KeyError) as error:
    raise ConfigError(f"config.init_from={path!r}: its parameters do not fit this model ({error}). Start from a "
                      f"run of the same model, or leave init_from empty.") from error


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                      abstract_state, shardings)


def _first_cause(error: BaseException) -> BaseException:
  """The earliest OSError in the chain of `error` (itself if none): orbax's cleanup of a failed save can raise
  again (e.g. "Directory not empty" while another item's writer still runs), and the first write error (the full
  disk) is the one to report."""
  first, seen = error, {id(error)}
  while (error := error.__cause__ or error.__context__) is not None and id(error) not in seen:
    seen.add(id(error))
    first = error if isinstance(error, OSError) else first
  return first
