"""Sources: the installed photos, image folders, and TFDS ArrayRecord datasets (a tiny one built offline)."""

import io

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from tokgen_jax.data import PHOTO_HELD_OUT
from tokgen_jax.data import PHOTO_TRAIN
from tokgen_jax.data import files, sources


def test_photo_split_is_fixed_and_disjoint():
  assert len(PHOTO_TRAIN) == 9 and len(PHOTO_HELD_OUT) == 2
  assert not set(PHOTO_TRAIN) & set(PHOTO_HELD_OUT)
  held_out = sources.photos_source("eval")
  assert [image.shape for image in held_out.records] == [(300, 451, 3), (427, 640, 3)]  # chelsea, flower
  assert held_out.shapes == ((300, 451), (427, 640))


def test_photos_load_once_as_read_only_uint8_rgb():
  train = sources.photos_source("train")
  assert len(train) == len(PHOTO_TRAIN)
  for image in train.records:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert not image.flags.writeable
  assert sources.load_photo("astronaut") is sources.load_photo("astronaut")
  assert sources.load_photo("stereo_motorcycle").shape == (500, 741, 3)  # the left view, not the triple


def _write_png(path, color, shape=(12, 16)):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(np.full(shape + (3,), color, np.uint8)).save(path)


def test_folder_lists_images_sorted_by_relative_path(tmp_path):
  split_dir = tmp_path / "train"
  for relative in ["b.png", "a/z.PNG", "a/y.JpG", "c.gif", "notes.txt", "a.bmp"]:
    if relative.endswith(".txt"):
      (split_dir / relative).write_text("not an image")
    else:
      target = split_dir / relative
      target.parent.mkdir(parents=True, exist_ok=True)
      PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(target, format=target.suffix[1:].upper()
                                                              .replace("JPG", "JPEG"))
  source = sources.folder_source(str(tmp_path), "train", "train_split")
  relative = [path[len(str(split_dir)) + 1:] for path in source.records]
  assert relative == ["a.bmp", "a/y.JpG", "a/z.PNG", "b.png", "c.gif"]
  assert all(isinstance(record, str) for record in source.records)  # decoding waits for the map step
  assert source.decode(source.records[0]).shape == (4, 4, 3)


def test_folder_errors_name_path_keys_and_fix(tmp_path):
  with pytest.raises(FileNotFoundError) as missing:
    sources.folder_source(str(tmp_path), "eval", "eval_split")
  message = str(missing.value)
  for expected in [str(tmp_path / "eval"), "config.data.path", "config.data.eval_split", "<path>/train",
                   "<path>/eval"]:
    assert expected in message
  (tmp_path / "eval").mkdir()
  with pytest.raises(FileNotFoundError, match="No image files"):
    sources.folder_source(str(tmp_path), "eval", "eval_split")


def test_unknown_source_names_key_value_and_choices():
  with pytest.raises(ValueError) as error:
    sources.open_source("laion", split="train")
  for expected in ["config.data.source", "laion", "photos", "folder", "tfds"]:
    assert expected in str(error.value)


@pytest.mark.parametrize("name", ["imagenet2012", "tokgen_no_such_dataset"])
def test_tfds_missing_dataset_says_how_to_build_it(tmp_path, name):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError) as error:
    sources.open_source("tfds", split="eval", name=name, data_dir=data_dir, split_name="validation")
  message = str(error.value)
  assert name in message and data_dir in message
  assert f"tfds build {name} --data_dir={data_dir} --file_format=array_record" in message


class TokgenTinyImages(tfds.core.GeneratorBasedBuilder):
  """Three train and two validation images of known sizes, stored as PNG bytes (no TensorFlow needed)."""

  VERSION = tfds.core.Version("1.0.0")
  SHAPES = {"train": [(20, 30), (40, 24), (16, 16)], "validation": [(33, 65), (10, 12)]}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3))}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self.SHAPES}

  def _generate_examples(self, split):
    for index, shape in enumerate(self.SHAPES[split]):
      encoded = io.BytesIO()
      PIL.Image.fromarray(tiny_tfds_image(split, index, shape)).save(encoded, format="PNG")
      yield index, {"image": io.BytesIO(encoded.getvalue())}


def tiny_tfds_image(split, index, shape):
  seed = (0 if split == "train" else 100) + index
  return np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  TokgenTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def test_tfds_array_record_source_decodes_images(tiny_tfds_dir):
  source = sources.open_source("tfds", split="eval", name="tokgen_tiny_images", data_dir=tiny_tfds_dir,
                               split_name="validation")
  assert len(source) == 2
  by_content = {tiny_tfds_image("validation", i, shape).tobytes(): i
                for i, shape in enumerate(TokgenTinyImages.SHAPES["validation"])}
  decoded = [source.decode(record) for record in source.records]
  assert sorted(by_content[image.tobytes()] for image in decoded) == [0, 1]  # lossless, any record order
  assert source.shapes == tuple(image.shape[:2] for image in decoded)  # read from PNG headers
  with pytest.raises(ValueError, match="no split"):
    sources.open_source("tfds", split="eval", name="tokgen_tiny_images", data_dir=tiny_tfds_dir,
                        split_name="test")


def test_tfds_source_through_the_pipeline(tiny_tfds_dir, make_data_config):
  from tokgen_jax.data import make_pipeline  # pylint: disable=g-import-not-at-top

  config = make_data_config(source="tfds", name="tokgen_tiny_images", data_dir=tiny_tfds_dir,
                            eval_split="validation", image_size=16, eval_image_size=16)
  train = next(make_pipeline(config, "train", global_batch_size=4, process_index=0, process_count=1))
  assert train["image"].shape == (4, 16, 16, 3)  # the 16x16 record needs no resize, all others are cropped
  batches = list(make_pipeline(config, "eval", global_batch_size=4, process_index=0, process_count=1))
  assert sum(batch["mask"].sum() for batch in batches) == (33 // 16) * (65 // 16) + 1  # 10x12 -> one crop


def test_folder_in_a_bucket_reads_as_the_same_folder_on_disk(tmp_path, gcs_bucket):
  """Listing order, shapes from headers and decoded pixels are the same from gs:// as from local disk; a missing
  split folder in the bucket is named like a local one."""

  rng = np.random.default_rng(0)
  for relative in ["b.png", "a/z.png", "a/y.jpg", "c.txt"]:
    target = tmp_path / "train" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if relative.endswith(".txt"):
      target.write_text("not an image")
      continue
    PIL.Image.fromarray(rng.integers(0, 255, (6 + len(relative), 9, 3), dtype=np.uint8)).save(target)
    (files.as_path(gcs_bucket) / "photos" / "train" / relative).write_bytes(target.read_bytes())
  local = sources.folder_source(str(tmp_path), "train", "train_split")
  remote = sources.folder_source(gcs_bucket + "/photos", "train", "train_split")
  assert [r[len(gcs_bucket + "/photos/"):] for r in remote.records] == [r[len(str(tmp_path)) + 1:] for r in local.records]
  assert remote.shapes == local.shapes
  for remote_record, local_record in zip(remote.records, local.records):
    np.testing.assert_array_equal(remote.decode(remote_record), local.decode(local_record))
  with pytest.raises(FileNotFoundError, match=f"Image folder not found: '{gcs_bucket}/photos/eval'"):
    sources.folder_source(gcs_bucket + "/photos", "eval", "eval_split")


def test_tfds_data_dir_in_a_bucket_reads_the_same_records_from_a_local_mirror(tiny_tfds_dir, gcs_bucket,
                                                                            tmp_path, monkeypatch):
  monkeypatch.setenv("TOKGEN_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(files, "_CACHE", None)
  for relative in files.relative_files(tiny_tfds_dir):
    (files.as_path(gcs_bucket) / "tfds" / relative).write_bytes((files.as_path(tiny_tfds_dir) / relative).read_bytes())
  local = sources.tfds_source("tokgen_tiny_images", tiny_tfds_dir, "validation", "eval_split")
  remote = sources.tfds_source("tokgen_tiny_images", gcs_bucket + "/tfds", "validation", "eval_split")
  assert len(remote) == len(local) > 0
  for index in range(len(local)):
    np.testing.assert_array_equal(remote.read(index), local.read(index))
  mirrored = files.relative_files(tmp_path / "cache")
  assert mirrored and all("tokgen_tiny_images/1.0.0/" in relative for relative in mirrored)
  with pytest.raises(FileNotFoundError, match="tfds build tokgen_no_such_images"):
    sources.tfds_source("tokgen_no_such_images", gcs_bucket + "/tfds", "validation", "eval_split")
