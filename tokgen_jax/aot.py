"""Ahead-of-time compilation for a TPU pod topology from any machine (`--mode=compile`), as MaxText checks configs.

With libtpu installed (`pip install -e ".[tpu]"`), `jax.experimental.topologies` describes a pod, e.g.
`v5e:16x16` (256 v5e chips), `v4:4x4x4`, `v5p:4x4x4`, as compile-only devices. The experiment's mesh is laid
over them, the train step (and a generator's sampler) is lowered with the real shardings and compiled by the TPU
compiler, and the per-chip memory of the executable (arguments, outputs, temporaries; donated state counted once)
is compared with the chip's HBM. Nothing runs and no TPU is needed.
"""

import dataclasses
import os
import re
import time
from typing import Any, Callable

import jax
import numpy as np

from tokgen_jax import perf, sharding, tasks, writers
from tokgen_jax.errors import ConfigError
from tokgen_jax.run import abstract_batch, count_params, setup
from tokgen_jax.tasks import second_stage

_TOPOLOGY = re.compile(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})")


def topology_devices(topology: str) -> list:
  """Compile-only devices of a TPU topology `'v5e:16x16'`, in the order `jax.sharding.Mesh` expects."""
  if not _TOPOLOGY.fullmatch(topology or ""):
    raise ConfigError(f"topology {topology!r} is not of the form CHIP:SHAPE with CHIP in v4, v5e, v5p, v6e, "
                      f"e.g. --topology=v5e:16x16 or v4:4x4x4; set --topology or config.topology.")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server off a TPU VM
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other JAX processes on this machine hold libtpu too
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return list(topologies.get_topology_desc(topology, "tpu").devices)
  except (RuntimeError, ValueError) as error:
    raise ConfigError(f"could not describe TPU topology {topology!r} ({error}). Compiling for a pod needs libtpu: "
                      f"pip install -e '.[tpu]' (any machine; no TPU is used).") from error


@dataclasses.dataclass
class CompiledReport:
  """Per-chip figures of one compiled program."""

  name: str
  compile_s: float
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  code_bytes: int
  xla_flops: float  # cost_analysis: per chip, loop bodies counted once
  flops: float  # jaxpr count, per chip
  rows: int = 0  # the global batch it was compiled for

  @property
  def total_bytes(self) -> int:
    """Peak-ish footprint: inputs + outputs + temporaries, donated (aliased) buffers counted once."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes + self.code_bytes


def compile_report(name: str, fn: Callable, abstract_args: tuple, num_devices: int, **jit_kwargs) -> CompiledReport:
  start = time.perf_counter()
  compiled = jax.jit(fn, **jit_kwargs).lower(*abstract_args).compile()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  return CompiledReport(
      name=name, compile_s=seconds, argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes), code_bytes=int(memory.generated_code_size_in_bytes),
      xla_flops=float(cost.get("flops", 0.0)), flops=perf.count_flops(fn, *abstract_args) / num_devices)


def _gib(value: float) -> str:
  return f"{value / (1 << 30):.2f} GiB"


def format_report(report: CompiledReport, hbm: int | None) -> str:
  fit = "" if hbm is None else f" of {_gib(hbm)} HBM ({100 * report.total_bytes / hbm:.0f}%)"
  rows = f" for {report.rows} rows" if report.rows else ""
  return (f"{report.name}{rows}: compiled in {report.compile_s:.1f} s; per chip: arguments {_gib(report.argument_bytes)}, "
          f"outputs {_gib(report.output_bytes)}, temporaries {_gib(report.temp_bytes)}, donated "
          f"{_gib(report.alias_bytes)}, code {_gib(report.code_bytes)} → total {_gib(report.total_bytes)}{fit}; "
          f"{report.flops / 1e12:.3f} TFLOP per chip per call (XLA cost analysis: {report.xla_flops / 1e12:.3f})")


def check_fits(reports: list[CompiledReport], hbm: int | None, topology: str) -> None:
  too_big = [r for r in reports if hbm is not None and r.total_bytes > hbm]
  if too_big:
    worst = max(too_big, key=lambda r: r.total_bytes)
    batch_key = "config.eval.sample_batch_size" if worst.name == "sampler" else "config.batch_size"
    raise ConfigError(f"{worst.name} needs {_gib(worst.total_bytes)} per chip on {topology}, more than the "
                      f"{_gib(hbm)} of HBM. Shard more (config.mesh fsdp/tensor), lower {batch_key}, enable "
                      f"remat (config.model.remat_policy) or pick a larger topology.")


def _compile_reports(run, config: Any, num_devices: int) -> list[CompiledReport]:
  """Every phase of the train step, and the sampler when the task has one."""
  batch_sharding = sharding.batch_sharding(run.mesh)
  batch = abstract_batch(run.task.example_batch(), int(config.batch_size), batch_sharding)
  conditions = run.task.example_conditions()  # concrete zeros: made here, not under the topology's mesh
  phases = run.task.phases()
  reports = []
  with run.context():
    for phase in phases:
      name = "train_step" if len(phases) == 1 else f"train_step[{phase.name}]"
      report = compile_report(
          name, tasks.phase_step(run.task, phase.name), (run.abstract_state, batch), num_devices,
          in_shardings=(run.state_shardings, batch_sharding), out_shardings=(run.state_shardings, None),
          donate_argnums=0)
      reports.append(dataclasses.replace(report, rows=int(config.batch_size)))
    if conditions is not None:
      reports.append(_sampler_report(run, config, conditions, num_devices))
  return reports


def _sampler_report(run, config: Any, conditions: dict[str, Any], num_devices: int) -> CompiledReport:
  """The sampler at the rows the eval draws per call (`second_stage.eval_sample_batch`), under config.sample's
  settings."""
  count = int(config.eval.protocol.get("num_samples", 0)) or int(config.eval.batch_size)
  rows = second_stage.eval_sample_batch(config.eval, count)
  rows_sharding = sharding.batch_sharding(run.mesh)
  if rows % num_devices:
    rows_sharding = jax.sharding.NamedSharding(run.mesh, jax.P())  # too few rows to split: each chip draws all
  cond = abstract_batch(conditions, rows, rows_sharding)
  settings = run.task.sample_settings(config.sample)
  key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=jax.sharding.NamedSharding(run.mesh, jax.P()))
  sample = lambda state, cond, rng: run.task.sample(state, cond, rng, settings, rows)
  report = compile_report("sampler", sample, (run.abstract_state, cond, key), num_devices,
                          in_shardings=(run.state_shardings, rows_sharding, key.sharding))
  return dataclasses.replace(report, rows=rows)


def compile_experiment(config: Any, workdir: str, topology: str = "") -> dict[str, Any]:
  """--mode=compile: every phase of the train step (and the sampler, when the task samples) of `config` for
  `topology` (default `config.topology`); prints and returns per-chip memory and FLOPs, raises ConfigError if it
  does not fit."""
  topology = topology or str(config.get("topology", "") or "")
  devices = topology_devices(topology)
  run = setup(config, workdir, devices=devices)
  reports = _compile_reports(run, config, len(devices))
  hbm = perf.hbm_bytes(devices[0].device_kind)
  params = count_params(run.abstract_state)
  print(f"compile {config.get('task')} for {topology} ({len(devices)} x {devices[0].device_kind}), mesh "
        f"{dict(run.mesh.shape)}, global batch {config.batch_size}, {params:,} parameters", flush=True)
  for report in reports:
    print("  " + format_report(report, hbm), flush=True)
  summary = {"topology": topology, "num_devices": len(devices), "device_kind": devices[0].device_kind,
             "hbm_bytes": hbm, "mesh": dict(run.mesh.shape), "params": params,
             **{r.name: dataclasses.asdict(r) | {"total_bytes": r.total_bytes} for r in reports}}
  writers.write_json_atomic(run.workdir / f"compile_{topology.replace(':', '_')}.json", summary)
  check_fits(reports, hbm, topology)
  return summary
