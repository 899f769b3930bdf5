"""Orbax checkpoints of one run: items `state` (the TrainState), `data` (the Grain iterator) and `config` (JSON).

Checkpoints live in `workdir/checkpoints/<step>/`, are written asynchronously and atomically (Orbax renames a
finished temporary directory), and are pruned to the newest `keep`.
"""

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from tokgen_jax.errors import ConfigError


class Manager:
  def __init__(self, workdir: str, *, keep: int, asynchronous: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=asynchronous,
            create=True),
        item_names=("state", "data", "config"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any, config_json: dict) -> bool:
    """Start an asynchronous save of `step` unless it is already saved; returns whether one started."""
    if step == self.latest_step():
      return False
    return self._manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config_json)))

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """The state saved at `step`, placed with the shardings of `abstract_state`; restores the iterator in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as error:
      raise ConfigError(
          f"checkpoint {self.directory / str(step)} could not be restored into the current model ({error}). "
          f"It was written by a different config or is damaged; use a fresh --workdir, or delete that step "
          f"directory to fall back to an older one.") from error
    return restored.state

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _latest_state(directory: pathlib.Path, abstract_state: Any) -> Any | None:
  if not directory.is_dir():
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_names=("state", "data", "config"))
  step = manager.latest_step()
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))).state


def restore_params(path: str, abstract_state: Any) -> Any:
  """The latest state stored under `path` (a workdir, its checkpoints/ folder or one step folder), for init_from."""
  root = pathlib.Path(path).absolute()
  for directory in (root / "checkpoints", root):
    state = _latest_state(directory, abstract_state)
    if state is not None:
      return state
  if (root / "state").is_dir():
    return ocp.StandardCheckpointer().restore(root / "state", abstract_state)
  raise ConfigError(f"config.init_from={path!r} holds no checkpoint; point it at a workdir, its checkpoints/ "
                    f"folder or a step folder of a finished run.")


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                      abstract_state, shardings)
