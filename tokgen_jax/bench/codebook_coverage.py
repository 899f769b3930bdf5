"""How well a trained VQ tokenizer's codebook covers the data it encodes, held out and trained on.

  python -m tokgen_jax.bench.codebook_coverage --config=experiments/quickstart.py:local --workdir=/tmp/quickstart

The script restores the run (EMA weights when kept) and collects the lookup-space vectors the quantizer sees
(`VectorQuantizer.lookup_vectors`). It does this for every held-out eval batch and for `--train_batches`
training batches. For each set it prints the codebook usage and perplexity of the nearest-code assignment, and
the mean squared distance to the nearest code (the quantization error). As a reference it also fits k-means
with K codes (spherical when codes are l2-normalized) to the held-out vectors themselves and reports the same
figures: the usage and error that one K-code codebook fit to exactly those vectors gets.

Held-out perplexity below the training figure, with the fitted reference far above both, means the codebook is
alive on the data it was trained on and the held-out vectors fill only part of it.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax import data
from tokgen_jax import run as run_lib
from tokgen_jax.config import load_experiment
from tokgen_jax.errors import ConfigError
from tokgen_jax.quantizers.vq import VectorQuantizer, kmeans, nearest_code
from tokgen_jax.tasks.base import evaluation_params

GROUP = "autoencoder"


def assignment_figures(vectors: np.ndarray, codes: np.ndarray) -> dict[str, float]:
  """Usage (share of codes chosen at least once), perplexity (exp of the entropy of the code histogram) and the
  mean squared distance of `vectors` `[N, D]` to their nearest of `codes` `[K, D]`."""
  indices = np.asarray(nearest_code(jnp.asarray(vectors), jnp.asarray(codes)))
  shares = np.bincount(indices, minlength=len(codes)) / len(indices)
  used = shares[shares > 0]
  return {"usage": float(np.mean(shares > 0)), "perplexity": float(np.exp(-np.sum(used * np.log(used)))),
          "distortion": float(np.mean(np.sum(np.square(vectors - codes[indices]), axis=-1)))}


def _lookup_fn(run):
  model = run.task.model
  if not isinstance(model.quantizer, VectorQuantizer):
    raise ConfigError(f"codebook_coverage: the tokenizer's quantizer is {type(model.quantizer).__name__}; this "
                      "script measures VQ codebooks (quantizer name 'vq').")

  def lookup(state, images):
    variables = {"params": evaluation_params(state, GROUP), **state.model_state[GROUP]}
    return model.apply(variables, images, method=lambda m, x: m.quantizer.lookup_vectors(m.encoder(x)))

  def codes(state):
    variables = {"params": evaluation_params(state, GROUP), **state.model_state[GROUP]}
    return model.apply(variables, method=lambda m: m.quantizer.codes())

  return jax.jit(lookup), codes


def collect(run, state, lookup, split: str, max_batches: int) -> np.ndarray:
  """Lookup vectors `[N, D]` of up to `max_batches` batches of `split` (held-out padding rows dropped)."""
  key = run.task.input_key
  if split == "eval":
    batches = ((batch[key], mask) for batch, _, mask in run.eval_batches())
  else:
    pipeline = data.make_pipeline(run.config.data, "train", global_batch_size=run.config.batch_size)
    batches = ((jnp.asarray(batch[key]), None) for batch in pipeline)
  vectors = []
  for _, (images, mask) in zip(range(max_batches), batches):
    out = np.asarray(lookup(state, images))
    rows = out.reshape(len(out), -1, out.shape[-1])
    vectors.append((rows if mask is None else rows[np.asarray(mask, bool)]).reshape(-1, out.shape[-1]))
  return np.concatenate(vectors)


def main(argv=None) -> dict[str, dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="the tokenizer's experiment, e.g. experiments/quickstart.py")
  parser.add_argument("--workdir", required=True, help="the trained run")
  parser.add_argument("--train_batches", type=int, default=64)
  parser.add_argument("--kmeans_iterations", type=int, default=50)
  args = parser.parse_args(argv)
  run = run_lib.setup(load_experiment(args.config), args.workdir)
  state, step = run.restore()
  lookup, codes_of = _lookup_fn(run)
  codes = np.asarray(codes_of(state))
  held_out = collect(run, state, lookup, "eval", 10**9)
  train = collect(run, state, lookup, "train", args.train_batches)
  rng = np.random.default_rng(0)
  start = held_out[rng.choice(len(held_out), len(codes), replace=len(held_out) < len(codes))]
  fitted = np.asarray(kmeans(jnp.asarray(held_out), jnp.asarray(start), args.kmeans_iterations,
                             bool(run.task.model.quantizer.l2_normalize)))
  rows = {"held-out, trained codebook": assignment_figures(held_out, codes),
          "train, trained codebook": assignment_figures(train, codes),
          "held-out, k-means fit to it": assignment_figures(held_out, fitted)}
  print(f"step {step}: {len(held_out)} held-out and {len(train)} training vectors, {len(codes)} codes")
  print(f"{'set':<30} {'usage':>7} {'perplexity':>11} {'distortion':>11}")
  for name, figures in rows.items():
    print(f"{name:<30} {figures['usage']:>7.3f} {figures['perplexity']:>11.1f} {figures['distortion']:>11.4f}")
  return rows


if __name__ == "__main__":
  main()
