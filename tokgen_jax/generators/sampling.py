"""Sampling an `ARTransformer`: prefill + KV-cache decoding as one jitted `lax` loop, and its full-recompute twin.

Per visual token i (`sample_with_cache`):

1. logits of x_i come from the previous step (the prefill gives those of x_0);
2. classifier-free guidance: the batch runs twice, conditional rows then unconditional rows, and
   `logits = u + s_i·(c − u)` (Ho & Salimans 2022, eq. 6 in logit space, as LlamaGen). `s_i = cfg_scale`, or
   with `cfg_ramp` the linear ramp `1 + (cfg_scale − 1)·i/(N − 1)`: guidance grows from none at the first step to
   full at the last (see "Guidance conventions" below);
3. temperature, then top-k and top-p (nucleus; Holtzman et al. 2020) filtering, then a categorical draw with
   `fold_in(rng, i)` (or argmax when `greedy`); both halves of a CFG batch take the same token;
4. feed x_i at position P + i to get the logits of x_{i+1}.

`sample_without_cache` recomputes the whole (padded) sequence for every token instead: quadratic work, the
reference the cached loop must equal (greedy decoding is token-for-token identical) and the baseline of
`bench/ar_sampling.py`. Both return `[B, N]` ids in sequence order (each id within its layer's vocabulary).

Guidance conventions. `SamplingSettings.cfg_scale` is always s of `u + s·(c − u)`; papers quote other numbers,
which `guidance_scale_from(value, convention)` converts (`CFG_CONVENTIONS`):
- "standard": the quoted number is s (Ho & Salimans, LlamaGen, DiT, Muse). s = 1 is no guidance.
- "var": VAR (`FoundationVision/VAR`) quotes cfg with `logits = (1 + t)·c − t·u = u + (1 + t)·(c − u)`, and
  ramps `t = cfg·i/(S − 1)` over its S scales. That is this module's linear ramp with s = 1 + cfg: VAR's FID
  setting cfg 1.5 is `cfg_scale=2.5, cfg_ramp=True` here, and VAR's cfg 0 is no guidance.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.ar import ARTransformer


CFG_CONVENTIONS = ("standard", "var")


def _convention_offset(convention: str) -> float:
  """s minus the number `convention` quotes: 1 for VAR's t (s = 1 + t), 0 for the standard s."""
  if convention not in CFG_CONVENTIONS:
    raise ConfigError(f"CFG convention {convention!r} is not known; set cfg_convention to one of {CFG_CONVENTIONS}.")
  return 1.0 if convention == "var" else 0.0


def guidance_scale_from(value: float, convention: str = "standard") -> float:
  """The scale s of `u + s·(c − u)` for a guidance number quoted in `convention` (see the module docstring)."""
  return float(value) + _convention_offset(convention)


def guidance_value_in(scale: float, convention: str = "standard") -> float:
  """The inverse of `guidance_scale_from`: the number `convention` quotes for this module's scale s."""
  return float(scale) - _convention_offset(convention)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """`top_k=0` and `top_p=1` disable those filters; `cfg_scale=1` turns guidance (and the doubled batch) off."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  cfg_scale: float = 1.0
  cfg_ramp: bool = False
  greedy: bool = False

  def __post_init__(self):
    if self.temperature <= 0 and not self.greedy:
      raise ConfigError(f"sampling temperature={self.temperature} must be > 0; use greedy=True for argmax.")
    if self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ConfigError(f"sampling top_k={self.top_k} must be >= 0 and top_p={self.top_p} in (0, 1].")

  @property
  def guided(self) -> bool:
    return self.cfg_scale != 1.0


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Set logits outside the top-k and outside the smallest set of mass >= top_p to -inf (`[..., V]`)."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token if the mass strictly before it is < top_p (the top token is always kept).
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def guidance_scale(settings: SamplingSettings, index: jax.Array, num_tokens: int) -> jax.Array:
  if not settings.cfg_ramp:
    return jnp.float32(settings.cfg_scale)
  return 1.0 + (settings.cfg_scale - 1.0) * index.astype(jnp.float32) / max(num_tokens - 1, 1)


def choose(logits: jax.Array, rng: jax.Array, index: jax.Array, settings: SamplingSettings,
           num_tokens: int) -> jax.Array:
  """Token ids `[B]` for the real batch from `[B, V]` logits (`[2B, V]`, conditional rows first, under CFG)."""
  if settings.guided:
    cond, uncond = jnp.split(logits, 2, axis=0)
    logits = uncond + guidance_scale(settings, index, num_tokens) * (cond - uncond)
  if settings.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  key = jax.random.fold_in(rng, index)
  if settings.top_k and settings.top_k < logits.shape[-1]:
    # The draw is over the k survivors only: the same distribution as a draw over all V logits with the rest at
    # -inf, from k instead of V random numbers (at V = 16384 the Gumbel noise cost more than a GPT-B decode step).
    top_logits, top_ids = jax.lax.top_k(logits / settings.temperature, settings.top_k)
    top_logits = filter_logits(top_logits, 0, settings.top_p)
    pick = jax.random.categorical(key, top_logits, axis=-1)
    return jnp.take_along_axis(top_ids, pick[..., None], axis=-1)[..., 0].astype(jnp.int32)
  logits = filter_logits(logits / settings.temperature, 0, settings.top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def guided_inputs(cond: dict[str, jax.Array], batch: int, settings: SamplingSettings):
  """The model batch: `cond` as is, or conditional rows followed by the same rows marked unconditional."""
  if not settings.guided:
    return cond, jnp.zeros((batch,), bool)
  doubled = {key: jnp.concatenate([value, value], axis=0) for key, value in cond.items()}
  return doubled, jnp.concatenate([jnp.zeros((batch,), bool), jnp.ones((batch,), bool)])


def _batch_size(cond: dict[str, jax.Array], batch_size: int | None) -> int:
  if cond:
    return next(iter(cond.values())).shape[0]
  if not batch_size:
    raise ConfigError("sampling without a condition needs batch_size (how many sequences to draw).")
  return batch_size


CACHE_BUCKET_POSITIONS = 64  # default: one decode loop per this many cache positions ...
MAX_CACHE_BUCKETS = 4  # ... and at most this many (each loop compiles its own decode step)


def default_cache_buckets(cache_length: int) -> int:
  return max(1, min(MAX_CACHE_BUCKETS, cache_length // CACHE_BUCKET_POSITIONS))


def decode_segments(num_steps: int, prefix_length: int, buckets: int | None = None) -> list[tuple[int, int, int]]:
  """`(first, end, cache_length)` of each decode loop: the steps feeding visual tokens `[first, end)` run against a
  cache of `prefix_length + end` positions, so a step's attention reads at most a `buckets`-th of the sequence
  more than is filled, instead of the whole cache (at GPT-B size and 256 tokens, attention over the full cache
  is a third of a CPU decode step). `buckets=None`: `default_cache_buckets` of the full cache."""
  buckets = default_cache_buckets(prefix_length + num_steps) if buckets is None else buckets
  if buckets < 1:
    raise ConfigError(f"sampling cache_buckets={buckets} must be >= 1 (1 = one loop over the full-length cache).")
  bounds = np.linspace(0, num_steps, min(buckets, max(num_steps, 1)) + 1).round().astype(int)
  return [(int(a), int(b), prefix_length + int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _grown(cache: Any, length: int) -> Any:
  return tuple(c.grown(length) for c in cache) if isinstance(cache, tuple) else cache.grown(length)


def sample_with_cache(model: ARTransformer, params: Any, cond: dict[str, jax.Array], rng: jax.Array,
                      settings: SamplingSettings = SamplingSettings(), batch_size: int | None = None,
                      cache_buckets: int | None = None, kernel_layout: str = "in_out") -> jax.Array:
  """`[B, N]` tokens by prefill + one cached decode per token (jit the caller). The decode runs as
  `cache_buckets` `lax.fori_loop`s over a cache grown between them (`decode_segments`; None: one per 64 cache
  positions, at most 4); the draw is the same for any bucket count. The layers decode unrolled with projection
  kernels in `kernel_layout` (`ARTransformer.for_decoding`: "in_out", the trained layout, or "out_in", faster
  on some CPUs); greedy draws are the same in either."""
  batch = _batch_size(cond, batch_size)
  model_cond, unconditional = guided_inputs(cond, batch, settings)
  rows = unconditional.shape[0]
  model, params = model.for_decoding(params, model_cond, kernel_layout)  # per-layer weights and caches
  variables = {"params": params}
  num_tokens = model.num_tokens
  segments = decode_segments(num_tokens - 1, model.prefix_length, cache_buckets)
  cache = model.init_cache(rows, segments[0][2] if segments else model.prefix_length)
  logits, cache = model.apply(variables, model_cond, unconditional, cache, method="prefill")

  def step(index, carry):
    tokens, logits, cache = carry
    token = choose(logits, rng, index, settings, num_tokens)
    tokens = tokens.at[:, index].set(token)
    fed = jnp.concatenate([token, token]) if settings.guided else token
    logits, cache = model.apply(variables, fed, index, cache, method="decode")
    return tokens, logits, cache

  tokens = jnp.zeros((batch, num_tokens), jnp.int32)
  for first, end, length in segments:
    tokens, logits, cache = jax.lax.fori_loop(first, end, step, (tokens, logits, _grown(cache, length)))
  last = num_tokens - 1
  return tokens.at[:, last].set(choose(logits, rng, jnp.int32(last), settings, num_tokens))


def sample_without_cache(model: ARTransformer, params: Any, cond: dict[str, jax.Array], rng: jax.Array,
                         settings: SamplingSettings = SamplingSettings(), batch_size: int | None = None) -> jax.Array:
  """The same draw as `sample_with_cache`, recomputing the full causal forward over a padded buffer per token."""
  batch = _batch_size(cond, batch_size)
  model_cond, unconditional = guided_inputs(cond, batch, settings)
  variables = {"params": params}
  num_tokens = model.num_tokens

  def step(index, tokens):
    fed = jnp.concatenate([tokens, tokens]) if settings.guided else tokens
    # Causality makes the zeros after position index irrelevant to the logits at index.
    logits = model.apply(variables, fed, model_cond, unconditional)
    token = choose(jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False), rng, index, settings,
                   num_tokens)
    return tokens.at[:, index].set(token)

  return jax.lax.fori_loop(0, num_tokens, step, jnp.zeros((batch, num_tokens), jnp.int32))
