"""The video branch of `make_pipeline`: Grain iterators of `{'video': float32 [B, T, S, S, 3] in [-1, 1]}`.

train: `streams.global_stream` over the videos (the same global batches for any number of processes) -> a clip
drawn with the randomness of its global position (`streams.position_rng`), in this order: the
start frame uniformly in [0, max(0, N - T)], the crop's top and left, and the flip; the same crop and flip apply
to all T frames -> batch of `global_batch_size // process_count`.

eval: every held-out video (after the optional per-frame resize) is cut into clips of T consecutive frames at
starts 0, T, 2T, ... (a video shorter than T gives one clip, its last frame repeated) times all non-overlapping
`eval_image_size` tiles, video by video, then window by window, tiles row-major. Clips are split into one
contiguous block per process and padded with zero clips whose `mask` is False, exactly as image eval tiles.

The element layout and the state (`get_state()` / `set_state()`) behave as in the image pipeline.
"""

from __future__ import annotations

import functools
from typing import Any

import grain
import numpy as np

from tokgen_jax.data import streams
from tokgen_jax.data import transforms
from tokgen_jax.data import video
from tokgen_jax.errors import ConfigError

# Fields only the video pipeline reads, with the defaults used when a config lacks them.
VIDEO_DEFAULTS = dict(num_frames=17, fps=8.0, lavfi_sources=video.DEFAULT_LAVFI_SOURCES, clip_seconds=9.0,
                      lavfi_codec="libx264", max_corrupt_fraction=0.0)


def _field(data_config, key: str):
  return data_config.get(key, VIDEO_DEFAULTS[key]) if hasattr(data_config, "get") else getattr(data_config, key)


def open_configured_video_source(data_config, split: str) -> video.VideoSource:
  """The configured video source for `split` ('train' | 'eval')."""
  split_name = data_config.train_split if split == "train" else data_config.eval_split
  return video.open_video_source(
      str(data_config.source), split=split, num_frames=_num_frames(data_config), fps=float(_field(data_config, "fps")),
      name=str(data_config.name), data_dir=str(data_config.data_dir), path=str(data_config.path),
      split_name=str(split_name), lavfi_sources=tuple(str(spec) for spec in _field(data_config, "lavfi_sources")),
      lavfi_size=video.lavfi_render_size(data_config.image_size, data_config.eval_image_size, data_config.resize),
      clip_seconds=float(_field(data_config, "clip_seconds")), lavfi_codec=str(_field(data_config, "lavfi_codec")),
      max_corrupt_fraction=float(_field(data_config, "max_corrupt_fraction")),
      num_threads=int(data_config.num_threads))


def _num_frames(data_config) -> int:
  num_frames = int(_field(data_config, "num_frames"))
  if num_frames < 1:
    raise ConfigError(f"config.data.num_frames={num_frames} must be at least 1 (frames per clip).")
  return num_frames


def make_video_dataset(data_config, split: str, *, local_batch_size: int, process_index: int,
                       process_count: int) -> grain.MapDataset:
  """The batched dataset `make_pipeline` iterates for video sources (arguments already validated there)."""
  source = open_configured_video_source(data_config, split)
  if split == "train":
    return _train_dataset(source, data_config, local_batch_size, process_index, process_count)
  return _eval_dataset(source, data_config, local_batch_size, process_index, process_count)


# ------------------------------------------------------------------------------------------------------- train


def resize_frames(frames: np.ndarray, *, resize: int, min_size: int) -> np.ndarray:
  """`transforms.ensure_shorter_side` on every frame of uint8 `[T, H, W, 3]` (a no-op when no resize is needed)."""
  shorter = min(frames.shape[1:3])
  if max(resize or shorter, min_size) == shorter:
    return frames
  return np.stack([transforms.ensure_shorter_side(frame, resize=resize, min_size=min_size) for frame in frames])


def train_clip(source: video.VideoSource, index: int, rng: np.random.Generator, *, num_frames: int,
               image_size: int, resize: int, random_flip: bool) -> np.ndarray:
  """A random clip of video `index`: start frame, then one crop and flip for all frames; float32 in [-1, 1]."""
  length = source.info(index).num_frames
  start = int(rng.integers(0, max(0, length - num_frames) + 1))
  frames = resize_frames(source.read_clip(index, start, num_frames), resize=resize, min_size=image_size)
  height, width = frames.shape[1:3]
  top = int(rng.integers(0, height - image_size + 1))
  left = int(rng.integers(0, width - image_size + 1))
  clip = frames[:, top:top + image_size, left:left + image_size]
  if random_flip and rng.random() < 0.5:
    clip = clip[:, :, ::-1]
  return transforms.scale_to_signed_unit(clip)


def _train_dataset(source: video.VideoSource, data_config, local_batch_size: int, process_index: int,
                   process_count: int) -> grain.MapDataset:
  clip = functools.partial(train_clip, source, num_frames=_num_frames(data_config),
                           image_size=int(data_config.image_size), resize=int(data_config.resize),
                           random_flip=bool(data_config.random_flip))
  seed = int(data_config.seed)

  def example(element: tuple[int, int]) -> dict[str, np.ndarray]:
    index, position = element
    return {"video": clip(index, streams.position_rng(seed, position))}

  return (streams.global_stream(len(source), seed, local_batch_size * process_count, process_index, process_count)
          .map(example)
          .batch(local_batch_size, drop_remainder=True))


# -------------------------------------------------------------------------------------------------------- eval


def eval_clip_specs(source: video.VideoSource, *, num_frames: int, tile_size: int,
                    resize: int) -> list[tuple[int, int, int, int]]:
  """`(video index, start frame, top, left)` of every held-out clip, in the order the module docstring gives."""
  specs = []
  for index in range(len(source)):
    length, height, width = source.info(index)
    height, width = transforms.eval_image_shape(height, width, tile_size=tile_size, resize=resize)
    corners = transforms.tile_corners(height, width, tile_size)
    for start in range(0, max(1, length - num_frames + 1), num_frames):
      specs.extend((index, start, top, left) for top, left in corners)
  return specs


class _EvalClipReader:
  """Maps a clip spec to `{'video', 'mask'}`, keeping the last few prepared videos (clips of a video are adjacent)."""

  def __init__(self, source: video.VideoSource, num_frames: int, tile_size: int, resize: int, cache_size: int):
    self._source = source
    self._num_frames = num_frames
    self._tile_size = tile_size
    self._resize = resize
    self.prepared_video = functools.lru_cache(maxsize=cache_size)(self._prepare)

  def _prepare(self, index: int) -> np.ndarray:
    length = self._source.info(index).num_frames
    frames = self._source.read_clip(index, 0, max(length, self._num_frames))
    return np.stack([transforms.prepare_eval_image(frame, tile_size=self._tile_size, resize=self._resize)
                     for frame in frames])

  def __call__(self, spec: tuple[int, ...]) -> dict[str, Any]:
    index = spec[0]
    if index < 0:  # the image pipeline's padding spec
      shape = (self._num_frames, self._tile_size, self._tile_size, 3)
      return {"video": np.zeros(shape, np.float32), "mask": np.bool_(False)}
    _, start, top, left = spec
    size = self._tile_size
    frames = video.pad_frames(self.prepared_video(index)[start:start + self._num_frames], self._num_frames)
    return {"video": transforms.scale_to_signed_unit(frames[:, top:top + size, left:left + size]),
            "mask": np.bool_(True)}


def _eval_dataset(source: video.VideoSource, data_config, local_batch_size: int, process_index: int,
                  process_count: int) -> grain.MapDataset:
  num_frames, tile_size, resize = _num_frames(data_config), int(data_config.eval_image_size), int(data_config.resize)
  specs = eval_clip_specs(source, num_frames=num_frames, tile_size=tile_size, resize=resize)
  if not specs:
    raise ValueError(f"{source.description} yields no eval clips.")
  local_specs = streams.shard_and_pad(specs, local_batch_size, process_index, process_count)
  reader = _EvalClipReader(source, num_frames, tile_size, resize, cache_size=max(1, int(data_config.num_threads)) + 1)
  return grain.MapDataset.source(local_specs).map(reader).batch(local_batch_size)
