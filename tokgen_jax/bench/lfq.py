"""Benchmark: jitted forward + backward of the full LFQ loss (entropy + commitment) with respect to z.

    python -m tokgen_jax.bench.lfq --bits 18 --shape 8,16,16 --repeats 20

Prints the device, the compile time and the median, min and max wall time of one value_and_grad call.
"""

import argparse

import jax
import jax.numpy as jnp

from tokgen_jax.bench import compile_and_time
from tokgen_jax.quantizers.lfq import LookupFreeQuantizer


def _parse_shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(part) for part in text.split(",") if part)
  except ValueError:
    shape = ()
  if not shape or min(shape) < 1:
    raise argparse.ArgumentTypeError(f"--shape={text!r}: expected positive comma-separated sizes like 8,16,16.")
  return shape


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m tokgen_jax.bench.lfq", description=__doc__.splitlines()[0])
  parser.add_argument("--bits", type=int, default=18, help="LFQ code bits d (vocabulary 2^d)")
  parser.add_argument("--shape", type=_parse_shape, default=(8, 16, 16), help="token grid, e.g. 8,16,16")
  parser.add_argument("--repeats", type=int, default=20, help="timed calls after one warm-up call")
  parser.add_argument("--group-size", type=int, default=9, help="bits per codebook-entropy group (d > 14)")
  parser.add_argument("--inv-temperature", type=float, default=100.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.bits < 1 or args.repeats < 1:
    parser.error("--bits and --repeats must be ≥ 1.")
  return args


def run(args: argparse.Namespace) -> dict[str, float]:
  quantizer = LookupFreeQuantizer(bits=args.bits, group_size=args.group_size, inv_temperature=args.inv_temperature)
  z = jax.random.normal(jax.random.key(args.seed), (*args.shape, args.bits), jnp.float32)

  def loss(z):
    return quantizer.apply({}, z, train=True)[1].loss

  timing = compile_and_time(jax.value_and_grad(loss), z, repeats=args.repeats)
  return {"compile_s": timing["compile_s"], **{f"{k}_ms": 1e3 * timing[f"{k}_s"] for k in ("median", "min", "max")}}


def main(argv=None):
  args = parse_args(argv)
  tokens = 1
  for size in args.shape:
    tokens *= size
  result = run(args)
  print(f"LFQ bits={args.bits} tokens={tokens} shape={','.join(map(str, args.shape))} "
        f"device={jax.devices()[0].platform}:{jax.devices()[0].device_kind} repeats={args.repeats}")
  print(f"compile: {result['compile_s']:.2f} s")
  print(f"forward+backward: median {result['median_ms']:.2f} ms (min {result['min_ms']:.2f}, "
        f"max {result['max_ms']:.2f})")
  return result


if __name__ == "__main__":
  main()
