"""Random access to whole labeled examples of a split, for encoding a dataset once with a frozen first stage.

Unlike the training pipelines (random crops, pixels only) these keep what a conditional generator needs: every
example is `{'image' | 'video': uint8, 'label'?, 'caption'?}`, whole scenes for the shapes world, else each image
resized (shorter side `image_size`) and center-cropped to `image_size`.
"""

from collections.abc import Sequence
from typing import Any

from tokgen_jax.data import shapes, sources, transforms
from tokgen_jax.errors import ConfigError

SHAPES_SOURCES = ("shapes", "shapes_video")


class _CenterCroppedImages(Sequence):

  def __init__(self, source: sources.ImageSource, size: int):
    self._source, self._size = source, size

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    image = transforms.resize_shorter_side(self._source.decode(self._source.records[index]), self._size)
    return {"image": transforms.center_crop(image, self._size)}


def labeled_source(data_config: Any, split: str) -> Sequence[dict[str, Any]]:
  """The examples of `split` ('train' | 'eval') of `data_config` (a `config.data`-like dict)."""
  kind = str(data_config.source)
  if kind in SHAPES_SOURCES:
    num_frames = int(data_config.get("num_frames", 0)) if kind == "shapes_video" else 0
    return shapes.open_shapes(split, str(data_config.name), num_frames)
  if kind in sources.SOURCE_KINDS:
    split_name = data_config.train_split if split == "train" else data_config.eval_split
    source = sources.open_source(kind, split=split, name=str(data_config.name), data_dir=str(data_config.data_dir),
                                 path=str(data_config.path), split_name=str(split_name))
    return _CenterCroppedImages(source, int(data_config.image_size))
  raise ConfigError(f"config.tokenize.data.source={kind!r}: encoding reads image sources {sources.SOURCE_KINDS} "
                    f"and {SHAPES_SOURCES}; video folders are not supported yet.")
