"""Benchmark: sampling time per image of VAR (scale by scale) against raster-order AR, same width and depth.

    python -m tokgen_jax.bench.var_sampling --geometry shapes
    python -m tokgen_jax.bench.var_sampling --geometry imagenet --width 256 --layers 4

Both draw class-conditional images in one run, with classifier-free guidance (both batches doubled) and top-k:

- VAR: `var_sampling.sample_scales` over the multi-scale quantizer's scales (`shapes`: 1..8, 155 tokens in 7
  model calls; `imagenet`: VAR's 1..16, 680 tokens in 10), including the f̂ updates between scales;
- raster AR: `sampling.sample_with_cache` (one KV-cached call per token) over the finest grid (64 or 256 tokens),
  an `ARTransformer` with the same width, depth and heads (Llama blocks, SwiGLU of the same hidden width 4C).

Prints the median wall time of `--repeats` draws after a warm-up, seconds per image and the AR/VAR ratio. Weights
are random: the time of a draw does not depend on them.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.bench import compile_and_time
from tokgen_jax.generators import ARTransformer, SamplingSettings, sample_with_cache
from tokgen_jax.generators.var import VARTransformer
from tokgen_jax.generators.var_sampling import sample_scales
from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer

GEOMETRIES = {"shapes": (1, 2, 3, 4, 5, 6, 8), "imagenet": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)}
NUM_CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m tokgen_jax.bench.var_sampling", description=__doc__.splitlines()[0])
  parser.add_argument("--geometry", default="shapes", choices=sorted(GEOMETRIES), help="scales of the tokenizer")
  parser.add_argument("--width", type=int, default=128, help="transformer width of both models")
  parser.add_argument("--layers", type=int, default=4, help="blocks of both models")
  parser.add_argument("--heads", type=int, default=4, help="attention heads of both models")
  parser.add_argument("--vocab", type=int, default=512, help="codebook size")
  parser.add_argument("--vae-dim", type=int, default=8, help="quantizer channels (VAR's inputs)")
  parser.add_argument("--batch", type=int, default=8, help="images drawn at once")
  parser.add_argument("--cfg-scale", type=float, default=3.0, help="guidance scale s (1 turns guidance off)")
  parser.add_argument("--top-k", type=int, default=100, help="top-k filter of both samplers")
  parser.add_argument("--repeats", type=int, default=3, help="timed draws after one warm-up draw")
  args = parser.parse_args(argv)
  if min(args.width, args.layers, args.heads, args.batch, args.repeats, args.vae_dim) < 1 or args.vocab < 2:
    parser.error("sizes, --batch and --repeats must be ≥ 1 and --vocab ≥ 2.")
  return args


def _var(args, scales):
  quantizer = MultiScaleResidualQuantizer(args.vocab, args.vae_dim, scales=scales)
  model = VARTransformer(scales, args.vocab, args.vae_dim, embed_dim=args.width, num_layers=args.layers,
                         num_heads=args.heads, num_classes=NUM_CLASSES)
  size = scales[-1]
  quantizer_variables = jax.jit(lambda key: nn.unbox(quantizer.init(key, jnp.zeros((1, size, size, args.vae_dim)))))(
      jax.random.key(0))
  inputs = jnp.zeros((1, model.num_tokens - 1, args.vae_dim))
  params = jax.jit(lambda key: nn.unbox(model.init(key, inputs, {"label": jnp.zeros((1,), jnp.int32)})["params"]))(
      jax.random.key(1))
  return model, params, quantizer, quantizer_variables


def _raster(args, size):
  model = ARTransformer(vocab_sizes=(args.vocab,), layer_grids=((size, size),), embed_dim=args.width,
                        num_layers=args.layers, num_heads=args.heads, mlp_dim=4 * args.width, conditioning="class",
                        num_classes=NUM_CLASSES)
  params = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1, model.num_tokens), jnp.int32),
                                                   {"label": jnp.zeros((1,), jnp.int32)})["params"]))(jax.random.key(2))
  return model, params


def run(args: argparse.Namespace) -> dict[str, float]:
  scales = GEOMETRIES[args.geometry]
  cond = {"label": jnp.arange(args.batch, dtype=jnp.int32) % NUM_CLASSES}
  settings = SamplingSettings(cfg_scale=args.cfg_scale, cfg_ramp=True, top_k=args.top_k)
  key = jax.random.key(3)
  var_model, var_params, quantizer, quantizer_variables = _var(args, scales)
  ar_model, ar_params = _raster(args, scales[-1])
  feedback = lambda q: lambda f_hat, k, code_map: quantizer.apply(q, f_hat, code_map, k, method="advance")
  var_timing = compile_and_time(
      lambda p, q, c, k: sample_scales(var_model, p, c, k, feedback(q), quantizer.empty_reconstruction(args.batch),
                                       settings), var_params, quantizer_variables, cond, key, repeats=args.repeats)
  ar_timing = compile_and_time(lambda p, c, k: sample_with_cache(ar_model, p, c, k, settings), ar_params, cond, key,
                               repeats=args.repeats)
  count = lambda tree: sum(a.size for a in jax.tree.leaves(tree))
  return {"var_tokens": var_model.num_tokens, "var_steps": var_model.num_scales, "ar_tokens": ar_model.num_tokens,
          "var_params": count(var_params), "ar_params": count(ar_params),
          "var_s": var_timing["median_s"], "ar_s": ar_timing["median_s"],
          "var_s_per_image": var_timing["median_s"] / args.batch, "ar_s_per_image": ar_timing["median_s"] / args.batch,
          "var_compile_s": var_timing["compile_s"], "ar_compile_s": ar_timing["compile_s"],
          "speedup": ar_timing["median_s"] / var_timing["median_s"]}


def main(argv=None) -> dict[str, float]:
  args = parse_args(argv)
  result = run(args)
  device = jax.devices()[0]
  print(f"VAR vs raster AR sampling, geometry={args.geometry} width={args.width} layers={args.layers} "
        f"heads={args.heads} vocab={args.vocab} batch={args.batch} cfg={args.cfg_scale} top_k={args.top_k} "
        f"device={device.platform}:{device.device_kind}")
  for name, steps in (("var", result["var_steps"]), ("ar", result["ar_tokens"])):
    print(f"{name:>4}: {result[f'{name}_tokens']} tokens in {steps} model calls, {result[f'{name}_params']:,} "
          f"params, compile {result[f'{name}_compile_s']:.1f} s, {result[f'{name}_s']:.3f} s per draw, "
          f"{result[f'{name}_s_per_image'] * 1e3:.1f} ms per image")
  print(f"raster AR / VAR time per image: {result['speedup']:.2f}x")
  return result


if __name__ == "__main__":
  main()
