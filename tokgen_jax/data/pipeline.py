"""`make_pipeline`: a Grain iterator of image batches for training or held-out evaluation.

train: `streams.global_stream`: the records shuffled with the seed, reshuffled every epoch, repeated forever; each
global batch is split into one contiguous slice per process -> decode -> random crop/flip drawn from the seed and the
element's global position (`streams.position_rng`), so batches do not depend on the number of processes -> batch of
`global_batch_size // process_count`, dropping nothing because the stream is infinite.

eval: every image (after the optional resize) is cut into all non-overlapping `eval_image_size` tiles, image by
image, row-major inside an image. Tiles are split into one contiguous block per process (neighbouring tiles share
an image, so a process decodes each image about once), and each block is padded to the same number of full batches
with zero images whose `mask` is False, so every process runs the same number of eval steps.

A folder image that fails to decode when read is replaced by the next readable image in training and masked out
(as padding) in eval; corrupt files found when the folder opens are skipped up to `max_corrupt_fraction` (see
`sources`).

Both are Grain `MapDataset`s turned into an iterator at the end, so `get_state()` is a small JSON-able dict and
`set_state()` resumes exactly where the saved iterator stood.
"""

from __future__ import annotations

import functools
from typing import Any

import grain
import jax
import numpy as np

from tokgen_jax.data import latents, sources, streams, transforms, video, video_pipeline


def make_pipeline(data_config, split: str, *, global_batch_size: int, process_index: int | None = None,
                  process_count: int | None = None) -> grain.DatasetIterator:
  """Returns an iterator of `{'image': float32 [B, S, S, 3] in [-1, 1]}` (eval adds `'mask': bool [B]`).

  Video sources (`video.VIDEO_SOURCE_KINDS`) yield `{'video': float32 [B, T, S, S, 3]}` instead; see
  `video_pipeline` for them and their extra fields (num_frames, fps, lavfi_sources, clip_seconds, lavfi_codec,
  max_corrupt_fraction).

  Sources 'latents' (alias 'tokens') read the latent shards `--mode=encode` wrote instead; see
  `latents.make_latent_pipeline`.

  Args:
    data_config: `config.data` (fields: source, name, data_dir, path, train_split, eval_split, image_size,
      eval_image_size, resize, random_flip, seed, num_threads, prefetch; optional max_corrupt_fraction, the share
      of corrupt folder files skipped rather than refused, default 0).
    split: 'train' (infinite, shuffled, augmented) or 'eval' (one deterministic pass over held-out tiles).
    global_batch_size: batch size over all processes; each process yields `global_batch_size // process_count`.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of data-loading processes; defaults to `jax.process_count()`.
  """
  if split not in streams.SPLITS:
    raise ValueError(f"make_pipeline split must be one of {streams.SPLITS}, got {split!r}.")
  if str(data_config.source) in latents.SOURCE_NAMES:
    return latents.make_latent_pipeline(data_config, split, global_batch_size=global_batch_size,
                                        process_index=process_index, process_count=process_count)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch_size = streams.local_batch_size(global_batch_size, process_index, process_count)
  if str(data_config.source) in video.VIDEO_SOURCE_KINDS:
    dataset = video_pipeline.make_video_dataset(data_config, split, local_batch_size=local_batch_size,
                                                process_index=process_index, process_count=process_count)
  else:
    dataset = _image_dataset(data_config, split, local_batch_size, process_index, process_count)
  read_options = grain.ReadOptions(num_threads=int(data_config.num_threads),
                                   prefetch_buffer_size=int(data_config.prefetch))
  return iter(dataset.to_iter_dataset(read_options))


def _image_dataset(data_config, split: str, local_batch_size: int, process_index: int,
                   process_count: int) -> grain.MapDataset:
  source = _open_configured_source(data_config, split)
  if split == "train":
    return _train_dataset(source, data_config, local_batch_size, process_index, process_count)
  return _eval_dataset(source, data_config, local_batch_size, process_index, process_count)


def _open_configured_source(data_config, split: str) -> sources.ImageSource:
  split_name = data_config.train_split if split == "train" else data_config.eval_split
  # Hand-built configs may lack max_corrupt_fraction (the presets have it): then any corrupt folder file is an error.
  max_corrupt_fraction = data_config.get("max_corrupt_fraction", 0.0) if hasattr(data_config, "get") else 0.0
  return sources.open_source(str(data_config.source), split=split, name=str(data_config.name),
                             data_dir=str(data_config.data_dir), path=str(data_config.path),
                             split_name=str(split_name), max_corrupt_fraction=float(max_corrupt_fraction),
                             num_threads=int(data_config.num_threads))


# ------------------------------------------------------------------------------------------------------- train


def _train_dataset(source: sources.ImageSource, data_config, local_batch_size: int, process_index: int,
                   process_count: int) -> grain.MapDataset:
  augment = functools.partial(transforms.train_augment, image_size=int(data_config.image_size),
                              resize=int(data_config.resize), random_flip=bool(data_config.random_flip))
  seed = int(data_config.seed)

  def example(element: tuple[int, int]) -> dict[str, np.ndarray]:
    index, position = element
    return {"image": augment(source.read_or_next(index), streams.position_rng(seed, position))}

  return (streams.global_stream(len(source), seed, local_batch_size * process_count, process_index, process_count)
          .map(example)
          .batch(local_batch_size, drop_remainder=True))


# -------------------------------------------------------------------------------------------------------- eval


def eval_tile_specs(source: sources.ImageSource, *, tile_size: int, resize: int) -> list[tuple[int, int, int]]:
  """`(record index, top, left)` of every held-out tile, image by image, row-major inside an image."""
  specs = []
  for index, (height, width) in enumerate(source.shapes):
    height, width = transforms.eval_image_shape(height, width, tile_size=tile_size, resize=resize)
    specs.extend((index, top, left) for top, left in transforms.tile_corners(height, width, tile_size))
  return specs


class _EvalTileReader:
  """Maps a tile spec to `{'image', 'mask'}`, keeping the last few prepared images (tiles of an image are adjacent)."""

  def __init__(self, source: sources.ImageSource, tile_size: int, resize: int, cache_size: int):
    self._source = source
    self._tile_size = tile_size
    self._resize = resize
    self.prepared_image = functools.lru_cache(maxsize=cache_size)(self._prepare)

  def _prepare(self, index: int) -> np.ndarray | None:
    image = self._source.read(index)
    if image is None:  # a file the source skips (logged and counted there): its tiles become padding
      return None
    return transforms.prepare_eval_image(image, tile_size=self._tile_size, resize=self._resize)

  def __call__(self, spec: tuple[int, int, int]) -> dict[str, Any]:
    index, top, left = spec
    image = self.prepared_image(index) if index >= 0 else None
    if image is None:
      return {"image": np.zeros((self._tile_size, self._tile_size, 3), np.float32), "mask": np.bool_(False)}
    tile = transforms.crop(image, top, left, self._tile_size)
    return {"image": transforms.scale_to_signed_unit(tile), "mask": np.bool_(True)}


def _eval_dataset(source: sources.ImageSource, data_config, local_batch_size: int, process_index: int,
                  process_count: int) -> grain.MapDataset:
  tile_size, resize = int(data_config.eval_image_size), int(data_config.resize)
  specs = eval_tile_specs(source, tile_size=tile_size, resize=resize)
  if not specs:
    raise ValueError(f"{source.description} yields no eval tiles.")
  local_specs = streams.shard_and_pad(specs, local_batch_size, process_index, process_count)
  # Each reader thread works on one batch at a time, so a couple of images per thread is enough.
  reader = _EvalTileReader(source, tile_size, resize, cache_size=2 * max(1, int(data_config.num_threads)) + 2)
  return grain.MapDataset.source(local_specs).map(reader).batch(local_batch_size)
