"""Device mesh, logical-axis shardings and global batches.

Parameters and activations name their dimensions logically (`batch`, `embed`, `conv_out`, ...);
`config.mesh.logical_axis_rules` maps each name to mesh axes (`data`, `fsdp`, `tensor`). A dimension whose size
the mapped mesh axes do not divide stays replicated, so small layers (an RGB input conv, a norm) never fail to
shard on a large mesh.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokgen_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(shape_config: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolve the `config.mesh.shape` sizes (one of them may be -1: it takes the remaining devices)."""
  sizes = [int(shape_config[axis]) for axis in MESH_AXES]
  unknown = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  if len(unknown) > 1:
    raise ConfigError(f"config.mesh.shape has -1 for {unknown}; at most one axis may fill the remaining devices.")
  known = math.prod(size for size in sizes if size != -1)
  if unknown:
    if num_devices % known:
      raise ConfigError(f"config.mesh.shape={dict(shape_config)} fixes {known} devices, which does not divide the "
                        f"{num_devices} available; pick sizes whose product divides {num_devices}.")
    sizes[MESH_AXES.index(unknown[0])] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"config.mesh.shape={dict(shape_config)} needs {math.prod(sizes)} devices but "
                      f"{num_devices} are available; set one axis to -1 to fill the rest.")
  return tuple(sizes)


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(dict(mesh_config.shape), len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_rules(mesh_config: Any) -> tuple[tuple[str, Any], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in mesh_config.logical_axis_rules)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drop mesh axes from dimensions they do not divide evenly (those dimensions are replicated instead)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    fitted.append(axes if names and dim % math.prod(mesh.shape[n] for n in names) == 0 else None)
  return PartitionSpec(*fitted)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for a pytree whose leaves may be `nn.Partitioned` boxes with logical names."""
  logical_specs = nn.get_partition_spec(abstract_state)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh)),
      mesh_specs, nn.unbox(abstract_state),
      is_leaf=lambda x: isinstance(x, PartitionSpec))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assemble each process's slice of the batch into one global, batch-sharded `jax.Array` per leaf."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str = "batch_size") -> None:
  """`key` names the config field in the error (config.batch_size, config.eval.batch_size)."""
  parallel = data_parallel_size(mesh)
  if global_batch_size % parallel or global_batch_size % jax.process_count():
    raise ConfigError(
        f"config.{key}={global_batch_size} is not divisible by the data-parallel size {parallel} "
        f"(mesh axes data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}) and the {jax.process_count()} "
        f"process(es); set config.{key} to a multiple of {math.lcm(parallel, jax.process_count())}.")
