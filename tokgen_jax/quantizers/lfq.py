"""Lookup-free quantization (MAGVIT-v2, Yu et al. 2024, §3.1): sign codes over `{-1,1}^d` and an entropy penalty.

The vocabulary `{-1,1}^d` holds 2^d codes and is never materialized: quantizing is a sign per dimension, the
index is the bit pattern, and the entropy terms factorize over bits (exactly per sample, by groups of bits for
the batch). Token ids for generators split into `k` sub-tokens of `d/k` bits with `factorize_indices`
(MAGVIT-v2 predicts a 2^18 vocabulary as two 2^9 heads).

Bit order is little-endian, like Open-MAGVIT2: bit `i` is 1 when the code is positive in dimension `i`, and
`index = Σ_i bit_i · 2^i`. Up to 31 bits an index is one int32; beyond, indices are `[..., ceil(d/31)]` int32
words of 31 bits each, lowest bits in word 0 (the sign bit of every word stays 0).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.quantizers.base import QuantizerOutput, codebook_statistics

WORD_BITS = 31  # bits per int32 index word: the sign bit stays clear so every word is a valid non-negative id
EXACT_ENTROPY_MAX_BITS = 14  # up to here the batch entropy is exact over all 2^d codes
USAGE_MAX_BITS = 16  # up to here codebook usage is a bincount over all 2^d codes


def num_index_words(bits: int) -> int:
  """How many int32 words an index of `bits` bits takes (1 means the plain `[...]` layout)."""
  return max(1, math.ceil(bits / WORD_BITS))


def indices_from_bits(bits: jax.Array) -> jax.Array:
  """0/1 array `[..., d]` → int32 indices `Σ_i bit_i·2^i`: `[...]` for d ≤ 31, else `[..., ceil(d/31)]` words."""
  d = bits.shape[-1]
  bits = bits.astype(jnp.int32)
  if d <= WORD_BITS:
    return jnp.sum(jnp.left_shift(bits, jnp.arange(d, dtype=jnp.int32)), axis=-1, dtype=jnp.int32)
  words = num_index_words(d)
  padded = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, words * WORD_BITS - d)])
  padded = padded.reshape(*bits.shape[:-1], words, WORD_BITS)
  return jnp.sum(jnp.left_shift(padded, jnp.arange(WORD_BITS, dtype=jnp.int32)), axis=-1, dtype=jnp.int32)


def bits_from_indices(indices: jax.Array, d: int) -> jax.Array:
  """Inverse of `indices_from_bits`: int32 indices in the layout for `d` bits → int32 0/1 array `[..., d]`."""
  indices = jnp.asarray(indices).astype(jnp.int32)
  if d <= WORD_BITS:
    return jnp.right_shift(indices[..., None], jnp.arange(d, dtype=jnp.int32)) & 1
  words = num_index_words(d)
  if indices.ndim == 0 or indices.shape[-1] != words:
    raise ValueError(f"LFQ indices for {d} bits are [..., {words}] int32 words of {WORD_BITS} bits; "
                     f"got shape {indices.shape}. Pass the indices the quantizer returned.")
  bits = jnp.right_shift(indices[..., None], jnp.arange(WORD_BITS, dtype=jnp.int32)) & 1
  return bits.reshape(*indices.shape[:-1], words * WORD_BITS)[..., :d]


def _check_factors(bits: int, num_factors: int) -> int:
  if num_factors < 1 or bits % num_factors:
    raise ValueError(f"Token factorization needs the bit count to divide evenly: bits={bits} is not divisible "
                     f"by num_factors={num_factors}; choose a divisor of {bits}.")
  sub_bits = bits // num_factors
  if sub_bits > WORD_BITS:
    raise ValueError(f"Each sub-token would hold {sub_bits} bits, more than an int32 id ({WORD_BITS}); "
                     f"raise num_factors to at least {math.ceil(bits / WORD_BITS)}.")
  return sub_bits


def factorize_indices(indices: jax.Array, bits: int, num_factors: int) -> jax.Array:
  """Split LFQ indices into `[..., k]` sub-indices of `bits/k` bits each, lowest bits first.

  Sub-index `j` holds bits `j·d/k … (j+1)·d/k - 1`, so `index = Σ_j sub_j · 2^(j·d/k)`; 2^18 → two 2^9 tokens.
  """
  sub_bits = _check_factors(bits, num_factors)
  flat = bits_from_indices(indices, bits)
  return indices_from_bits(flat.reshape(*flat.shape[:-1], num_factors, sub_bits))


def merge_indices(sub_indices: jax.Array, bits: int, num_factors: int) -> jax.Array:
  """Inverse of `factorize_indices`: `[..., k]` sub-indices → LFQ indices in the layout for `bits`."""
  sub_bits = _check_factors(bits, num_factors)
  if sub_indices.shape[-1] != num_factors:
    raise ValueError(f"merge_indices expects sub-indices [..., {num_factors}], got shape {sub_indices.shape}.")
  flat = bits_from_indices(sub_indices, sub_bits)
  return indices_from_bits(flat.reshape(*flat.shape[:-2], bits))


def binary_entropies(logits: jax.Array) -> jax.Array:
  """Entropy (nats) of Bernoulli(sigmoid(a)) per element, in float32.

  H = p·softplus(-a) + (1-p)·softplus(a) with p = sigmoid(a): the log-sigmoid form of -p·log p - (1-p)·log(1-p).
  Every term is non-negative (no cancellation), and for large |a| a vanishing probability multiplies a finite
  softplus, so values and gradients stay finite where `p·log p` would give 0·(-inf).
  """
  logits = logits.astype(jnp.float32)
  return (jax.nn.sigmoid(logits) * jax.nn.softplus(-logits)
          + jax.nn.sigmoid(-logits) * jax.nn.softplus(logits))


def per_sample_entropy(logits: jax.Array) -> jax.Array:
  """E_z[H(q(·|z))] for per-bit logits `[..., d]`: the mean over tokens of the summed binary entropies.

  Exact: q(c|z) = softmax_c(2τ<z,c>) = Π_i q(c_i|z) because the logit is a sum over bits.
  """
  return jnp.mean(jnp.sum(binary_entropies(logits), axis=-1))


def _code_probabilities(log_pos: jax.Array, log_neg: jax.Array) -> jax.Array:
  """Per-bit log-probabilities `[N, g]` → probabilities of all 2^g codes `[N, 2^g]`, little-endian code order.

  The outer product over bits, taken in log space as one matmul with the constant 0/1 bit table:
  log q(c) = Σ_i [bit_i(c)·log p_i + (1 - bit_i(c))·log(1 - p_i)]. Every term is ≤ 0, so a likely code sums
  only small terms (no large logits cancelling) and an unlikely one underflows to exactly 0.
  """
  g = log_pos.shape[-1]
  bits = ((np.arange(2 ** g)[:, None] >> np.arange(g)) & 1).astype(np.float32)  # [2^g, g]
  selector = np.concatenate([bits, 1.0 - bits], axis=-1).T  # [2g, 2^g]
  log_table = jnp.matmul(jnp.concatenate([log_pos, log_neg], axis=-1), selector,
                         precision=jax.lax.Precision.HIGHEST)
  return jnp.exp(log_table)


def _entropy(probs: jax.Array) -> jax.Array:
  """-Σ p·log p in nats; zero-probability entries contribute 0 to the value and to the gradient."""
  positive = probs > 0
  return -jnp.sum(jnp.where(positive, probs * jnp.log(jnp.where(positive, probs, 1.0)), 0.0))


def _group_entropy(log_pos: jax.Array, log_neg: jax.Array) -> jax.Array:
  """Exact H(E_z[q(c_group|z)]) for one group of g bits, from per-bit log-probabilities `[N, g]`.

  The batch mean of the 2^g code probabilities is formed as `A^T B / N` with A, B the code tables of the low
  and high half of the group (`[N, 2^(g/2)]` each): the same numbers as averaging the full `[N, 2^g]` table,
  without building it. HIGHEST precision keeps TPU matmuls in float32 rather than bfloat16 passes.
  """
  low = log_pos.shape[-1] // 2
  table_low = _code_probabilities(log_pos[:, :low], log_neg[:, :low])
  table_high = _code_probabilities(log_pos[:, low:], log_neg[:, low:])
  mean = jnp.matmul(table_low.T, table_high, precision=jax.lax.Precision.HIGHEST) / log_pos.shape[0]
  return _entropy(mean)


def codebook_entropy(logits: jax.Array, group_size: int) -> jax.Array:
  """H(E_z[q(·|z)]) in nats for per-bit logits `[..., d]`, summed over consecutive groups of `group_size` bits.

  With one group (group_size ≥ d) it is exact. With several it is the sum of the groups' marginal entropies,
  which is ≥ the joint entropy (subadditivity), with equality when the groups are independent under the
  batch-averaged distribution; the last group holds the remaining bits. Cost per group is 2^group_size.
  """
  if group_size < 1:
    raise ValueError(f"LFQ group_size must be ≥ 1, got {group_size}.")
  logits = logits.astype(jnp.float32).reshape(-1, logits.shape[-1])
  log_pos, log_neg = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)  # log p, log(1 - p), both stable
  n, d = logits.shape
  full = d // group_size  # the equal-size groups run as one batched (vmapped) computation: one compile, not many
  split = full * group_size
  to_groups = lambda x: jnp.swapaxes(x[:, :split].reshape(n, full, group_size), 0, 1)  # [groups, N, g]
  entropy = jnp.sum(jax.vmap(_group_entropy)(to_groups(log_pos), to_groups(log_neg))) if full else 0.0
  if split < d:
    entropy = entropy + _group_entropy(log_pos[:, split:], log_neg[:, split:])
  return entropy


class LookupFreeQuantizer(nn.Module):
  """LFQ: `z_q = code_scale·sign(z)` per dimension (zero maps to +1), with straight-through gradients.

  Soft assignment q(c|z) = softmax_c(2τ<z, c>) over the codes c = code_scale·{-1,1}^d, τ = inv_temperature
  (= softmax(-τ‖z-c‖²) because ‖c‖² is constant). It factorizes over bits: q(c_i=+1|z) = sigmoid(4τ·s·z_i)
  with s = code_scale. The loss (MAGVIT-v2 §3.1 entropy penalty `E[H(q(z))] - H[E(q(z))]`, with γ weighting
  the batch term as in Open-MAGVIT2) is

    entropy_weight_t · (per_sample_entropy − γ·codebook_entropy) + commitment_weight · mean((z − sg(z_q))²)

  Entropies are in nats and float32. The codebook entropy is exact for d ≤ 14; beyond, it sums the exact
  entropies of consecutive groups of `group_size` bits (an upper bound of the joint entropy, see
  `codebook_entropy`). Indices: little-endian bits, `Σ_i bit_i·2^i`, int32 `[...]` for d ≤ 31 and
  `[..., ceil(d/31)]` words of 31 bits (low bits first) beyond.

  Annealing: with `entropy_anneal_steps > 0` and `entropy_weight_start` set, the entropy weight goes linearly
  from `entropy_weight_start` to `entropy_weight` over that many training steps, counted by `step` in the
  "quantizer_stats" collection (incremented on every `train=True` call where that collection is mutable). Where
  the collection is not mutable the final `entropy_weight` is used.
  """

  bits: int
  inv_temperature: float = 100.0
  entropy_weight: float = 0.1
  commitment_weight: float = 0.25
  codebook_entropy_weight: float = 1.0
  group_size: int = 9
  entropy_anneal_steps: int = 0
  entropy_weight_start: float | None = None
  code_scale: float = 1.0

  @property
  def dim(self) -> int:
    return self.bits

  @property
  def codebook_size(self) -> int:
    """2^d as a Python int (arbitrary precision); the codebook itself is never built."""
    return 2 ** self.bits

  @property
  def bits_per_token(self) -> float:
    return float(self.bits)

  @property
  def annealing(self) -> bool:
    return self.entropy_anneal_steps > 0 and self.entropy_weight_start is not None

  def codes_from_indices(self, indices: jax.Array) -> jax.Array:
    """Indices (either layout, see the class docstring) → code_scale·{-1,1}^d float32 `[..., d]`."""
    bits = bits_from_indices(indices, self.bits)
    return (2.0 * bits.astype(jnp.float32) - 1.0) * self.code_scale

  def _entropy_weight(self, train: bool) -> jax.Array:
    if not self.annealing or not self.is_mutable_collection("quantizer_stats"):
      return jnp.asarray(self.entropy_weight, jnp.float32)
    step = self.variable("quantizer_stats", "step", lambda: jnp.zeros((), jnp.int32))
    fraction = jnp.minimum(step.value.astype(jnp.float32) / self.entropy_anneal_steps, 1.0)
    weight = self.entropy_weight_start + (self.entropy_weight - self.entropy_weight_start) * fraction
    if train:
      step.value = step.value + 1
    return weight

  def _check(self, z: jax.Array):
    if self.bits < 1:
      raise ValueError(f"LookupFreeQuantizer: bits must be ≥ 1, got {self.bits}.")
    if self.entropy_anneal_steps < 0:
      raise ValueError(f"LookupFreeQuantizer: entropy_anneal_steps must be ≥ 0, got {self.entropy_anneal_steps}.")
    if z.shape[-1] != self.bits:
      raise ValueError(f"LookupFreeQuantizer: input has {z.shape[-1]} channels but bits={self.bits}; "
                       f"project the encoder output to {self.bits} channels.")

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    self._check(z)
    z = z.astype(jnp.float32)
    positive = z >= 0  # zero maps to +1 (bit 1)
    quantized = jnp.where(positive, self.code_scale, -self.code_scale).astype(jnp.float32)
    z_q = z + jax.lax.stop_gradient(quantized - z)  # straight-through: d z_q / d z = identity
    indices = indices_from_bits(positive)

    logits = 4.0 * self.inv_temperature * self.code_scale * z  # q(c_i=+1|z) = sigmoid(4τ·s·z_i)
    sample_entropy = per_sample_entropy(logits)
    group_size = self.bits if self.bits <= EXACT_ENTROPY_MAX_BITS else self.group_size
    batch_entropy = codebook_entropy(logits, group_size)
    entropy_loss = sample_entropy - self.codebook_entropy_weight * batch_entropy
    commitment = jnp.mean(jnp.square(z - jax.lax.stop_gradient(quantized)))
    weight = self._entropy_weight(train)
    loss = weight * entropy_loss + self.commitment_weight * commitment

    fraction_positive = jnp.mean(positive.reshape(-1, self.bits).astype(jnp.float32), axis=0)
    metrics = {
        "per_sample_entropy": sample_entropy,
        "codebook_entropy": batch_entropy,
        "commitment": commitment,
        "entropy_loss": entropy_loss,
        "entropy_weight": weight,
        "perplexity": jnp.exp(batch_entropy),
        "bit_balance": jnp.mean(2.0 * jnp.minimum(fraction_positive, 1.0 - fraction_positive)),
    }
    if self.bits <= USAGE_MAX_BITS:
      metrics["codebook_usage"] = codebook_statistics(indices, self.codebook_size)["codebook_usage"]
    return z_q, QuantizerOutput(indices=indices, loss=loss, metrics=metrics)
