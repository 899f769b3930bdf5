"""`--mode=bench`: the training step's speed and the share of time lost to input and checkpoints.

    tokgen --config=experiments/quickstart.py:local --workdir=/tmp/qb --mode=bench
"""

import time
from typing import Any

import jax

from tokgen_jax import checkpoint, config as config_lib, data, perf, sharding, writers
from tokgen_jax.run import Run, Timer, compile_step

BENCH_DEFAULTS = {"warmup_steps": 3, "steps": 20, "checkpoint_every_steps": 10}


def bench(run_: Run) -> dict[str, Any]:
  """--mode=bench: `config.bench.steps` train steps after `warmup_steps` (fresh state, the real input pipeline,
  an asynchronous checkpoint every `checkpoint_every_steps` into WORKDIR/bench/): step time, examples/s,
  TFLOP/s and MFU per device, and two shares of training wall time. Data wait: fetches during which the device
  ran out of work (`Timer.waiting`). Checkpoint blocking: the part of a save the loop waits for (writing goes on
  in the background), per save, as a share of the `config.checkpoint_every_steps` steps between two saves.
  Writes bench.json."""
  config = run_.config
  settings = BENCH_DEFAULTS | dict(config.get("bench") or {})
  train_iter = data.make_pipeline(config.data, "train", global_batch_size=config.batch_size)
  state = run_.init_state()
  phase = run_.task.phases()[-1].name  # the steady-state step (a GAN's, with its discriminator)
  compiled, flops = compile_step(run_, state, sharding.global_batch(next(train_iter), run_.mesh), phase=phase)
  for _ in range(int(settings["warmup_steps"])):
    state, metrics = compiled(state, sharding.global_batch(next(train_iter), run_.mesh))
  jax.block_until_ready(state)
  manager = checkpoint.Manager(str(run_.workdir / "bench"), keep=1)
  blocked, saves = 0.0, 0
  steps, every = int(settings["steps"]), int(settings["checkpoint_every_steps"])
  timer = Timer()
  for index in range(1, steps + 1):
    with timer.waiting(metrics):
      batch = sharding.global_batch(next(train_iter), run_.mesh)
    state, metrics = compiled(state, batch)
    if every and index % every == 0:
      jax.block_until_ready(state)  # the step's own compute is not checkpoint time
      begin = time.perf_counter()
      manager.save(index, state, train_iter, config_lib.to_json(config))
      blocked += time.perf_counter() - begin
      saves += 1
  jax.block_until_ready((state, metrics))
  total = time.perf_counter() - timer.start - blocked
  manager.wait()
  manager.close()
  return _report_bench(run_, flops, steps, total, timer.data_wait, blocked / max(saves, 1)) | {"phase": phase}


def _report_bench(run_: Run, flops: float, steps: int, total: float, data_wait: float, block_per_save: float):
  step_s = total / steps
  between_saves = int(run_.config.checkpoint_every_steps) * step_s
  device = jax.devices()[0]
  result = {"steps": steps, "step_ms": 1e3 * step_s, "examples_per_sec": run_.config.batch_size / step_s,
            "tflops_per_device": flops / step_s / 1e12, "mfu": perf.mfu(flops / step_s, device),
            "data_wait_frac": data_wait / total, "checkpoint_block_ms": 1e3 * block_per_save,
            "checkpoint_block_frac": block_per_save / (between_saves + block_per_save),
            "device": f"{device.platform}:{device.device_kind}", "num_devices": run_.mesh.size,
            "peak_tflops_per_device": perf.peak_flops(device) / 1e12}
  if run_.is_chief:
    writers.write_json_atomic(run_.workdir / "bench.json", result)
    print(f"bench {steps} steps on {run_.mesh.size} x {result['device']}: {result['step_ms']:.1f} ms/step, "
          f"{result['examples_per_sec']:.1f} examples/s, {result['tflops_per_device']:.4f} TFLOP/s/device, "
          f"MFU {100 * result['mfu']:.1f}% (peak {result['peak_tflops_per_device']:.3f} TFLOP/s/device), data wait "
          f"{100 * result['data_wait_frac']:.2f}%, checkpoint blocking {result['checkpoint_block_ms']:.0f} ms per "
          f"save = {100 * result['checkpoint_block_frac']:.2f}% at one save every "
          f"{run_.config.checkpoint_every_steps} steps", flush=True)
  return result
