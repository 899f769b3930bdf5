"""Transforms against hand computation: decode/RGB conversion, resize, crops, flip, scale, eval tiles."""

import numpy as np
import PIL.Image
import pytest

from tokgen_jax.data import load_image_file
from tokgen_jax.data import transforms


def _ramp(height, width):
  """A fixed random uint8 RGB image: every window is unique, so a crop's position can be located."""
  return np.random.default_rng(height * 1000 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_to_rgb_uint8_repeats_gray_and_drops_alpha():
  gray = np.array([[0, 7], [200, 255]], np.uint8)
  np.testing.assert_array_equal(transforms.to_rgb_uint8(gray), np.stack([gray] * 3, axis=-1))
  np.testing.assert_array_equal(transforms.to_rgb_uint8(gray[..., None]), np.stack([gray] * 3, axis=-1))
  rgba = np.arange(2 * 2 * 4, dtype=np.uint8).reshape(2, 2, 4)
  np.testing.assert_array_equal(transforms.to_rgb_uint8(rgba), rgba[..., :3])
  with pytest.raises(ValueError, match="uint8"):
    transforms.to_rgb_uint8(np.zeros((2, 2, 3), np.float32))


def test_scale_maps_0_to_minus_1_and_255_to_1():
  image = np.array([[[0, 127, 255]]], np.uint8)
  scaled = transforms.scale_to_signed_unit(image)
  assert scaled.dtype == np.float32
  np.testing.assert_array_equal(scaled, np.array([[[-1.0, np.float32(127) / np.float32(127.5) - 1, 1.0]]], np.float32))


def test_flip_equals_np_flip():
  image = _ramp(5, 7)
  np.testing.assert_array_equal(transforms.flip_horizontal(image), np.flip(image, axis=1))


def test_crop_and_center_crop_equal_slices():
  image = _ramp(5, 8)
  np.testing.assert_array_equal(transforms.crop(image, 1, 2, 3), image[1:4, 2:5])
  np.testing.assert_array_equal(transforms.center_crop(image, 3), image[1:4, 2:5])
  with pytest.raises(ValueError, match="outside"):
    transforms.crop(image, 3, 0, 3)


def test_random_crop_is_a_window_of_the_image():
  image = _ramp(40, 50)
  rng = np.random.default_rng(3)
  seen_corners = set()
  for _ in range(20):
    window = transforms.random_crop(image, 16, rng)
    matches = [(top, left) for top in range(25) for left in range(35)
               if np.array_equal(image[top:top + 16, left:left + 16], window)]
    assert len(matches) == 1
    seen_corners.add(matches[0])
  assert len(seen_corners) > 1  # positions actually vary


def test_resize_shorter_side_matches_pil_bicubic():
  image = _ramp(30, 45)
  resized = transforms.resize_shorter_side(image, 20)
  expected = np.asarray(PIL.Image.fromarray(image).resize((30, 20), PIL.Image.Resampling.BICUBIC))
  np.testing.assert_array_equal(resized, expected)
  for height, width in [(333, 500), (500, 333), (17, 17), (427, 640)]:
    out = transforms.resize_shorter_side(np.zeros((height, width, 3), np.uint8), 128)
    assert out.shape[:2] == transforms.shape_after_resize(height, width, 128)
    assert min(out.shape[:2]) == 128


def test_ensure_shorter_side_keeps_native_or_upsizes():
  image = _ramp(40, 60)
  assert transforms.ensure_shorter_side(image, resize=0, min_size=32) is image
  assert transforms.ensure_shorter_side(image, resize=0, min_size=50).shape == (50, 75, 3)
  assert transforms.ensure_shorter_side(image, resize=20, min_size=32).shape == (32, 48, 3)
  assert transforms.ensure_shorter_side(image, resize=80, min_size=32).shape == (80, 120, 3)


def test_train_augment_without_flip_is_a_scaled_window():
  image = _ramp(20, 30)
  out = transforms.train_augment(image, np.random.default_rng(0), image_size=8, resize=0, random_flip=False)
  assert out.shape == (8, 8, 3) and out.dtype == np.float32
  windows = [transforms.scale_to_signed_unit(image[t:t + 8, l:l + 8]) for t in range(13) for l in range(23)]
  assert any(np.array_equal(out, window) for window in windows)


def test_tile_corners_row_major_and_eval_shapes():
  assert transforms.tile_corners(300, 451, 128) == [(0, 0), (0, 128), (0, 256), (128, 0), (128, 128), (128, 256)]
  assert transforms.eval_image_shape(300, 451, tile_size=128, resize=0) == (300, 451)
  assert transforms.eval_image_shape(20, 90, tile_size=32, resize=0) == (32, 32)
  for shape, resize in [((300, 451), 200), ((20, 90), 0), ((50, 40), 16), ((64, 64), 0)]:
    prepared = transforms.prepare_eval_image(np.zeros(shape + (3,), np.uint8), tile_size=32, resize=resize)
    assert prepared.shape[:2] == transforms.eval_image_shape(*shape, tile_size=32, resize=resize)


def _save(path, array, **kwargs):
  PIL.Image.fromarray(array).save(path, **kwargs)
  return path


def test_load_image_file_converts_modes(tmp_path):
  rgb = _ramp(6, 9)
  np.testing.assert_array_equal(load_image_file(_save(tmp_path / "a.png", rgb)), rgb)
  gray = rgb[..., 0]
  np.testing.assert_array_equal(load_image_file(_save(tmp_path / "g.png", gray)), np.stack([gray] * 3, -1))
  rgba = np.concatenate([rgb, np.full((6, 9, 1), 9, np.uint8)], axis=-1)
  np.testing.assert_array_equal(load_image_file(_save(tmp_path / "a.webp", rgba, lossless=True)), rgb)
  palette = PIL.Image.fromarray(rgb).quantize(colors=8)
  palette.save(tmp_path / "p.gif")
  np.testing.assert_array_equal(load_image_file(tmp_path / "p.gif"), np.asarray(palette.convert("RGB")))
  wide = (np.arange(6 * 9, dtype=np.uint16).reshape(6, 9) * 1000)
  PIL.Image.fromarray(wide).save(tmp_path / "w16.png")
  decoded = load_image_file(tmp_path / "w16.png")
  assert decoded.dtype == np.uint8 and decoded.shape == (6, 9, 3)
  np.testing.assert_array_equal(decoded[..., 0], (wide >> 8).astype(np.uint8))


def test_load_image_file_errors_name_the_path(tmp_path):
  missing = tmp_path / "nope.png"
  with pytest.raises(FileNotFoundError, match="nope.png"):
    load_image_file(missing)
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image at all")
  with pytest.raises(ValueError, match="broken.jpg"):
    load_image_file(broken)
