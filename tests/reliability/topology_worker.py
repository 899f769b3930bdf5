"""One phase of the topology-change test (`test_topology_change.py`), run as its own JAX process.

  python -m tests.reliability.topology_worker PHASE WORKDIR [--coordinator H:P --num_processes N --process_id I]

Phases (the caller sets XLA_FLAGS to the device count per process):
- `train`:   1 process x 8 devices, mesh fsdp=8. `trainer.run` trains STEPS steps and checkpoints the last one;
             the checkpoint read back with the same shardings is the reference `ref_<STEPS>.npz`.
- `reshard`: 2 processes x 2 devices, mesh fsdp=2 x tensor=2. Restores step STEPS with this mesh's shardings,
             checks every addressable shard against the reference, adds 1 to every leaf on this mesh and saves
             that as step STEPS + 1 (with a Grain iterator continued from the 1-process data checkpoint).
- `restore`: 1 process x 8 devices, mesh fsdp=8. Restores step STEPS + 1 and checks it against the reference + 1.

Every phase asserts (a failure exits non-zero) and writes `report_<phase>_<process>.json`: per leaf its partition
spec and the shape of one device's shard, how many leaves and shards it compared, and the share of the state's
bytes that is split across devices.
"""

import argparse
import json
import pathlib

import jax
import numpy as np

STEPS = 3
MESHES = {"train": ("fsdp", 8), "reshard": ("fsdp_tp", 4), "restore": ("fsdp", 8)}
DEVICES_PER_PROCESS = {"train": 8, "reshard": 2, "restore": 8}


def _config(phase: str):
  from tests.helpers import tiny_config
  from tokgen_jax.configs import mesh as mesh_presets

  name, num_devices = MESHES[phase]
  config = tiny_config(total_steps=STEPS, checkpoint_every_steps=STEPS, log_every_steps=1, keep_checkpoints=4)
  with config.unlocked():
    config.mesh = mesh_presets.preset(name, num_devices)
  return config


def _flat(tree) -> dict[str, jax.Array]:
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _save_reference(path: pathlib.Path, host_state) -> None:
  leaves = _flat(host_state)
  np.savez(path, paths=np.array(list(leaves)), **{f"leaf{i}": np.asarray(v) for i, v in enumerate(leaves.values())})


def load_reference(path: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path) as stored:
    return {str(name): stored[f"leaf{i}"] for i, name in enumerate(stored["paths"])}


def _check(state, run, reference: dict[str, np.ndarray]) -> dict:
  """Every leaf carries its target sharding and each shard this process holds equals the reference slice."""
  leaves, targets = _flat(state), _flat(run.state_shardings)
  assert list(leaves) == list(reference), "restored state and reference have different leaves"
  layout, shards = {}, 0
  for path, array in leaves.items():
    target = targets[path]
    assert array.sharding.is_equivalent_to(target, array.ndim), f"{path}: {array.sharding} is not {target}"
    assert array.shape == reference[path].shape and array.dtype == reference[path].dtype, path
    assert len(array.addressable_shards) == jax.local_device_count(), path
    for shard in array.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), reference[path][shard.index], err_msg=path, strict=True)
      shards += 1
    layout[path] = [str(target.spec), list(array.addressable_shards[0].data.shape)]
  split = [leaf.nbytes for leaf in leaves.values() if not leaf.sharding.is_fully_replicated]
  return {"leaves": len(leaves), "shards": shards, "layout": layout, "sharded_leaves": len(split),
          "sharded_bytes": sum(split) / sum(leaf.nbytes for leaf in leaves.values())}


def _setup(phase: str, workdir: pathlib.Path):
  from tokgen_jax import run as run_lib

  assert jax.local_device_count() == DEVICES_PER_PROCESS[phase], jax.local_devices()
  config = _config(phase)
  run = run_lib.setup(config, str(workdir))
  assert run.mesh.size == MESHES[phase][1] == jax.device_count()
  return config, run


def _restore(run, workdir: pathlib.Path, step: int, data_iterator=None):
  from tokgen_jax import checkpoint

  manager = checkpoint.Manager(str(workdir), keep=4)
  try:
    return manager.restore(step, run.abstract_state, data_iterator)
  finally:
    manager.close()


def _train_iterator(config):
  from tokgen_jax import data

  return data.make_pipeline(config.data, "train", global_batch_size=config.batch_size)


def train(workdir: pathlib.Path) -> dict:
  from tokgen_jax import trainer

  config, run = _setup("train", workdir)
  summary = trainer.run(config, str(workdir), "train")
  assert summary["step"] == STEPS, summary
  state = _restore(run, workdir, STEPS)
  _save_reference(workdir / f"ref_{STEPS}.npz", jax.device_get(state))
  return _check(state, run, load_reference(workdir / f"ref_{STEPS}.npz"))


def _bumped(run, state):
  """A state only this mesh computed: every leaf + 1 (so the step becomes STEPS + 1), kept in its shardings."""
  bump = jax.jit(lambda tree: jax.tree.map(lambda leaf: leaf + 1, tree), in_shardings=(run.state_shardings,),
                 out_shardings=run.state_shardings)
  return bump(state)


def _bumped_reference(reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """What `_bumped` computes, on the host (float32 and uint32 `+ 1` round and wrap the same way)."""
  return {path: np.asarray(value + 1, dtype=value.dtype) for path, value in reference.items()}


def reshard(workdir: pathlib.Path) -> dict:
  from tokgen_jax import checkpoint, config as config_lib

  config, run = _setup("reshard", workdir)
  assert jax.process_count() == 2 and dict(run.mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 2}
  # The 1-process data checkpoint holds the position in the global stream, which is the same for any process
  # count (`streams.global_stream`), so this run's iterator continues from it.
  train_iter = _train_iterator(config)
  state = _restore(run, workdir, STEPS, train_iter)
  assert train_iter.get_state() == {"next_index": STEPS}, train_iter.get_state()
  report = _check(state, run, load_reference(workdir / f"ref_{STEPS}.npz"))
  batch = next(train_iter)  # the local half of global batch STEPS + 1
  assert batch["image"].shape[0] == config.batch_size // 2, batch["image"].shape
  manager = checkpoint.Manager(str(workdir), keep=4)
  assert manager.save(STEPS + 1, _bumped(run, state), train_iter, config_lib.to_json(config))
  manager.wait()
  manager.close()
  return report


def restore(workdir: pathlib.Path) -> dict:
  config, run = _setup("restore", workdir)
  train_iter = _train_iterator(config)
  state = _restore(run, workdir, STEPS + 1, train_iter)
  assert train_iter.get_state() == {"next_index": STEPS + 1}, train_iter.get_state()
  return _check(state, run, _bumped_reference(load_reference(workdir / f"ref_{STEPS}.npz")))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("phase", choices=sorted(MESHES))
  parser.add_argument("workdir", type=pathlib.Path)
  parser.add_argument("--coordinator")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args()
  if args.coordinator:  # as tokgen_jax.main does: gloo collectives on CPU, before the backend starts
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  report = {"train": train, "reshard": reshard, "restore": restore}[args.phase](args.workdir)
  report |= {"process_count": jax.process_count(), "local_devices": jax.local_device_count()}
  (args.workdir / f"report_{args.phase}_{jax.process_index()}.json").write_text(json.dumps(report))


if __name__ == "__main__":
  main()
