"""Data presets for `tokgen_jax.data.make_pipeline`."""

import ml_collections

from tokgen_jax.data import DEFAULT_LAVFI_SOURCES


def images(source: str = "photos", image_size: int = 64, eval_image_size: int = 128, **overrides) -> ml_collections.ConfigDict:
  """Every field the image pipeline reads; `source` is 'photos' (offline), 'folder' or 'tfds'."""
  config = ml_collections.ConfigDict(dict(
      source=source, name="", data_dir="", path="", train_split="train", eval_split="eval",
      image_size=image_size, eval_image_size=eval_image_size, resize=0, random_flip=True, seed=0,
      num_threads=2, prefetch=4, max_corrupt_fraction=0.0))  # folders: share of undecodable files skipped
  config.update(overrides)
  return config


def imagenet(image_size: int = 256, data_dir: str = "") -> ml_collections.ConfigDict:
  """ImageNet-1k from TFDS ArrayRecord (`tfds build imagenet2012 --file_format=array_record`)."""
  return images("tfds", image_size, image_size, name="imagenet2012", data_dir=data_dir,
                eval_split="validation", resize=image_size)


def videos(source: str = "lavfi", num_frames: int = 17, image_size: int = 64, eval_image_size: int = 64,
           **overrides) -> ml_collections.ConfigDict:
  """Every field the video pipeline reads; `source` is 'lavfi' (offline ffmpeg renders), 'gif' (the animated GIF
  scikit-image ships), 'video_folder' or 'tfds_video'. Clips are `num_frames` frames sampled at `fps`."""
  config = images(source, image_size, eval_image_size)
  config.update(dict(num_frames=num_frames, fps=8, lavfi_sources=DEFAULT_LAVFI_SOURCES, clip_seconds=9.0,
                     lavfi_codec="libx264"))
  config.update(overrides)
  return config


def tokens(path: str = "", **overrides) -> ml_collections.ConfigDict:
  """Token shards written by --mode=tokenize (source 'tokens'); `path` empty means WORKDIR/tokens, filled in by the
  trainer. The image fields are unused and kept only so code that reads them finds them."""
  config = ml_collections.ConfigDict(dict(
      source="tokens", path=path, name="", data_dir="", train_split="train", eval_split="eval", image_size=0,
      eval_image_size=0, resize=0, random_flip=False, seed=0, num_threads=2, prefetch=4))
  config.update(overrides)
  return config


def shapes(image_size: int = 32, num_frames: int = 0, num_shapes: int | tuple[int, ...] = (1, 2),
           train_examples: int = 50_000, eval_examples: int = 1_000, world_seed: int = 0,
           **overrides) -> ml_collections.ConfigDict:
  """The offline shapes world (`tokgen_jax.data.shapes`): one or two named shapes whose content `metrics.shapes.match`
  reads back from generated pixels, so samples are scored on CPU without FID. `num_frames` 0 gives images (source
  'shapes'), at least 2 gives clips of moving shapes (source 'shapes_video').

  The world's settings travel in `name` as a spec string, and scenes render at exactly `image_size` (also the eval
  tile, so an eval tile is a whole scene): set `image_size` here, not as an override. Flips stay off because a
  mirrored scene contradicts its caption. The pipeline serves pixels only; labels and captions come from
  `shapes.ShapesSource`.
  """
  from tokgen_jax.data import shapes as shapes_world  # pylint: disable=g-import-not-at-top
  common = dict(name=shapes_world.spec_string(image_size, train_examples, eval_examples, num_shapes, world_seed),
                random_flip=False, resize=0)
  if num_frames:
    config = videos("shapes_video", num_frames, image_size, image_size, **common)
  else:
    config = images("shapes", image_size, image_size, **common)
  config.update(overrides)
  return config
