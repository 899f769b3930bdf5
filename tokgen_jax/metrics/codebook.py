"""Codebook usage and perplexity over a whole evaluation split (host-side, streaming).

The quantizers report usage per training batch (`quantizers.codebook_statistics`); a tokenizer is judged by the
codes it uses over all held-out data, which no single batch shows when the vocabulary (2^18 for MAGVIT-v2)
exceeds the tokens in a batch.
"""

import numpy as np

_DENSE_LIMIT = 2 ** 24  # count in an array up to this vocabulary, in a dict beyond it


def uniform_coverage(codebook_size: int, draws: int) -> float:
  """Expected distinct codes among `draws` tokens when all `codebook_size` codes are equally likely,
  `V·(1 − (1 − 1/V)^N)`: what a perfectly even codebook shows on N tokens. For N independent tokens with code
  probabilities p, the expected distinct count `Σ_i 1 − (1 − p_i)^N` is largest at uniform p, so no codebook
  reaches more codes on average. It is ≈ N for N ≪ V and → V for N ≫ V; at N = V it is 0.63·V."""
  if codebook_size < 1 or draws < 0:
    raise ValueError(f"uniform_coverage: codebook_size={codebook_size} must be positive and draws={draws} >= 0.")
  return float(-codebook_size * np.expm1(draws * np.log1p(-1.0 / codebook_size))) if codebook_size > 1 else \
      float(min(draws, 1))


class CodebookUsage:
  """Counts token ids; `tokens` are `[N]` ids or `[N, L]` ids of L separate codebooks (residual levels), each
  of `codebook_size` entries.

  usage = distinct ids seen / codebook_size; perplexity = exp(entropy of the id histogram) — both averaged over
  levels. Perplexity equals the vocabulary when all codes are used equally.
  """

  def __init__(self, codebook_size: int):
    if codebook_size < 1:
      raise ValueError(f"CodebookUsage: codebook_size={codebook_size} must be positive.")
    self.codebook_size = int(codebook_size)
    self._counts: list = []

  def _new_counter(self):
    return np.zeros(self.codebook_size, np.int64) if self.codebook_size <= _DENSE_LIMIT else {}

  def update(self, tokens: np.ndarray) -> None:
    tokens = np.asarray(tokens)
    tokens = tokens.reshape(-1, 1) if tokens.ndim == 1 else tokens.reshape(-1, tokens.shape[-1])
    while len(self._counts) < tokens.shape[1]:
      self._counts.append(self._new_counter())
    for level, counter in enumerate(self._counts):
      ids, counts = np.unique(tokens[:, level], return_counts=True)
      if isinstance(counter, dict):
        for token, count in zip(ids.tolist(), counts.tolist()):
          counter[token] = counter.get(token, 0) + count
      else:
        np.add.at(counter, ids, counts)

  @property
  def count(self) -> int:
    """Tokens counted so far (of the first level)."""
    return int(sum(self._counts[0].values()) if isinstance(self._counts[0], dict) else self._counts[0].sum()) \
        if self._counts else 0

  def _histograms(self) -> list[np.ndarray]:
    return [np.asarray(list(c.values()) if isinstance(c, dict) else c[c > 0], np.float64) for c in self._counts]

  def results(self) -> dict[str, float]:
    histograms = self._histograms()
    if not histograms or not histograms[0].size:
      return {}
    usage = [len(h) / self.codebook_size for h in histograms]
    perplexity = [float(np.exp(-np.sum((h / h.sum()) * np.log(h / h.sum())))) for h in histograms]
    return {"codebook_usage": float(np.mean(usage)), "codebook_perplexity": float(np.mean(perplexity))}
