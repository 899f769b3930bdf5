"""Reconstruction evaluation over a whole held-out split: per-example means, codebook usage, and the metrics
that need a feature network (LPIPS, rFID, rFVD).

`AutoencoderTask.eval_step` gives per-example metrics (PSNR, SSIM, MS-SSIM, bpp), reconstructions and tokens on
device; `ReconstructionEvaluator.update` takes their host copies batch by batch (padding rows masked out) and
`results()` returns every metric by name. A feature-network metric runs only when its converted weights file is
configured (`config.eval.{lpips,inception,i3d}_weights`); otherwise it is left out and one log line says why —
never reported as a number.

- LPIPS: mean distance between original and reconstruction (videos: mean over frames).
- rFID (images): Fréchet distance between InceptionV3 pool features of the originals and of the reconstructions.
- rFVD (videos): the same on I3D logits (FVD's embedding), clips resized to 224x224.

`SampleQuality` scores a generator's sample sets with the same networks: the Fréchet distance of each set to
the real images' statistics, precision and recall against the real features kept with them, and for images the
Inception Score.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tokgen_jax.errors import ConfigError
from tokgen_jax.metrics import CodebookUsage, FeatureStatistics, frechet_distance, uniform_coverage
from tokgen_jax.metrics.inception import inception_score
from tokgen_jax.metrics.precision_recall import NEIGHBOURS, precision_recall

_MAX_USAGE_VOCABULARY = 2 ** 31  # token ids in one int32 word
INCEPTION_SCORE_SPLITS = 10  # Salimans et al. 2016; torch-fidelity and VAR's evaluation use the same
# Real features kept beside the statistics, and sample features kept per set, for precision and recall: ADM's
# evaluator compares 50,000 samples with 10,000 real images.
PRECISION_RECALL_REFERENCE, PRECISION_RECALL_SAMPLES = 10_000, 50_000


def _bind(fn, variables):
  """`fn(variables, *inputs)` jitted once, with the weights as an argument (not baked into the program)."""
  jitted = jax.jit(fn)
  return lambda *inputs: jitted(variables, *inputs)


def feature_networks(eval_config: Any, is_video: bool) -> dict[str, Any]:
  """{metric: features(x) or distance(x, y)} for every configured weights file; logs once why others are off.
  Images with InceptionV3 weights also get 'inception': x → FIDInceptionV3's dict (`pool`, `logits_unbiased`, ...),
  of which 'rfid' is the `pool` view.

  Load these once per run and pass them to every `ReconstructionEvaluator`: loading and compiling them is the
  slow part.
  """
  networks, skipped = {}, []
  if eval_config.lpips_weights:
    from tokgen_jax.convert.lpips import load_lpips  # pylint: disable=g-import-not-at-top
    from tokgen_jax.losses.perceptual import LPIPS  # pylint: disable=g-import-not-at-top
    networks["lpips"] = _bind(lambda p, x, y: LPIPS().apply({"params": p}, x, y), load_lpips(eval_config.lpips_weights))
  else:
    skipped.append("lpips (config.eval.lpips_weights is empty; convert with python -m tokgen_jax.convert.lpips)")
  if is_video:
    if eval_config.i3d_weights:
      from tokgen_jax.convert.i3d import load_i3d  # pylint: disable=g-import-not-at-top
      from tokgen_jax.metrics.i3d import I3D, preprocess_for_i3d  # pylint: disable=g-import-not-at-top
      networks["rfvd"] = _bind(lambda v, x: I3D().apply(v, preprocess_for_i3d(x)).features,
                               load_i3d(eval_config.i3d_weights))
    else:
      skipped.append("rfvd (config.eval.i3d_weights is empty; convert with python -m tokgen_jax.convert.i3d)")
  elif eval_config.inception_weights:
    from tokgen_jax.convert.inception import load_inception  # pylint: disable=g-import-not-at-top
    from tokgen_jax.metrics.inception import FIDInceptionV3  # pylint: disable=g-import-not-at-top
    inception = _bind(lambda p, x: FIDInceptionV3().apply({"params": p}, x),
                      load_inception(eval_config.inception_weights))
    networks["inception"] = inception  # every output: the sample eval's FID and Inception Score in one pass
    networks["rfid"] = lambda x: inception(x)["pool"]
  else:
    skipped.append("rfid (config.eval.inception_weights is empty; convert with python -m tokgen_jax.convert.inception)")
  for reason in skipped:
    logging.info("eval: not computing %s", reason)
  return networks


def reference_statistics(networks: dict[str, Any], is_video: bool, batches) -> FeatureStatistics:
  """Feature statistics (I3D for videos, InceptionV3 for images) of the real examples in `batches`, an iterable
  of `(examples, mask)` host arrays: what generator evaluation compares samples against. The first
  `PRECISION_RECALL_REFERENCE` features are kept too (saved as `features`)."""
  name, weights_key = ("rfvd", "i3d_weights") if is_video else ("rfid", "inception_weights")
  if name not in networks:
    raise ConfigError(f"reference statistics need the {'I3D' if is_video else 'InceptionV3'} weights: set "
                      f"config.eval.{weights_key} to a file converted with python -m tokgen_jax.convert."
                      f"{'i3d' if is_video else 'inception'}.")
  statistics = FeatureStatistics(keep=PRECISION_RECALL_REFERENCE)  # the first 10,000 also kept, for precision/recall
  for examples, mask in batches:
    mask = np.asarray(mask, bool)
    if mask.any():
      statistics.update(np.asarray(networks[name](jnp.asarray(examples[mask])), np.float64))
  return statistics


class ReconstructionEvaluator:
  """Accumulates one evaluation pass with `feature_networks(...)`; `codebook_size` 0 leaves usage out.

  `scale_lengths` (a multi-scale quantizer's tokens per scale, coarse first) adds per scale k
  `codebook_usage_scale_k`, `codebook_perplexity_scale_k` and `reachable_usage_scale_k`: distinct codes over the
  codes a perfectly even codebook would show on the scale's N tokens in the split, `uniform_coverage(V, N)` =
  V·(1 − (1 − 1/V)^N), the most any code distribution shows on N independent tokens on average (a 1×1 scale
  over 500 images of a 512-code book: 319). That figure shows a coarse scale's collapse (Infinity#80); the bound
  min(V, N) would score even a uniform codebook 0.62 at N = V."""

  def __init__(self, networks: dict[str, Any], codebook_size: int, scale_lengths: tuple[int, ...] = ()):
    self._networks = networks
    # A continuous bottleneck has no tokens; LFQ ids over 31 bits span several int32 words.
    usable = 0 < codebook_size <= _MAX_USAGE_VOCABULARY
    self._usage = CodebookUsage(codebook_size) if usable else None
    self._scale_bounds = np.cumsum((0,) + tuple(scale_lengths)) if usable and len(scale_lengths) > 1 else None
    self._scale_usage = [CodebookUsage(codebook_size) for _ in scale_lengths] if self._scale_bounds is not None else []
    self._sums: dict[str, float] = {}
    self._count = 0
    self._statistics = {name: (FeatureStatistics(), FeatureStatistics()) for name in ("rfid", "rfvd")
                        if name in self._networks}

  def _add(self, name: str, values: np.ndarray) -> None:
    self._sums[name] = self._sums.get(name, 0.0) + float(np.sum(np.asarray(values, np.float64)))

  def update(self, outputs: dict[str, np.ndarray], originals: np.ndarray, mask: np.ndarray) -> None:
    """`outputs` from `eval_step` and the batch's originals, all host arrays with the batch's padding rows."""
    mask = np.asarray(mask, bool)
    if not mask.any():
      return
    originals, reconstructions = originals[mask], outputs["reconstruction"][mask]
    for name, values in outputs.items():
      if name not in ("reconstruction", "tokens"):
        self._add(name, values[mask])
    if self._usage is not None and "tokens" in outputs:
      tokens = outputs["tokens"][mask]  # [B, N] ids, or [B, N, L] for L codebook levels
      self._usage.update(tokens.reshape(-1) if tokens.ndim == 2 else tokens.reshape(-1, tokens.shape[-1]))
      if self._scale_bounds is not None:
        for usage, start, end in zip(self._scale_usage, self._scale_bounds[:-1], self._scale_bounds[1:]):
          usage.update(tokens[:, start:end].reshape(-1))
    if "lpips" in self._networks:
      self._add("lpips", self._networks["lpips"](jnp.asarray(originals), jnp.asarray(reconstructions)))
    for name, (real, fake) in self._statistics.items():
      real.update(np.asarray(self._networks[name](jnp.asarray(originals)), np.float64))
      fake.update(np.asarray(self._networks[name](jnp.asarray(reconstructions)), np.float64))
    self._count += int(mask.sum())

  @property
  def count(self) -> int:
    return self._count

  def results(self) -> dict[str, float]:
    results = {name: total / max(self._count, 1) for name, total in self._sums.items()}
    if self._usage is not None:
      results |= self._usage.results()
    for k, usage in enumerate(self._scale_usage):
      scale = usage.results()
      if scale:
        reachable = uniform_coverage(usage.codebook_size, usage.count)
        results |= {f"codebook_usage_scale_{k}": scale["codebook_usage"],
                    f"codebook_perplexity_scale_{k}": scale["codebook_perplexity"],
                    f"reachable_usage_scale_{k}": scale["codebook_usage"] * usage.codebook_size / reachable}
    for name, (real, fake) in self._statistics.items():
      if real.count < 2:
        logging.warning("eval: %s needs at least 2 examples, got %d; left out", name, real.count)
        continue
      results[name] = frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)
    return results


class SampleQuality:
  """Sample-set scores from feature networks, accumulated chunk by chunk (`update(name, pixels)`):

  - `<name>_fid` (`_fvd` for videos): the Fréchet distance of the set's `feature` network statistics to the real
    images' `reference_statistics` file (FeatureStatistics or a pytorch-fid mu/sigma file), when `feature` is set;
  - `<name>_is`, `<name>_is_std`: the Inception Score (`metrics.inception.inception_score`, 10 splits or one per
    sample below 10) of the unbiased logits, when `networks` has the full 'inception' network (images);
  - `<name>_precision`, `<name>_recall`: improved precision and recall (`metrics.precision_recall`, k = 3) of
    the set's first 50,000 features against the real features the reference file keeps (written by
    --mode=stats; pytorch-fid files have none, and then these are left out).

  The reference file is read here, before any sample is drawn, so a bad path fails at once."""

  def __init__(self, networks: dict[str, Any], feature: str | None, reference_statistics: str, suffix: str):
    self._networks, self._feature, self._suffix = networks, feature, suffix
    self._path = reference_statistics
    self._real = self._load(reference_statistics) if feature else None
    # Sample features are kept for precision/recall only when the reference kept real ones.
    self._keep = PRECISION_RECALL_SAMPLES if self._real is not None and self._real.kept is not None else 0
    self._statistics: dict[str, FeatureStatistics] = {}
    self._logits: dict[str, list[np.ndarray]] = {}

  @staticmethod
  def _load(path: str) -> FeatureStatistics:
    try:
      return FeatureStatistics.load(path)
    except (FileNotFoundError, ValueError) as error:
      raise ConfigError(f"config.eval.reference_statistics={path!r}: {error} Write it with --mode=stats of the "
                        f"tokenizer experiment (the real images' feature statistics).") from error

  def update(self, name: str, pixels: np.ndarray) -> None:
    inception = self._networks.get("inception")
    outputs = inception(jnp.asarray(pixels)) if inception is not None else None
    if outputs is not None:
      self._logits.setdefault(name, []).append(np.asarray(outputs["logits_unbiased"], np.float32))
    if self._feature is not None:
      features = outputs["pool"] if outputs is not None else self._networks[self._feature](jnp.asarray(pixels))
      self._check_dim(features.shape[-1])
      self._statistics.setdefault(name, FeatureStatistics(self._keep)).update(np.asarray(features, np.float64))

  def _check_dim(self, dim: int) -> None:
    if dim != self._real.dim:
      raise ConfigError(f"config.eval.reference_statistics={self._path!r} holds {self._real.dim}-d features, but "
                        f"the {self._feature} network gives {dim}-d ones; write the statistics with the same "
                        f"network (--mode=stats with this config.eval's weights).")

  def results(self) -> dict[str, float]:
    results = {}
    for name, statistics in self._statistics.items():
      if statistics.count < 2:
        logging.warning("eval: %s_%s needs at least 2 samples, got %d; left out", name, self._suffix, statistics.count)
        continue
      results[f"{name}_{self._suffix}"] = frechet_distance(statistics.mean, statistics.covariance, self._real.mean,
                                                           self._real.covariance)
      if statistics.kept is not None and min(len(statistics.kept), len(self._real.kept)) > NEIGHBOURS:
        results[f"{name}_precision"], results[f"{name}_recall"] = precision_recall(self._real.kept, statistics.kept)
    for name, parts in self._logits.items():
      logits = np.concatenate(parts)
      mean, std = inception_score(logits, splits=min(INCEPTION_SCORE_SPLITS, len(logits)))
      results |= {f"{name}_is": mean, f"{name}_is_std": std}
    return results
