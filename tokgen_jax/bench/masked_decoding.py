"""Benchmark: a trained masked model decoded three ways, each timed and scored (MarkovGen, seed 001: Muse 442 ms →
MarkovGen 281 ms per image, no quality loss).

  python -m tokgen_jax.bench.masked_decoding --config=experiments/markovgen_shapes.py:local \
      --workdir=/tmp/markovgen_shapes --per_class 5

For every class of the shapes world (`--per_class` samples each), under the run's sampling protocol
(`config.sample`, guided), with the same seed, it decodes:

- `full`: all `num_steps` steps;
- `early_exit`: the first `num_steps − exit_steps` steps, the last one's draws kept;
- `early_exit_argmax`: the same steps, each position left taking its most likely token (the MRF's fill without
  its pairwise terms);
- `markovgen`: the same steps, then one MRF pass over the last step's logits fills what is left.

Each is one jitted loop, compiled before it is timed. The script prints the median seconds per image of
`--repeats` calls, and the share of decoded images whose shape has the prompted color and form (`color_shape`,
`metrics.shapes`). It then times one decoder step (the guided model call on the same batch) against one MRF
pass.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax import run as run_lib
from tokgen_jax.bench import compile_and_time
from tokgen_jax.config import load_experiment
from tokgen_jax.data import shapes
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import parallel_decoding
from tokgen_jax.metrics import shapes as shape_metrics

VARIANTS = {"full": dict(exit_steps=0, final_fill="draw"), "early_exit": dict(final_fill="draw"),
            "early_exit_argmax": dict(final_fill="argmax"), "markovgen": dict(final_fill="mrf")}


def _settings(task, sample_config, **overrides) -> parallel_decoding.MaskedSamplingSettings:
  config = sample_config.copy_and_resolve_references()
  with config.unlocked():
    config.update(overrides)
  return task.sample_settings(config)


def _timed_draw(task, state, conditions, settings, seed: int, repeats: int) -> tuple[np.ndarray, float]:
  """Samples and the median seconds of `repeats` calls after a compiling one."""
  batch = len(conditions["label"])
  drawn = task.draw(state, conditions, settings, seed, batch)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    drawn = task.draw(state, conditions, settings, seed, batch)
    times.append(time.perf_counter() - start)
  return drawn, float(np.median(times))


def measure(config, workdir: str, per_class: int = 5, repeats: int = 3) -> dict[str, dict[str, float]]:
  """The three decodings of the trained run of `config` in `workdir`, and one decoder step against one MRF pass."""
  run = run_lib.setup(config, workdir)
  task = run.task
  if task.markovgen is None or task.conditioning != "class":
    raise ConfigError("masked_decoding: the experiment needs a class-conditional masked model with a MarkovGen MRF "
                      "(config.markovgen.enabled), e.g. experiments/markovgen_shapes.py.")
  state, step = run.restore()
  labels = np.repeat(np.arange(shapes.NUM_CLASSES, dtype=np.int32), per_class)
  sample_config = config.sample.copy_and_resolve_references()
  with sample_config.unlocked():
    sample_config.exit_steps = int(sample_config.exit_steps) or int(config.markovgen.exit_steps)
  rows = {}
  for name, overrides in VARIANTS.items():
    settings = _settings(task, sample_config, **overrides)
    drawn, seconds = _timed_draw(task, state, {"label": labels}, settings, int(sample_config.seed), repeats)
    scores = shape_metrics.score_prompts([int(label) for label in labels], task.decode(run, drawn))
    rows[name] = {"steps": settings.decoded_steps, "seconds_per_image": seconds / len(labels),
                  "color_shape": scores["color_shape"]}
  rows |= _component_times(task, state, labels, _settings(task, sample_config, final_fill="mrf"), repeats)
  _print(rows, step, len(labels))
  return rows


def main(argv=None) -> dict[str, dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="a masked experiment with a MarkovGen MRF")
  parser.add_argument("--workdir", required=True, help="its trained run")
  parser.add_argument("--per_class", type=int, default=5, help="samples per shapes-world class")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  return measure(load_experiment(args.config), args.workdir, args.per_class, args.repeats)


def _component_times(task, state, labels, settings, repeats: int) -> dict[str, dict[str, float]]:
  """Seconds of one guided decoder step and of one MRF pass on the same batch (half the tokens unknown)."""
  params, mrf_params = task.eval_params(state), state.params["markovgen"]
  batch = len(labels)
  tokens = jnp.zeros((batch, task.model.num_tokens, 1), jnp.int32)
  unknown = jnp.asarray(np.arange(task.model.num_tokens)[None].repeat(batch, 0) % 2 == 0)
  cond = {"label": jnp.asarray(labels)}
  step = lambda p: parallel_decoding.guided_logits(task.model, p, tokens, unknown, cond, settings, jnp.int32(0))
  logits = jax.jit(step)(params)
  unary = logits[..., 0, :task.markovgen.vocab_size]
  mrf = lambda p, u: task.markovgen.apply({"params": p}, u, ~unknown, tokens[..., 0])  # u an argument: no folding
  return {"decoder_step": {"seconds": compile_and_time(step, params, repeats=repeats)["median_s"]},
          "mrf_pass": {"seconds": compile_and_time(mrf, mrf_params, unary, repeats=repeats)["median_s"]}}


def _print(rows, step: int, images: int) -> None:
  print(f"step {step}: {images} images")
  full = rows["full"]["seconds_per_image"]
  for name in VARIANTS:
    row = rows[name]
    print(f"{name:<17} {row['steps']:>3} steps  {1000 * row['seconds_per_image']:8.2f} ms/image  "
          f"speed-up {full / row['seconds_per_image']:5.2f}x  color_shape {row['color_shape']:.3f}")
  print(f"one decoder step {1000 * rows['decoder_step']['seconds']:.2f} ms, one MRF pass "
        f"{1000 * rows['mrf_pass']['seconds']:.2f} ms (batch of {images})")


if __name__ == "__main__":
  main()
