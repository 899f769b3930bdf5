"""`--mode=summary`: what an experiment builds, from abstract shapes only (`jax.eval_shape`; no training, no
accelerator, no weights): parameters per group and per top-level submodule, the batch a step sees, the task's own
figures (`Task.describe`: latent/token shapes and dtypes, bits per pixel, sequence lengths and vocabularies), and
the FLOPs per example of every train-step phase. Prints a table and writes WORKDIR/summary.json.

    tokgen --config=experiments/magvit2_video.py:ucf101 --workdir=/tmp/summary --mode=summary
"""

from typing import Any

import numpy as np

from tokgen_jax import perf, sharding, tasks, writers
from tokgen_jax.run import Run, abstract_batch, count_elements, count_params


def parameter_counts(abstract_state: Any) -> dict[str, Any]:
  """`{group: {"total": n, submodule: n, ...}}` over the trainable parameter groups."""
  counts = {}
  for group, params in abstract_state.params.items():
    children = {name: count_elements(child) for name, child in params.items()} if isinstance(params, dict) else {}
    counts[group] = {"total": count_elements(params), **children}
  return counts


def _shapes(tree: dict[str, Any]) -> dict[str, Any]:
  return {key: {"shape": list(np.shape(value)), "dtype": str(np.asarray(value).dtype)} for key, value in tree.items()}


def train_flops_per_example(run_: Run) -> dict[str, float]:
  """FLOPs of one train step per example (forward, backward and update; `perf.count_flops`), per phase."""
  batch_size = int(run_.config.batch_size)
  batch = abstract_batch(run_.task.example_batch(), batch_size)
  flops = {}
  with run_.context():
    for phase in run_.task.phases():
      flops[phase.name] = perf.count_flops(tasks.phase_step(run_.task, phase.name), run_.abstract_state,
                                           batch) / batch_size
  return flops


def summarize(run_: Run) -> dict[str, Any]:
  summary = {"task": str(run_.config.task), "parameters": count_params(run_.abstract_state),
             "parameter_groups": parameter_counts(run_.abstract_state),
             "example_batch": _shapes(run_.task.example_batch()),
             "phases": {phase.name: phase.start_step for phase in run_.task.phases()},
             **run_.task.describe(),
             "train_flops_per_example": train_flops_per_example(run_),
             "global_batch": int(run_.config.batch_size),
             "mesh": {name: int(size) for name, size in run_.mesh.shape.items()},
             "data_parallel": sharding.data_parallel_size(run_.mesh)}
  if run_.is_chief:
    writers.write_json_atomic(run_.workdir / "summary.json", summary)
    print(format_summary(summary), flush=True)
  return summary


def _lines(value: Any, indent: str = "  ") -> list[str]:
  if isinstance(value, dict):
    return [line for key, item in value.items() for line in
            ([f"{indent}{key}:"] + _lines(item, indent + "  ") if isinstance(item, dict) else
             [f"{indent}{key}: {_format(item)}"])]
  return [f"{indent}{_format(value)}"]


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, int) and abs(value) >= 10_000:
    return f"{value:,}"
  return str(value)


def format_summary(summary: dict[str, Any]) -> str:
  return "summary\n" + "\n".join(_lines(summary))
