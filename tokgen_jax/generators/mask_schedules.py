"""Mask-ratio schedules γ(r) of masked token models and the random masks they draw.

γ maps progress r ∈ [0, 1] to the fraction of tokens still masked: γ(0) = 1 (all masked), γ(1) = 0. Training draws
r ~ U(0, 1) per example and masks `ceil(γ(r)·n)` of its n maskable tokens. Decoding step t of T keeps
`floor(n·γ((t+1)/T))` tokens masked (`generators/parallel_decoding.py`). The closed forms:

- `cosine`: `cos(π/2 · r)`. MaskGIT's choice (Chang et al. 2022, §3.3; mask_schedule.py), also Muse and MAGVIT.
- `linear`: `1 − r`.
- `square`: `1 − r²` (MaskGIT's "pow" with exponent 2).
- `arccos`: `arccos(r) / (π/2)` (open-muse's mask_schedules).

Like MaskGIT's `schedule`, the ratio is clipped to [1e-6, 1] so it never reaches exactly 0.
"""

import math

import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError

SCHEDULES = ("cosine", "linear", "square", "arccos")
MIN_RATIO = 1e-6


def mask_ratio(schedule: str, progress: jax.Array) -> jax.Array:
  """γ(r): the fraction of tokens masked at progress r ∈ [0, 1] (float32, clipped to [1e-6, 1])."""
  r = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  if schedule == "cosine":
    ratio = jnp.cos(0.5 * math.pi * r)
  elif schedule == "linear":
    ratio = 1.0 - r
  elif schedule == "square":
    ratio = 1.0 - jnp.square(r)
  elif schedule == "arccos":
    ratio = jnp.arccos(r) / (0.5 * math.pi)
  else:
    raise ConfigError(f"mask schedule {schedule!r} is not one of {SCHEDULES}.")
  return jnp.clip(ratio, MIN_RATIO, 1.0)


def check_schedule(schedule: str, where: str) -> None:
  if schedule not in SCHEDULES:
    raise ConfigError(f"{where}={schedule!r} is not a mask schedule; choose one of {SCHEDULES}.")


def lowest_ranked(scores: jax.Array, counts: jax.Array) -> jax.Array:
  """bool `[B, N]`: in each row, the `counts[b]` positions with the lowest scores (ties broken by position)."""
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1, stable=True), axis=-1, stable=True)
  return ranks < counts[:, None]


def random_mask(rng: jax.Array, schedule: str, maskable: jax.Array,
                progress: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """A training mask `[B, N]` (True = masked): per example r ~ U(progress) (U(0, 1) by default), then
  `clip(ceil(γ(r)·n), 1, n)` of its n `maskable` positions, uniformly at random. Positions that are not maskable
  (a task's given tokens) are never masked. A row with no maskable position gets no mask."""
  ratio_rng, order_rng = jax.random.split(rng)
  batch = maskable.shape[0]
  available = jnp.sum(maskable, axis=-1)
  ratio = mask_ratio(schedule, jax.random.uniform(ratio_rng, (batch,), minval=progress[0], maxval=progress[1]))
  counts = jnp.clip(jnp.ceil(ratio * available), 1, available).astype(jnp.int32)
  scores = jnp.where(maskable, jax.random.uniform(order_rng, maskable.shape), 2.0)  # others rank last
  return lowest_ranked(scores, counts) & maskable
