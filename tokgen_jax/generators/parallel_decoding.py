"""MaskGIT's parallel decoding (Chang et al. 2022, §3.2; google-research/maskgit parallel_decode.py) as one jitted
`lax.fori_loop`.

The state is the tokens `[B, N, F]` and the `unknown` mask `[B, N]`. Step t = 0 .. T−1:

1. logits of every position from the model. Under classifier-free guidance the batch runs twice (conditional rows,
   then unconditional rows) and `logits = u + s_t·(c − u)`. `s_t` is `cfg_scale`, or with `cfg_ramp` the ramp
   `1 + (cfg_scale − 1)·t/(T − 1)` (Muse's guidance "warm-up"; the same ramp as the AR sampler);
2. `temperature` and `top_k`, then a draw for every unknown position and sub-token with `fold_in(rng, t)`. Known
   tokens stay as they are;
3. confidence `log p(drawn) + τ·(1 − r)·Gumbel` with r = (t+1)/T and τ = `choice_temperature` (MaskGIT: 4.5).
   Under factorization log p sums over the sub-tokens. Known positions have confidence +inf;
4. the `max(1, min(unknown − 1, floor(n₀·γ(r))))` least confident positions are masked again, n₀ being the row's
   unknown count before step 0 and γ the mask schedule. Every other position keeps its draw.

The last step keeps every draw. Decoding can start from partial tokens (`tokens` with `known`), which is how
editing and the conditional tasks pose. `exit_steps=k` stops after the first T − k steps of the same T-step
schedule: step T − k − 1 becomes the last, and `fill` completes it. By default `fill` keeps the draw of every
unknown position. MarkovGen passes its MRF pass instead (`generators/markovgen.py`).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.mask_schedules import check_schedule, lowest_ranked, mask_ratio
from tokgen_jax.generators.masked import MaskedTransformer
from tokgen_jax.generators.sampling import filter_logits, guidance_scale

KNOWN_CONFIDENCE = jnp.inf
FINAL_FILLS = ("draw", "argmax", "mrf")

# fill(logits [B, N, F, V], drawn [B, N, F], tokens [B, N, F], unknown [B, N], rng) -> tokens [B, N, F]
Fill = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class MaskedSamplingSettings:
  """How a masked model decodes. `cfg_scale=1` turns guidance off; `greedy` takes the argmax and, with
  `choice_temperature=0`, makes the decoder deterministic."""

  num_steps: int = 12
  schedule: str = "cosine"
  temperature: float = 1.0
  top_k: int = 0
  choice_temperature: float = 4.5
  cfg_scale: float = 1.0
  cfg_ramp: bool = False
  exit_steps: int = 0
  final_fill: str = "draw"  # how the last step completes: "draw" (keep_draws), "argmax" or "mrf" (MarkovGen's MRF)
  greedy: bool = False

  def __post_init__(self):
    check_schedule(self.schedule, "sampling schedule")
    if self.final_fill not in FINAL_FILLS:
      raise ConfigError(f"masked decoding: final_fill={self.final_fill!r} is not one of {FINAL_FILLS}.")
    if self.num_steps < 1 or not 0 <= self.exit_steps < self.num_steps:
      raise ConfigError(f"masked decoding: num_steps={self.num_steps} must be >= 1 and exit_steps="
                        f"{self.exit_steps} in [0, num_steps) (the steps an early exit or MarkovGen skips).")
    if self.temperature <= 0 and not self.greedy:
      raise ConfigError(f"masked decoding: temperature={self.temperature} must be > 0; use greedy=True for argmax.")
    if self.top_k < 0 or self.choice_temperature < 0:
      raise ConfigError(f"masked decoding: top_k={self.top_k} and choice_temperature={self.choice_temperature} "
                        "must be >= 0.")

  @property
  def guided(self) -> bool:
    return self.cfg_scale != 1.0

  @property
  def decoded_steps(self) -> int:
    """Model calls one decode makes: the schedule's steps minus the skipped ones."""
    return self.num_steps - self.exit_steps


def guided_logits(model: MaskedTransformer, params: Any, tokens: jax.Array, unknown: jax.Array,
                  cond: dict[str, jax.Array], settings: MaskedSamplingSettings, step: jax.Array) -> jax.Array:
  """The model's float32 logits `[B, N, F, V]` of step `step`, guided as `settings` says."""
  variables = {"params": params}
  if not settings.guided:
    return model.apply(variables, tokens, unknown, cond)
  batch = tokens.shape[0]
  doubled = lambda a: jnp.concatenate([a, a], axis=0)
  flags = jnp.concatenate([jnp.zeros((batch,), bool), jnp.ones((batch,), bool)])
  logits = model.apply(variables, doubled(tokens), doubled(unknown), jax.tree.map(doubled, cond), flags)
  conditional, unconditional = jnp.split(logits, 2, axis=0)
  return unconditional + guidance_scale(settings, step, settings.num_steps) * (conditional - unconditional)


def draw(logits: jax.Array, rng: jax.Array, settings: MaskedSamplingSettings) -> tuple[jax.Array, jax.Array]:
  """Per position and sub-token a token from `[B, N, F, V]` logits, and the position's log-probability of what it
  drew, summed over sub-tokens (`[B, N, F]` int32, `[B, N]`)."""
  if settings.greedy:
    filtered = logits
    drawn = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    filtered = filter_logits(logits / settings.temperature, settings.top_k)
    drawn = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(filtered, axis=-1), drawn[..., None], axis=-1)[..., 0]
  return drawn, jnp.sum(log_probs, axis=-1)


def remask_count(initial_unknown: jax.Array, unknown: jax.Array, step: jax.Array,
                 settings: MaskedSamplingSettings) -> jax.Array:
  """`[B]` positions left masked after step `step`: `max(1, min(unknown − 1, floor(n₀·γ((t+1)/T))))`, and never
  more than are unknown (a fully given row re-masks nothing)."""
  progress = (step + 1).astype(jnp.float32) / settings.num_steps
  count = jnp.floor(initial_unknown.astype(jnp.float32) * mask_ratio(settings.schedule, progress)).astype(jnp.int32)
  remaining = jnp.sum(unknown, axis=-1).astype(jnp.int32)
  return jnp.minimum(jnp.maximum(1, jnp.minimum(remaining - 1, count)), remaining)


def _step_keys(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(draw key, Gumbel key) of step `step`."""
  draw_key, gumbel_key = jax.random.split(jax.random.fold_in(rng, step))
  return draw_key, gumbel_key


def decode_step(model: MaskedTransformer, params: Any, cond: dict[str, jax.Array], rng: jax.Array,
                settings: MaskedSamplingSettings, tokens: jax.Array, unknown: jax.Array, initial_unknown: jax.Array,
                step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One decoding step with re-masking: the new `(tokens, unknown)`."""
  draw_key, gumbel_key = _step_keys(rng, step)
  logits = guided_logits(model, params, tokens, unknown, cond, settings, step)
  drawn, log_prob = draw(logits, draw_key, settings)
  tokens = jnp.where(unknown[..., None], drawn, tokens)
  progress = (step + 1).astype(jnp.float32) / settings.num_steps
  noise = settings.choice_temperature * (1.0 - progress) * jax.random.gumbel(gumbel_key, log_prob.shape)
  confidence = jnp.where(unknown, log_prob + noise, KNOWN_CONFIDENCE)
  return tokens, lowest_ranked(confidence, remask_count(initial_unknown, unknown, step, settings)) & unknown


def keep_draws(logits: jax.Array, drawn: jax.Array, tokens: jax.Array, unknown: jax.Array,
               rng: jax.Array) -> jax.Array:
  """The default `fill`: every unknown position takes its draw of the last step."""
  del logits, rng
  return jnp.where(unknown[..., None], drawn, tokens)


def argmax_fill(logits: jax.Array, drawn: jax.Array, tokens: jax.Array, unknown: jax.Array,
                rng: jax.Array) -> jax.Array:
  """Every unknown position takes its most likely token under the last step's logits (each on its own)."""
  del drawn, rng
  return jnp.where(unknown[..., None], jnp.argmax(logits, axis=-1).astype(jnp.int32), tokens)


def _batch_size(cond: dict[str, jax.Array], tokens: jax.Array | None, batch_size: int | None) -> int:
  if tokens is not None:
    return tokens.shape[0]
  if cond:
    return next(iter(cond.values())).shape[0]
  if not batch_size:
    raise ConfigError("masked decoding without a condition or start tokens needs batch_size.")
  return batch_size


def parallel_decode(model: MaskedTransformer, params: Any, cond: dict[str, jax.Array], rng: jax.Array,
                    settings: MaskedSamplingSettings = MaskedSamplingSettings(), tokens: jax.Array | None = None,
                    known: jax.Array | None = None, batch_size: int | None = None,
                    fill: Fill = keep_draws) -> jax.Array:
  """Tokens `[B, N, F]` decoded in `settings.decoded_steps` model calls (jit the caller). `tokens` with `known`
  `[B, N]` (True = given) starts from partial tokens; the given ones never change."""
  batch = _batch_size(cond, tokens, batch_size)
  shape = (batch, model.num_tokens, model.num_factors)
  tokens = jnp.zeros(shape, jnp.int32) if tokens is None else tokens.astype(jnp.int32)
  unknown = jnp.ones(shape[:2], bool) if known is None else ~known.astype(bool)
  if tokens.shape != shape or unknown.shape != shape[:2]:
    raise ConfigError(f"masked decoding: start tokens {tokens.shape} and known {unknown.shape} must be {shape} and "
                      f"{shape[:2]}.")
  initial_unknown = jnp.sum(unknown, axis=-1)

  def step(index, carry):
    return decode_step(model, params, cond, rng, settings, *carry, initial_unknown, index)

  last = settings.decoded_steps - 1
  tokens, unknown = jax.lax.fori_loop(0, last, step, (tokens, unknown))
  draw_key, fill_key = _step_keys(rng, jnp.int32(last))
  logits = guided_logits(model, params, tokens, unknown, cond, settings, jnp.int32(last))
  drawn, _ = draw(logits, draw_key, settings)
  return fill(logits, drawn, tokens, unknown, fill_key)
