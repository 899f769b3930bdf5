"""Benchmark: tokens/s of AR sampling with the KV cache, against full recomputation, a PyTorch peer and the floor.

    python -m tokgen_jax.bench.ar_sampling --grid 16,16 --batch 8 --size local
    python -m tokgen_jax.bench.ar_sampling --size B --vocab 16384 --batch 8 --no-uncached --peer
    python -m tokgen_jax.bench.ar_sampling --size B --vocab 16384 --no-uncached --kernel-layout out_in
    python -m tokgen_jax.bench.ar_sampling --size L --vocab 16384 --no-uncached --peer --dtype bfloat16  # GPU

Each sampler draws the same `grid` tokens (256 for 16x16) after a class prefix with top-k 100, as one jitted
`lax` loop (`generators.sampling.sample_with_cache` / `sample_without_cache`); CFG (`--cfg-scale` ≠ 1) doubles
the rows; `--dtype` sets the compute and weight dtype; `--kernel-layout` picks the layout of the cached sampler's
projection kernels (which streams weights faster at a few rows depends on the CPU). `--peer` times HF
transformers' `LlamaForCausalLM.generate(use_cache=True, do_sample=True, top_k=100)` of the same dimensions
(width, layers, heads, kv heads, SwiGLU width, vocabulary), dtype and device (the GPU when JAX runs there):
random weights, one prompt token per row, as many rows as ours incl. CFG's doubling. The cached sampler's timed
draws alternate with the peer's and with the read that sets the bandwidth floor, so all three see the same
machine state. Prints the device (and the CPU's model name), compile times, the median of `--repeats` draws
after one warm-up, tokens/s (batch x tokens / time), the cached/uncached and cached/peer ratios, and two floors:

- bandwidth: every decode step reads all parameters once, so `tokens x parameter bytes / read bandwidth`, the
  bandwidth measured here by a jitted sum over a buffer of the parameters' size;
- compute: `tokens x 2 x parameters x rows / matmul rate`, the rate measured by a jitted square matmul in
  `--dtype`.

The floor is the larger of the two (a step cannot beat either), per draw. On a lent GPU: `--size B` and
`--size L`, each with `--dtype bfloat16 --no-uncached --peer`.
"""

import argparse
import functools
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.bench import compile_and_time
from tokgen_jax.configs import ar as ar_configs
from tokgen_jax.generators import ARTransformer, SamplingSettings, sample_with_cache, sample_without_cache
from tokgen_jax.generators.sampling import decode_segments
from tokgen_jax.nn.projection import KERNEL_LAYOUTS
from tokgen_jax.nn.transformer import llama_mlp_dim

TOP_K = 100
NUM_CLASSES = 10


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
  parser.add_argument("--cache-buckets", type=int, default=None,
                      help="decode loops over a growing cache (default: sampling.default_cache_buckets)")
  parser.add_argument("--kernel-layout", default="in_out", choices=KERNEL_LAYOUTS,
                      help="projection kernel layout the cached sampler decodes with (ARTransformer.for_decoding)")
  parser.add_argument("--uncached", action=argparse.BooleanOptionalAction, default=True,
                      help="also time full recomputation per token (quadratic; skip it at GPT-B size)")
  parser.add_argument("--peer", action="store_true", help="also time HF transformers' Llama of the same dimensions")
  args = parser.parse_args(argv)
  buckets = 1 if args.cache_buckets is None else args.cache_buckets
  if min(args.batch, args.repeats, buckets) < 1 or args.vocab < 2:
    parser.error("--batch, --repeats and --cache-buckets must be ≥ 1 and --vocab ≥ 2.")
  return args


def _dims(args: argparse.Namespace) -> dict[str, int]:
  embed_dim, num_layers, num_heads, num_kv_heads = ar_configs.SIZES[args.size]
  return dict(embed_dim=embed_dim, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
              mlp_dim=llama_mlp_dim(embed_dim))


def _model(args: argparse.Namespace) -> ARTransformer:
  # Weights in the compute dtype too: a decode step reads every weight, and the peer stores its weights in it.
  dtype = jnp.dtype(args.dtype)
  return ARTransformer(vocab_sizes=(args.vocab,), layer_grids=(args.grid,), conditioning="class",
                       num_classes=NUM_CLASSES, dtype=dtype, param_dtype=dtype, **_dims(args))


def _timed(fn, repeats: int) -> float:
  """Median wall time of `repeats` calls of `fn` (which blocks until its result is ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def read_timer(num_bytes: int):
  """A call returning the seconds of a jitted float32 sum over a buffer of `num_bytes` (each byte read once; the
  median of 3 sums), warmed up."""
  buffer = jnp.ones((max(num_bytes // 4, 1),), jnp.float32)
  total = jax.jit(jnp.sum)
  jax.block_until_ready(total(buffer))
  return lambda: _timed(lambda: jax.block_until_ready(total(buffer)), 3)


def matmul_rate(size: int = 2048, dtype: str = "float32") -> float:
  """FLOP/s of a jitted `[size, size] @ [size, size]` matmul in `dtype`."""
  a = jnp.ones((size, size), dtype)
  product = jax.jit(jnp.matmul)
  jax.block_until_ready(product(a, a))
  return 2 * size ** 3 / _timed(lambda: jax.block_until_ready(product(a, a)), 5)


def floors(num_params: int, param_bytes: int, rows: int, num_tokens: int, bandwidth: float,
           dtype: str = "float32") -> dict[str, float]:
  """Seconds per draw below which no sampler of this model can go here, at `bandwidth` bytes/s of reads and the
  matmul rate in `dtype` (see the module docstring)."""
  rate = matmul_rate(dtype=dtype)
  result = {"read_gb_per_s": bandwidth / 1e9, "matmul_gflop_per_s": rate / 1e9,
            "bandwidth_floor_s": num_tokens * param_bytes / bandwidth,
            "compute_floor_s": num_tokens * 2 * num_params * rows / rate}
  return result | {"floor_s": max(result["bandwidth_floor_s"], result["compute_floor_s"])}


def _peer(args: argparse.Namespace, labels, num_tokens: int):
  """A `draw()` of HF transformers' Llama with this benchmark's dimensions and dtype, and its parameter count. It
  runs on the GPU when JAX does (a CUDA build of torch is then required), else on the CPU."""
  import torch
  import transformers

  device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  if device == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--peer: JAX runs on the GPU but this torch has no CUDA; install a CUDA build of torch to "
                     "time the peer on the same device, or drop --peer.")
  dims = _dims(args)
  config = transformers.LlamaConfig(
      vocab_size=args.vocab, hidden_size=dims["embed_dim"], intermediate_size=dims["mlp_dim"],
      num_hidden_layers=dims["num_layers"], num_attention_heads=dims["num_heads"],
      num_key_value_heads=dims["num_kv_heads"], max_position_embeddings=num_tokens + 1, rms_norm_eps=1e-5)
  torch.manual_seed(0)
  dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
  model = transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
  prompt = torch.as_tensor(labels.tolist(), dtype=torch.long, device=device)[:, None] % args.vocab

  def draw():
    with torch.inference_mode():
      tokens = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=num_tokens,
                              min_new_tokens=num_tokens, do_sample=True, top_k=TOP_K, use_cache=True,
                              pad_token_id=0)
    if device == "cuda":
      torch.cuda.synchronize()
    return tokens

  return draw, sum(p.numel() for p in model.parameters())


def run(args: argparse.Namespace) -> dict[str, float]:
  model = _model(args)
  cond = {"label": jnp.arange(args.batch, dtype=jnp.int32) % NUM_CLASSES}
  params = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1, model.num_tokens), jnp.int32),
                                                   {"label": cond["label"][:1]})["params"]))(jax.random.key(0))
  settings = SamplingSettings(cfg_scale=args.cfg_scale, top_k=TOP_K)
  rows = args.batch * (2 if settings.guided else 1)
  key = jax.random.key(1)
  leaves = jax.tree.leaves(params)
  param_bytes = sum(p.nbytes for p in leaves)
  result = {"tokens": model.num_tokens, "rows": rows, "params": sum(p.size for p in leaves)}
  if args.uncached:
    timing = compile_and_time(lambda p, c, k: sample_without_cache(model, p, c, k, settings), params, cond, key,
                              repeats=args.repeats)
    result |= {"uncached_compile_s": timing["compile_s"], "uncached_s": timing["median_s"]}
  cached = functools.partial(sample_with_cache, cache_buckets=args.cache_buckets, kernel_layout=args.kernel_layout)
  result |= _race(args, lambda p, c, k: cached(model, p, c, k, settings), params, cond, key, rows, model.num_tokens,
                  param_bytes)
  if args.uncached:
    result["speedup"] = result["uncached_s"] / result["cached_s"]
  for name in ("cached", "uncached", "peer"):
    if f"{name}_s" in result:
      result[f"{name}_tokens_per_s"] = args.batch * model.num_tokens / result[f"{name}_s"]
  result |= floors(result["params"], param_bytes, rows, model.num_tokens, param_bytes / result.pop("read_s"),
                   args.dtype)
  result["floor_ratio"] = result["cached_s"] / result["floor_s"]
  return result


def _race(args, sampler, params, cond, key, rows: int, num_tokens: int, param_bytes: int) -> dict[str, float]:
  """Compiles ours, then times it, the peer (with `--peer`) and a read of `param_bytes` in alternation (ours,
  peer, read, ours, ...) after a warm-up of each, so the draws and the bandwidth floor see the same machine state
  (the read rate here moved by half between runs an hour apart)."""
  start = time.perf_counter()
  ours = jax.jit(sampler).lower(params, cond, key).compile()
  result = {"cached_compile_s": time.perf_counter() - start}
  contenders = {"cached": lambda: jax.block_until_ready(ours(params, cond, key))}
  if args.peer:
    contenders["peer"], result["peer_params"] = _peer(args, jnp.concatenate([cond["label"]] * (rows // args.batch)),
                                                      num_tokens)
  read = read_timer(param_bytes)
  for draw in contenders.values():
    draw()
  times = {name: [] for name in (*contenders, "read")}
  for _ in range(args.repeats):
    for name, draw in contenders.items():
      times[name].append(_timed(draw, 1))
    times["read"].append(read())
  result |= {f"{name}_s": statistics.median(seconds) for name, seconds in times.items()}
  if args.peer:
    result["peer_ratio"] = result["peer_s"] / result["cached_s"]
  return result


def cpu_model() -> str:
  """The host CPU's model name (`/proc/cpuinfo`; the platform's processor string elsewhere): matmul kernels and
  so these figures differ between CPUs of the same core count."""
  try:
    with open("/proc/cpuinfo") as info:
      return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown"


def main(argv=None) -> dict[str, float]:
  args = parse_args(argv)
  result = run(args)
  device = jax.devices()[0]
  print(f"AR sampling size={args.size} params={result['params']:,} tokens={result['tokens']} batch={args.batch} "
        f"rows={result['rows']} vocab={args.vocab} cfg={args.cfg_scale} top_k={TOP_K} dtype={args.dtype} "
        f"cache_buckets={len(decode_segments(result['tokens'] - 1, 1, args.cache_buckets))} "
        f"kernel_layout={args.kernel_layout} device={device.platform}:{device.device_kind} cpu={cpu_model()!r}")
  for name in ("cached", "uncached"):
    if f"{name}_s" in result:
      print(f"{name:>8}: compile {result[f'{name}_compile_s']:.1f} s, {result[f'{name}_s']:.3f} s per draw, "
            f"{result[f'{name}_tokens_per_s']:.1f} tokens/s")
  if "speedup" in result:
    print(f"KV-cache speed-up: {result['speedup']:.1f}x")
  if "peer_s" in result:
    print(f"    peer: HF transformers LlamaForCausalLM.generate (params={result['peer_params']:,}), "
          f"{result['peer_s']:.3f} s per draw, {result['peer_tokens_per_s']:.1f} tokens/s; "
          f"cached/peer speed: {result['peer_ratio']:.2f}x")
  print(f"   floor: {result['floor_s']:.3f} s per draw (bandwidth {result['bandwidth_floor_s']:.3f} s at "
        f"{result['read_gb_per_s']:.1f} GB/s read, compute {result['compute_floor_s']:.3f} s at "
        f"{result['matmul_gflop_per_s']:.0f} GFLOP/s); cached is {result['floor_ratio']:.2f}x the floor")
  return result


if __name__ == "__main__":
  main()
