"""Reading shapes-world scenes back from pixels (`analyze`) and scoring samples against their prompts (`match`,
`score_prompts`), the CPU stand-in for FID that `data.shapes` is built for.

`analyze(pixels)` reads the shapes back: pixels far from the background form 4-connected blobs; a blob's color is
the named color nearest the median of its most saturated pixels; its coverage against that color is compared with
each shape's anti-aliased template placed by the blob's area and centroid (the closest wins); size is its bounding
box side against the small/large midpoint; position its box center; motion its centroid's path. `match(prompt,
pixels)` scores a generated sample against its prompt per attribute. On ground truth it reads every attribute of
1000 images at 32, 300 at 64 and 700 clips (5-17 frames, 32 and 64) correctly; tests/data/test_shapes.py asserts
at least 99%.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from tokgen_jax.data.shapes import (
    ATTRIBUTES,
    BACKGROUND,
    BOX_SIDES,
    COLORS,
    COLOR_NAMES,
    CROSS_ARM,
    POSITIONS,
    POSITION_CENTERS,
    SHAPES,
    Scene,
    ShapeSpec,
    TRAVEL,
    class_name,
    coverage,
    parse_caption,
)


_COLOR_ARRAY = np.asarray([COLORS[name] for name in COLOR_NAMES], np.float32)
_BACKGROUND = np.asarray(BACKGROUND, np.float32)
_MIN_COLOR_DISTANCE = float(np.linalg.norm(_COLOR_ARRAY - _BACKGROUND, axis=-1).min())
_FOREGROUND = 0.3  # coarse foreground: at least this share of the way from the background to the dimmest color
_CORE = 0.75  # pixels at least this share of a blob's largest background distance give its color
_MIN_AREA = 0.01  # blobs smaller than this share of the image are noise
_SIZE_SPLIT = sum(BOX_SIDES.values()) / 2  # box side between small and large
_CENTER_RADIUS = 0.125  # a box center within this of the image center (per axis) is "center"
_MIN_MOTION = TRAVEL / 2
_PAD = 2  # pixels around a blob's bounding box in which the shape templates are compared
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 1 - (1 - CROSS_ARM) ** 2}
_CENTROID_DROP = {"triangle": 1 / 3}  # centroid below the box center, in half sides (the apex points up)


@dataclasses.dataclass(frozen=True)
class _Blob:
  """One shape found in one frame; coordinates are fractions of the image side."""
  shape: str
  color: str
  size: str
  box_center: tuple[float, float]
  centroid: tuple[float, float]


def _as_frames(pixels: np.ndarray) -> np.ndarray:
  """float32 `[T, H, W, 3]` in [0, 255] from uint8 or from float in [-1, 1] (the model convention)."""
  pixels = np.asarray(pixels)
  if pixels.ndim not in (3, 4) or pixels.shape[-1] != 3:
    raise ValueError(f"analyze expects [H, W, 3] or [T, H, W, 3] pixels, got shape {pixels.shape}.")
  frames = pixels.astype(np.float32)
  if np.issubdtype(pixels.dtype, np.floating):
    frames = np.clip((frames + 1.0) * 127.5, 0.0, 255.0)
  return frames if pixels.ndim == 4 else frames[None]


def _fit_error(shape: str, alpha: np.ndarray, corner: tuple[int, int], area: float,
               centroid: tuple[float, float]) -> float:
  """How far coverage `alpha` (a window whose top-left pixel is `corner`) is from `shape` placed where the blob's
  `area` and `centroid` (pixels) say it must be if it is that shape, as a share of the area.

  Fitting the box from area and centroid, not from thresholded edges, keeps sub-pixel accuracy: at 32 pixels a
  small shape is 8 pixels wide, and a thresholded bounding box cuts a diamond's tips until it looks like a cross.
  """
  (height, width), (top, left) = alpha.shape, corner
  half = np.sqrt(area / _FILL[shape]) / 2
  x, y = centroid[0], centroid[1] - _CENTROID_DROP.get(shape, 0.0) * half
  template = coverage(shape, ((left - x) / half, (left + width - x) / half),
                       ((top - y) / half, (top + height - y) / half), width, height)
  return float(np.abs(template - alpha).sum() / area)


def _position(box_center: tuple[float, float]) -> str:
  dx, dy = box_center[0] - 0.5, box_center[1] - 0.5
  if max(abs(dx), abs(dy)) < _CENTER_RADIUS:
    return "center"
  return f"{'top' if dy < 0 else 'bottom'}-{'left' if dx < 0 else 'right'}"


def _blob(frame: np.ndarray, distance: np.ndarray, labels: np.ndarray, number: int,
          where: tuple[slice, slice]) -> _Blob | None:
  """Color by nearest named color of the blob's core; coverage (alpha) against that color; shape, size, place."""
  height, width = frame.shape[:2]
  component = labels[where] == number
  core = frame[where][component][distance[where][component] >= _CORE * distance[where][component].max()]
  color = int(np.argmin(np.linalg.norm(_COLOR_ARRAY - np.median(core, axis=0), axis=-1)))
  direction = _COLOR_ARRAY[color] - _BACKGROUND
  top, left = max(0, where[0].start - _PAD), max(0, where[1].start - _PAD)  # room for the fitted templates
  window = (slice(top, min(height, where[0].stop + _PAD)), slice(left, min(width, where[1].stop + _PAD)))
  alpha = np.clip((frame[window] - _BACKGROUND) @ direction / (direction @ direction), 0.0, 1.0)
  alpha *= labels[window] == number
  rows, cols = np.nonzero(alpha > 0.5)
  if rows.size == 0:
    return None
  rows, cols = rows + top, cols + left  # image coordinates from here on
  extent = max((rows.max() + 1 - rows.min()) / height, (cols.max() + 1 - cols.min()) / width)
  area = float(alpha.sum())
  centroid = ((alpha.sum(axis=0) @ (np.arange(left, left + alpha.shape[1]) + 0.5)) / area,
              (alpha.sum(axis=1) @ (np.arange(top, top + alpha.shape[0]) + 0.5)) / area)  # pixels
  errors = [_fit_error(shape, alpha, (top, left), area, centroid) for shape in SHAPES]
  return _Blob(shape=SHAPES[int(np.argmin(errors))], color=COLOR_NAMES[color],
               size="large" if extent > _SIZE_SPLIT else "small",
               box_center=((cols.min() + cols.max() + 1) / 2 / width, (rows.min() + rows.max() + 1) / 2 / height),
               centroid=(centroid[0] / width, centroid[1] / height))


def _detect(frame: np.ndarray) -> list[_Blob]:
  """The shapes in one float `[H, W, 3]` frame: 4-connected blobs of pixels away from the background."""
  distance = np.linalg.norm(frame - _BACKGROUND, axis=-1)
  labels, _ = ndimage.label(distance > _FOREGROUND * _MIN_COLOR_DISTANCE)
  blobs = []
  for number, where in enumerate(ndimage.find_objects(labels), start=1):
    if (labels[where] == number).sum() >= _MIN_AREA * distance.size:
      blob = _blob(frame, distance, labels, number, where)
      if blob is not None:
        blobs.append(blob)
  return blobs


def _track(frames: list[list[_Blob]]) -> list[list[_Blob]]:
  """Follows every first-frame blob through the clip, linking each to the nearest unclaimed blob of each frame."""
  tracks = [[blob] for blob in frames[0]]
  for blobs in frames[1:]:
    pairs = sorted((np.hypot(track[-1].centroid[0] - blob.centroid[0], track[-1].centroid[1] - blob.centroid[1]),
                    t, b) for t, track in enumerate(tracks) for b, blob in enumerate(blobs))
    taken_tracks, taken_blobs = set(), set()
    for _, t, b in pairs:
      if t not in taken_tracks and b not in taken_blobs:
        tracks[t].append(blobs[b])
        taken_tracks.add(t)
        taken_blobs.add(b)
  return tracks


def _most_common(values) -> str:
  return collections.Counter(values).most_common(1)[0][0]


def _motion(track: list[_Blob]) -> str | None:
  dx = track[-1].centroid[0] - track[0].centroid[0]
  dy = track[-1].centroid[1] - track[0].centroid[1]
  if max(abs(dx), abs(dy)) < _MIN_MOTION:
    return None
  if abs(dx) >= abs(dy):
    return "right" if dx > 0 else "left"
  return "down" if dy > 0 else "up"


def _spec(track: list[_Blob], video_input: bool) -> ShapeSpec:
  first = track[0]
  position = _position(first.box_center)
  named = POSITION_CENTERS[position]
  return ShapeSpec(shape=_most_common(blob.shape for blob in track), color=_most_common(blob.color for blob in track),
                   size=_most_common(blob.size for blob in track), position=position,
                   motion=_motion(track) if video_input else None,
                   offset=(first.box_center[0] - named[0], first.box_center[1] - named[1]))


def analyze(pixels: np.ndarray) -> list[ShapeSpec]:
  """The shapes visible in uint8 (or float [-1, 1]) `[H, W, 3]` pixels or a `[T, H, W, 3]` clip, in `POSITIONS`
  order, as ShapeSpecs (offset = measured jitter).

  Position is the quadrant (or center) of the bounding box's center in the first frame -- the box center, not the
  centroid, because a triangle's centroid sits a sixth of its side below its box center. In a clip, each
  first-frame shape is tracked; its shape, color and size are the majority over frames and its motion the dominant
  axis of its centroid's displacement from first to last frame (None when it moved less than TRAVEL / 2).
  """
  frames = _as_frames(pixels)
  tracks = _track([_detect(frame) for frame in frames])
  specs = [_spec(track, video_input=np.ndim(pixels) == 4) for track in tracks]
  return sorted(specs, key=lambda spec: POSITIONS.index(spec.position))


def match(prompt: Scene | str, pixels: np.ndarray) -> dict[str, float]:
  """How well `pixels` show `prompt` (a Scene or its caption): for each attribute (shape, color, position, size,
  and motion for clips) the share of prompt shapes that a detected shape gets right, under the pairing of
  prompt and detected shapes with the most correct attributes; `count` is 1.0 when as many shapes were found as
  asked for, and `all` is 1.0 when the count and every attribute are right."""
  scene = parse_caption(prompt) if isinstance(prompt, str) else prompt
  detected = analyze(pixels)
  attributes = ATTRIBUTES + (("motion",) if np.ndim(pixels) == 4 else ())
  wanted = scene.objects
  candidates = list(detected) + [None] * max(0, len(wanted) - len(detected))

  def correct(pairing) -> list[list[bool]]:
    return [[found is not None and getattr(found, name) == getattr(obj, name) for name in attributes]
            for obj, found in zip(wanted, pairing)]

  best = max((correct(pairing) for pairing in itertools.permutations(candidates, len(wanted))),
             key=lambda table: sum(map(sum, table)))
  scores = {name: float(np.mean([row[column] for row in best])) for column, name in enumerate(attributes)}
  scores["count"] = float(len(detected) == len(wanted))
  scores["all"] = float(scores["count"] == 1.0 and all(scores[name] == 1.0 for name in attributes))
  return scores


def mean_match(prompts: Sequence[Scene | str], samples: Sequence[np.ndarray]) -> dict[str, float]:
  """`match` averaged over prompts and their samples (e.g. a generated batch, uint8 or float [-1, 1])."""
  if len(prompts) != len(samples):
    raise ValueError(f"mean_match got {len(prompts)} prompts but {len(samples)} samples.")
  results = [match(prompt, sample) for prompt, sample in zip(prompts, samples)]
  return {key: float(np.mean([result[key] for result in results])) for key in results[0]}


def _color_shape(prompt: str | int, pixels: np.ndarray) -> float:
  """1.0 when every prompted shape was drawn with its color and shape (anywhere, any size)."""
  if isinstance(prompt, (int, np.integer)):
    color, _, shape = class_name(int(prompt)).partition(" ")
    wanted = [(shape, color)]
  else:
    wanted = [(obj.shape, obj.color) for obj in parse_caption(prompt).objects]
  found = [(spec.shape, spec.color) for spec in analyze(pixels)]
  return float(all(item in found for item in wanted))


def score_prompts(prompts: Sequence[str | int], samples: np.ndarray) -> dict[str, float]:
  """`color_shape`: the share of samples whose every prompted shape was drawn with the right color and shape;
  for captions also `mean_match`'s per-attribute shares and `all`. Prompts are captions or class ids."""
  scores = {"color_shape": float(np.mean([_color_shape(p, s) for p, s in zip(prompts, samples)]))}
  if all(isinstance(p, str) for p in prompts):
    scores |= mean_match(list(prompts), list(samples))
  return scores
