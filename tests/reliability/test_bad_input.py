"""Bad input (issue 8, item 7): every bad input gets a clear error naming what, where and the fix, or a counted skip.

Each case plants the bad input in `tmp_path` and goes through the entry point a run uses (`data.make_pipeline`,
`run.setup`, the `tokgen` command line, `convert.load_state_dict`, ...).

Bad input tried                                          Answer
-------------------------------------------------------  ------------------------------------------------------------
image folder, header does not parse: random bytes .png,  counted skip when the folder opens: logged by path, listed in
  zero-byte .png, text named .jpg                          `source.corrupt_files`; above max_corrupt_fraction (default
                                                           0) a ConfigError "3 of 9 image files under <dir> do not
                                                           decode (... > config.data.max_corrupt_fraction=0.0), e.g.
                                                           [...]. Re-encode or remove them, or raise ..."
image folder, truncated PNG / JPEG (header parses)       counted skip when read: logged once, in
                                                           `source.runtime_failures`; train takes the next readable
                                                           image (batch keeps its shape), eval masks its tiles out
image folder, every file corrupt                         ConfigError "None of the 3 image files under <dir> decodes"
image file as a --mode=sample input, 4 kinds above       ConfigError "Could not decode '<path>' ... Re-save or replace"
video folder: random bytes .mp4, truncated .mp4,         counted skip (`corrupt_files`, logged by path); above
  zero-byte .mp4, text named .webm                         max_corrupt_fraction a ConfigError "4 of 6 video files ..."
image arrays (TFDS records): 2-D gray, [H, W, 1|4]       converted to uint8 [H, W, 3]
image arrays: 5-D, 5 channels, 0 x W, float [0, 1] or    ConfigError naming the record ("tfds toy/train "image"
  [0, 255], int64 out of 0..255, 5-D video field           field"), shape / dtype / value range and the conversion
latent shard: wrong shape, float32 / int64 dtype, ids    ConfigError "<shard> is unusable: ... delete <split dir> and
  above max_value, negative ids, object array (a           re-run `--mode=encode`"; the pickle does not run
  pickle)
LatentShardWriter.add: complex, 0-D, negative ids, inf   ConfigError "must be a numeric or bool array [n, ...]" / "ids
                                                           must lie in [0, ...]" / "holds NaN or inf"
tokens of another tokenizer (grid 4x4 for an 8x8         ConfigError from tasks.build "<split>/metadata.json: ... shape
  tokenizer, ids >= codebook size)                         ... / outside the configured tokenizer's vocabulary ..."
CLI: --config.modle.channels, --config.model.chanels,    exit status != 0 naming the key and `Did you mean "model"` /
  --config.batch_size=abc                                  "channels" / "invalid literal"
experiment arguments: unknown name, steps=abc,           ConfigError "experiment argument 'locl' ... is not known;
  steps=1.5, local=maybe                                   valid names" / "... is not an integer; write e.g. steps=0" /
                                                           "... is not a boolean; write local=true or local=false"
impossible shapes: image_size 17 (factor 2), 0, -16;     ConfigError from run.setup naming config.<key>=<value> and
  eval_image_size 0; resize -5; batch_size 0, -8, 12 on    the fix ("set config.data.image_size to a multiple of 2",
  8 devices; model.channels 0; channel_multipliers ();     "must be at least 1 ... set config.<key> to 1 or more", "a
  quantizer codebook_size 0, dim 0; video num_frames 8     multiple of 8", "1 + k·2 ... data.num_frames")
  with temporal stride 2; data num_frames 0
weight files: pickles running os.system (protocols 0, 2, ConfigError "<file>: refused to load: its pickle names a
  4, 5; GLOBAL, INST, OBJ, STACK_GLOBAL; torch.save zip    Python callable or class (...; it imports posix.system)";
  with protocol 4) as .pth/.bin/.ckpt, also through the    the marker file the payload would create does not exist
  LPIPS / Inception converters; a pickle named
  .safetensors
"""

import io
import logging
import os
import pickle
import re
import shlex
import subprocess
import sys

import imageio.v3 as iio
import ml_collections
import numpy as np
import PIL.Image
import pytest

from tests.helpers import QUICKSTART, set_fields, tiny_config
from tokgen_jax import tasks
from tokgen_jax import run as run_lib
from tokgen_jax.config import load_experiment
from tokgen_jax.convert import inception as inception_convert
from tokgen_jax.convert import lpips as lpips_convert
from tokgen_jax.convert.state_dict import load_state_dict
from tokgen_jax.data import make_pipeline, sources, transforms, video
from tokgen_jax.data import latents as latent_store
from tokgen_jax.errors import ConfigError

_GOOD_VALUES = (0, 60, 120, 180)  # one solid gray image per value, so every crop shows which image it came from
_HEADER_BAD = ("random.png", "text.jpg", "zero.png")  # found when the folder opens
_TRUNCATED = ("truncated.jpg", "truncated.png")  # header parses, pixels do not: found when read
_SIZE = 16


def _noise_image_bytes(fmt: str) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, fmt)
  return buffer.getvalue()


def _plant_bad_images(folder, kinds=_HEADER_BAD + _TRUNCATED) -> list[str]:
  """Writes the bad files named in `kinds` into `folder`; returns their paths."""
  folder.mkdir(parents=True, exist_ok=True)
  contents = {"random.png": os.urandom(512), "text.jpg": b"this is a text file, not a JPEG\n" * 8, "zero.png": b"",
              "truncated.jpg": _noise_image_bytes("JPEG"), "truncated.png": _noise_image_bytes("PNG")}
  for name in kinds:
    data = contents[name]
    (folder / name).write_bytes(data[:len(data) // 2] if name.startswith("truncated") else data)
  return [str(folder / name) for name in kinds]


@pytest.fixture(name="image_root")
def _image_root(tmp_path):
  """train/ and eval/ folders, each with 4 solid 20x20 images and the 5 bad files."""
  for split in ("train", "eval"):
    folder = _mkdir(tmp_path / split)
    for index, value in enumerate(_GOOD_VALUES):
      PIL.Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(folder / f"good{index}.png")
    _plant_bad_images(folder)
  return tmp_path


def _mkdir(path):
  path.mkdir(parents=True, exist_ok=True)
  return path


def _image_config(root, **overrides):
  fields = dict(source="folder", name="", data_dir="", path=str(root), train_split="train", eval_split="eval",
                image_size=_SIZE, eval_image_size=_SIZE, resize=0, random_flip=True, seed=0, num_threads=1,
                prefetch=1)
  return ml_collections.ConfigDict({**fields, **overrides})


def _pipeline(config, split="train", batch=6):
  return make_pipeline(config, split, global_batch_size=batch, process_index=0, process_count=1)


def _pixel_values(images: np.ndarray) -> list[float]:
  """The one value of each solid image in uint8 units (asserting it is solid)."""
  values = np.rint((images + 1.0) * 127.5)
  assert (values == values[:, :1, :1, :1]).all(), "a crop is not from one of the solid good images"
  return values[:, 0, 0, 0].tolist()


# ------------------------------------------------------------------------------------------------ image folder


def test_image_folder_refuses_corrupt_files_by_default(image_root, caplog):
  split_dir = image_root / "train"
  with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as error:
    _pipeline(_image_config(image_root))  # max_corrupt_fraction 0 (the default): any corrupt file is refused
  message = str(error.value)
  assert re.search(r"3 of 9 image files under .* do not decode \(33.3% > config.data.max_corrupt_fraction=0.0\)",
                   message), message
  assert str(split_dir) in message and "raise config.data.max_corrupt_fraction" in message
  for path in _HEADER_BAD:
    assert str(split_dir / path) in message  # what is wrong, and where
    assert f"Skipping corrupt image file {split_dir / path}" in caplog.text


def test_image_folder_train_skips_and_counts_corrupt_files(image_root, caplog):
  config = _image_config(image_root, max_corrupt_fraction=0.5)
  with caplog.at_level(logging.WARNING):
    iterator = _pipeline(config)
    batches = [next(iterator) for _ in range(3)]  # 18 draws over 6 readable records: every record is read
  source = sources.open_source("folder", split="train", name="", data_dir="", path=str(image_root),
                               split_name="train", max_corrupt_fraction=0.5, num_threads=1)  # the pipeline's (cached)
  split_dir = image_root / "train"
  assert source.corrupt_files == tuple(str(split_dir / name) for name in _HEADER_BAD)
  assert len(source) == len(_GOOD_VALUES) + len(_TRUNCATED)
  assert source.runtime_failures == {str(split_dir / name) for name in _TRUNCATED}
  assert "folder " + str(split_dir) + ": skipped 3 corrupt of 9 files." in caplog.text
  for name in _TRUNCATED:  # logged once each, however often the stream draws it
    assert caplog.text.count(f"Skipping image file {split_dir / name}, which failed to decode") == 1
  for batch in batches:
    assert batch["image"].shape == (6, _SIZE, _SIZE, 3) and batch["image"].dtype == np.float32
    assert set(_pixel_values(batch["image"])) <= set(_GOOD_VALUES)  # replacements are readable images, not noise


def test_image_folder_eval_masks_out_a_truncated_image(image_root):
  batches = list(_pipeline(_image_config(image_root, max_corrupt_fraction=0.5), "eval", batch=4))
  # Readable records: good0..3 (one 16px tile each), truncated.jpg and truncated.png (16 tiles each, masked out).
  assert len(batches) == (4 + 2 * 16) // 4
  assert all(batch["image"].shape == (4, _SIZE, _SIZE, 3) for batch in batches)
  mask = np.concatenate([batch["mask"] for batch in batches])
  assert mask.tolist() == [True] * 4 + [False] * 32
  assert _pixel_values(batches[0]["image"]) == list(_GOOD_VALUES)
  assert not np.concatenate([batch["image"] for batch in batches])[~mask].any()


def test_image_folder_with_only_corrupt_files_is_an_error(tmp_path):
  _plant_bad_images(tmp_path / "train", _HEADER_BAD)
  with pytest.raises(ConfigError, match=r"None of the 3 image files under .*train' decodes.*Re-save them"):
    _pipeline(_image_config(tmp_path, max_corrupt_fraction=1.0))


@pytest.mark.parametrize("name", _HEADER_BAD + _TRUNCATED)
def test_bad_image_file_as_a_sample_input_names_file_and_fix(tmp_path, name):
  [path] = _plant_bad_images(tmp_path, (name,))
  with pytest.raises(ConfigError, match=re.escape(repr(path)) + r".*Re-save or replace it"):
    transforms.load_image_file(path)  # what `--mode=sample` reads (AutoencoderTask.load_sample_input)


def test_bad_sample_input_through_the_trainer(tmp_path):
  [path] = _plant_bad_images(tmp_path, ("truncated.png",))
  run = run_lib.setup(tiny_config(), str(tmp_path / "workdir"))
  with pytest.raises(ConfigError, match=re.escape(repr(path)) + ".*truncated"):  # main.py prints ConfigErrors
    run.task.load_sample_input(run.config.data, path)


# ------------------------------------------------------------------------------------------------ video folder


def _video_config(root, **overrides):
  fields = dict(source="video_folder", name="", data_dir="", path=str(root), train_split="train", eval_split="eval",
                image_size=8, eval_image_size=8, resize=0, random_flip=True, seed=0, num_threads=2, prefetch=1,
                num_frames=4, fps=8.0, lavfi_sources=video.DEFAULT_LAVFI_SOURCES, clip_seconds=4.0,
                lavfi_codec="libx264", max_corrupt_fraction=0.0)
  return ml_collections.ConfigDict({**fields, **overrides})


@pytest.fixture(name="video_root")
def _video_root(tmp_path):
  """train/ with 2 readable 12-frame mp4s and the 4 kinds of bad file."""
  folder = _mkdir(tmp_path / "train")
  frames = video.render_lavfi("testsrc2", 16, 8.0, 12, "")
  for name in ("a.mp4", "b.mp4"):
    iio.imwrite(folder / name, frames, plugin="FFMPEG", fps=8, codec="libx264", macro_block_size=1)
  encoded = (folder / "a.mp4").read_bytes()
  (folder / "truncated.mp4").write_bytes(encoded[:len(encoded) // 2])
  (folder / "random.mp4").write_bytes(os.urandom(2000))
  (folder / "zero.mp4").write_bytes(b"")
  (folder / "text.webm").write_text("this is a text file, not a video\n" * 20)
  return tmp_path


_BAD_VIDEOS = ("random.mp4", "text.webm", "truncated.mp4", "zero.mp4")


def test_video_folder_counts_each_kind_of_corrupt_file(video_root, caplog):
  folder = video_root / "train"
  with pytest.raises(ConfigError, match=r"4 of 6 video files .*max_corrupt_fraction=0.0\), e\.g\. .*random\.mp4"):
    _pipeline(_video_config(video_root), batch=2)
  with caplog.at_level(logging.WARNING):
    batch = next(_pipeline(_video_config(video_root, max_corrupt_fraction=0.7), batch=2))
  assert batch["video"].shape == (2, 4, 8, 8, 3)
  source = video.open_video_source("video_folder", split="train", num_frames=4, fps=8.0, path=str(video_root),
                                   split_name="train", max_corrupt_fraction=0.7)
  assert source.corrupt_files == tuple(str(folder / name) for name in _BAD_VIDEOS) and len(source) == 2
  assert f"video_folder {folder}: skipped 4 corrupt of 6 files." in caplog.text
  for name in _BAD_VIDEOS:
    assert f"Skipping corrupt video file {folder / name}" in caplog.text


def test_bad_video_file_as_a_sample_input_names_file_and_fix(video_root):
  path = video_root / "train" / "truncated.mp4"
  with pytest.raises(ConfigError, match=re.escape(repr(str(path))) + r".*Re-encode or replace it"):
    video.load_video_file(path)


# ------------------------------------------------------------------------------------------------------ arrays

_WHERE = "tfds toy/train"


@pytest.mark.parametrize("image, expected", [
    (np.arange(12, dtype=np.uint8).reshape(3, 4), np.repeat(np.arange(12, dtype=np.uint8).reshape(3, 4, 1), 3, -1)),
    (np.full((3, 4, 1), 7, np.uint8), np.full((3, 4, 3), 7, np.uint8)),
    (np.full((3, 4, 4), 9, np.uint8), np.full((3, 4, 3), 9, np.uint8)),
])
def test_image_arrays_of_other_channel_counts_are_converted(image, expected):
  decoded = sources._decode_tfds_image({"image": image}, where=_WHERE)  # pylint: disable=protected-access
  np.testing.assert_array_equal(decoded, expected)
  assert decoded.dtype == np.uint8


@pytest.mark.parametrize("image, pattern", [
    (np.zeros((1, 2, 4, 4, 3), np.uint8), r"got shape \(1, 2, 4, 4, 3\)\. Pass one image at a time"),
    (np.zeros((4, 4, 5), np.uint8), r"C in 1\.\.4 .*got shape \(4, 4, 5\)"),
    (np.zeros((0, 4, 3), np.uint8), r"H, W >= 1 .*got shape \(0, 4, 3\)"),
    (np.full((4, 4, 3), 0.5, np.float32), r"got dtype float32 .*values in \[0\.5, 0\.5\].*np\.round\(x \* 255\)"),
    (np.full((4, 4, 3), 200.0), r"got dtype float64 .*values in \[200\.0, 200\.0\].*np\.clip\(x, 0, 255\)"),
    (np.array([[-5, 300]] * 2, np.int64), r"got dtype int64 .*values in \[-5, 300\].*astype\(np\.uint8\)"),
])
def test_image_arrays_of_wrong_rank_dtype_or_range_are_refused(image, pattern):
  with pytest.raises(ConfigError, match=re.escape(f'{_WHERE} "image" field: expected ') + ".*" + pattern):
    sources._decode_tfds_image({"image": image}, where=_WHERE)  # pylint: disable=protected-access


@pytest.mark.parametrize("frames, pattern", [
    (np.zeros((1, 2, 4, 4, 3), np.uint8), r"expected frames \[T, H, W, C\].*shape \(1, 2, 4, 4, 3\)"),
    (np.zeros((2, 4, 4, 3), np.float32), r"expected a uint8 image .*float32"),
])
def test_video_arrays_of_wrong_rank_or_dtype_are_refused(frames, pattern):
  with pytest.raises(ConfigError, match=re.escape(f'{_WHERE} "video" field: ') + pattern):
    video._decode_tfds_video({"video": frames}, where=_WHERE)  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------------------- latent shards


def _write_tokens(directory, split="train", grid=(2, 3), count=4, high=6):
  with latent_store.LatentShardWriter(directory, split, shard_size=count) as writer:
    writer.add({"tokens": np.arange(count * int(np.prod(grid))).reshape(count, *grid) % high})


def _token_config(path):
  return ml_collections.ConfigDict(dict(source="tokens", path=str(path), name="", data_dir="", train_split="train",
                                        eval_split="eval", image_size=0, eval_image_size=0, resize=0,
                                        random_flip=False, seed=0, num_threads=1, prefetch=1))


class _Payload:
  """Unpickling this runs a shell command creating `marker`: what a malicious file would do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("tokens, pattern", [
    (np.zeros((4, 6), np.uint16), r"its shape is \(4, 6\), metadata\.json says \(4, 2, 3\)"),
    (np.zeros((4, 2, 3), np.float32), r"its dtype is float32, not what metadata\.json records"),
    (np.zeros((4, 2, 3), np.int64), r"its dtype is int64, not what metadata\.json records"),
    (np.full((4, 2, 3), 999, np.uint16), r"its values span \[999, 999\], outside \[0, max_value=5\]"),
    (np.full((4, 2, 3), -1, np.int32), r"its values span \[-1, -1\], outside \[0, max_value=5\]"),
    ("pickle", r"not a readable \.npy file .*Python objects in dtype"),
])
def test_bad_latent_shard_names_file_and_fix(tmp_path, tokens, pattern):
  _write_tokens(tmp_path)
  shard, marker = tmp_path / "train" / "part_00000" / "shard_00000.tokens.npy", tmp_path / "pwned"
  if isinstance(tokens, str):
    tokens = np.array([_Payload(marker)] * 24, dtype=object).reshape(4, 2, 3)
  np.save(shard, tokens, allow_pickle=True)
  expected = re.escape(f"{shard} is unusable: ") + pattern + ".*" + re.escape(f"delete {tmp_path / 'train'}")
  with pytest.raises(ConfigError, match=expected + r".*--mode=encode"):
    next(_pipeline(_token_config(tmp_path), batch=2))  # shards are read lazily, on the first batch
  assert not marker.exists()


@pytest.mark.parametrize("tokens, pattern", [
    (np.zeros((2, 3), np.complex64), r"'tokens' must be a numeric or bool array \[n, \.\.\.\], got complex64"),
    (np.zeros((), np.int32), r"'tokens' must be a numeric or bool array \[n, \.\.\.\], got int32 \(\)"),
    (np.full((2, 3), -2, np.int64), r"ids must lie in \[0, 2147483647\], got \[-2, -2\]"),
    (np.full((2, 3), np.inf, np.float32), r"'tokens' holds NaN or inf"),
])
def test_latent_writer_refuses_wrong_rank_dtype_or_range(tmp_path, tokens, pattern):
  writer = latent_store.LatentShardWriter(tmp_path, "train")
  with pytest.raises(ConfigError, match=pattern):
    writer.add({"tokens": tokens})


def _generator_config(token_dir):
  config = load_experiment("experiments/ar_shapes.py:local")
  return set_fields(config, {"data.path": str(token_dir)})


@pytest.mark.parametrize("grid, high, pattern", [
    ((4, 4), 512, r"per-example shape \(4, 4\), but config\.tokenizer\.experiment makes shape \(8, 8\)"),
    ((8, 8), 600, r"'tokens' ids reach 599, outside the configured tokenizer's vocabulary of 512 ids"),
])
def test_tokens_of_another_tokenizer_are_refused(tmp_path, grid, high, pattern):
  _write_tokens(tmp_path, grid=grid, count=10, high=high)
  config = _generator_config(tmp_path)
  metadata = tmp_path / "train" / "part_00000" / "metadata.json"
  with pytest.raises(ConfigError, match=re.escape(str(metadata)) + ": .*" + pattern +
                     r".*Point config\.tokenizer at the tokenizer that wrote them, or delete"):
    tasks.build(config)


def test_tokens_of_the_configured_tokenizer_pass(tmp_path):
  _write_tokens(tmp_path, grid=(8, 8), count=10, high=512)
  assert tasks.build(_generator_config(tmp_path)).token_shape == (8, 8)


# ----------------------------------------------------------------------------------------------------- configs

_CLI_ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


@pytest.mark.slow
@pytest.mark.parametrize("override, expected", [
    ("--config.modle.channels=8", ["modle", 'Did you mean "model"']),
    ("--config.model.chanels=8", ["chanels", 'Did you mean "channels"']),
    ("--config.batch_size=abc", ["--config.batch_size=abc", "invalid literal for int()"]),
])
def test_cli_unknown_or_mistyped_config_key_fails_naming_it(tmp_path, override, expected):
  result = subprocess.run([sys.executable, "-m", "tokgen_jax.main", f"--config={QUICKSTART}",
                           f"--workdir={tmp_path}", override], env=_CLI_ENV, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
  for text in expected:
    assert text in result.stderr, result.stderr[-2000:]
  assert not os.listdir(tmp_path)  # nothing was written


@pytest.mark.parametrize("arg, pattern", [
    ("locl", r"experiment argument 'locl' in 'locl' is not known; valid names: \['batch', 'full', 'local'"),
    ("local,steps=abc", r"steps='abc' in 'local,steps=abc' is not an integer; write e\.g\. steps=0"),
    ("local,steps=1.5", r"steps='1\.5' .* is not an integer"),
    ("local=maybe", r"local='maybe' .* is not a boolean; write local=true or local=false"),
    ("steps", r"experiment argument 'steps' needs a value, e\.g\. steps=0"),
])
def test_bad_experiment_arguments_are_refused(arg, pattern):
  with pytest.raises(ConfigError, match=pattern):
    load_experiment(f"experiments/quickstart.py:{arg}")


@pytest.mark.parametrize("overrides, pattern", [
    ({"data.image_size": 17}, r"config\.data\.image_size=17 is not divisible by the model's downsampling factor 2.*"
                              r"set config\.data\.image_size to a multiple of 2, e\.g\. 16"),
    ({"data.image_size": 0}, r"config\.data\.image_size=0 must be at least 1 .*set config\.data\.image_size to 1"),
    ({"data.image_size": -16}, r"config\.data\.image_size=-16 must be at least 1"),
    ({"data.eval_image_size": 0}, r"config\.data\.eval_image_size=0 must be at least 1"),
    ({"data.resize": -5}, r"config\.data\.resize=-5 must be at least 0 .*0 keeps the native size"),
    ({"batch_size": 0}, r"config\.batch_size=0 must be at least 1"),
    ({"batch_size": -8}, r"config\.batch_size=-8 must be at least 1"),
    ({"batch_size": 12}, r"config\.batch_size=12 is not divisible by the data-parallel size 8.*multiple of 8"),
    ({"eval.batch_size": 0}, r"config\.eval\.batch_size=0 must be at least 1"),
    ({"model.channels": 0}, r"config\.model\.channels=0 must be at least 1 \(base channel width\)"),
    ({"model.channel_multipliers": ()}, r"config\.model\.channel_multipliers=\(\) must list at least one"),
    ({"model.quantizer.codebook_size": 0}, r"config\.model\.quantizer\.codebook_size=0 must be at least 2"),
    ({"model.quantizer.dim": 0}, r"config\.model\.quantizer\.dim=0 must be at least 1"),
])
def test_impossible_shapes_are_refused_before_anything_is_built(tmp_path, overrides, pattern):
  with pytest.raises(ConfigError, match=pattern):
    run_lib.setup(tiny_config(**overrides), str(tmp_path / "workdir"))
  assert not (tmp_path / "workdir").exists()


def test_num_frames_that_the_temporal_stride_cannot_take_is_refused(tmp_path):
  config = set_fields(load_experiment("experiments/magvit2_video.py"), {
      "model.channels": 8, "model.num_groups": 4, "data.image_size": 16, "data.eval_image_size": 16,
      "batch_size": 8, "eval.batch_size": 8, "data.num_frames": 8})
  with pytest.raises(ConfigError, match=r"8 frames do not fit temporal stride 2; the frame count must be 1 \+ k·2.*"
                                        r"nearest: 7 or 9.*data\.num_frames"):
    run_lib.setup(config, str(tmp_path))
  with pytest.raises(ConfigError, match=r"config\.data\.num_frames=0 must be at least 1"):
    make_pipeline(set_fields(config, {"data.num_frames": 0}).data, "train", global_batch_size=8, process_index=0,
                  process_count=1)


# -------------------------------------------------------------------------------------------------- weight files

def _evil_pickles(marker) -> dict[str, bytes]:
  """Pickles that run `touch marker` when unpickled, in every opcode family that can call a function."""
  torch = pytest.importorskip("torch")  # reading .pth files needs it; only these tests are skipped without it
  command = f"touch {shlex.quote(str(marker))}".encode()
  payload = _Payload(marker)
  zipped = io.BytesIO()
  torch.save({"weight": payload}, zipped, pickle_protocol=4)
  return {
      "protocol0_global": b"cos\nsystem\n(S'" + command + b"'\ntR.",
      "protocol0_inst": b"(S'" + command + b"'\nios\nsystem\n.",
      "protocol0_obj": b"(cos\nsystem\nS'" + command + b"'\no.",
      "protocol2": pickle.dumps({"weight": payload}, protocol=2),
      "protocol4_stack_global": pickle.dumps({"weight": payload}, protocol=4),
      "protocol5": pickle.dumps(payload, protocol=5),
      "torch_zip_protocol4": zipped.getvalue(),
  }


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".ckpt"])
def test_code_running_pickles_are_refused_and_do_not_run(tmp_path, suffix):
  marker = tmp_path / "pwned"
  for name, data in _evil_pickles(marker).items():
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as error:
      load_state_dict(path)
    message = str(error.value)
    assert message.startswith(f"{path}: refused to load: its pickle names a Python callable or class"), message
    assert re.search(r"(posix|os)\.system", message) and "weights_only=False unless you trust" in message
    assert not marker.exists(), name


def test_converters_refuse_code_running_pickles(tmp_path):
  marker = tmp_path / "pwned"
  evil = tmp_path / "vgg.pth"
  evil.write_bytes(_evil_pickles(marker)["protocol2"])
  with pytest.raises(ConfigError, match=re.escape(str(evil)) + ": refused to load"):
    lpips_convert.load_lpips_params(evil, evil)
  with pytest.raises(ConfigError, match=re.escape(str(evil)) + ": refused to load"):
    inception_convert.load_inception_params(evil)
  disguised = tmp_path / "weights.safetensors"
  disguised.write_bytes(_evil_pickles(marker)["protocol0_global"])
  with pytest.raises(ConfigError, match=re.escape(str(disguised)) + ": cannot read as safetensors.*fetch or convert"):
    load_state_dict(disguised)
  assert not marker.exists()
