"""Benchmark: peak memory of reading latent shards stays flat as the shard set grows (they are never loaded whole).

    python -m tokgen_jax.bench.latent_reading --examples 10000 --scale 10

Writes two splits of synthetic latents with `LatentShardWriter` (each example: `tokens` int [16, 16] and
`latents` float32 [16, 16, 8], 8.5 KB), one of `--examples` examples and one `--scale` times larger, then reads one
full epoch of each through the training pipeline (`make_pipeline`, shuffled global stream, batches of `--batch`)
in a fresh process, and prints per split: size on disk, examples/s, and the reading process's peak resident
memory (`ru_maxrss`) next to that of a process that only imports the pipeline and opens the split. A loader that
read the split whole would add the split's size to the peak; the lazy one adds a bounded set of mapped shards.
"""

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from tokgen_jax.configs import data as data_presets
from tokgen_jax.data import latents, make_pipeline

_TOKENS, _LATENTS = (16, 16), (16, 16, 8)


def write_split(directory: pathlib.Path, split: str, count: int, shard_size: int) -> int:
  """`count` synthetic examples into `directory/split`; returns the bytes on disk."""
  rng = np.random.default_rng(0)
  chunk = 1000
  with latents.LatentShardWriter(directory, split, shard_size=shard_size) as writer:
    for start in range(0, count, chunk):
      n = min(chunk, count - start)
      writer.add({"tokens": rng.integers(0, 1024, (n, *_TOKENS)),
                  "latents": rng.standard_normal((n, *_LATENTS), np.float32),
                  "label": np.arange(start, start + n)})
  return sum(path.stat().st_size for path in (directory / split).rglob("*") if path.is_file())


def read_epoch(directory: str, split: str, batch: int, open_only: bool) -> dict[str, float]:
  """In this process: one epoch of `split` through the train pipeline (or only open it); peak RSS in MiB."""
  config = data_presets.tokens(directory, train_split=split, num_threads=1, prefetch=2)
  start = time.perf_counter()
  count = len(latents.LatentSource(directory, split))
  seen = 0
  if not open_only:
    iterator = make_pipeline(config, "train", global_batch_size=batch, process_index=0, process_count=1)
    labels = []
    for _ in range(count // batch):
      labels.append(next(iterator)["label"])
    seen = len(np.unique(np.concatenate(labels)))
  seconds = time.perf_counter() - start
  return {"examples": count, "distinct_read": seen, "seconds": seconds,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(directory: pathlib.Path, split: str, batch: int, open_only: bool) -> dict[str, float]:
  command = [sys.executable, "-m", "tokgen_jax.bench.latent_reading", "--child", str(directory), split,
             "--batch", str(batch)] + (["--open-only"] if open_only else [])
  result = subprocess.run(command, check=True, capture_output=True, text=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m tokgen_jax.bench.latent_reading",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=10_000, help="examples of the smaller split")
  parser.add_argument("--scale", type=int, default=10, help="the larger split is this many times bigger")
  parser.add_argument("--shard-size", type=int, default=2_000, help="examples per shard file")
  parser.add_argument("--batch", type=int, default=256, help="global batch size")
  parser.add_argument("--child", nargs=2, metavar=("DIRECTORY", "SPLIT"), help=argparse.SUPPRESS)
  parser.add_argument("--open-only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(read_epoch(args.child[0], args.child[1], args.batch, args.open_only)))
    return {}
  results = {}
  with tempfile.TemporaryDirectory() as root:
    root = pathlib.Path(root)
    for split, count in (("small", args.examples), ("large", args.examples * args.scale)):
      size = write_split(root, split, count, args.shard_size)
      baseline, read = _child(root, split, args.batch, True), _child(root, split, args.batch, False)
      results[split] = {"examples": count, "disk_mib": size / 2**20, "examples_per_s": count / read["seconds"],
                        "distinct_read": read["distinct_read"], "peak_rss_mib": read["peak_rss_mib"],
                        "open_only_peak_rss_mib": baseline["peak_rss_mib"]}
      row = results[split]
      print(f"{split}: {count} examples, {row['disk_mib']:.0f} MiB on disk | one epoch "
            f"{row['examples_per_s']:.0f} examples/s, {row['distinct_read']} distinct | peak RSS "
            f"{row['peak_rss_mib']:.0f} MiB (open only {row['open_only_peak_rss_mib']:.0f} MiB)", flush=True)
  growth = results["large"]["peak_rss_mib"] - results["small"]["peak_rss_mib"]
  print(f"{args.scale}x the data ({results['large']['disk_mib'] - results['small']['disk_mib']:.0f} MiB more on "
        f"disk): peak RSS {growth:+.0f} MiB", flush=True)
  return results


if __name__ == "__main__":
  main()
