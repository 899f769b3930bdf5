"""A trained tokenizer held fixed under a second stage: its task and restored state, with jitted encode/decode.

A generator loads it through the run (`RunContext.load_experiment(config.tokenizer.experiment, workdir)`), encodes
a dataset with it once into latent shards (`encode_dataset`, its `--mode=encode`: each process its own share) and
decodes its samples with it. Any second stage over a tokenizer's latents (AR, masked, next-scale, diffusion) uses
the same two calls.
Latents are the tokenizer's named arrays (`tokenizers/base.py`): `{"tokens": ...}` or `{"latents": ...}`.
"""

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from tokgen_jax.data import examples as example_data
from tokgen_jax.data import latents as latent_data
from tokgen_jax.data import streams
from tokgen_jax.data import text, transforms
from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks.autoencoder import AutoencoderTask
from tokgen_jax.tasks.base import RunContext


@dataclasses.dataclass(frozen=True)
class FrozenTokenizer:
  task: AutoencoderTask
  state: Any
  step: int
  run: RunContext

  @functools.cached_property
  def _decode(self):
    return jax.jit(self.task.decode)

  def encode(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Named latents of this process's `pixels` (every process calls it together, each with its own rows; rows
    are padded to a multiple of the local devices and the padding dropped)."""
    rows = len(pixels)
    padding = -rows % jax.local_device_count()
    padded = np.concatenate([pixels, np.zeros((padding,) + pixels.shape[1:], pixels.dtype)]) if padding else pixels
    return {name: value[:rows] for name, value in self.run.map_local(self.task.encode, self.state, padded).items()}

  def latent_specs(self) -> dict[str, Any]:
    return self.task.model.latent_specs(tuple(self.task.input_shape))

  def decode(self, latents: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(self._decode(self.state, latents))


def load(run: RunContext, tokenizer_config: Any) -> FrozenTokenizer:
  """`config.tokenizer` (experiment, workdir, checkpoint_step) restored on the run's mesh."""
  try:
    task, state, step = run.load_experiment(tokenizer_config.experiment, tokenizer_config.workdir,
                                            int(tokenizer_config.checkpoint_step))
  except ConfigError as error:
    raise ConfigError(f"config.tokenizer.workdir={tokenizer_config.workdir!r}: {error} The generator needs a "
                      f"trained tokenizer there (train it with its experiment, e.g. the ':tokenizer' variant).") from error
  return FrozenTokenizer(task, state, step, run)


def _pixels(examples: list[dict[str, Any]], batch_size: int) -> np.ndarray:
  """Float [-1, 1] pixels of the examples, padded with zeros to a fixed batch (one compiled encoder)."""
  key = "video" if "video" in examples[0] else "image"
  pixels = np.stack([transforms.scale_to_signed_unit(e[key]) for e in examples])
  return np.concatenate([pixels, np.zeros((batch_size - len(pixels),) + pixels.shape[1:], pixels.dtype)])


def encode_dataset(config: Any, tokenizer: FrozenTokenizer, directory: str) -> dict[str, int]:
  """Latent shards of `config.tokenize.data` under `directory`: every array the tokenizer encodes, with labels and
  captions when the source has them and the captions' MiniLM token states when `config.tokenize.text_encoder` is
  set. Each process encodes and writes its own contiguous share (its part); returns the examples per split."""
  tokenize_config = config.tokenize
  local_devices = jax.local_device_count()
  batch_size = -(-int(tokenize_config.batch_size) // local_devices) * local_devices  # rows divide over devices
  encode_texts = text.token_states_encoder(int(config.model.text_length)) if tokenize_config.text_encoder else None
  counts = {}
  for split, split_name in (("train", config.data.train_split), ("eval", config.data.eval_split)):
    source = example_data.labeled_source(tokenize_config.data, split)
    # This process's contiguous block, padded so every process makes the same number of (collective) encode calls.
    block = [spec[0] for spec in streams.shard_and_pad([(i,) for i in range(len(source))], batch_size,
                                                        jax.process_index(), jax.process_count())]
    with latent_data.LatentShardWriter(directory, str(split_name), shard_size=int(tokenize_config.shard_size),
                                       part=jax.process_index(), num_parts=jax.process_count(),
                                       metadata={"tokenizer_workdir": str(config.tokenizer.workdir),
                                                 "tokenizer_step": tokenizer.step}) as writer:
      for start in range(0, len(block), batch_size):
        batch = [source[i] for i in block[start:start + batch_size] if i >= 0]
        encoded = tokenizer.encode(_pixels(batch or [source[0]], batch_size))
        if not batch:
          continue
        arrays = {name: value[:len(batch)] for name, value in encoded.items()}
        if "label" in batch[0]:
          arrays["label"] = np.asarray([e["label"] for e in batch], np.int32)
        writer.add(arrays, [e["caption"] for e in batch] if "caption" in batch[0] else None)
      writer.close(encode_texts)
    counts[split] = len(source)
    print(f"encode {split}: {sum(i >= 0 for i in block)} of {len(source)} examples → {directory}/{split_name}", flush=True)
  return counts
