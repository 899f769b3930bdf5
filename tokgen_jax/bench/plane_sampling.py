"""Benchmark: diffusion sampling time over four-plane and tri-plane latents against the volumetric latent (seed 000,
Part I: four 17-frame 128² videos in 0.71 s vs 1.59 s, 2.24×).

    python -m tokgen_jax.bench.plane_sampling --grid 5,16,16 --batch 4 --steps 10

At the latent geometry `grid` (5×16×16 for 17×128² clips through MAGVIT-v2's causal VAE) it builds, with the
same width, depth, heads and AdaLN-LoRA rank: the volumetric W.A.L.T. (`walt.WALT`, patch 1: 1280 tokens,
whole-frame spatial windows and all-frames × `--window`² spatiotemporal ones, by default the whole latent so that
both models alternate local attention (a frame, a plane) with global attention) and the plane W.A.L.T. (`plane_walt.PlaneWALT`) over four-plane (672) and
tri-plane (416) tokens. Each draws `batch` class-conditional samples with `--steps` DDIM steps, v-prediction,
self-conditioning and CFG (which doubles the batch), as one jitted `lax` loop; it also times one training
forward+backward (the MSE of the prediction). Prints compile times, median seconds of `--repeats` calls, the
train step's compiled FLOPs (XLA's count, independent of this machine) and each model's ratios to the volumetric
one.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.bench import compile_and_time
from tokgen_jax.generators.diffusion import DiffusionSampling, make_schedule, sample
from tokgen_jax.generators.diffusion.latent_layout import LatentLayout
from tokgen_jax.generators.diffusion.plane_walt import PlaneWALT
from tokgen_jax.generators.diffusion.walt import WALT
from tokgen_jax.tokenizers.factorized import plane_shapes

LATENTS = ("volumetric", "four_plane", "tri_plane")
NUM_CLASSES = 10


def _parse_grid(text: str) -> tuple[int, int, int]:
  try:
    grid = tuple(int(part) for part in text.split(",") if part)
  except ValueError:
    grid = ()
  if len(grid) != 3 or min(grid) < 1 or grid[0] < 2:
    raise argparse.ArgumentTypeError(f"--grid={text!r}: expected the latent t,h,w with t >= 2, like 5,16,16.")
  return grid


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m tokgen_jax.bench.plane_sampling",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--grid", type=_parse_grid, default=(5, 16, 16), help="latent t,h,w (5,16,16 for 17x128²)")
  parser.add_argument("--channels", type=int, default=8, help="latent channels (W.A.L.T.'s 8)")
  parser.add_argument("--width", type=int, default=128, help="transformer width")
  parser.add_argument("--depth", type=int, default=4, help="blocks (pairs of the two attention kinds)")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--window", type=int, default=0,
                      help="the volumetric model's spatiotemporal window (all frames x window x window positions); "
                           "0 (default): the whole latent, so its spatiotemporal blocks are global as the plane "
                           "model's cross-plane blocks are; 8 is the footprint of the 214M W.A.L.T. (4x4 patches "
                           "of 2)")
  parser.add_argument("--batch", type=int, default=4, help="videos drawn at once (the seed's 4)")
  parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
  parser.add_argument("--cfg-scale", type=float, default=3.0, help="classifier-free guidance (≠ 1 doubles the batch)")
  parser.add_argument("--repeats", type=int, default=2, help="timed calls after one warm-up call")
  parser.add_argument("--latents", default=",".join(LATENTS), help=f"comma-separated subset of {LATENTS}")
  args = parser.parse_args(argv)
  args.latents = tuple(name for name in args.latents.split(",") if name)
  if not args.latents or any(name not in LATENTS for name in args.latents):
    parser.error(f"--latents={','.join(args.latents)!r}: choose from {LATENTS}.")
  if min(args.channels, args.width, args.depth, args.heads, args.batch, args.steps, args.repeats) < 1:
    parser.error("--channels, --width, --depth, --heads, --batch, --steps and --repeats must be >= 1.")
  if args.grid[1] != args.grid[2] and not args.window:
    parser.error("--window=0 (the whole latent) needs a square grid; give --window.")
  args.window = args.window or args.grid[1]
  if args.width % args.heads or args.window < 1 or args.grid[1] % args.window or args.grid[2] % args.window:
    parser.error("--width must be divisible by --heads, and the grid's h and w by --window.")
  return args


def _model(args: argparse.Namespace, latent: str) -> nn.Module:
  shared = dict(hidden_size=args.width, depth=args.depth, num_heads=args.heads, adaln_rank=min(64, args.width),
                conditioning="class", num_classes=NUM_CLASSES, self_condition=True)
  if latent == "volumetric":
    return WALT(input_shape=args.grid + (args.channels,), patch_size=1, window=(args.window, args.window), **shared)
  shapes = plane_shapes(latent, args.grid, time_split=1)
  layout = LatentLayout.from_shapes({name: rc + (args.channels,) for name, rc in shapes.items()})
  return PlaneWALT(planes=layout.arrays, **shared)


def _measure(args: argparse.Namespace, latent: str) -> dict[str, float]:
  model = _model(args, latent)
  shape = (args.batch,) + tuple(model.input_shape)
  cond = {"label": jnp.arange(args.batch, dtype=jnp.int32) % NUM_CLASSES}
  t = jnp.zeros((args.batch,), jnp.int32)
  x = jax.random.normal(jax.random.key(0), shape)
  params = jax.jit(lambda key: nn.unbox(model.init(key, x, t, cond)["params"]))(jax.random.key(1))
  schedule = make_schedule("linear", 1000)
  settings = DiffusionSampling(method="ddim", num_steps=args.steps, prediction="v", cfg_scale=args.cfg_scale,
                               self_condition=True)

  def draw(params, x_T, rng):
    guided = {"label": jnp.concatenate([cond["label"]] * (2 if settings.guided else 1))}

    def model_fn(x, t, unconditional, self_cond):
      return model.apply({"params": params}, x, t, guided, unconditional=unconditional, self_cond=self_cond), None

    return sample(model_fn, schedule, x_T, rng, settings)

  def train_loss(params, x):
    prediction = model.apply({"params": params}, x, t + 500, cond, self_cond=x)
    return jnp.mean(jnp.square(prediction - x))

  sampling = compile_and_time(draw, params, x, jax.random.key(2), repeats=args.repeats)
  training = compile_and_time(jax.value_and_grad(train_loss), params, x, repeats=args.repeats)
  return {"tokens": shape[1] if latent != "volumetric" else shape[1] * shape[2] * shape[3],
          "params": sum(p.size for p in jax.tree.leaves(params)), "sample_compile_s": sampling["compile_s"],
          "sample_s": sampling["median_s"], "train_step_s": training["median_s"], "train_flops": training["flops"]}


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
  results = {latent: _measure(args, latent) for latent in args.latents}
  if "volumetric" in results:
    base = results["volumetric"]
    for result in results.values():
      result["sample_speedup"] = base["sample_s"] / result["sample_s"]
      result["train_speedup"] = base["train_step_s"] / result["train_step_s"]
      result["train_flops_ratio"] = base["train_flops"] / max(result["train_flops"], 1.0)
  return results


def main(argv=None) -> dict[str, dict[str, float]]:
  args = parse_args(argv)
  results = run(args)
  device = jax.devices()[0]
  print(f"plane sampling grid={'x'.join(map(str, args.grid))}x{args.channels} width={args.width} depth={args.depth} "
        f"heads={args.heads} batch={args.batch} ddim_steps={args.steps} cfg={args.cfg_scale} "
        f"device={device.platform}:{device.device_kind}")
  for latent, result in results.items():
    speedups = (f", sampling {result['sample_speedup']:.2f}x and training {result['train_speedup']:.2f}x the "
                f"volumetric speed ({result['train_flops_ratio']:.2f}x fewer train FLOPs)"
                if "sample_speedup" in result else "")
    print(f"{latent:>10}: {result['tokens']} tokens, {result['params']:,} params, compile "
          f"{result['sample_compile_s']:.1f} s, {result['sample_s']:.3f} s per {args.batch} videos, train step "
          f"{result['train_step_s']:.3f} s ({result['train_flops'] / 1e9:.2f} GFLOP){speedups}")
  return results


if __name__ == "__main__":
  main()
