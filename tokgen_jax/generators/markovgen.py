"""MarkovGen (Jayasumana et al. 2023, arXiv 2308.10997): a Markov random field over a token grid's labels that
replaces the last steps of a masked decoder.

Energy of a labelling x of the N grid positions (seed 001, NUMERICS.md "MarkovGen"):

    E(x) = Σ_i −u_i(x_i)  −  ½ Σ_{i≠j} s(i − j)·c(x_i, x_j)

- unary `u_i(l)` is the masked model's logit of label l at position i (the cost `−logit_i(l)`);
- `c(l', l'')` is the label compatibility, learned and symmetric. It has low rank for large vocabularies:
  `c = ½(A Bᵀ + B Aᵀ)` with A, B `[V, rank]`;
- `s(d)` is a learned spatial kernel over the offsets d of a `kernel_size`^rank neighbourhood. It is symmetric,
  `s(d) = s(−d)`, and zero at d = 0.

Inference is mean field written as a differentiable layer (the dense-CRF form of the seed): Q⁰ = softmax(u), then
for `iterations` parallel updates

    Q_i(l) ∝ exp(u_i(l) + Σ_j s(i − j) Σ_l' c(l, l') Q_j(l')).

The message is computed in the rank-r space: project Q by A and by B, convolve both with s over the grid, then map
back by Bᵀ and Aᵀ. That costs `O(N·V·r + N·r·k^rank)`, with no V×V matrix. Given positions are clamped to one-hot.
`free_energy(Q) = E_Q[E] − H(Q)` is the quantity mean field descends.

The seed leaves the form of s, the rank of c and the number of iterations open (NUMERICS.md); they are fields
here.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError


class MarkovRandomField(nn.Module):
  """Mean-field inference over a label grid: `__call__(unary [B, N, V], given [B, N] bool, given_labels [B, N])`
  returns the marginals Q `[B, N, V]` after `iterations` updates (`return_all`: every iterate, Q⁰ first)."""

  vocab_size: int
  grid: tuple[int, ...]
  rank: int = 32
  kernel_size: int = 3
  iterations: int = 5

  def validate(self) -> None:
    if self.kernel_size < 3 or self.kernel_size % 2 == 0:
      raise ConfigError(f"MarkovRandomField: kernel_size={self.kernel_size} must be odd and >= 3 (a neighbourhood "
                        "centred on each token).")
    if self.rank < 1 or self.iterations < 1:
      raise ConfigError(f"MarkovRandomField: rank={self.rank} and iterations={self.iterations} must be >= 1.")
    if not self.grid or min(self.grid) < 1:
      raise ConfigError(f"MarkovRandomField: grid={self.grid} must be the token grid (h, w) or (t, h, w).")

  def setup(self):
    self.validate()
    # Neither factor starts at zero: the kernel's gradient scales with c and c's with the kernel, so a zero start
    # of either leaves both stuck. The kernel starts as the neighbourhood mean; c as small random entries.
    init = nn.initializers.normal(stddev=0.1)
    self.compatibility_a = self.param("compatibility_a", nn.with_logical_partitioning(init, ("vocab", None)),
                                      (self.vocab_size, self.rank))
    self.compatibility_b = self.param("compatibility_b", nn.with_logical_partitioning(init, ("vocab", None)),
                                      (self.vocab_size, self.rank))
    taps = self.kernel_size ** len(self.grid)
    self.spatial_weights = self.param("spatial_kernel", nn.with_logical_partitioning(
        nn.initializers.constant(1.0 / (taps - 1)), (None,)), (taps,))

  def spatial_kernel(self) -> jax.Array:
    """`s` `[k]*rank`: symmetric under d → −d and zero at the centre."""
    kernel = self.spatial_weights.reshape((self.kernel_size,) * len(self.grid))
    kernel = 0.5 * (kernel + jnp.flip(kernel))
    centre = (self.kernel_size // 2,) * len(self.grid)
    return kernel.at[centre].set(0.0)

  def compatibility(self) -> jax.Array:
    """`c` `[V, V]` (materialized only for tests and small vocabularies)."""
    a, b = self.compatibility_a, self.compatibility_b
    return 0.5 * (a @ b.T + b @ a.T)

  def _convolve(self, values: jax.Array) -> jax.Array:
    """`Σ_j s(i − j)·values_j` for values `[B, N, r]` over the grid, zero outside it (each channel alone)."""
    batch, rank = values.shape[0], values.shape[-1]
    spatial = values.reshape((batch,) + tuple(self.grid) + (rank,))
    kernel = self.spatial_kernel()[..., None, None] * jnp.ones((1,) * len(self.grid) + (1, rank))
    dims = "THW"[-len(self.grid):]
    out = jax.lax.conv_general_dilated(
        spatial, kernel.astype(values.dtype), (1,) * len(self.grid), "SAME", feature_group_count=rank,
        dimension_numbers=(f"N{dims}C", f"{dims}IO", f"N{dims}C"))
    return out.reshape(values.shape)

  def messages(self, q: jax.Array) -> jax.Array:
    """`m_i(l) = Σ_j s(i − j) Σ_l' c(l, l') Q_j(l')` `[B, N, V]`, through the rank-r factors of c."""
    a, b = self.compatibility_a, self.compatibility_b
    return 0.5 * (self._convolve(q @ b) @ a.T + self._convolve(q @ a) @ b.T)

  def free_energy(self, q: jax.Array, unary: jax.Array) -> jax.Array:
    """`[B]`: `E_Q[E] − H(Q) = Σ_i Σ_l Q_i(l)(log Q_i(l) − u_i(l)) − ½ Σ_i Σ_l Q_i(l) m_i(l)`."""
    entropy_term = jnp.sum(jax.scipy.special.xlogy(q, q), axis=(1, 2))
    return entropy_term - jnp.sum(q * unary, axis=(1, 2)) - 0.5 * jnp.sum(q * self.messages(q), axis=(1, 2))

  def labelling_energy(self, labels: jax.Array, unary: jax.Array) -> jax.Array:
    """`[B]`: E(x) of hard labels `[B, N]` (the free energy of one-hot marginals)."""
    return self.free_energy(jax.nn.one_hot(labels, self.vocab_size, dtype=unary.dtype), unary)

  def __call__(self, unary: jax.Array, given: jax.Array | None = None, given_labels: jax.Array | None = None,
               return_all: bool = False) -> jax.Array:
    positions = math.prod(self.grid)
    if unary.ndim != 3 or unary.shape[1:] != (positions, self.vocab_size):
      raise ConfigError(f"MarkovRandomField: unary {unary.shape} must be [B, {positions}, {self.vocab_size}] "
                        f"(grid {self.grid} row-major, one logit per label).")
    unary = unary.astype(jnp.float32)
    clamp = lambda q: q if given is None else jnp.where(
        given[..., None], jax.nn.one_hot(given_labels, self.vocab_size, dtype=q.dtype), q)
    q = clamp(jax.nn.softmax(unary, axis=-1))
    iterates = [q]
    for _ in range(self.iterations):
      q = clamp(jax.nn.softmax(unary + self.messages(q), axis=-1))
      iterates.append(q)
    return jnp.stack(iterates) if return_all else q
