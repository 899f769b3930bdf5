"""Vector quantization (VQ-VAE, VQGAN, ViT-VQGAN, LlamaGen): nearest codebook entry with straight-through
gradients, optionally with a low-dimensional lookup, a SimVQ linear codebook, EMA codebook updates and dead-code
restarts."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.quantizers.base import QuantizerOutput, codebook_statistics

STATS = "quantizer_stats"  # the Flax collection of non-trainable quantizer state
_KMEANS_DRAW = 2**31 - 1  # the "step" folded into the k-means start draw: no restart step ever reaches it


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """‖z - e_k‖² expanded as ‖z‖² - 2<z, e_k> + ‖e_k‖² for z `[N, D]`, codebook `[K, D]` → `[N, K]`."""
  return (
      jnp.sum(z * z, axis=-1, keepdims=True)
      - 2.0 * z @ codebook.T
      + jnp.sum(codebook * codebook, axis=-1)[None, :]
  )


def nearest_code(z: jax.Array, codebook: jax.Array, chunk_size: int = 0) -> jax.Array:
  """argmin_k ‖z - e_k‖² for z `[N, D]`, codebook `[K, D]` → int32 `[N]`; ties go to the lowest index.

  With `0 < chunk_size < K` a `lax.scan` visits the codebook `chunk_size` codes at a time and keeps a running
  (min distance, argmin), so only an `[N, chunk_size]` block of distances ever exists (a 2^16 codebook never
  builds `[N, 2^16]`). Every distance uses the unchunked formula and a later chunk wins only with a strictly
  smaller distance, so the result equals the unchunked argmin whenever the backend computes each dot product
  the same way for both shapes (it does on CPU, where this is tested).
  """
  # Indices carry no gradient; stopping it here keeps autodiff from saving per-chunk residuals of the scan.
  z, codebook = jax.lax.stop_gradient(z), jax.lax.stop_gradient(codebook)
  num_codes = codebook.shape[0]
  if chunk_size <= 0 or chunk_size >= num_codes:
    return jnp.argmin(_distances(z, codebook), axis=-1).astype(jnp.int32)
  num_chunks = -(-num_codes // chunk_size)
  padded = jnp.pad(codebook, ((0, num_chunks * chunk_size - num_codes), (0, 0)))
  chunks = padded.reshape(num_chunks, chunk_size, codebook.shape[1])
  starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size

  def visit(carry, chunk_and_start):
    best_distance, best_index = carry
    chunk, start = chunk_and_start
    distances = _distances(z, chunk)
    # The zero rows padding the last chunk are not codes: they must never win.
    distances = jnp.where(start + jnp.arange(chunk_size) < num_codes, distances, jnp.inf)
    local_index = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    local_distance = jnp.min(distances, axis=-1)
    better = local_distance < best_distance  # strict: an equal distance keeps the earlier, lower index
    return (jnp.where(better, local_distance, best_distance), jnp.where(better, start + local_index, best_index)), None

  initial = (jnp.full(z.shape[:1], jnp.inf, z.dtype), jnp.zeros(z.shape[:1], jnp.int32))
  (_, indices), _ = jax.lax.scan(visit, initial, (chunks, starts))
  return indices


def assignment_entropies(vectors: jax.Array, codes: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """`(E_z[H(q(·|z))], H(E_z[q(·|z)]))` in nats of the soft assignments `q(k|z) = softmax_k(-‖z - e_k‖²/T)` of
  vectors `[N, D]` to codes `[K, D]` (float32). MaskGIT's VQ penalty (google-research/maskgit, "entropy_loss",
  softmax type) is their difference: low per-vector entropy (confident codes) and high batch entropy (every code
  used). Builds `[N, K]`: meant for codebooks up to a few 10^4 codes."""
  logits = -_distances(vectors.astype(jnp.float32), codes.astype(jnp.float32)) / temperature
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  per_vector = jnp.mean(-jnp.sum(probs * log_probs, axis=-1))
  average = jnp.mean(probs, axis=0)
  batch = -jnp.sum(average * jnp.log(jnp.maximum(average, 1e-30)))
  return per_vector, batch


def laplace_smoothed(cluster_size: jax.Array, epsilon: float) -> jax.Array:
  """`(N_k + ε) / (n + K·ε) · n` with `n = Σ N_k`: keeps the total count and keeps every divisor positive."""
  total = jnp.sum(cluster_size)
  return (cluster_size + epsilon) / (total + cluster_size.shape[0] * epsilon) * total


def _batch_key(step: jax.Array, indices: jax.Array) -> jax.Array:
  """`fold_in(key(0), step)` folded with a hash of the batch's assignments, so restarts need no caller-given rng.
  The hash is integer arithmetic (exact, order-free): the same key on one device and under any batch sharding."""
  odd_weights = 2 * jnp.arange(indices.shape[0], dtype=jnp.uint32) + 1  # position-dependent, wraps mod 2^32
  batch_hash = jnp.sum(indices.astype(jnp.uint32) * odd_weights, dtype=jnp.uint32)
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(0), step), batch_hash)


def _restart_sources(step: jax.Array, indices: jax.Array, num_vectors: int, num_codes: int) -> jax.Array:
  """Which batch vector (row of the flattened batch) each of `num_codes` codes starts from; distinct vectors
  when the batch has at least that many."""
  return jax.random.choice(_batch_key(step, indices), num_vectors, (num_codes,), replace=num_vectors < num_codes)


def _restart_plan(step: jax.Array, indices: jax.Array, dead: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(the dead codes that restart this step `[K]` bool, the batch row each code would restart from `[K]`).

  Every restarted code gets a distinct batch vector, so when fewer vectors than dead codes come in a step (a 1×1
  scale's few per batch), a random N of the dead restart and the rest wait for later steps. Two codes restarted
  on one vector would tie at every lookup, and the loser stays unused until it restarts again."""
  num_vectors, num_codes = indices.shape[0], dead.shape[0]
  if num_vectors >= num_codes:
    return dead, _restart_sources(step, indices, num_vectors, num_codes)
  order_key, source_key = jax.random.split(_batch_key(step, indices))
  priority = jnp.where(dead, 0, num_codes) + jax.random.permutation(order_key, num_codes)
  rank = jnp.zeros(num_codes, jnp.int32).at[jnp.argsort(priority)].set(jnp.arange(num_codes, dtype=jnp.int32))
  sources = jax.random.permutation(source_key, num_vectors)[rank % num_vectors]
  return dead & (rank < num_vectors), sources


def kmeans(vectors: jax.Array, initial: jax.Array, iterations: int, spherical: bool) -> jax.Array:
  """`iterations` Lloyd steps from the centroids `initial` `[K, D]` over `vectors` `[N, D]`: assign each vector to
  its nearest centroid, move each centroid to the mean of its vectors (re-normalized when `spherical`, i.e.
  spherical k-means for l2-normalized codes); a centroid with no vectors stays where it is."""

  def step(centroids, _):
    assignment = nearest_code(vectors, centroids)
    sums = jax.ops.segment_sum(vectors, assignment, num_segments=centroids.shape[0])
    counts = jnp.bincount(assignment, length=centroids.shape[0]).astype(vectors.dtype)[:, None]
    means = sums / jnp.maximum(counts, 1.0)
    means = _l2_normalize(means) if spherical else means
    return jnp.where(counts > 0, means, centroids), None

  return jax.lax.scan(step, initial, None, length=iterations)[0]


class VectorQuantizer(nn.Module):
  """Nearest-code VQ with the loss `‖sg(z) - e‖² + β‖z - sg(e)‖²` (van den Oord et al. 2017, eq. 3).

  The commitment weight β multiplies the encoder term (the usual form; taming-transformers' legacy default puts
  it on the codebook term instead). With `l2_normalize` both z and the codes live on the unit sphere, so the
  distance is cosine (ViT-VQGAN, LlamaGen), which keeps codebook usage high.

  Options (defaults reproduce the plain quantizer: a single "codebook" param, no other state):
    chunk_size: codes per block of the nearest-code search (see `nearest_code`); exact, only saves memory.
    lookup_dim: 0 (or `dim`) = look codes up in z's own space. Otherwise (ViT-VQGAN factorized codes, LlamaGen)
      Dense "project_in" maps z to lookup_dim, the codebook has lookup_dim columns (`[K, lookup_dim]`), the
      losses and l2 normalization act in that space, and Dense "project_out" maps the code back to `dim`. The
      straight-through gradient then flows through both projections.
    ema_decay: 0 = codebook trained by the loss. d > 0 = EMA codebook (van den Oord et al. 2017, appendix A.1,
      eqs. 6-8): per step `N_k ← d·N_k + (1-d)·n_k`, `m_k ← d·m_k + (1-d)·Σ_{z→k} z`, `e_k = m_k / Ñ_k` with
      `Ñ` Laplace-smoothed by `epsilon` (as in VQ-VAE-2). The codebook, `cluster_size` `[K]` and `embed_sum`
      `[K, D]` then live in the "quantizer_stats" collection (no gradient reaches them), so the loss drops the
      codebook term and is only `β·commitment`. They start at `N_k = 1`, `m_k = e_k`, so an unused code keeps
      its place. Codes are looked up before this step's update (the update serves the next step).
    restart_after_steps: 0 = off. R > 0 = "quantizer_stats" counts per code the steps since it was last chosen
      ("idle_steps") and the updates made ("step"); after a train step in which a code reaches R idle steps it
      is replaced by a vector of the current batch (in lookup space) and its counter resets; each restarted
      code takes a distinct vector, so with fewer vectors than dead codes the rest wait (`_restart_plan`). The
      draw needs no rng from the caller. With an EMA codebook the replacement overwrites the stored
      code (and sets `m_k` to it, `N_k = 1`). A gradient codebook is a param, which a forward pass cannot write,
      so the codebook used is `param + codebook_offset` with the offset `[K, D]` in "quantizer_stats": a restart
      sets `offset_k = target - param_k`, after which the param keeps receiving the codebook-loss gradient as
      before (d code / d param = I). Metric `dead_codes`: codes whose idle count reaches R with this batch
      (in training: the codes due to restart this step).
    restart_below_usage: 0 = off. u > 0 = "quantizer_stats" keeps each code's share of the assignments as an EMA
      ("usage", decay `usage_decay`, starting at the uniform share 1/K), and a code whose share falls below u/K
      restarts as above (its share reset to 1/K). Rarely chosen codes thus move to where the batch's vectors
      are, which evens out usage (the online re-initialisation of CVQ-VAE, Zheng & Vedaldi 2023, with a hard
      restart in place of its soft pull). Combines with `restart_after_steps` (either condition restarts).
    entropy_weight: 0 = off. w > 0 adds `w·(E[H(q(·|z))] − H(E[q(·|z)]))` over the batch's soft assignments
      `softmax(-‖z - e‖²/entropy_temperature)` (`assignment_entropies`; MaskGIT's VQ uses w = 0.1, T = 0.01),
      pushing the batch to spread over the codebook; metrics `sample_entropy` and `codebook_entropy`.
    linear_codebook: False = each code is its own parameter. True = SimVQ (Zhu et al. 2024, "Addressing
      Representation Collapse in Vector Quantized Models with One Linear Layer", eq. 4): the codes are `C·W`, a
      fixed random basis `C` `[K, code_dim]` ("codebook_basis" in "quantizer_stats", drawn once at init, never
      updated) times one learned `[code_dim, code_dim]` matrix ("codebook_transform"). The codebook-loss gradient
      of any chosen code moves W, so every code moves with the used ones and none is left behind. W starts at the
      identity (our choice; SimVQ uses a default-initialized linear layer), so step 0 has the plain codebook.
      Not with an EMA codebook (it has no gradient to share).
    kmeans_init_iterations: 0 = off. I > 0 = the first training step replaces the whole codebook by I Lloyd
      iterations of (spherical, with l2_normalize) k-means over that batch's vectors, started from K of them
      drawn as for restarts (`kmeans`), the data-dependent initialisation of SoundStream and
      vector-quantize-pytorch's `kmeans_init`. It takes effect from the next step; "quantizer_stats" keeps an
      "initialized" flag, and a gradient codebook holds it in `codebook_offset` as for restarts.

  State updates happen only with `train=True`, outside `init`, and when "quantizer_stats" is mutable
  (`apply(..., mutable=["quantizer_stats"])`); otherwise the state is read only. Batch statistics (counts, sums,
  metrics) are global reductions over the whole batch, also when it is sharded.
  """

  codebook_size: int
  dim: int
  commitment_weight: float = 0.25
  l2_normalize: bool = False
  chunk_size: int = 4096
  lookup_dim: int = 0
  ema_decay: float = 0.0
  epsilon: float = 1e-5
  restart_after_steps: int = 0
  restart_below_usage: float = 0.0
  usage_decay: float = 0.99
  kmeans_init_iterations: int = 0
  entropy_weight: float = 0.0
  entropy_temperature: float = 0.01
  linear_codebook: bool = False

  @property
  def code_dim(self) -> int:
    """Width of the codebook: lookup_dim when set, else dim."""
    return self.lookup_dim or self.dim

  @property
  def projected(self) -> bool:
    return self.code_dim != self.dim

  def _validate(self):
    if self.chunk_size < 1:
      raise ValueError(f"VectorQuantizer: chunk_size={self.chunk_size} must be >= 1 (codes per search block).")
    if self.lookup_dim < 0:
      raise ValueError(f"VectorQuantizer: lookup_dim={self.lookup_dim} must be >= 0 (0 = no projection).")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"VectorQuantizer: ema_decay={self.ema_decay} must be in [0, 1) (0 = gradient codebook).")
    if self.restart_after_steps < 0:
      raise ValueError(f"VectorQuantizer: restart_after_steps={self.restart_after_steps} must be >= 0 (0 = off).")
    if self.restart_below_usage < 0 or not 0.0 < self.usage_decay < 1.0:
      raise ValueError(f"VectorQuantizer: restart_below_usage={self.restart_below_usage} must be >= 0 (0 = off; a "
                       f"fraction of the uniform share 1/K) and usage_decay={self.usage_decay} in (0, 1).")
    if self.entropy_weight < 0 or self.entropy_temperature <= 0:
      raise ValueError(f"VectorQuantizer: entropy_weight={self.entropy_weight} must be >= 0 (0 = off) and "
                       f"entropy_temperature={self.entropy_temperature} > 0.")
    if self.linear_codebook and self.ema_decay:
      raise ValueError(f"VectorQuantizer: linear_codebook=True (SimVQ) needs a gradient codebook, but "
                       f"ema_decay={self.ema_decay}; set ema_decay=0.")
    if self.kmeans_init_iterations < 0:
      raise ValueError(f"VectorQuantizer: kmeans_init_iterations={self.kmeans_init_iterations} must be >= 0 "
                       "(0 = off).")

  @property
  def restarts(self) -> bool:
    return bool(self.restart_after_steps or self.restart_below_usage)

  @property
  def writes_codes(self) -> bool:
    """Whether a training step may overwrite codes (restarts or the k-means initialisation)."""
    return bool(self.restarts or self.kmeans_init_iterations)

  def setup(self):
    self._validate()
    shape = (self.codebook_size, self.code_dim)
    # Unit-variance codes match the scale of a normalized encoder's outputs. taming-transformers' U(-1/K, 1/K)
    # starts every code near zero, so the decoder sees no signal until the codebook grows (and residual levels of
    # an RVQ never get there in short runs).
    code_init = nn.initializers.normal(stddev=1.0)
    if self.projected:
      self.project_in = nn.Dense(
          self.code_dim, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", None)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)))
      self.project_out = nn.Dense(
          self.dim, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, "embed")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))
    if self.ema_decay:
      self.ema_codebook = self.variable(
          STATS, "codebook", nn.with_logical_partitioning(lambda: code_init(self.make_rng("params"), shape),
                                                          ("vocab", "embed")))
      self.cluster_size = self.variable(
          STATS, "cluster_size", nn.with_logical_partitioning(lambda: jnp.ones(shape[:1], jnp.float32), ("vocab",)))
      self.embed_sum = self.variable(  # N_k = 1 and m_k = e_k: the stored codebook is m / N from the start
          STATS, "embed_sum", nn.with_logical_partitioning(lambda: self.ema_codebook.value, ("vocab", "embed")))
    elif self.linear_codebook:
      self.codebook_basis = self.variable(
          STATS, "codebook_basis", nn.with_logical_partitioning(lambda: code_init(self.make_rng("params"), shape),
                                                                ("vocab", "embed")))
      self.codebook_transform = self.param(
          "codebook_transform", nn.with_logical_partitioning(lambda _, s: jnp.eye(*s), (None, None)),
          (self.code_dim, self.code_dim))
    else:
      self.codebook = self.param("codebook", nn.with_logical_partitioning(code_init, ("vocab", "embed")), shape)
    if not self.ema_decay and self.writes_codes:
      self.codebook_offset = self.variable(
          STATS, "codebook_offset",
          nn.with_logical_partitioning(lambda: jnp.zeros(shape, jnp.float32), ("vocab", "embed")))
    if self.restart_after_steps:
      self.idle_steps = self.variable(
          STATS, "idle_steps", nn.with_logical_partitioning(lambda: jnp.zeros(shape[:1], jnp.int32), ("vocab",)))
    if self.restart_below_usage:
      self.usage = self.variable(
          STATS, "usage", nn.with_logical_partitioning(lambda: jnp.full(shape[:1], 1.0 / shape[0]), ("vocab",)))
    if self.restarts:
      self.restart_step = self.variable(STATS, "step", lambda: jnp.zeros((), jnp.int32))
    if self.kmeans_init_iterations:
      self.initialized = self.variable(STATS, "initialized", lambda: jnp.zeros((), jnp.bool_))

  def _trained_codebook(self) -> jax.Array:
    """The codebook the loss trains, before restart offsets: the parameter, or SimVQ's `C·W`."""
    if self.linear_codebook:
      return self.codebook_basis.value @ self.codebook_transform
    return self.codebook

  def codes(self) -> jax.Array:
    """The codebook in lookup space `[K, code_dim]` (unit rows with l2_normalize)."""
    if self.ema_decay:
      codebook = self.ema_codebook.value
    else:
      codebook = self._trained_codebook()
      if self.writes_codes:
        codebook = codebook + self.codebook_offset.value
    return _l2_normalize(codebook) if self.l2_normalize else codebook

  def codes_from_indices(self, indices: jax.Array) -> jax.Array:
    codes = jnp.take(self.codes(), indices, axis=0)
    return self.project_out(codes) if self.projected else codes

  @property
  def bits_per_token(self) -> float:
    return math.log2(self.codebook_size)

  def lookup_vectors(self, z: jax.Array) -> jax.Array:
    """z `[..., dim]` in the space codes are looked up in (projected, and l2-normalized with `l2_normalize`)."""
    if z.shape[-1] != self.dim:
      raise ValueError(f"VectorQuantizer: input has {z.shape[-1]} channels, the quantizer has dim {self.dim}.")
    z = z.astype(jnp.float32)
    lookup = self.project_in(z) if self.projected else z
    return _l2_normalize(lookup) if self.l2_normalize else lookup

  def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    lookup = self.lookup_vectors(z)
    codes = self.codes()
    vectors = lookup.reshape(-1, self.code_dim)
    flat_indices = nearest_code(vectors, codes, self.chunk_size)
    indices = flat_indices.reshape(z.shape[:-1])
    quantized = jnp.take(codes, indices, axis=0)
    commitment = jnp.mean(jnp.square(lookup - jax.lax.stop_gradient(quantized)))
    metrics = {}
    loss = self.commitment_weight * commitment
    if not self.ema_decay:  # an EMA codebook gets no gradient: its loss term would be dead weight
      metrics["codebook_loss"] = jnp.mean(jnp.square(jax.lax.stop_gradient(lookup) - quantized))
      loss = metrics["codebook_loss"] + loss
    metrics["commitment"] = commitment
    if self.entropy_weight:
      sample_entropy, batch_entropy = assignment_entropies(vectors, codes, self.entropy_temperature)
      metrics |= {"sample_entropy": sample_entropy, "codebook_entropy": batch_entropy}
      loss = loss + self.entropy_weight * (sample_entropy - batch_entropy)
    metrics |= codebook_statistics(indices, self.codebook_size)
    if train:
      metrics |= self.update_statistics(vectors, flat_indices)
    z_q = lookup + jax.lax.stop_gradient(quantized - lookup)  # straight-through: d z_q / d lookup = identity
    if self.projected:
      z_q = self.project_out(z_q)
    return z_q, QuantizerOutput(indices=indices, loss=loss, metrics=metrics)

  def update_statistics(self, vectors: jax.Array, indices: jax.Array) -> dict[str, jax.Array]:
    """One training step's state update (EMA, restarts, k-means start) from lookup vectors `[N, code_dim]` and
    their codes `[N]`, when "quantizer_stats" is mutable and not initializing; `{"dead_codes": ...}` with
    restarts. `__call__(train=True)` runs it on its batch; a quantizer that looks up several times per step (VAR's
    scales, `multiscale.py`) looks up with train=False and runs it once on all its vectors."""
    counts = jnp.bincount(indices, length=self.codebook_size)
    metrics = {"dead_codes": jnp.sum(self._dead(counts)[0]).astype(jnp.float32)} if self.restarts else {}
    if self.is_mutable_collection(STATS) and not self.is_initializing():
      self._update_state(jax.lax.stop_gradient(vectors), indices, counts)
    return metrics

  def _update_state(self, vectors: jax.Array, indices: jax.Array, counts: jax.Array):
    """One training step of EMA statistics and dead-code restarts, from this batch's assignments."""
    if self.ema_decay:
      decay = self.ema_decay
      # segment_sum, not one_hot(indices).T @ vectors: no [N, K] array for large codebooks.
      batch_sums = jax.ops.segment_sum(vectors, indices, num_segments=self.codebook_size)
      cluster_size = decay * self.cluster_size.value + (1.0 - decay) * counts.astype(jnp.float32)
      embed_sum = decay * self.embed_sum.value + (1.0 - decay) * batch_sums
      codebook = embed_sum / laplace_smoothed(cluster_size, self.epsilon)[:, None]
    if self.restarts:
      dead, idle, usage = self._dead(counts)
      step = self.restart_step.value + 1
      dead, sources = _restart_plan(step, indices, dead)
      targets = vectors[sources]
      if self.ema_decay:
        codebook = jnp.where(dead[:, None], targets, codebook)
        embed_sum = jnp.where(dead[:, None], targets, embed_sum)
        cluster_size = jnp.where(dead, 1.0, cluster_size)
      else:
        offset = targets - jax.lax.stop_gradient(self._trained_codebook())  # trained + offset = target
        self.codebook_offset.value = jnp.where(dead[:, None], offset, self.codebook_offset.value)
      if self.restart_after_steps:
        self.idle_steps.value = jnp.where(dead, 0, idle)
      if self.restart_below_usage:
        self.usage.value = jnp.where(dead, 1.0 / self.codebook_size, usage)
      self.restart_step.value = step
    if self.ema_decay:
      self.ema_codebook.value = codebook
      self.cluster_size.value = cluster_size
      self.embed_sum.value = embed_sum
    if self.kmeans_init_iterations:
      self._kmeans_initialize(vectors, indices)

  def _dead(self, counts: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """(codes to restart after this batch, the updated idle counts, the updated usage shares)."""
    dead = jnp.zeros(counts.shape, bool)
    idle = usage = None
    if self.restart_after_steps:
      idle = jnp.where(counts > 0, 0, self.idle_steps.value + 1)
      dead |= idle >= self.restart_after_steps
    if self.restart_below_usage:
      share = counts.astype(jnp.float32) / jnp.maximum(jnp.sum(counts), 1)
      usage = self.usage_decay * self.usage.value + (1.0 - self.usage_decay) * share
      dead |= usage < self.restart_below_usage / self.codebook_size
    return dead, idle, usage

  def _kmeans_initialize(self, vectors: jax.Array, indices: jax.Array):
    """On the first training step only (a `lax.cond`, so later steps pay nothing): the codebook := k-means."""

    def initialize(_):
      starts = vectors[_restart_sources(jnp.int32(_KMEANS_DRAW), indices, vectors.shape[0], self.codebook_size)]
      return kmeans(vectors, starts, self.kmeans_init_iterations, self.l2_normalize)

    done = self.initialized.value
    trained = None if self.ema_decay else jax.lax.stop_gradient(self._trained_codebook())
    current = self.ema_codebook.value if self.ema_decay else trained + self.codebook_offset.value
    centroids = jax.lax.cond(done, lambda _: current, initialize, None)
    if self.ema_decay:
      self.ema_codebook.value = centroids
      self.embed_sum.value = jnp.where(done, self.embed_sum.value, centroids)
      self.cluster_size.value = jnp.where(done, self.cluster_size.value, jnp.ones_like(self.cluster_size.value))
    else:
      self.codebook_offset.value = centroids - trained
    self.initialized.value = jnp.ones((), jnp.bool_)
