"""Performance accounting: the FLOPs of a step, device peak FLOP/s and model FLOP utilization (MFU).

FLOPs are counted from the step's jaxpr: `2·M·N·K` per matrix product (`dot_general`, with batch dims) and
`2 · output elements · kernel taps · input channels per group` per convolution, with `scan` bodies multiplied by
their length. XLA's `cost_analysis()` counts a while loop's body once, so a step over scanned transformer layers
would be undercounted by the number of layers; the jaxpr count is exact for matmuls and convolutions and ignores
elementwise work (a few percent in these models). It counts the whole global batch: divide by the device count
for a per-device figure. Under remat the recomputed forward is counted too, so MFU then reads as hardware FLOP
utilization.

Peaks are dense bf16 FLOP/s per device from the vendors' data sheets (TPU v4 275T, v5e 197T, v5p 459T, v6e 918T;
H100/H200 SXM 989T, A100 312T). On CPU the peak is measured: a float32 matmul timed once per process, shared by
the process's devices.
"""

import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

PEAK_FLOPS = {  # device_kind substring → dense bf16 FLOP/s per device
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "H200": 989e12, "H100": 989e12, "A100": 312e12,
}
HBM_BYTES = {  # device_kind substring → memory per device
    "TPU v4": 32 << 30, "TPU v5 lite": 16 << 30, "TPU v5e": 16 << 30, "TPU v5p": 95 << 30, "TPU v5": 95 << 30,
    "TPU v6 lite": 32 << 30, "TPU v6e": 32 << 30, "H200": 141 << 30, "H100": 80 << 30, "A100": 80 << 30,
}


def _lookup(table: dict[str, float], device_kind: str) -> float | None:
  for key in sorted(table, key=len, reverse=True):  # "TPU v5 lite" before "TPU v5"
    if key.lower() in device_kind.lower():
      return table[key]
  return None


@functools.cache
@functools.cache
def measured_cpu_flops(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of this process's CPU on a float32 `size`² matmul (all cores; the best of `repeats`), measured once per
  process: every log line divides by it, and a fresh measurement there would cost time and vary with the load."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a))
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def peak_flops(device: Any) -> float:
  """Peak FLOP/s of one device: the table for accelerators, the measured matmul rate (split over the local
  devices, which share the cores) for CPU."""
  if device.platform == "cpu":
    return measured_cpu_flops() / max(1, len(jax.local_devices(backend="cpu")))
  peak = _lookup(PEAK_FLOPS, device.device_kind)
  if peak is None:
    raise ValueError(f"no peak FLOP/s known for device kind {device.device_kind!r}; add it to perf.PEAK_FLOPS.")
  return peak


def hbm_bytes(device_kind: str) -> int | None:
  value = _lookup(HBM_BYTES, device_kind)
  return None if value is None else int(value)


# ----------------------------------------------------------------------------------------------- FLOP counting


def _prod(values) -> int:
  return math.prod(int(v) for v in values)


def _dot_flops(eqn) -> float:
  (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  contract, batch = _prod(lhs[i] for i in lhs_contract), _prod(lhs[i] for i in lhs_batch)
  lhs_free = _prod(lhs) // max(contract * batch, 1)
  rhs_free = _prod(rhs) // max(contract * batch, 1)
  return 2.0 * batch * lhs_free * rhs_free * contract


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval.shape
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features per group, *spatial)
  taps = _prod(rhs[i] for i in rhs_spec[2:])
  return 2.0 * _prod(eqn.outvars[0].aval.shape) * taps * rhs[rhs_spec[1]]


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item


def jaxpr_flops(jaxpr) -> float:
  """Matmul and convolution FLOPs of a (closed) jaxpr, scan bodies times their length, cond's costliest branch."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(jaxpr_flops(branch) for branch in eqn.params["branches"])
    else:
      total += sum(jaxpr_flops(sub) for sub in _sub_jaxprs(eqn))
  return total


def count_flops(fn: Callable, *args, **kwargs) -> float:
  """FLOPs of one call of `fn(*args)` (arrays or ShapeDtypeStructs) over the whole (global) inputs."""
  return jaxpr_flops(jax.make_jaxpr(fn, **kwargs)(*args))


def mfu(flops_per_device_per_s: float, device: Any) -> float:
  return flops_per_device_per_s / peak_flops(device)
