"""Image sources: random-access records plus the function that decodes one record to uint8 `[H, W, 3]`.

Three kinds, picked by `config.data.source`:

* `photos` -- the RGB photographs that scikit-image and scikit-learn install with them, for local runs with no
  download. The split is fixed:

  - train (`PHOTO_TRAIN`, 9 images): skimage.data astronaut, coffee, rocket, hubble_deep_field,
    immunohistochemistry, retina, colorwheel, stereo_motorcycle (left view), and sklearn's china.jpg.
  - held out (`PHOTO_HELD_OUT`, 2 images, the eval split): skimage.data chelsea and sklearn's flower.jpg.

  `train_split` / `eval_split` are ignored. Photos are loaded on first use and kept for the process.
* `folder` -- image files (png, jpg, jpeg, bmp, webp, gif) anywhere under `path/<split folder>`, sorted by
  relative path. Records are file paths; pixels are decoded in the pipeline's map step. Bad files are handled as
  in video folders (`video.video_folder_source`):

  - When the source opens, every file's header is read (in `num_threads` threads, some 30 us a file on a local
    disk; this also gives the eval layout its image shapes). A file whose header does not parse -- empty, random
    bytes, text or another format under an image name -- is skipped, logged with its path and counted in
    `corrupt_files`. A share of corrupt files above `config.data.max_corrupt_fraction` (0 when the config has no
    such field: any corrupt file) is a ConfigError naming them.
  - A file whose header parses but whose pixels do not decode (a truncated PNG or JPEG) is found when it is read:
    it is logged once and counted in `runtime_failures`; training takes the next readable image in its place,
    and evaluation masks its tiles out (`mask` False, as padding), so every batch keeps its shape.
* `tfds` -- a TFDS dataset the user prepared in ArrayRecord format; records keep their encoded 'image' bytes
  (TFDS decoding is skipped) and are decoded with PIL in the map step, so TensorFlow is never needed.

A source also reports each image's `(height, width)` without decoding pixels where it can (file headers), which
the eval pipeline needs to lay out its tiles before reading any image.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
from absl import logging

from tokgen_jax.data import files, registry, transforms
from tokgen_jax.errors import ConfigError

PHOTO_TRAIN = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
               "colorwheel", "stereo_motorcycle", "china")
PHOTO_HELD_OUT = ("chelsea", "flower")
SOURCE_KINDS = ("photos", "folder", "tfds", "shapes")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")

_SKLEARN_PHOTOS = ("china", "flower")


class ImageSource:
  """Random-access records, the decoder for one record, and image shapes for laying out eval tiles.

  `read(index)` is what pipelines call: the decoded record, or None when the source skips it (a folder file that
  fails to decode after its header was read; see the module docstring). `decode(record)` always decodes or raises.
  """

  def __init__(self, records: Sequence[Any], decode: Callable[[Any], np.ndarray],
               read_shape: Callable[[int], tuple[int, int]], description: str, *,
               read: Callable[[int], np.ndarray | None] | None = None, corrupt_files: Sequence[str] = (),
               runtime_failures: set[str] | None = None):
    self.records = records
    self.decode = decode
    self._read_shape = read_shape
    self._read = read or (lambda index: decode(records[index]))
    self.description = description
    self.corrupt_files = tuple(corrupt_files)  # folder: files skipped because their header does not parse
    self.runtime_failures = set() if runtime_failures is None else runtime_failures  # folder: failed when read

  def __len__(self) -> int:
    return len(self.records)

  def read(self, index: int) -> np.ndarray | None:
    """Record `index` as uint8 `[H, W, 3]`, or None when the source skips it (logged and counted)."""
    return self._read(index)

  def read_or_next(self, index: int) -> np.ndarray:
    """Record `index`, or the next readable one in record order (so the choice is the same on every run)."""
    for offset in range(len(self)):
      image = self.read((index + offset) % len(self))
      if image is not None:
        return image
    raise ConfigError(f"None of the {len(self)} images of {self.description} decodes any more; the log names each "
                      "file with its error. Re-save or replace the image files.")

  @functools.cached_property
  def shapes(self) -> tuple[tuple[int, int], ...]:
    """`(height, width)` of every image, read once (from headers for files) and kept with the source."""
    return tuple(self._read_shape(index) for index in range(len(self.records)))


# ------------------------------------------------------------------------------------------------------ photos


@functools.cache
def load_photo(name: str) -> np.ndarray:
  """One installed photograph as a read-only uint8 `[H, W, 3]` array, decoded once per process."""
  if name in _SKLEARN_PHOTOS:
    from sklearn.datasets import load_sample_image  # pylint: disable=g-import-not-at-top
    image = load_sample_image(f"{name}.jpg")
  elif name in PHOTO_TRAIN + PHOTO_HELD_OUT:
    import skimage.data  # pylint: disable=g-import-not-at-top
    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
      image = image[0]  # (left view, right view, disparity): keep the left view
  else:
    raise ValueError(f"Unknown photo {name!r}; the photos source has {PHOTO_TRAIN + PHOTO_HELD_OUT}.")
  image = transforms.to_rgb_uint8(image).copy()
  image.setflags(write=False)  # the cached array is shared by every pipeline in the process
  return image


def photos_source(split: str) -> ImageSource:
  """The installed photographs: `PHOTO_TRAIN` for split 'train', `PHOTO_HELD_OUT` for 'eval'."""
  names = PHOTO_TRAIN if split == "train" else PHOTO_HELD_OUT
  images = tuple(load_photo(name) for name in names)
  return ImageSource(records=images, decode=transforms.to_rgb_uint8,
                     read_shape=lambda index: images[index].shape[:2],
                     description=f'photos/{split} ({", ".join(names)})')


# ------------------------------------------------------------------------------------------------------ folder


def list_image_files(root: str) -> list[str]:
  """All image files under `root` (recursively), sorted by their path relative to `root`."""
  return list_files(root, IMAGE_EXTENSIONS)


def list_files(root: str, extensions: tuple[str, ...]) -> list[str]:
  """Files under `root` (recursively) whose lower-cased name ends with one of `extensions`, sorted by their path
  relative to `root` with '/' separators, so the order is the same on every platform."""
  return [str(files.as_path(root) / relative) for relative in files.relative_files(root)
          if relative.lower().endswith(extensions)]


def _folder_error(split_dir: str, problem: str, split_key: str, source: str, kind: str,
                  extensions: tuple[str, ...]) -> FileNotFoundError:
  return FileNotFoundError(
      f'{problem}: {split_dir!r}. The {source} source reads {kind} files ({", ".join(extensions)}) under '
      f"<config.data.path>/<config.data.{split_key}>. Put training {kind}s in <path>/train and held-out {kind}s in "
      "<path>/eval (subfolders are fine), or point config.data.path, config.data.train_split and "
      "config.data.eval_split at your folders.")


def split_folder_files(path: str, split_folder: str, split_key: str, *, source: str = "folder",
                       kind: str = "image", extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[str, list[str]]:
  """The folder `path/split_folder` and its `kind` files (sorted); a clear FileNotFoundError when there are none."""
  fail = lambda where, problem: _folder_error(where, problem, split_key, source, kind, extensions)
  if not path:
    raise fail(os.path.join("<empty config.data.path>", split_folder), f"No {kind} folder configured")
  split_dir = str(files.as_path(path) / split_folder)
  if not files.as_path(split_dir).is_dir():
    raise fail(split_dir, f"{kind.capitalize()} folder not found")
  found = list_files(split_dir, extensions)
  if not found:
    raise fail(split_dir, f"No {kind} files found in folder")
  return split_dir, found


def check_corrupt_share(corrupt: Sequence[str], num_files: int, split_dir: str, *, source: str, kind: str, fix: str,
                        max_corrupt_fraction: float) -> None:
  """ConfigError when every file, or a share above `max_corrupt_fraction`, of a folder source is corrupt; else a
  warning with the count (each file was logged with its error when it was found)."""
  if len(corrupt) == num_files:
    raise ConfigError(f"None of the {num_files} {kind} files under {split_dir!r} decodes, e.g. {list(corrupt[:3])}; "
                      f"the log names each with its error. {fix}")
  if len(corrupt) > max_corrupt_fraction * num_files:
    raise ConfigError(
        f"{len(corrupt)} of {num_files} {kind} files under {split_dir!r} do not decode "
        f"({len(corrupt) / num_files:.1%} > config.data.max_corrupt_fraction={max_corrupt_fraction}), e.g. "
        f"{list(corrupt[:3])}. Re-encode or remove them, or raise config.data.max_corrupt_fraction.")
  if corrupt:
    logging.warning("%s %s: skipped %d corrupt of %d files.", source, split_dir, len(corrupt), num_files)


# A file that is not an image, a damaged one, or one too large to decode safely surfaces as any of these from PIL.
_IMAGE_ERRORS = (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, OSError, SyntaxError, ValueError,
                 EOFError)


def _probe_image_file(path: str) -> tuple[int, int] | None:
  """`(height, width)` from the file's header, or None (logged) when the header does not parse."""
  try:
    return transforms.read_image_file_shape(path)
  except _IMAGE_ERRORS as error:
    logging.warning("Skipping corrupt image file %s: %s", path, error)
    return None


class _FolderImageReader:
  """Decodes folder files; one failing after its header probe is logged once, counted, and skipped (None)."""

  def __init__(self, files: Sequence[str]):
    self._files = files
    self._lock = threading.Lock()  # Grain reads in several threads
    self.runtime_failures: set[str] = set()

  def __call__(self, index: int) -> np.ndarray | None:
    path = self._files[index]
    if path in self.runtime_failures:
      return None
    try:
      return transforms.load_image_file(path)
    except (FileNotFoundError, ValueError) as error:
      with self._lock:
        if path not in self.runtime_failures:
          self.runtime_failures.add(path)
          logging.warning("Skipping image file %s, which failed to decode after its header was read: %s", path,
                          error)
      return None


def folder_source(path: str, split_folder: str, split_key: str, *, max_corrupt_fraction: float = 0.0,
                  num_threads: int = 1) -> ImageSource:
  """Image files under `path/split_folder`, header-probed in parallel; corrupt files are skipped and counted.

  `split_key` ('train_split' | 'eval_split') is named in errors.
  """
  split_dir, files = split_folder_files(path, split_folder, split_key)
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
    shapes = list(pool.map(_probe_image_file, files))
  corrupt = [file for file, shape in zip(files, shapes) if shape is None]
  check_corrupt_share(corrupt, len(files), split_dir, source="folder", kind="image",
                      fix="Re-save them (e.g. as PNG) or remove them.", max_corrupt_fraction=max_corrupt_fraction)
  good_files = [file for file, shape in zip(files, shapes) if shape is not None]
  good_shapes = [shape for shape in shapes if shape is not None]
  reader = _FolderImageReader(good_files)
  return ImageSource(records=good_files, decode=transforms.load_image_file, read_shape=good_shapes.__getitem__,
                     description=f"folder {split_dir} ({len(good_files)} images, {len(corrupt)} corrupt skipped)",
                     read=reader, corrupt_files=corrupt, runtime_failures=reader.runtime_failures)


# -------------------------------------------------------------------------------------------------------- tfds


def _tfds_default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _tfds_missing_error(name: str, data_dir: str, detail: str) -> FileNotFoundError:
  shown_dir = data_dir or f"{_tfds_default_data_dir()} (the TFDS default; config.data.data_dir is empty)"
  build_dir = data_dir or _tfds_default_data_dir()
  return FileNotFoundError(
      f"TFDS dataset {name!r} is not prepared in ArrayRecord format under data_dir {shown_dir}: {detail}. "
      "Nothing is downloaded at run time; prepare it once with\n"
      f"  tfds build {name} --data_dir={build_dir} --file_format=array_record\n"
      "(datasets with a manual download, like imagenet2012, need their archives in <data_dir>/downloads/manual "
      "first), then set config.data.name and config.data.data_dir to match.")


def open_tfds_builder(name: str, data_dir: str):
  """The prepared ArrayRecord builder for `name`, or a FileNotFoundError that says how to prepare it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import; only this source needs it)
  if not name:
    raise ConfigError('config.data.source is "tfds" but config.data.name is empty; set it to a TFDS dataset name, '
                     "e.g. 'imagenet2012'.")
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise _tfds_missing_error(name, data_dir, "no such registered dataset and no prepared files") from error
  if not builder.is_prepared():
    raise _tfds_missing_error(name, data_dir, f"no prepared files at {builder.data_path}")
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise _tfds_missing_error(name, data_dir, f"it is prepared as {builder.info.file_format.value}, which has no "
                              "random access; rebuild it in a new data_dir")
  if files.is_remote(data_dir):
    # TFDS reads a gs:// data_dir's metadata, but array_record's C++ reader opens local files only (on a gs://
    # path it hangs rather than fails): read this dataset version from a local mirror of its files.
    version_dir = os.fspath(builder.data_path).removeprefix(data_dir.rstrip("/") + "/")
    builder = tfds.builder(name, data_dir=files.readable_directory(data_dir, under=version_dir))
  return builder


def _decode_tfds_image(record: dict[str, Any], where: str) -> np.ndarray:
  if "image" not in record:
    raise ValueError(f'{where}: records have no "image" field (fields: {sorted(record)}).')
  image = record["image"]
  if isinstance(image, bytes):
    return transforms.decode_image_bytes(image, where=where)
  return transforms.to_rgb_uint8(image, where=f'{where} "image" field')


def _tfds_image_shape(record: dict[str, Any]) -> tuple[int, int]:
  image = record["image"]
  if isinstance(image, bytes):
    return transforms.read_image_bytes_shape(image)
  return tuple(np.shape(image)[:2])


def tfds_source(name: str, data_dir: str, split: str, split_key: str) -> ImageSource:
  """Split `split` of a TFDS dataset prepared as ArrayRecord, with encoded images left for PIL to decode."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = open_tfds_builder(name, data_dir)
  available = sorted(builder.info.splits.keys())
  if split.split("[")[0] not in available:  # 'train[:1%]'-style sub-splits name their base split first
    raise ConfigError(f"TFDS dataset {name!r} has no split {split!r} (config.data.{split_key}); "
                     f"available: {available}.")
  records = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  where = f"tfds {name}/{split}"
  return ImageSource(records=records, decode=functools.partial(_decode_tfds_image, where=where),
                     read_shape=lambda index: _tfds_image_shape(records[index]),
                     description=f"{where} ({len(records)} records)")


# ----------------------------------------------------------------------------------------------------- choose


@functools.lru_cache(maxsize=16)
def open_source(kind: str, *, split: str, name: str = "", data_dir: str = "", path: str = "",
                split_name: str = "", max_corrupt_fraction: float = 0.0, num_threads: int = 1) -> ImageSource:
  """The image source of `kind` (`registry.IMAGE`) for `split` ('train' | 'eval'); `split_name` is the
  configured folder/TFDS split name; `max_corrupt_fraction` and `num_threads` apply to folders (see the module
  docstring).

  Cached per process, so pipelines rebuilt for every evaluation reuse the file listing and image shapes.
  """
  return registry.opener(registry.IMAGE, kind)(
      split, name=name, data_dir=data_dir, path=path, split_name=split_name, split_key=f"{split}_split",
      max_corrupt_fraction=max_corrupt_fraction, num_threads=num_threads)


@registry.register(registry.IMAGE, "photos")
def _open_photos(split: str, **_) -> ImageSource:
  return photos_source(split)


@registry.register(registry.IMAGE, "folder")
def _open_folder(split: str, *, path: str, split_name: str, split_key: str, max_corrupt_fraction: float,
                 num_threads: int, **_) -> ImageSource:
  del split
  return folder_source(path, split_name, split_key, max_corrupt_fraction=max_corrupt_fraction,
                       num_threads=num_threads)


@registry.register(registry.IMAGE, "tfds")
def _open_tfds(split: str, *, name: str, data_dir: str, split_name: str, split_key: str, **_) -> ImageSource:
  del split
  return tfds_source(name, data_dir, split_name, split_key)
