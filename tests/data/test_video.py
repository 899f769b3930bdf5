"""Video data: lavfi renderings, the scikit-image GIF, video folders with corrupt files, and the video pipeline."""

import json
import logging

import imageio.v3 as iio
import ml_collections
import numpy as np
import pytest

from tokgen_jax.data import make_pipeline
from tokgen_jax.data import video
from tokgen_jax.errors import ConfigError

_T = 5
_RENDER = 16  # lavfi render size (config.data.resize)
_FRAMES = 32  # clip_seconds 4 x fps 8: train frames 0..23, held out 24..31
_DEFAULTS = dict(source="lavfi", name="", data_dir="", path="", train_split="train", eval_split="eval",
                 image_size=8, eval_image_size=8, resize=_RENDER, random_flip=True, seed=0, num_threads=2,
                 prefetch=2, num_frames=_T, fps=8.0, lavfi_sources=video.DEFAULT_LAVFI_SOURCES, clip_seconds=4.0,
                 lavfi_codec="libx264", max_corrupt_fraction=0.0)
_RENDER_ARGS = ("testsrc2", _RENDER, 8.0, _FRAMES, "libx264")


def _config(**overrides):
  unknown = set(overrides) - set(_DEFAULTS)
  assert not unknown, f"not a video config.data field: {unknown}"
  return ml_collections.ConfigDict({**_DEFAULTS, **overrides})


def _pipeline(config, split="train", batch=4, index=0, count=1):
  return make_pipeline(config, split, global_batch_size=batch, process_index=index, process_count=count)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _to_uint8(clip):
  return np.rint((clip + 1.0) * 127.5).astype(np.uint8)


def _renders():
  return [video.render_lavfi(spec, _RENDER, 8.0, _FRAMES, "libx264") for spec in video.DEFAULT_LAVFI_SOURCES]


def _find_clip(clip, videos):
  """All `(video, start, top, left, flipped)` where `clip` (float [T, S, S, 3]) is a crop of T consecutive frames."""
  clip = _to_uint8(clip)
  num_frames, size = clip.shape[:2]
  matches = []
  for video_index, frames in enumerate(videos):
    windows = np.lib.stride_tricks.sliding_window_view(frames, (num_frames, size, size), axis=(0, 1, 2))
    for flipped, candidate in ((False, clip), (True, clip[:, :, ::-1])):
      equal = (windows == np.moveaxis(candidate, -1, 0)).all(axis=(-4, -3, -2, -1))  # [starts, tops, lefts]
      matches.extend((video_index, *map(int, where), flipped) for where in np.argwhere(equal))
  return matches


def test_lavfi_renders_deterministic_moving_codec_frames():
  changed = 0
  for spec in video.DEFAULT_LAVFI_SOURCES:
    first = video.render_lavfi.__wrapped__(spec, _RENDER, 8.0, 12, "libx264")  # uncached: two real renders
    second = video.render_lavfi.__wrapped__(spec, _RENDER, 8.0, 12, "libx264")
    assert first.shape == (12, _RENDER, _RENDER, 3) and first.dtype == np.uint8
    assert first.tobytes() == second.tobytes(), spec
    assert np.abs(np.diff(first.astype(int), axis=0)).max() > 0, f"{spec} does not move"
    raw = video.render_lavfi.__wrapped__(spec, _RENDER, 8.0, 12, "")
    changed += not np.array_equal(raw, first)  # yuv420p + H.264 are lossy
    assert np.abs(raw.astype(int) - first.astype(int)).mean() < 30, spec  # but close to the lavfi frames
  assert changed >= len(video.DEFAULT_LAVFI_SOURCES) - 1  # black/white cellauto may survive H.264 exactly
  assert video.render_lavfi(*_RENDER_ARGS) is video.render_lavfi(*_RENDER_ARGS)  # rendered once per process
  assert not video.render_lavfi(*_RENDER_ARGS).flags.writeable


def test_train_clips_are_consecutive_frames_of_the_training_range():
  batches = _take(_pipeline(_config()), 2)
  renders = _renders()
  train_part = [frames[:24] for frames in renders]
  for batch in batches:
    assert set(batch) == {"video"}
    assert batch["video"].shape == (4, _T, 8, 8, 3) and batch["video"].dtype == np.float32
    assert -1.0 <= batch["video"].min() < batch["video"].max() <= 1.0
    for clip in batch["video"]:
      assert _find_clip(clip, train_part), "clip is not T consecutive frames of a training range"
  starts = {match[1] for batch in batches for clip in batch["video"] for match in _find_clip(clip, train_part)}
  assert len(starts) > 1  # random temporal offsets


def test_eval_clips_tiles_order_and_padding():
  batches = list(_pipeline(_config(), "eval", batch=5))
  # 6 sources x 8 held-out frames -> 1 window of 5, x (16 / 8)^2 tiles = 24 clips -> 5 batches, 1 padding clip.
  assert len(batches) == 5
  for batch in batches:
    assert batch["video"].shape == (5, _T, 8, 8, 3) and batch["mask"].shape == (5,)
  mask = np.concatenate([batch["mask"] for batch in batches])
  assert mask.sum() == 24 and mask[:24].all()
  np.testing.assert_array_equal(batches[-1]["video"][-1], 0.0)
  testsrc2 = _renders()[0]
  np.testing.assert_array_equal(_to_uint8(batches[0]["video"][0]), testsrc2[24:29, :8, :8])
  np.testing.assert_array_equal(_to_uint8(batches[0]["video"][1]), testsrc2[24:29, :8, 8:])
  np.testing.assert_array_equal(_to_uint8(batches[0]["video"][3]), testsrc2[24:29, 8:, 8:])


def test_same_seed_same_clips_other_seed_differs():
  first = _take(_pipeline(_config(seed=0)), 2)
  again = _take(_pipeline(_config(seed=0)), 2)
  other = _take(_pipeline(_config(seed=1)), 2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["video"], b["video"])
  assert not np.array_equal(first[0]["video"], other[0]["video"])


def test_resume_from_json_state_is_bit_exact():
  expected = _take(_pipeline(_config()), 4)  # 6 sources / 4 a batch: batch 2 onwards is in the second epoch
  interrupted = _pipeline(_config())
  _take(interrupted, 2)
  saved = json.dumps(interrupted.get_state())
  restored = _pipeline(_config())
  restored.set_state(json.loads(saved))
  for got, want in zip(_take(restored, 2), expected[2:]):
    np.testing.assert_array_equal(got["video"], want["video"])


def test_two_processes_slice_the_one_process_clips():
  config = _config(image_size=_RENDER)  # whole frames: no crop of uniform area can match several sources
  single = _take(_pipeline(config, batch=6, index=0, count=1), 2)
  halves = [_take(_pipeline(config, batch=6, index=index, count=2), 2) for index in range(2)]
  for batch, first, second in zip(single, *halves):
    np.testing.assert_array_equal(batch["video"], np.concatenate([first["video"], second["video"]]))
  renders = _renders()
  epoch = [next(iter({m[0] for m in _find_clip(clip, renders)})) for clip in single[0]["video"]]
  assert sorted(epoch) == list(range(6))  # the first global batch is one epoch of the 6 sources


def test_gif_source_loads_and_splits_by_time():
  frames, gif_fps = video.load_skimage_gif()
  assert frames.shape == (24, 25, 14, 3) and frames.dtype == np.uint8
  assert gif_fps == pytest.approx(1000 / 70)
  train = video.open_video_source("gif", split="train", num_frames=_T, fps=0)
  held_out = video.open_video_source("gif", split="eval", num_frames=_T, fps=0)
  assert train.info(0) == (18, 25, 14) and held_out.info(0) == (6, 25, 14)
  np.testing.assert_array_equal(held_out.read_clip(0, 0, 6), frames[18:])
  halved = video.open_video_source("gif", split="train", num_frames=_T, fps=gif_fps / 2)  # stride 2: 12 frames
  np.testing.assert_array_equal(halved.read_clip(0, 0, 9), frames[0:18:2])
  batch = next(_pipeline(_config(source="gif", fps=0.0, resize=0), batch=2))
  assert batch["video"].shape == (2, _T, 8, 8, 3)
  assert all(_find_clip(clip, [frames[:18]]) for clip in batch["video"])


def _write_mp4(path, frames, fps):
  path.parent.mkdir(parents=True, exist_ok=True)
  iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)


def test_video_folder_skips_and_counts_a_corrupt_file(tmp_path, caplog):
  _write_mp4(tmp_path / "train" / "a.mp4", video.render_lavfi("testsrc2", _RENDER, 8.0, 24, ""), fps=8)
  (tmp_path / "train" / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but not a video at all" * 20)
  decoded = video.load_video_file(tmp_path / "train" / "a.mp4")
  assert decoded.shape == (24, _RENDER, _RENDER, 3)
  with caplog.at_level(logging.WARNING):
    source = video.open_video_source("video_folder", split="train", num_frames=_T, fps=4.0, path=str(tmp_path),
                                     split_name="train", max_corrupt_fraction=0.5)
  assert source.corrupt_files == (str(tmp_path / "train" / "b.mp4"),) and len(source) == 1
  assert str(tmp_path / "train" / "b.mp4") in caplog.text
  assert source.info(0) == (12, _RENDER, _RENDER)  # 24 frames at 8 fps sampled at 4 fps: stride 2
  np.testing.assert_array_equal(source.read_clip(0, 3, _T), decoded[6:16:2])
  np.testing.assert_array_equal(source.read_clip(0, 10, _T)[2:], decoded[22:23].repeat(3, axis=0))  # past the end
  config = _config(source="video_folder", path=str(tmp_path), fps=4.0, max_corrupt_fraction=0.5)
  batch = next(_pipeline(config, batch=2))
  assert batch["video"].shape == (2, _T, 8, 8, 3)
  assert all(_find_clip(clip, [decoded[::2]]) for clip in batch["video"])
  assert not source.runtime_failures


def test_video_folder_replaces_a_file_that_fails_after_probing(tmp_path, caplog):
  _write_mp4(tmp_path / "eval" / "a.mp4", video.render_lavfi("testsrc2", _RENDER, 8.0, 12, ""), fps=8)
  _write_mp4(tmp_path / "eval" / "b.mp4", video.render_lavfi(video.DEFAULT_LAVFI_SOURCES[2], _RENDER, 8.0, 12, ""),
             fps=8)
  replacement = video.load_video_file(tmp_path / "eval" / "b.mp4")
  source = video.open_video_source("video_folder", split="eval", num_frames=_T, fps=8.0, path=str(tmp_path),
                                   split_name="eval")
  assert len(source) == 2 and not source.corrupt_files
  (tmp_path / "eval" / "a.mp4").unlink()  # probed fine, gone when read
  with caplog.at_level(logging.WARNING):
    np.testing.assert_array_equal(source.read_clip(0, 2, _T), replacement[2:7])
  assert source.runtime_failures == {str(tmp_path / "eval" / "a.mp4")}
  assert str(tmp_path / "eval" / "a.mp4") in caplog.text


def test_video_folder_in_a_bucket_reads_as_the_same_folder_on_disk(tmp_path, gcs_bucket, monkeypatch):
  """ffmpeg reads local files only: gs:// videos come from the local cache, bounded by TOKGEN_CACHE_GB."""
  from tokgen_jax.data import files  # pylint: disable=g-import-not-at-top

  local_root = tmp_path / "videos"
  _write_mp4(local_root / "train" / "a.mp4", video.render_lavfi("testsrc2", _RENDER, 8.0, 24, ""), fps=8)
  _write_mp4(local_root / "train" / "sub" / "b.mp4",
             video.render_lavfi(video.DEFAULT_LAVFI_SOURCES[2], _RENDER, 8.0, 16, ""), fps=8)
  (local_root / "train" / "c.mp4").write_bytes(b"not a video" * 30)
  for relative in files.relative_files(local_root):
    (files.as_path(gcs_bucket) / "videos" / relative).write_bytes((local_root / relative).read_bytes())
  largest = max(files.file_sizes(local_root).values())
  monkeypatch.setenv("TOKGEN_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("TOKGEN_CACHE_GB", str(largest / 2**30))  # room for one copy at a time
  monkeypatch.setattr(files, "_CACHE", None)
  opened = {root: video.video_folder_source(root, "train", "train_split", fps=4.0, max_corrupt_fraction=0.5)
            for root in (str(local_root), gcs_bucket + "/videos")}
  local, remote = opened[str(local_root)], opened[gcs_bucket + "/videos"]
  assert remote.files == tuple(f"{gcs_bucket}/videos/train/{name}" for name in ("a.mp4", "sub/b.mp4"))
  assert remote.corrupt_files == (f"{gcs_bucket}/videos/train/c.mp4",)
  for index in range(len(local)):
    assert remote.info(index) == local.info(index)
    np.testing.assert_array_equal(remote.read_clip(index, 1, _T), local.read_clip(index, 1, _T))
  assert sum(files.file_sizes(tmp_path / "cache").values()) <= largest
  assert files.as_path(gcs_bucket + "/videos/train/a.mp4").is_file()
  np.testing.assert_array_equal(video.load_video_file(gcs_bucket + "/videos/train/a.mp4"),
                                video.load_video_file(local_root / "train" / "a.mp4"))


def test_video_folder_errors(tmp_path):
  _write_mp4(tmp_path / "train" / "a.mp4", video.render_lavfi("testsrc2", _RENDER, 8.0, 12, ""), fps=8)
  (tmp_path / "train" / "b.webm").write_bytes(b"garbage" * 50)
  with pytest.raises(ConfigError, match=r"1 of 2 video files .*max_corrupt_fraction=0.25"):
    _pipeline(_config(source="video_folder", path=str(tmp_path), max_corrupt_fraction=0.25))
  with pytest.raises(FileNotFoundError) as missing:
    _pipeline(_config(source="video_folder", path=str(tmp_path)), "eval")
  for expected in [str(tmp_path / "eval"), "config.data.eval_split", "<path>/eval"]:
    assert expected in str(missing.value)


def test_config_errors():
  expected = r"config.data.clip_seconds \(now 2.0 s at 8 fps = 16 frames\) to at least 3 s"
  with pytest.raises(ConfigError, match=expected):
    _pipeline(_config(clip_seconds=2.0), "eval")  # 16 frames: the last 4 are held out, fewer than 5
  with pytest.raises(ConfigError, match="odd"):
    _pipeline(_config(resize=15))
  with pytest.raises(ConfigError, match="config.data.num_frames=0"):
    _pipeline(_config(num_frames=0))


def test_tfds_video_missing_dataset_says_how_to_build_it(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError) as error:
    video.open_video_source("tfds_video", split="eval", num_frames=_T, name="tokgen_no_such_video",
                            data_dir=data_dir, split_name="test")
  assert f"tfds build tokgen_no_such_video --data_dir={data_dir} --file_format=array_record" in str(error.value)


def test_eval_clip_specs_closed_form():
  """Held-out GIF part: 6 frames of 25x14 → one 5-frame window x 3 row-major 8x8 tiles (rows 0, 8, 16; col 0)."""
  from tokgen_jax.data import video_pipeline

  held_out = video.open_video_source("gif", split="eval", num_frames=5, fps=0)
  specs = video_pipeline.eval_clip_specs(held_out, num_frames=5, tile_size=8, resize=0)
  assert specs == [(0, 0, 0, 0), (0, 0, 8, 0), (0, 0, 16, 0)]
