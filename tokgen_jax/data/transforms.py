"""Image transforms for the data pipeline: decode, resize, crop, flip, scale.

Every function works on one image as a numpy array `[H, W, C]` and returns a new array (or a view); none holds
state. Geometry runs on uint8 so that crops happen before the 4x larger float32 conversion, and only the final
crop is scaled to `[-1, 1]`. Random choices come from the `np.random.Generator` that Grain's `random_map` hands
each element, so augmentation is a pure function of (seed, element position).
"""

from __future__ import annotations

import io
import os

import numpy as np
import PIL.Image

from tokgen_jax.data import files
from tokgen_jax.errors import ConfigError

# Modes PIL uses for 16/32-bit integer images (16-bit PNG, TIFF). `convert('RGB')` would clip them to white.
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb_uint8(image: np.ndarray, *, where: str = "image array") -> np.ndarray:
  """Returns `image` as uint8 `[H, W, 3]`: grayscale is repeated, an alpha channel dropped.

  Only uint8 is accepted: a float or wider integer array has no one right scale ([0, 1]? [0, 255]? [-1, 1]?), so
  guessing could silently train on white or black images. `where` names the array's origin in errors.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    values = f", values in [{image.min()}, {image.max()}]" if image.size and image.dtype.kind in "biuf" else ""
    raise ConfigError(
        f"{where}: expected a uint8 image (values 0..255), got dtype {image.dtype} with shape {image.shape}{values}. "
        "Convert it where it is made: np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for floats in [0, 1], "
        "np.clip(x, 0, 255).astype(np.uint8) for values in [0, 255].")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4) or not min(image.shape[:2]):
    raise ConfigError(f"{where}: expected one image [H, W] or [H, W, C] with H, W >= 1 and C in 1..4 (gray, gray + "
                     f"alpha, RGB, RGBA), got shape {image.shape}. Pass one image at a time, channels last.")
  channels = image.shape[-1]
  if channels in (1, 2):  # gray, or gray + alpha
    return np.repeat(image[..., :1], 3, axis=-1)
  return image[..., :3]


def pil_to_rgb_uint8(picture: PIL.Image.Image) -> np.ndarray:
  """Converts a decoded PIL image (first frame for animations) to uint8 `[H, W, 3]`."""
  if picture.mode in _WIDE_INTEGER_MODES:
    # Keep the top 8 bits of 16-bit samples rather than letting PIL clip them.
    wide = np.asarray(picture, dtype=np.int64)
    return to_rgb_uint8((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
  if picture.mode != "RGB":
    picture = picture.convert("RGB")  # handles P (palette), L, LA, RGBA (alpha dropped), CMYK, YCbCr
  return np.asarray(picture, dtype=np.uint8)


def decode_image_bytes(data: bytes, *, where: str = "image bytes") -> np.ndarray:
  """Decodes encoded image bytes (PNG, JPEG, ...) to uint8 `[H, W, 3]`; `where` names the origin in errors."""
  try:
    with PIL.Image.open(io.BytesIO(data)) as picture:
      return pil_to_rgb_uint8(picture)
  except (PIL.UnidentifiedImageError, OSError, SyntaxError) as error:
    raise ConfigError(f"Could not decode {where} as an image: {error}. The encoded bytes are truncated, corrupt or "
                      "not an image; rebuild the dataset from intact files.") from error


def load_image_file(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file with PIL and returns uint8 `[H, W, 3]` (first frame of a GIF, alpha dropped).

  Raises:
    FileNotFoundError: `path` does not exist or is not a file.
    ConfigError (a ValueError): the file exists but PIL cannot decode it.
  """
  path = os.fspath(path)
  if not files.as_path(path).is_file():
    raise FileNotFoundError(f"Image file not found: {path!r}. Check the path (relative paths are resolved against "
                            f"the current directory {os.getcwd()!r}).")
  try:
    with files.as_path(path).open("rb") as file, PIL.Image.open(file) as picture:
      return pil_to_rgb_uint8(picture)
  except (PIL.UnidentifiedImageError, OSError, SyntaxError) as error:
    raise ConfigError(f"Could not decode {path!r} as an image ({error}): the file is empty, truncated, corrupt or "
                      "not an image. Re-save or replace it; supported formats: PNG, JPEG, BMP, WebP, GIF and the "
                      "others PIL reads.") from error


def read_image_file_shape(path: str | os.PathLike) -> tuple[int, int]:
  """Returns `(height, width)` of an image file from its header, without decoding the pixels."""
  with files.as_path(path).open("rb") as file, PIL.Image.open(file) as picture:
    width, height = picture.size
  return height, width


def read_image_bytes_shape(data: bytes) -> tuple[int, int]:
  """Returns `(height, width)` of encoded image bytes from the header, without decoding the pixels."""
  with PIL.Image.open(io.BytesIO(data)) as picture:
    width, height = picture.size
  return height, width


def shape_after_resize(height: int, width: int, shorter_side: int) -> tuple[int, int]:
  """The `(height, width)` that `resize_shorter_side` produces, computed without touching pixels."""
  if height <= width:
    return shorter_side, max(shorter_side, round(width * shorter_side / height))
  return max(shorter_side, round(height * shorter_side / width)), shorter_side


def resize_shorter_side(image: np.ndarray, shorter_side: int) -> np.ndarray:
  """Resizes uint8 `[H, W, 3]` so that min(H, W) == shorter_side, keeping the aspect ratio.

  PIL's bicubic filter widens its kernel when shrinking, so downsizing is antialiased (no moire on photos).
  """
  height, width = image.shape[:2]
  new_height, new_width = shape_after_resize(height, width, shorter_side)
  if (new_height, new_width) == (height, width):
    return image
  picture = PIL.Image.fromarray(np.ascontiguousarray(image))
  return np.asarray(picture.resize((new_width, new_height), PIL.Image.Resampling.BICUBIC))


def ensure_shorter_side(image: np.ndarray, *, resize: int, min_size: int) -> np.ndarray:
  """Applies the optional `resize` (0 = keep native size), then upsizes if still smaller than `min_size`."""
  shorter = min(image.shape[:2])
  target = max(resize or shorter, min_size)
  return image if target == shorter else resize_shorter_side(image, target)


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  """The `size` x `size` window whose top-left corner is (top, left)."""
  height, width = image.shape[:2]
  if top < 0 or left < 0 or top + size > height or left + size > width:
    raise ValueError(f"Crop ({top}, {left}, size {size}) lies outside an image of shape {image.shape}.")
  return image[top:top + size, left:left + size]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The centered `size` x `size` window (the extra pixel of an odd margin goes to the bottom/right)."""
  height, width = image.shape[:2]
  return crop(image, (height - size) // 2, (width - size) // 2, size)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A `size` x `size` window at a uniformly random position."""
  height, width = image.shape[:2]
  top = int(rng.integers(0, height - size + 1))
  left = int(rng.integers(0, width - size + 1))
  return crop(image, top, left, size)


def flip_horizontal(image: np.ndarray) -> np.ndarray:
  """Mirrors left and right."""
  return image[:, ::-1]


def random_flip_horizontal(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors left and right with probability 1/2."""
  return flip_horizontal(image) if rng.random() < 0.5 else image


def scale_to_signed_unit(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1] as `x / 127.5 - 1` (0 -> -1, 255 -> 1 exactly)."""
  return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def train_augment(image: np.ndarray, rng: np.random.Generator, *, image_size: int, resize: int,
                  random_flip: bool) -> np.ndarray:
  """Training view of one uint8 image: optional resize, random square crop, optional flip, scale to [-1, 1]."""
  image = ensure_shorter_side(image, resize=resize, min_size=image_size)
  image = random_crop(image, image_size, rng)
  if random_flip:
    image = random_flip_horizontal(image, rng)
  return scale_to_signed_unit(image)


# ----------------------------------------------------------------------------------------------- eval tiles


def eval_image_shape(height: int, width: int, *, tile_size: int, resize: int) -> tuple[int, int]:
  """Shape of an image after `prepare_eval_image`, from its original shape alone."""
  if resize:
    height, width = shape_after_resize(height, width, resize)
  if min(height, width) < tile_size:
    return tile_size, tile_size
  return height, width


def prepare_eval_image(image: np.ndarray, *, tile_size: int, resize: int) -> np.ndarray:
  """Optional resize; an image smaller than one tile is upsized and center-cropped to exactly one tile."""
  if resize:
    image = resize_shorter_side(image, resize)
  if min(image.shape[:2]) < tile_size:
    image = center_crop(resize_shorter_side(image, tile_size), tile_size)
  return image


def tile_corners(height: int, width: int, tile_size: int) -> list[tuple[int, int]]:
  """Top-left corners of all non-overlapping tiles, row-major; the bottom/right remainder is left out."""
  return [(row * tile_size, col * tile_size)
          for row in range(height // tile_size)
          for col in range(width // tile_size)]
