"""Benchmark: tokens/s of AR sampling with the KV cache against full recomputation of the sequence per token.

    python -m tokgen_jax.bench.ar_sampling --grid 16,16 --batch 8 --size local

Both samplers draw the same `grid` tokens (256 for 16x16) after a class prefix, as one jitted `lax` loop each
(`generators.sampling.sample_with_cache` / `sample_without_cache`), with classifier-free guidance off or on.
Prints the device, compile times, the median wall time of `--repeats` draws, tokens/s (batch x tokens / time)
and the cached/uncached speed-up.
"""

import argparse
import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.bench import compile_and_time
from tokgen_jax.configs import ar as ar_configs
from tokgen_jax.generators import ARTransformer, SamplingSettings, sample_with_cache, sample_without_cache


def _parse_grid(text: str) -> tuple[int, ...]:
  try:
    grid = tuple(int(part) for part in text.split(",") if part)
  except ValueError:
    grid = ()
  if len(grid) not in (2, 3) or min(grid) < 1:
    raise argparse.ArgumentTypeError(f"--grid={text!r}: expected h,w or t,h,w like 16,16.")
  return grid


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m tokgen_jax.bench.ar_sampling", description=__doc__.splitlines()[0])
  parser.add_argument("--grid", type=_parse_grid, default=(16, 16), help="token grid, e.g. 16,16 (256 tokens)")
  parser.add_argument("--size", default="local", choices=sorted(ar_configs.SIZES), help="AR model preset")
  parser.add_argument("--vocab", type=int, default=1024, help="codebook size")
  parser.add_argument("--batch", type=int, default=8, help="sequences drawn at once")
  parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance (≠ 1 doubles the batch)")
  parser.add_argument("--repeats", type=int, default=3, help="timed draws after one warm-up draw")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args(argv)
  if args.batch < 1 or args.repeats < 1 or args.vocab < 2:
    parser.error("--batch and --repeats must be ≥ 1 and --vocab ≥ 2.")
  return args


def _model(args: argparse.Namespace) -> ARTransformer:
  embed_dim, num_layers, num_heads, num_kv_heads = ar_configs.SIZES[args.size]
  return ARTransformer(vocab_sizes=(args.vocab,), layer_grids=(args.grid,), embed_dim=embed_dim,
                       num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads, conditioning="class",
                       num_classes=10, dtype=jnp.dtype(args.dtype))


def run(args: argparse.Namespace) -> dict[str, float]:
  model = _model(args)
  cond = {"label": jnp.arange(args.batch, dtype=jnp.int32) % 10}
  params = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1, model.num_tokens), jnp.int32),
                                                   {"label": cond["label"][:1]})["params"]))(jax.random.key(0))
  settings = SamplingSettings(cfg_scale=args.cfg_scale, top_k=100)
  key = jax.random.key(1)
  result = {"tokens": model.num_tokens, "params": sum(p.size for p in jax.tree.leaves(params))}
  for name, sampler in (("cached", sample_with_cache), ("uncached", sample_without_cache)):
    timing = compile_and_time(lambda p, c, k, s=sampler: s(model, p, c, k, settings), params, cond, key,
                              repeats=args.repeats)
    result[f"{name}_compile_s"] = timing["compile_s"]
    result[f"{name}_s"] = timing["median_s"]
    result[f"{name}_tokens_per_s"] = args.batch * model.num_tokens / timing["median_s"]
  result["speedup"] = result["uncached_s"] / result["cached_s"]
  return result


def main(argv=None) -> dict[str, float]:
  args = parse_args(argv)
  result = run(args)
  device = jax.devices()[0]
  print(f"AR sampling size={args.size} params={result['params']:,} tokens={result['tokens']} batch={args.batch} "
        f"cfg={args.cfg_scale} dtype={args.dtype} device={device.platform}:{device.device_kind}")
  for name in ("cached", "uncached"):
    print(f"{name:>8}: compile {result[f'{name}_compile_s']:.1f} s, {result[f'{name}_s']:.3f} s per draw, "
          f"{result[f'{name}_tokens_per_s']:.1f} tokens/s")
  print(f"KV-cache speed-up: {result['speedup']:.1f}x")
  return result


if __name__ == "__main__":
  main()
