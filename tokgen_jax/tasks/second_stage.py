"""What every generator over a frozen tokenizer shares, whatever it models (AR token ids, diffusion latents, ...).

- the tokenizer of `config.tokenizer`, restored on first use and kept;
- `--mode=encode` (alias `tokenize`): `config.tokenize.data` through it into latent shards at `config.data.path`;
- prompts → the condition batch (captions through the offline text encoder, class ids or shapes-world names);
- `--mode=sample`: samples of `config.sample.prompts` / `prompts_file` (and of `config.sample.inputs` where the
  task's `input_conditions` takes them), decoded, written and, in the shapes world, scored against their prompts;
- the eval's sample pass (`SampleEvaluation`): the task's `sample_sets` of the first `num_samples` eval conditions
  (with and without CFG; a frame-conditioned model also predicts from given frames), decoded and scored like the
  tokenizer's own reconstruction of the real examples (`reference_*`, the ceiling a generator can reach through
  that tokenizer).

A task mixes in `SecondStage` and provides `latent_key` (the latent array it draws: "tokens" or "latents"; a task
that draws several of the tokenizer's arrays as one overrides `latent_arrays` and `example_latents`), a `model`
with `conditioning` / `text_length` / `num_classes` (read through here), `example_batch`,
`sample_settings(sample_config, guided)` (hashable settings with a `guided` flag) and the protocol's `sample(state, conditions, rng, settings, batch_size)` → latents in the
tokenizer's own units, which `draw` compiles once per settings.
"""

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from tokgen_jax.data import examples as example_data
from tokgen_jax.data import files, grids, shapes, text
from tokgen_jax.data import latents as latent_data
from tokgen_jax.errors import ConfigError
from tokgen_jax.metrics import shapes as shape_metrics
from tokgen_jax.tasks import evaluation, frozen_tokenizer
from tokgen_jax.tasks.base import RunContext, TrainState

CONDITION_KEYS = ("label", "text", "text_mask")


class SecondStage:
  """Mixin of a generator task; the task is a dataclass with fields `tokenizer` (`config.tokenizer`) and `_loaded`
  (a dict for what is restored once)."""

  latent_key: str

  @property
  def conditioning(self) -> str:
    return self.model.conditioning

  @property
  def text_length(self) -> int:
    return self.model.text_length

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  def example_conditions(self) -> dict[str, Any]:
    """The example batch without its latents: what `sample` is conditioned on."""
    return {key: value for key, value in self.example_batch().items() if key != self.latent_key}

  def frozen_tokenizer(self, run: RunContext) -> frozen_tokenizer.FrozenTokenizer:
    """The tokenizer of `config.tokenizer`, restored on first use and kept."""
    if "tokenizer" not in self._loaded:
      self._loaded["tokenizer"] = frozen_tokenizer.load(run, self.tokenizer)
    return self._loaded["tokenizer"]

  def draw(self, state: TrainState, conditions: dict[str, np.ndarray], settings: Any, seed: int,
           batch_size: int, chunk: int = 0) -> np.ndarray:
    """`sample` for the conditions as host latents `[B, ...]` (compiled once per settings and batch size;
    deterministic per seed), with the key of draw `chunk` of that seed (`chunk_key`)."""
    return np.asarray(_sampler(self, settings, batch_size)(state, conditions, chunk_key(seed, chunk)))

  def decode(self, run: RunContext, drawn: np.ndarray) -> np.ndarray:
    """Pixels of latents drawn by `draw` (or read from the shards), through the frozen tokenizer."""
    return self.frozen_tokenizer(run).decode(self.latent_arrays(drawn))

  def latent_arrays(self, drawn: np.ndarray) -> dict[str, np.ndarray]:
    """The tokenizer's named latents of what the task draws (a task over several arrays unpacks them)."""
    return {self.latent_key: drawn}

  def example_latents(self, examples: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """Stored examples' latents as the task draws them, stacked into a batch."""
    return np.stack([e[self.latent_key] for e in examples])

  def prompt_conditions(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """The condition batch of prompts: captions through the text encoder (as stored by encode: float16), class
    ids (or shapes-world class names such as 'red circle') as labels."""
    if self.conditioning == "text":
      embeddings, mask = text.token_states_encoder(self.text_length)(list(prompts))
      return {"text": embeddings.astype(np.float16).astype(np.float32), "text_mask": mask}
    if self.conditioning == "class":
      return {"label": np.asarray([class_id(p, self.num_classes) for p in prompts], np.int32)}
    return {}

  def sample_sets(self, run: RunContext, protocol: Any, conditions: dict[str, np.ndarray],
                  latents: np.ndarray) -> dict[str, "SampleSet"]:
    """The eval's sample sets of the first eval examples (their conditions and real latents), by name: `cfg`
    (when the protocol guides) and `nocfg`. A task that can also predict from given latents adds its own."""
    del run, latents
    guided = self.sample_settings(protocol).cfg_scale != 1.0
    sets = {"cfg": SampleSet(conditions, True)} if guided else {}
    return sets | {"nocfg": SampleSet(conditions, False)}

  def input_conditions(self, run: RunContext, num_prompts: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """--mode=sample's conditions from `config.sample.inputs` (one row per prompt) and their pixels for the grid's
    first column; a generator that conditions on no inputs refuses them."""
    del num_prompts
    if str(run.config.sample.get("inputs", "")).strip():
      raise ConfigError(f"config.sample.inputs={run.config.sample.inputs!r}: this generator samples from prompts "
                        "only; leave inputs empty (frame-conditioned diffusion models take given frames).")
    return {}, None

  def modes(self) -> dict[str, Callable[[RunContext], dict[str, Any]]]:
    return {"encode": self.encode, "tokenize": self.encode, "sample": self.sample_prompts}

  def encode(self, run: RunContext) -> dict[str, Any]:
    """--mode=encode: `config.tokenize.data` through the frozen tokenizer into latent shards at config.data.path."""
    counts = frozen_tokenizer.encode_dataset(run.config, self.frozen_tokenizer(run), str(run.config.data.path))
    return {"path": str(run.config.data.path), **counts}

  def sample_prompts(self, run: RunContext) -> dict[str, Any]:
    """--mode=sample: samples of `config.sample.prompts` / `prompts_file` into workdir/samples/prompts_step_<N>.png
    (one row per prompt, `num_per_prompt` columns) with the prompts in a .txt beside it; shapes-world captions are
    scored. The summary carries the sampler's wall time (`sample_seconds`, compilation excluded)."""
    config = run.config
    prompts = read_prompts(config.sample)
    if not prompts:
      raise ConfigError("no prompts: --mode=sample of a generator needs --config.sample.prompts='a;b' (captions, or "
                        "class ids / names) or --config.sample.prompts_file=FILE (one per line).")
    state, step = run.restore()
    per_prompt = int(config.sample.num_per_prompt)
    repeated = [p for p in prompts for _ in range(per_prompt)]
    given, given_pixels = self.input_conditions(run, len(prompts))
    conditions = self.prompt_conditions(repeated) | {k: np.repeat(v, per_prompt, axis=0) for k, v in given.items()}
    settings = self.sample_settings(config.sample)
    self.draw(state, conditions, settings, int(config.sample.seed), len(repeated))  # compiles
    start = time.perf_counter()
    drawn = self.draw(state, conditions, settings, int(config.sample.seed), len(repeated))
    seconds = time.perf_counter() - start
    pixels = self.decode(run, drawn)
    path = run.workdir / "samples" / f"prompts_step_{step}.png"
    summary: dict[str, Any] = {"path": str(path), "sample_seconds": seconds}
    if str(config.tokenize.data.source) in example_data.SHAPES_SOURCES:
      try:  # class prompts are scored as the class they name
        scored = [class_id(p, self.num_classes) for p in repeated] if self.conditioning == "class" else repeated
        summary |= shape_metrics.score_prompts(scored, pixels)
      except ConfigError as error:  # free-form prompts: sample, but there is nothing to score against
        logging.warning("prompts are not shapes-world captions, so samples are not scored: %s", error)
    if run.is_chief:
      columns = ([] if given_pixels is None else [given_pixels]) + [pixels[j::per_prompt] for j in range(per_prompt)]
      grids.save_examples(path.parent, path.stem, columns, max_rows=len(prompts), fps=float(config.data.get("fps", 8)))
      write_prompts(path.with_suffix(".txt"), prompts)
      print(f"sample step {step}: {len(prompts)} prompts x {per_prompt} → {path} " +
            ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if k != "path"), flush=True)
    return summary


def condition_of(batch: dict[str, jax.Array], conditioning: str, text_length: int) -> dict[str, jax.Array]:
  """A model's condition dict from a batch: `{"label"}` (class), `{}` (none), or `{"text", "text_mask"}` padded
  with masked positions or cut to `text_length`."""
  if conditioning == "class":
    return {"label": batch["label"]}
  if conditioning == "none":
    return {}
  text_, mask = batch["text"], batch["text_mask"]
  if text_.shape[1] < text_length:
    pad = text_length - text_.shape[1]
    text_ = jnp.pad(text_, ((0, 0), (0, pad), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad)))
  return {"text": text_[:, :text_length].astype(jnp.float32), "text_mask": mask[:, :text_length].astype(bool)}


def example_conditions(conditioning: str, text_length: int, text_dim: int) -> dict[str, jax.Array]:
  """A one-example condition batch of zeros (the inputs `init` and the samplers' abstract shapes take)."""
  if conditioning == "class":
    return {"label": jnp.zeros((1,), jnp.int32)}
  if conditioning == "text":
    return {"text": jnp.zeros((1, text_length, text_dim), jnp.float32), "text_mask": jnp.ones((1, text_length), bool)}
  return {}


class SampleEvaluation:
  """The sample part of a generator's eval (`config.eval.protocol.num_samples` > 0): the task's sample sets of the
  first eval conditions (`cfg`, `nocfg`, ...), decoded, and in the shapes world scored against their prompts next
  to the tokenizer's reconstruction of the real examples; a prediction from given frames is also scored by the
  PSNR of the frames it predicted (`<set>_psnr`). `write_samples` puts reference | each set side by side.

  The examples go through in chunks of `eval_sample_batch(config.eval, count)` rows (the last padded with its
  final row, the padding dropped), so a 50,000-sample protocol holds one chunk of pixels at a time: scores are
  summed over chunks and only the grid's rows are kept. Chunk c draws with `chunk_key(seed, c)`.

  With `config.eval.reference_statistics` (InceptionV3 statistics of the real images, e.g. from --mode=stats of
  the tokenizer experiment; I3D for videos) and the feature network's weights configured, every column also gets
  its Fréchet distance to them: `<set>_fid` (`_fvd` for videos), and `reference_fid`, the tokenizer's own
  reconstructions of the same examples (the floor a generator over that tokenizer can reach). With InceptionV3's
  weights, image columns also get their Inception Score, `<set>_is` and `<set>_is_std`, and with statistics that
  keep real features (--mode=stats does) `<set>_precision` and `<set>_recall` (`evaluation.SampleQuality`).
  `networks` replaces the configured feature networks ({'rfid' | 'rfvd': features(pixels), 'inception':
  FIDInceptionV3's outputs(pixels)})."""

  def __init__(self, task: SecondStage, run: RunContext, state: TrainState, networks: dict[str, Any] | None = None):
    self._task, self._run, self._state = task, run, state
    self._networks = networks
    self._columns: list[np.ndarray] = []
    self._prompts: list = []

  def results(self) -> dict[str, float]:
    config = self._run.config
    protocol = config.eval.protocol
    if not protocol.num_samples:
      return {}
    source = latent_data.open_configured_source(config.data, "eval")
    count = min(int(protocol.num_samples), len(source))
    rows = eval_sample_batch(config.eval, count)
    grid_rows = min(int(config.eval.num_grid_images), count)
    scored = str(config.tokenize.data.source) in example_data.SHAPES_SOURCES
    means, quality = _Means(), self._quality()
    self._columns, self._prompts = [], []
    for chunk, start in enumerate(range(0, count, rows)):
      indices = list(range(start, min(start + rows, count)))
      prompts, columns, psnrs = self._chunk(source, indices, rows, chunk)
      for name, pixels in columns.items():
        if scored and prompts is not None:
          means.add(name, shape_metrics.score_prompts(prompts, pixels), len(indices))
        if quality is not None:
          quality.update(name, pixels)
      for name, psnr in psnrs.items():
        means.add(name, {"psnr": psnr}, len(indices))
      self._keep_grid_rows(list(columns.values()), prompts, grid_rows)
    return means.results() | (quality.results() if quality is not None else {})

  def _chunk(self, source: Any, indices: list[int], rows: int,
             chunk: int) -> tuple[list | None, dict[str, np.ndarray], dict[str, float]]:
    """(prompts, or None; {'reference' | set name: pixels}; {set name: PSNR of its predicted frames}) of the eval
    examples at `indices`, drawn as `rows` rows (padded with the last example; the padding is dropped)."""
    config, task = self._run.config, self._task
    protocol = config.eval.protocol
    examples = [source[i] for i in indices + indices[-1:] * (rows - len(indices))]
    cond = {key: np.stack([e[key] for e in examples]) for key in CONDITION_KEYS if key in examples[0]}
    captions = [source.caption(i) for i in indices] if source.has_captions else None
    prompts = (captions if task.conditioning == "text" or "label" not in examples[0]
               else [int(e["label"]) for e in examples[:len(indices)]])
    latents = task.example_latents(examples)
    kept = len(indices)
    columns = {"reference": task.decode(self._run, latents)[:kept]}
    psnrs = {}
    for name, sample_set in task.sample_sets(self._run, protocol, cond, latents).items():
      settings = task.sample_settings(sample_set.protocol(protocol), sample_set.guided)
      drawn = task.draw(self._state, sample_set.conditions, settings, int(protocol.seed), rows, chunk)
      columns[name] = task.decode(self._run, drawn)[:kept]
      if sample_set.given_pixel_frames:
        psnrs[name] = prediction_psnr(columns[name], columns["reference"], sample_set.given_pixel_frames)
    return prompts, columns, psnrs

  def _keep_grid_rows(self, columns: list[np.ndarray], prompts: list | None, grid_rows: int) -> None:
    """Appends the chunk's rows to the grid's columns until the grid has `grid_rows`."""
    missing = grid_rows - (len(self._columns[0]) if self._columns else 0)
    if missing <= 0:
      return
    head = [c[:missing] for c in columns]
    self._columns = head if not self._columns else [np.concatenate(pair) for pair in zip(self._columns, head)]
    self._prompts += list(prompts or [])[:missing]

  def _quality(self) -> evaluation.SampleQuality | None:
    """The samples' FID/FVD (with `config.eval.reference_statistics`) and Inception Score (images), from the
    configured feature network; None, with a log line, when neither can be computed."""
    eval_config, video = self._run.config.eval, self._is_video
    reference = str(eval_config.reference_statistics or "")
    if not reference:
      logging.info("eval: not computing the samples' FID/FVD (config.eval.reference_statistics is empty; write the "
                   "real images' statistics with --mode=stats of the tokenizer experiment and set it to that file)")
    if self._networks is None:
      if not (eval_config.i3d_weights if video else eval_config.inception_weights):
        logging.info("eval: not scoring samples with a feature network (config.eval.%s is empty)",
                     "i3d_weights" if video else "inception_weights")
        return None
      self._networks = evaluation.feature_networks(eval_config, video)
    feature = self._feature_name if reference and self._feature_name in self._networks else None
    if feature is None and "inception" not in self._networks:
      return None
    return evaluation.SampleQuality(self._networks, feature, reference, "fvd" if video else "fid")

  @property
  def _is_video(self) -> bool:
    return self._task.frozen_tokenizer(self._run).task.input_key == "video"

  @property
  def _feature_name(self) -> str:
    return "rfvd" if self._is_video else "rfid"

  def write_samples(self, directory: epath.Path, step: int) -> None:
    if not self._columns:
      return
    config = self._run.config
    grids.save_examples(directory, f"eval_step_{step}", self._columns, int(config.eval.num_grid_images),
                        fps=float(config.tokenize.data.get("fps", 8)))
    write_prompts(directory / f"eval_step_{step}_prompts.txt", self._prompts)


class _Means:
  """Per-column means of per-chunk means, weighted by each chunk's rows: `<column>_<metric>`."""

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._rows: dict[str, int] = {}

  def add(self, column: str, means: dict[str, float], rows: int) -> None:
    for metric, value in means.items():
      key = f"{column}_{metric}"
      self._sums[key] = self._sums.get(key, 0.0) + float(value) * rows
      self._rows[key] = self._rows.get(key, 0) + rows

  def results(self) -> dict[str, float]:
    return {key: total / self._rows[key] for key, total in self._sums.items()}


def eval_sample_batch(eval_config: Any, count: int) -> int:
  """Rows the eval's sampler draws per call: `config.eval.sample_batch_size` (0: the eval batch), at most the
  `count` samples there are to draw."""
  rows = int(eval_config.get("sample_batch_size", 0))
  if rows < 0:
    raise ConfigError(f"config.eval.sample_batch_size={rows} must be 0 (the eval batch) or a positive row count.")
  return max(1, min(rows or int(eval_config.batch_size), count))


def chunk_key(seed: int, chunk: int) -> jax.Array:
  """The key of the `chunk`-th draw of a stream of `seed`: chunk 0 is `PRNGKey(seed)`, so a one-chunk eval draws as
  `--mode=sample` does; later chunks fold their index in."""
  key = jax.random.PRNGKey(seed)
  return key if chunk == 0 else jax.random.fold_in(key, chunk)


@dataclasses.dataclass(frozen=True)
class SampleSet:
  """One set of eval samples: its condition batch, whether the protocol's guidance applies, and for a prediction
  from given frames the count of leading pixel frames given (the rest are scored by PSNR against the
  reference). `overrides`: (field, value) pairs that set apart this set's decoding from the protocol's."""
  conditions: dict[str, np.ndarray]
  guided: bool
  given_pixel_frames: int = 0
  overrides: tuple[tuple[str, Any], ...] = ()

  def protocol(self, protocol: Any) -> Any:
    """The protocol this set decodes under."""
    if not self.overrides:
      return protocol
    changed = protocol.copy_and_resolve_references()
    with changed.unlocked():
      for field, value in self.overrides:
        changed[field] = value
    return changed


def prediction_psnr(predicted: np.ndarray, reference: np.ndarray, given_pixel_frames: int) -> float:
  """Mean per-example PSNR (pixels in [-1, 1]) of the frames after the first `given_pixel_frames` of videos
  `[B, T, H, W, 3]`."""
  error = np.square(predicted[:, given_pixel_frames:] - reference[:, given_pixel_frames:]).astype(np.float64)
  mse = np.maximum(error.reshape(len(error), -1).mean(axis=1), 1e-12)
  return float(np.mean(10 * np.log10(4.0 / mse)))


@functools.lru_cache(maxsize=16)
def _sampler(task: SecondStage, settings: Any, batch_size: int):
  return jax.jit(functools.partial(task.sample, settings=settings, batch_size=batch_size))


def write_prompts(path: epath.Path, prompts: list) -> None:
  files.write_text(path, "".join(f"{p}\n" for p in prompts))


def class_id(prompt: str, num_classes: int) -> int:
  prompt = prompt.strip()
  if prompt.isdigit() and int(prompt) < num_classes:
    return int(prompt)
  color, _, shape = prompt.partition(" ")
  if color in shapes.COLOR_NAMES and shape in shapes.SHAPES:
    return shapes.class_label(shape, color)
  raise ConfigError(f"prompt {prompt!r} is not a class id below {num_classes} or a shapes class name like "
                    f"'red circle'; class-conditional models take those.")


def read_prompts(sample_config: Any) -> list[str]:
  """Prompts of --mode=sample: `config.sample.prompts` (';'-separated) and the lines of `prompts_file`."""
  prompts = [p.strip() for p in str(sample_config.prompts).split(";") if p.strip()]
  if sample_config.prompts_file:
    try:
      text_ = files.as_path(sample_config.prompts_file).read_text(encoding="utf-8")
      prompts += [line.strip() for line in text_.splitlines() if line.strip()]
    except OSError as error:
      raise ConfigError(f"config.sample.prompts_file={sample_config.prompts_file!r} cannot be read ({error}); "
                        f"give a text file with one prompt per line.") from error
  return prompts
