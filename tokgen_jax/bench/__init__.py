"""Benchmarks that print figures (`python -m tokgen_jax.bench.<name>`), and the timing they share."""

import statistics
import time

import jax


def compile_and_time(fn, *inputs, repeats: int) -> dict[str, float]:
  """Compile `jax.jit(fn)` for `inputs`, call it once to warm up (first-call allocation is not steady state),
  then time `repeats` calls: `{"compile_s", "median_s", "min_s", "max_s", "flops"}` (`flops` from XLA's cost
  analysis of the compiled program, 0 where the backend gives none; a `lax` loop's body counts once)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*inputs).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*inputs))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    times.append(time.perf_counter() - start)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per computation
  return {"compile_s": compile_s, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "flops": float((cost or {}).get("flops", 0.0))}
