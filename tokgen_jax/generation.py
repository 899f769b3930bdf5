"""The generator's side of the trainer: tokenize a dataset with a frozen tokenizer, turn prompts into conditions,
draw samples, decode them to pixels and score them against their prompts.

- `tokenize`: every example of `config.tokenize.data` (splits train and eval) through the tokenizer's encoder
  into `data.tokens` shards, with labels and captions when the source has them, and the captions' text-encoder
  embeddings (all-MiniLM-L6-v2 token states) when `config.tokenize.text_encoder` is set.
- `draw`: samples for a batch of conditions under one sampling setting (compiled once per setting), which the
  trainer decodes with the frozen tokenizer (`FrozenTokenizer`). `score_shapes`: in the shapes world
  (`data.shapes`) each sample is read back from its pixels and compared with its prompt: `color_shape` is the
  share of samples whose every prompted shape was drawn with the right color and shape, next to `match`'s
  per-attribute shares. The tokenizer's own reconstruction of the real examples is scored the same way (`reference_*`): the ceiling a generator can reach through this tokenizer.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from tokgen_jax import tasks
from tokgen_jax.data import shapes, sources, transforms
from tokgen_jax.data import tokens as token_data
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import SamplingSettings, guidance_scale_from

SHAPES_SOURCES = ("shapes", "shapes_video")


@dataclasses.dataclass(frozen=True)
class FrozenTokenizer:
  """A trained tokenizer: its task and restored state, with jitted encode / decode."""

  task: tasks.AutoencoderTask
  state: Any
  step: int

  @functools.cached_property
  def _encode(self):
    return jax.jit(self.task.tokenize)

  @functools.cached_property
  def _decode(self):
    return jax.jit(self.task.detokenize)

  def encode(self, pixels: np.ndarray) -> np.ndarray:
    return np.asarray(self._encode(self.state, pixels))

  def decode(self, token_grids: np.ndarray) -> np.ndarray:
    return np.asarray(self._decode(self.state, token_grids))


# ---------------------------------------------------------------------------------------------------- tokenize


def labeled_source(data_config: Any, split: str) -> Sequence[dict[str, Any]]:
  """Random access to `{'image' | 'video': uint8, 'label'?, 'caption'?}` examples of a split, whole scenes for the
  shapes world, else each image resized (shorter side `image_size`) and center-cropped to `image_size`."""
  kind = str(data_config.source)
  if kind in SHAPES_SOURCES:
    return shapes.open_shapes(split, str(data_config.name), int(data_config.get("num_frames", 0)) if
                              kind == "shapes_video" else 0)
  if kind in sources.SOURCE_KINDS:
    source = sources.open_source(kind, split=split, name=str(data_config.name), data_dir=str(data_config.data_dir),
                                 path=str(data_config.path),
                                 split_name=str(data_config.train_split if split == "train" else data_config.eval_split))
    size = int(data_config.image_size)

    class Images:
      def __len__(self):
        return len(source)

      def __getitem__(self, index):
        image = transforms.resize_shorter_side(source.decode(source.records[index]), size)
        return {"image": transforms.center_crop(image, size)}

    return Images()
  raise ConfigError(f"config.tokenize.data.source={kind!r}: tokenize reads image sources {sources.SOURCE_KINDS} "
                    f"and {SHAPES_SOURCES}; video folders are not supported yet.")


def _text_encoder(max_length: int):
  """`encode_texts(list) -> (embeddings [U, max_length, 384], mask)` with the offline MiniLM encoder."""
  from tokgen_jax.data.text import TextEncoder  # pylint: disable=g-import-not-at-top  (loads weights)
  encoder = TextEncoder(max_length=max_length, padding="max_length")

  def encode(texts: list[str], chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    parts = [encoder.encode(texts[i:i + chunk])[:2] for i in range(0, len(texts), chunk)]
    return (np.concatenate([np.asarray(p[0]) for p in parts]), np.concatenate([np.asarray(p[1]) for p in parts]))

  return encode


def _batches(source: Sequence[dict[str, Any]], batch_size: int):
  for start in range(0, len(source), batch_size):
    yield [source[i] for i in range(start, min(start + batch_size, len(source)))]


def _pixels(examples: list[dict[str, Any]], batch_size: int) -> np.ndarray:
  """Float [-1, 1] pixels of the examples, padded with zeros to a fixed batch (one compiled encoder)."""
  key = "video" if "video" in examples[0] else "image"
  pixels = np.stack([transforms.scale_to_signed_unit(e[key]) for e in examples])
  return np.concatenate([pixels, np.zeros((batch_size - len(pixels),) + pixels.shape[1:], pixels.dtype)])


def tokenize(config: Any, tokenizer: FrozenTokenizer, directory: str, write: bool = True) -> dict[str, int]:
  """Write train and eval token shards of `config.tokenize.data` under `directory`; returns examples per split."""
  tokenize_config = config.tokenize
  batch_size = int(tokenize_config.batch_size)
  encode_texts = _text_encoder(int(config.model.text_length)) if tokenize_config.text_encoder else None
  counts = {}
  for split, split_name in (("train", config.data.train_split), ("eval", config.data.eval_split)):
    source = labeled_source(tokenize_config.data, split)
    writer = token_data.TokenShardWriter(directory, str(split_name), shard_size=int(tokenize_config.shard_size),
                                         metadata={"tokenizer_workdir": str(config.tokenizer.workdir),
                                                   "tokenizer_step": tokenizer.step}) if write else None
    for examples in _batches(source, batch_size):
      token_grids = tokenizer.encode(_pixels(examples, batch_size))[:len(examples)]
      labels = np.asarray([e["label"] for e in examples], np.int32) if "label" in examples[0] else None
      captions = [e["caption"] for e in examples] if "caption" in examples[0] else None
      if writer is not None:
        writer.add(token_grids, labels, captions)
    if writer is not None:
      writer.close(encode_texts)
    counts[split] = len(source)
    print(f"tokenize {split}: {len(source)} examples → {directory}/{split_name}", flush=True)
  return counts


# ------------------------------------------------------------------------------------------------------ prompts


def prompt_conditions(task: tasks.GeneratorTask, prompts: Sequence[str]) -> dict[str, np.ndarray]:
  """The condition batch of prompts: captions through the text encoder (as stored by tokenize: float16), class
  ids (or shapes-world class names such as 'red circle') as labels."""
  kind = task.model.conditioning
  if kind == "text":
    embeddings, mask = _text_encoder(task.model.text_length)(list(prompts))
    return {"text": embeddings.astype(np.float16).astype(np.float32), "text_mask": mask}
  if kind == "class":
    return {"label": np.asarray([_class_id(p, task.model.num_classes) for p in prompts], np.int32)}
  return {}


def _class_id(prompt: str, num_classes: int) -> int:
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
      with open(sample_config.prompts_file, encoding="utf-8") as file:
        prompts += [line.strip() for line in file if line.strip()]
    except OSError as error:
      raise ConfigError(f"config.sample.prompts_file={sample_config.prompts_file!r} cannot be read ({error}); "
                        f"give a text file with one prompt per line.") from error
  return prompts


# ------------------------------------------------------------------------------------------------------ scoring


def _color_shape(prompt: str | int, pixels: np.ndarray) -> float:
  """1.0 when every prompted shape was drawn with its color and shape (anywhere, any size)."""
  if isinstance(prompt, (int, np.integer)):
    color, _, shape = shapes.class_name(int(prompt)).partition(" ")
    wanted = [(shape, color)]
  else:
    wanted = [(obj.shape, obj.color) for obj in shapes.parse_caption(prompt).objects]
  found = [(spec.shape, spec.color) for spec in shapes.analyze(pixels)]
  return float(all(item in found for item in wanted))


def score_shapes(prompts: Sequence[str | int], samples: np.ndarray) -> dict[str, float]:
  """`color_shape` accuracy, and for captions `match`'s per-attribute shares and `all`."""
  scores = {"color_shape": float(np.mean([_color_shape(p, s) for p, s in zip(prompts, samples)]))}
  if all(isinstance(p, str) for p in prompts):
    scores |= {key: value for key, value in shapes.mean_match(list(prompts), list(samples)).items()}
  return scores


def settings_from_config(sample_config: Any, guided: bool = True) -> SamplingSettings:
  """`config.sample` or an evaluation protocol as `SamplingSettings`: the quoted cfg_scale converted from its
  cfg_convention to the sampler's `u + s·(c − u)`; `guided=False` draws the same settings without guidance."""
  scale = guidance_scale_from(float(sample_config.cfg_scale), str(sample_config.get("cfg_convention", "standard")))
  return SamplingSettings(temperature=float(sample_config.temperature), top_k=int(sample_config.top_k),
                          top_p=float(sample_config.top_p), cfg_ramp=bool(sample_config.cfg_ramp),
                          cfg_scale=scale if guided else 1.0)


@functools.lru_cache(maxsize=16)
def _sampler(task: tasks.GeneratorTask, settings: SamplingSettings, batch_size: int):
  return jax.jit(functools.partial(task.sample, settings=settings, batch_size=batch_size))


def draw(task: tasks.GeneratorTask, state: Any, cond: dict[str, np.ndarray], settings: SamplingSettings,
         seed: int, batch_size: int) -> np.ndarray:
  """Token grids `[B, *token_shape]` for the conditions (compiled once per settings; deterministic per seed)."""
  return np.asarray(_sampler(task, settings, batch_size)(state, cond, jax.random.PRNGKey(seed)))
