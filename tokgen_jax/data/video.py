"""Video sources: random-access videos whose clips are read as uint8 `[T, H, W, 3]` frames.

Four kinds, picked by `config.data.source`:

* `lavfi` -- deterministic synthetic video rendered by the ffmpeg binary that imageio-ffmpeg ships (testsrc2,
  mandelbrot, life, cellauto, ...), passed through a real codec (libx264 by default) and decoded back, so frames
  carry real compression artifacts. Every source in `config.data.lavfi_sources` is rendered once per process at
  `config.data.fps` for `clip_seconds`, square at `resize` (0: max(128, image_size, eval_image_size)).
  The split is by time: the last quarter of every rendering is held out for eval, the first three quarters train
  (`train_split` / `eval_split` are ignored, as for the gif).
* `gif` -- the animated GIF that scikit-image ships (`no_time_for_that_tiny.gif`, 24 frames of 25x14), split by
  time like lavfi. Read with imageio v3.
* `video_folder` -- video files (mp4, webm, avi, gif, mov, mkv, m4v) under `path/<split folder>`, decoded with the
  ffmpeg binary. Every file is probed once when the source opens (fps, duration, size, first frame); a file that
  fails is skipped, counted in `corrupt_files` and logged with its path, and only a share of corrupt files above
  `config.data.max_corrupt_fraction` is an error. A file that probes fine but fails later is replaced by the next
  readable file (logged, counted in `runtime_failures`). `path` may be gs://: ffmpeg reads local files only, so
  each video is downloaded once into the process's local cache (`files.cache()`) and read from there.
* `tfds_video` -- a TFDS dataset prepared as ArrayRecord (as for images) whose records hold a 'video' field of
  encoded frames or uint8 `[T, H, W, 3]`.

Lengths and clip positions are in *sampled* frames: a file is read every `stride = round(file_fps / fps)` native
frames (stride 1 when `fps` is 0 or the file has no fps), so the pipeline never deals with native frame rates.
A clip reaching past the end of a video repeats its last frame.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from tokgen_jax.data import files, registry, sources, transforms
from tokgen_jax.errors import ConfigError

VIDEO_SOURCE_KINDS = ("lavfi", "gif", "video_folder", "tfds_video", "shapes_video")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".gif", ".mov", ".mkv", ".m4v")
# Random sources carry an explicit seed (lavfi's default, -1, draws from the clock) and gradients explicit colors
# (its default colors are random whatever the seed).
DEFAULT_LAVFI_SOURCES = (
    "testsrc2",
    "mandelbrot=end_pts=100:end_scale=0.3",  # the default zoom (400 s) barely moves within a clip
    "life=random_seed=7:mold=10:life_color=0xffd040:death_color=0x102050:mold_color=0xa02060",
    "cellauto=rule=30:random_seed=3:random_fill_ratio=0.5",
    "zoneplate=kx2=160:ky2=120:kt=12",
    "gradients=c0=0xd04030:c1=0x3080d0:c2=0xf0d040:c3=0x205030:nb_colors=4:seed=5:speed=0.05",
)
LAVFI_CODECS = ("libx264", "mpeg4", "")  # "" keeps the raw lavfi frames
_CODEC_ARGS = {"libx264": ("-crf", "23", "-preset", "medium"), "mpeg4": ("-q:v", "5")}
_HELD_OUT_DENOMINATOR = 4  # lavfi and gif: the last 1/4 of the frames is the eval split


class VideoInfo(NamedTuple):
  """Length in sampled frames and frame size of one video."""
  num_frames: int
  height: int
  width: int


class VideoSource:
  """Random-access videos: `info(index)` without decoding pixels where possible, and `read_clip`."""

  def __init__(self, num_videos: int, info: Callable[[int], VideoInfo],
               read: Callable[[int, int, int], np.ndarray], description: str, *, files: Sequence[str] = (),
               corrupt_files: Sequence[str] = (), runtime_failures: set[str] | None = None):
    self._num_videos = num_videos
    self._info = functools.lru_cache(maxsize=None)(info)
    self._read = read
    self.description = description
    self.files = tuple(files)  # video_folder: the readable files, in record order
    self.corrupt_files = tuple(corrupt_files)  # video_folder: files skipped because their probe failed
    self.runtime_failures = set() if runtime_failures is None else runtime_failures  # failed after probing

  def __len__(self) -> int:
    return self._num_videos

  def info(self, index: int) -> VideoInfo:
    return self._info(index)

  def read_clip(self, index: int, start: int, count: int) -> np.ndarray:
    """Sampled frames `start .. start + count - 1` of video `index` as uint8 `[count, H, W, 3]`."""
    return pad_frames(self._read(index, start, count), count)


def pad_frames(frames: np.ndarray, count: int) -> np.ndarray:
  """The first `count` frames, repeating the last frame when there are fewer (a clip past the end of a video)."""
  if len(frames) == 0:
    raise ValueError("Cannot pad an empty clip: the video has no frames at the requested position.")
  if len(frames) >= count:
    return frames[:count]
  return np.concatenate([frames, np.repeat(frames[-1:], count - len(frames), axis=0)])


def frame_stride(file_fps: float, target_fps: float) -> int:
  """Native frames per sampled frame: `round(file_fps / target_fps)`, at least 1; 1 when either is unknown/0."""
  if target_fps <= 0 or file_fps <= 0:
    return 1
  return max(1, round(file_fps / target_fps))


def held_out_range(num_frames: int, split: str) -> tuple[int, int]:
  """`[begin, end)` of the frames of a lavfi/gif rendering in `split`: eval is the last quarter, train the rest."""
  boundary = num_frames - num_frames // _HELD_OUT_DENOMINATOR
  return (0, boundary) if split == "train" else (boundary, num_frames)


def _array_source(videos: Sequence[np.ndarray], description: str) -> VideoSource:
  """A source over decoded videos kept in memory (lavfi renderings, the GIF)."""
  return VideoSource(len(videos), info=lambda index: VideoInfo(*videos[index].shape[:3]),
                     read=lambda index, start, count: videos[index][start:start + count], description=description)


def _split_frames(frames: np.ndarray, split: str, num_frames: int, what: str, fix: str) -> np.ndarray:
  begin, end = held_out_range(len(frames), split)
  if end - begin < num_frames:
    raise ConfigError(f"{what} has {len(frames)} sampled frames, so its {split} split (frames {begin}..{end - 1}, "
                      f"the {'last quarter' if split == 'eval' else 'first three quarters'}) is shorter than "
                      f"config.data.num_frames={num_frames}. {fix}")
  return frames[begin:end]


# ------------------------------------------------------------------------------------------------------- lavfi


def _run_ffmpeg(args: list[str], data: bytes | None = None) -> bytes:
  command = [_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin"] + args
  result = subprocess.run(command, input=data, capture_output=True, check=False)
  if result.returncode:
    raise RuntimeError(f"ffmpeg failed ({result.returncode}): {' '.join(command)}\n"
                       f"{result.stderr.decode(errors='replace')[-2000:]}")
  return result.stdout


def _ffmpeg_exe() -> str:
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  return imageio_ffmpeg.get_ffmpeg_exe()


def lavfi_graph(spec: str, size: int, fps: float) -> str:
  """`name[=options]` plus the frame size and rate, e.g. 'testsrc2' -> 'testsrc2=size=64x64:rate=8'."""
  separator = ":" if "=" in spec else "="
  return f"{spec}{separator}size={size}x{size}:rate={fps:g}"


@functools.lru_cache(maxsize=64)
def render_lavfi(spec: str, size: int, fps: float, num_frames: int, codec: str = "libx264") -> np.ndarray:
  """Renders `num_frames` frames of lavfi source `spec` as read-only uint8 `[N, size, size, 3]`, once per process.

  With a codec the frames are encoded (yuv420p, one thread, so the bitstream is reproducible) into an in-memory
  Matroska stream and decoded back: the result carries the codec's blocking and chroma subsampling.
  """
  if codec not in LAVFI_CODECS:
    raise ConfigError(f"config.data.lavfi_codec={codec!r} is not supported; use one of {LAVFI_CODECS}.")
  if codec and size % 2:
    raise ConfigError(f"lavfi render size {size} is odd, which yuv420p ({codec}) cannot encode; set "
                      "config.data.resize to an even size or config.data.lavfi_codec to ''.")
  render = ["-f", "lavfi", "-i", lavfi_graph(spec, size, fps), "-frames:v", str(num_frames)]
  try:
    if codec:
      encoded = _run_ffmpeg(render + ["-c:v", codec, *_CODEC_ARGS[codec], "-threads", "1", "-pix_fmt", "yuv420p",
                                      "-fflags", "+bitexact", "-f", "matroska", "pipe:1"])
      raw = _run_ffmpeg(["-f", "matroska", "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
                        data=encoded)
    else:
      raw = _run_ffmpeg(render + ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
  except RuntimeError as error:
    raise ConfigError(f"Could not render lavfi source {spec!r} (an entry of config.data.lavfi_sources); check its "
                      f"name and options against `ffmpeg -h filter=<name>`. {error}") from error
  frames = np.frombuffer(raw, np.uint8)
  if frames.size != num_frames * size * size * 3:
    raise ConfigError(f"lavfi source {spec!r} produced {frames.size // (size * size * 3)} frames, expected "
                      f"{num_frames}; a finite source (e.g. with duration=) must last config.data.clip_seconds.")
  return frames.reshape(num_frames, size, size, 3)  # np.frombuffer over bytes is already read-only


def lavfi_render_size(image_size: int, eval_image_size: int, resize: int) -> int:
  """Square render size: `resize` if set, else max(128, image_size, eval_image_size)."""
  return int(resize) if resize else max(128, int(image_size), int(eval_image_size))


def lavfi_source(specs: Sequence[str], split: str, *, size: int, fps: float, clip_seconds: float, num_frames: int,
                 codec: str = "libx264") -> VideoSource:
  """Every lavfi source rendered for `clip_seconds`; `split` keeps its first three quarters or its last quarter."""
  if not specs:
    raise ConfigError("config.data.lavfi_sources is empty; list lavfi sources, e.g. "
                      f"{DEFAULT_LAVFI_SOURCES[:2]}.")
  if fps <= 0:
    raise ConfigError(f"config.data.fps={fps} must be positive for the lavfi source (it is the render rate).")
  total = round(clip_seconds * fps)
  fix = (f"Raise config.data.clip_seconds (now {clip_seconds} s at {fps:g} fps = {total} frames) to at least "
         f"{math.ceil(_HELD_OUT_DENOMINATOR * num_frames / fps)} s or lower config.data.num_frames.")
  videos = tuple(_split_frames(render_lavfi(spec, size, fps, total, codec), split, num_frames,
                               f"lavfi source {spec!r}", fix) for spec in specs)
  return _array_source(videos, f"lavfi/{split} ({len(specs)} sources, {size}x{size}, {fps:g} fps, {codec or 'raw'})")


# --------------------------------------------------------------------------------------------------------- gif


def skimage_gif_path() -> str:
  """Path of the animated GIF that scikit-image installs."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(skimage.data.__file__), "no_time_for_that_tiny.gif")


@functools.cache
def load_skimage_gif() -> tuple[np.ndarray, float]:
  """All frames of the scikit-image GIF as read-only uint8 `[N, H, W, 3]` and its frame rate."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  path = skimage_gif_path()
  frames = np.stack([transforms.to_rgb_uint8(frame) for frame in iio.imread(path, index=None)])
  frames.setflags(write=False)
  duration_ms = float(iio.immeta(path).get("duration", 0) or 0)
  return frames, (1000.0 / duration_ms if duration_ms > 0 else 0.0)


def gif_source(split: str, *, fps: float, num_frames: int) -> VideoSource:
  """The scikit-image GIF at `fps` (frame stride from its frame duration), split by time like lavfi."""
  frames, gif_fps = load_skimage_gif()
  frames = frames[::frame_stride(gif_fps, fps)]
  frames = _split_frames(frames, split, num_frames, "The scikit-image GIF",
                         "Lower config.data.num_frames or config.data.fps (0 keeps all 24 frames).")
  return _array_source((frames,), f"gif/{split} (no_time_for_that_tiny.gif, {len(frames)} frames)")


# ------------------------------------------------------------------------------------------------ video folder


class _Probe(NamedTuple):
  info: VideoInfo
  stride: int


# ffmpeg reports a broken or non-video file through many exception types.
_DECODE_ERRORS = (OSError, RuntimeError, ValueError, StopIteration, KeyError, TypeError)


def _ffmpeg_reason(error: BaseException) -> str:
  """The last lines of an imageio-ffmpeg error, which say what failed; the rest is ffmpeg's build banner."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return " / ".join(lines[-2:]) if lines else type(error).__name__


def probe_video_file(path: str, fps: float) -> _Probe:
  """Reads the header and first frame of `path`: sampled length (from duration x fps), size and frame stride."""
  with files.readable_file(path) as local:  # ffmpeg opens local files; a gs:// video is read from a cached copy
    return _probe_local_file(local, fps)


def _probe_local_file(path: str, fps: float) -> _Probe:
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
  try:
    meta = next(reader)
    width, height = meta["size"]
    next(reader)  # a file whose first frame does not decode is corrupt
  finally:
    reader.close()
  file_fps, duration = float(meta.get("fps") or 0), float(meta.get("duration") or 0)
  if file_fps > 0 and duration > 0:
    native_frames = max(1, round(file_fps * duration))
  else:  # no usable header duration (some webm): count by decoding once
    native_frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
  stride = frame_stride(file_fps, fps)
  return _Probe(VideoInfo(math.ceil(native_frames / stride), int(height), int(width)), stride)


def read_video_frames(path: str, *, stride: int = 1, start: int = 0, count: int | None = None) -> np.ndarray:
  """Sampled frames `start ..` (every `stride`-th native frame) of a video file as uint8 `[n, H, W, 3]`.

  Decodes sequentially and stops after the last needed frame; `count=None` reads to the end. May return fewer
  frames than asked near the end of a file. A gs:// file is read from its cached local copy.
  """
  with files.readable_file(path) as local:
    return _read_local_frames(local, stride=stride, start=start, count=count)


def _read_local_frames(path: str, *, stride: int, start: int, count: int | None) -> np.ndarray:
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  first = start * stride
  last = math.inf if count is None else first + (count - 1) * stride
  reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
  frames = []
  try:
    width, height = next(reader)["size"]
    for native_index, data in enumerate(reader):
      if native_index > last:
        break
      if native_index >= first and (native_index - first) % stride == 0:
        frames.append(np.frombuffer(data, np.uint8).reshape(height, width, 3))
  finally:
    reader.close()
  return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)


def load_video_file(path: str | os.PathLike, fps: float = 0) -> np.ndarray:
  """Reads a whole video file as uint8 `[N, H, W, 3]`, subsampled to `fps` (0: every frame)."""
  path = os.fspath(path)
  if not files.as_path(path).is_file():
    raise FileNotFoundError(f"Video file not found: {path!r}. Check the path (relative paths are resolved against "
                            f"the current directory {os.getcwd()!r}).")
  try:
    probe = probe_video_file(path, fps)
    return read_video_frames(path, stride=probe.stride)
  except _DECODE_ERRORS as error:
    raise ConfigError(f"Could not decode {path!r} as a video ({_ffmpeg_reason(error)}): the file is empty, "
                      "truncated, corrupt or not a video. Re-encode or replace it (e.g. as H.264 mp4); supported: what "
                      f"the ffmpeg binary of imageio-ffmpeg reads ({', '.join(VIDEO_EXTENSIONS)}).") from error


class _FolderReader:
  """Reads clips of the probed files; a file failing at read time is logged once and replaced by the next one."""

  def __init__(self, files: Sequence[str], probes: Sequence[_Probe]):
    self._files = files
    self._probes = probes
    self._lock = threading.Lock()
    self.runtime_failures: set[str] = set()

  def _try_read(self, index: int, start: int, count: int, replacement: bool) -> np.ndarray | None:
    path, probe = self._files[index], self._probes[index]
    if replacement:  # a replacement may be shorter than the file the start was drawn for
      start = min(start, max(0, probe.info.num_frames - count))
    try:
      frames = read_video_frames(path, stride=probe.stride, start=start, count=count)
      if len(frames) == 0 and start > 0:  # shorter than its header said: take the clip from the start
        frames = read_video_frames(path, stride=probe.stride, start=0, count=count)
    except ConfigError:
      raise
    except _DECODE_ERRORS as error:
      frames, reason = None, str(error)
    else:
      reason = "no frames decoded"
    if frames is None or len(frames) == 0:
      with self._lock:
        if path not in self.runtime_failures:
          self.runtime_failures.add(path)
          logging.warning("Skipping video file %s, which failed to decode after probing: %s", path, reason)
      return None
    return frames

  def __call__(self, index: int, start: int, count: int) -> np.ndarray:
    for offset in range(len(self._files)):
      candidate = (index + offset) % len(self._files)
      if self._files[candidate] in self.runtime_failures:
        continue
      frames = self._try_read(candidate, start, count, replacement=offset > 0)
      if frames is not None:
        return frames
    raise ValueError(f"None of the {len(self._files)} video files decodes any more (e.g. {self._files[0]!r}).")


def _probe_or_none(path: str, fps: float) -> _Probe | None:
  try:
    return probe_video_file(path, fps)
  except ConfigError:  # e.g. no local disk left for a gs:// file's copy: not the file's fault
    raise
  except _DECODE_ERRORS as error:
    logging.warning("Skipping corrupt video file %s: %s", path, _ffmpeg_reason(error))
    return None


def video_folder_source(path: str, split_folder: str, split_key: str, *, fps: float, max_corrupt_fraction: float,
                        num_threads: int = 1) -> VideoSource:
  """Video files under `path/split_folder`, probed in parallel; corrupt files are skipped and counted."""
  split_dir, files = sources.split_folder_files(path, split_folder, split_key, source="video_folder",
                                                kind="video", extensions=VIDEO_EXTENSIONS)
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
    probes = list(pool.map(functools.partial(_probe_or_none, fps=fps), files))
  corrupt = [file for file, probe in zip(files, probes) if probe is None]
  sources.check_corrupt_share(corrupt, len(files), split_dir, source="video_folder", kind="video",
                              fix="Re-encode them (e.g. to H.264 mp4) or remove them.",
                              max_corrupt_fraction=max_corrupt_fraction)
  good = [(file, probe) for file, probe in zip(files, probes) if probe is not None]
  good_files, good_probes = [file for file, _ in good], [probe for _, probe in good]
  reader = _FolderReader(good_files, good_probes)
  return VideoSource(len(good_files), info=lambda index: good_probes[index].info, read=reader,
                     description=f"video_folder {split_dir} ({len(good_files)} videos, {len(corrupt)} corrupt "
                     "skipped)", files=good_files, corrupt_files=corrupt, runtime_failures=reader.runtime_failures)


# -------------------------------------------------------------------------------------------------- tfds video


def _decode_tfds_video(record: dict[str, Any], where: str) -> np.ndarray:
  if "video" not in record:
    raise ValueError(f'{where}: records have no "video" field (fields: {sorted(record)}).')
  video = record["video"]
  field = f'{where} "video" field'
  if isinstance(video, np.ndarray) and video.ndim != 4 and not (video.dtype == object and video.ndim == 1):
    raise ConfigError(f"{field}: expected frames [T, H, W, C] (uint8) or a list of encoded frames, got an array of "
                      f"shape {video.shape}. Store the video as uint8 [T, H, W, 3] or encoded frames.")
  if isinstance(video, np.ndarray) and video.dtype == np.uint8:
    return np.stack([transforms.to_rgb_uint8(frame, where=field) for frame in video])
  return np.stack([transforms.decode_image_bytes(frame, where=where) if isinstance(frame, bytes)
                   else transforms.to_rgb_uint8(frame, where=field) for frame in video])


def tfds_video_source(name: str, data_dir: str, split: str, split_key: str) -> VideoSource:
  """Split `split` of a TFDS video dataset prepared as ArrayRecord (encoded frames decoded with PIL)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not name:
    raise ConfigError('config.data.source is "tfds_video" but config.data.name is empty; set it to a TFDS video '
                      "dataset name, e.g. 'ucf101'.")
  builder = sources.open_tfds_builder(name, data_dir)
  available = sorted(builder.info.splits.keys())
  if split.split("[")[0] not in available:
    raise ConfigError(f"TFDS dataset {name!r} has no split {split!r} (config.data.{split_key}); "
                      f"available: {available}.")
  records = builder.as_data_source(split=split, decoders={"video": tfds.decode.SkipDecoding()})
  where = f"tfds {name}/{split}"
  decode = functools.lru_cache(maxsize=4)(lambda index: _decode_tfds_video(records[index], where))
  return VideoSource(len(records), info=lambda index: VideoInfo(*decode(index).shape[:3]),
                     read=lambda index, start, count: decode(index)[start:start + count],
                     description=f"{where} ({len(records)} records)")


# ----------------------------------------------------------------------------------------------------- choose


@functools.lru_cache(maxsize=16)
def open_video_source(kind: str, *, split: str, num_frames: int, fps: float = 8.0, name: str = "",
                      data_dir: str = "", path: str = "", split_name: str = "",
                      lavfi_sources: tuple[str, ...] = DEFAULT_LAVFI_SOURCES, lavfi_size: int = 128,
                      clip_seconds: float = 4.0, lavfi_codec: str = "libx264", max_corrupt_fraction: float = 0.0,
                      num_threads: int = 1) -> VideoSource:
  """The video source of `kind` (`registry.VIDEO`) for `split` ('train' | 'eval'); cached per process like
  `sources.open_source`."""
  return registry.opener(registry.VIDEO, kind)(
      split, num_frames=num_frames, fps=fps, name=name, data_dir=data_dir, path=path, split_name=split_name,
      split_key=f"{split}_split", lavfi_sources=lavfi_sources, lavfi_size=lavfi_size, clip_seconds=clip_seconds,
      lavfi_codec=lavfi_codec, max_corrupt_fraction=max_corrupt_fraction, num_threads=num_threads)


@registry.register(registry.VIDEO, "lavfi")
def _open_lavfi(split: str, *, lavfi_sources, lavfi_size: int, fps: float, clip_seconds: float, num_frames: int,
                lavfi_codec: str, **_) -> VideoSource:
  return lavfi_source(lavfi_sources, split, size=lavfi_size, fps=fps, clip_seconds=clip_seconds,
                      num_frames=num_frames, codec=lavfi_codec)


@registry.register(registry.VIDEO, "gif")
def _open_gif(split: str, *, fps: float, num_frames: int, **_) -> VideoSource:
  return gif_source(split, fps=fps, num_frames=num_frames)


@registry.register(registry.VIDEO, "video_folder")
def _open_video_folder(split: str, *, path: str, split_name: str, split_key: str, fps: float,
                       max_corrupt_fraction: float, num_threads: int, **_) -> VideoSource:
  del split
  return video_folder_source(path, split_name, split_key, fps=fps, max_corrupt_fraction=max_corrupt_fraction,
                             num_threads=num_threads)


@registry.register(registry.VIDEO, "tfds_video")
def _open_tfds_video(split: str, *, name: str, data_dir: str, split_name: str, split_key: str, **_) -> VideoSource:
  del split
  return tfds_video_source(name, data_dir, split_name, split_key)
