"""Shapes world: synthetic images and videos whose content can be read back from pixels.

FID needs an Inception network and many samples; on CPU we cannot judge generation quality that way. Instead
every example here is a scene from a small vocabulary that a few lines of image processing recover exactly, so a
generated sample can be scored against the prompt it was made from (`metrics.shapes.match`).

Vocabulary (fractions are of the image side, so a scene renders at any size; 32 is the CPU default, 64 works):

* shapes `SHAPES`: circle, square, triangle (apex up), diamond, cross -- each fills a square box.
* colors `COLORS`: eight saturated RGB colors, at least ~95 apart, on the dark `BACKGROUND`.
* positions `POSITIONS`: the box is centered on a quadrant center (top-left (0.25, 0.25) ... bottom-right) or the
  image center, moved by a small jitter (at most `JITTER` per axis).
* sizes `SIZES`: small (box side 0.26) and large (0.42).
* motions `MOTIONS` (videos only): left, right, up, down. A moving shape starts at its named position and travels
  `TRAVEL` of the image side over the clip, at a constant speed; only directions that keep the box in frame are
  drawn (a corner shape always moves towards the middle).

A scene holds one or two shapes. Two shapes take two different corners (a center shape would overlap a corner one
at these sizes) and are redrawn until their boxes stay at least `GAP` apart in every frame, so they never touch.
Objects are listed in `POSITIONS` order, which is also the caption order.

Each example of `ShapesSource` is a dict:

* `image` uint8 `[H, W, 3]`, or `video` uint8 `[T, H, W, 3]` when `num_frames > 0`;
* `label` int32: the class of the first shape, `SHAPES.index(shape) * len(COLORS) + COLORS.index(color)`, so
  0 = red circle, 1 = orange circle, ..., 8 = red square, ..., 39 = white cross (`NUM_CLASSES` = 40; see
  `class_label` / `class_name`). For class-conditional generation use `num_shapes=1`, where it names the scene.
* `caption` str: "a large red circle in the top left", "a small blue square in the center moving right", two
  shapes joined with " and "; `parse_caption` inverts it.
* `num_shapes` int32 and `attributes`: a dict of int32 `[MAX_SHAPES]` arrays `shape`, `color`, `position`,
  `size`, `motion` (indices into the vocabularies; -1 for an absent shape or no motion).

`make_pipeline` serves the same pixels when `config.data.source` is 'shapes' (images) or 'shapes_video' (videos;
`config.data.num_frames` frames), with the world's settings in `config.data.name` as a spec string such as
'size=32,train_examples=50000,eval_examples=1000,num_shapes=1-2,seed=0' (see `spec_string`; the preset
`configs.data.shapes` writes it). The shared pipeline only carries pixels (`{'image'}` / `{'video'}`, plus `mask` for
eval), so it drops `label` and `caption`: a class- or text-conditional task reads `ShapesSource` directly, e.g.
`grain.MapDataset.source(ShapesSource('train', ...)).shuffle(seed).repeat().batch(b)`. Keep `random_flip` off
(the preset does): a mirrored scene contradicts its caption.

The analyzer that reads scenes back from pixels and scores samples against prompts is `metrics.shapes`.

Pixels are a pure function of `(seed, split, index)`: every index draws from its own
`SeedSequence([seed, split stream, index])`, the train and eval streams differ, so the splits are independent draws
(the vocabulary is small, so the same scene can still occur in both).
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tokgen_jax.data import registry, sources, video
from tokgen_jax.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {
    "red": (230, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 190, 60),
    "cyan": (40, 210, 220),
    "blue": (50, 80, 235),
    "magenta": (225, 50, 210),
    "white": (245, 245, 245),
}
COLOR_NAMES = tuple(COLORS)
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")
SIZES = ("small", "large")
MOTIONS = ("left", "right", "up", "down")
ATTRIBUTES = ("shape", "color", "position", "size")
BACKGROUND = (32, 32, 40)
NUM_CLASSES = len(SHAPES) * len(COLORS)
MAX_SHAPES = 2
MIN_SIZE = 16  # below this a small shape is ~4 pixels wide and no longer readable

# Geometry, in fractions of the image side. Centers are (x, y) with y pointing down.
POSITION_CENTERS = {"top-left": (0.25, 0.25), "top-right": (0.75, 0.25), "bottom-left": (0.25, 0.75),
                    "bottom-right": (0.75, 0.75), "center": (0.5, 0.5)}
BOX_SIDES = {"small": 0.26, "large": 0.42}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
JITTER = 0.02
TRAVEL = 0.2
GAP = 0.06
MARGIN = 0.01  # smallest distance between a box and the frame edge
CROSS_ARM = 0.4  # half-width of the cross's arms, in units of the box's half side
_SUPERSAMPLE = 4  # anti-aliasing: sub-pixels per pixel side
_SEPARATION_CHECKS = 33  # times in [0, 1] at which two moving boxes must be GAP apart
_SPLIT_STREAMS = {"train": 0, "eval": 1}
_CORNERS = POSITIONS[:4]

# --------------------------------------------------------------------------------------------------- scenes


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
  """One shape of a scene (or one the analyzer found): named attributes plus the exact jitter of its box center."""
  shape: str
  color: str
  position: str
  size: str
  motion: str | None = None
  offset: tuple[float, float] = (0.0, 0.0)  # (x, y) jitter of the box center at the start, fraction of the side

  def __post_init__(self):
    for attribute, vocabulary in (("shape", SHAPES), ("color", COLOR_NAMES), ("position", POSITIONS),
                                  ("size", SIZES), ("motion", MOTIONS + (None,))):
      if getattr(self, attribute) not in vocabulary:
        raise ConfigError(f"Shape {attribute} {getattr(self, attribute)!r} is not in the shapes world; "
                          f"choose one of {vocabulary}.")

  def phrase(self) -> str:
    motion = f" moving {self.motion}" if self.motion else ""
    return f"a {self.size} {self.color} {self.shape} in the {self.position.replace('-', ' ')}{motion}"


@dataclasses.dataclass(frozen=True)
class Scene:
  """The shapes of one example, in `POSITIONS` order. The clip length is the renderer's business, not the scene's:
  a moving shape covers `TRAVEL` over however many frames are rendered."""
  objects: tuple[ShapeSpec, ...]

  @property
  def label(self) -> int:
    return class_label(self.objects[0].shape, self.objects[0].color)


def class_label(shape: str, color: str) -> int:
  """The class id of a single (shape, color): `SHAPES.index(shape) * len(COLORS) + COLOR_NAMES.index(color)`."""
  return SHAPES.index(shape) * len(COLORS) + COLOR_NAMES.index(color)


def class_name(label: int) -> str:
  """'red circle' for 0; the inverse of `class_label`."""
  shape, color = divmod(int(label), len(COLORS))
  return f"{COLOR_NAMES[color]} {SHAPES[shape]}"


def caption(scene: Scene) -> str:
  """'a large red circle in the top left', '... moving right', shapes joined with ' and '."""
  return " and ".join(obj.phrase() for obj in scene.objects)


_PHRASE = re.compile(r"a (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) in the (?P<position>top left|top right|"
                     r"bottom left|bottom right|center)(?: moving (?P<motion>\w+))?")


def parse_caption(text: str) -> Scene:
  """The scene a caption describes (offsets zero); a ConfigError names a phrase outside the vocabulary."""
  objects = []
  for phrase in text.strip().split(" and "):
    found = _PHRASE.fullmatch(phrase.strip())
    if not found:
      raise ConfigError(f"Caption phrase {phrase!r} is not a shapes-world phrase; write phrases like "
                        "'a large red circle in the top left' (optionally '... moving right'), joined with ' and '.")
    fields = found.groupdict()
    objects.append(ShapeSpec(shape=fields["shape"], color=fields["color"], size=fields["size"],
                             position=fields["position"].replace(" ", "-"), motion=fields["motion"]))
  return Scene(tuple(objects))


# ------------------------------------------------------------------------------------------------- sampling


def _center(obj: ShapeSpec, t: float) -> tuple[float, float]:
  """Box center (x, y) at clip time t in [0, 1], fraction of the image side."""
  x, y = POSITION_CENTERS[obj.position]
  dx, dy = DIRECTIONS[obj.motion] if obj.motion else (0.0, 0.0)
  return x + obj.offset[0] + dx * TRAVEL * t, y + obj.offset[1] + dy * TRAVEL * t


def _in_frame(obj: ShapeSpec) -> bool:
  half = BOX_SIDES[obj.size] / 2
  return all(MARGIN + half <= coordinate <= 1 - MARGIN - half
             for t in (0.0, 1.0) for coordinate in _center(obj, t))


def _apart(first: ShapeSpec, second: ShapeSpec) -> bool:
  """Whether the two boxes stay at least GAP apart (along some axis) at every time of the clip."""
  reach = (BOX_SIDES[first.size] + BOX_SIDES[second.size]) / 2 + GAP
  for t in np.linspace(0.0, 1.0, _SEPARATION_CHECKS):
    (x1, y1), (x2, y2) = _center(first, t), _center(second, t)
    if abs(x1 - x2) < reach and abs(y1 - y2) < reach:
      return False
  return True


def _sample_object(rng: np.random.Generator, position: str, moving: bool) -> ShapeSpec:
  obj = ShapeSpec(shape=SHAPES[rng.integers(len(SHAPES))], color=COLOR_NAMES[rng.integers(len(COLORS))],
                  position=position, size=SIZES[rng.integers(len(SIZES))],
                  offset=tuple(float(v) for v in rng.uniform(-JITTER, JITTER, size=2)))
  if not moving:
    return obj
  allowed = [direction for direction in MOTIONS if _in_frame(dataclasses.replace(obj, motion=direction))]
  return dataclasses.replace(obj, motion=allowed[rng.integers(len(allowed))])


def sample_scene(rng: np.random.Generator, num_shapes: int | Sequence[int] = (1, 2), moving: bool = False) -> Scene:
  """A random scene: `num_shapes` (or one of them, uniformly) shapes; `moving` gives every shape a motion."""
  counts = _check_num_shapes(num_shapes)
  count = counts[rng.integers(len(counts))]
  for _ in range(1000):
    positions = POSITIONS if count == 1 else _CORNERS
    chosen = sorted(rng.choice(len(positions), size=count, replace=False))
    objects = tuple(_sample_object(rng, positions[index], moving) for index in chosen)
    if all(_apart(a, b) for a, b in itertools.combinations(objects, 2)):
      return Scene(objects)
  raise RuntimeError("sample_scene found no two shapes that stay apart in 1000 draws; GAP or TRAVEL is too large.")


def _check_num_shapes(num_shapes: int | Sequence[int]) -> tuple[int, ...]:
  counts = (num_shapes,) if isinstance(num_shapes, (int, np.integer)) else tuple(num_shapes)
  if not counts or any(count not in range(1, MAX_SHAPES + 1) for count in counts):
    raise ConfigError(f"shapes num_shapes={num_shapes!r} must be 1, 2 or both (1, 2) (a spec in config.data.name "
                      "writes it as num_shapes=1, 2 or 1-2).")
  return tuple(sorted(set(int(count) for count in counts)))


# ------------------------------------------------------------------------------------------------ rendering


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether points (u, v) of the box [-1, 1]^2 (v pointing down) lie inside `shape`."""
  in_box = (np.abs(u) <= 1) & (np.abs(v) <= 1)
  if shape == "circle":
    return u * u + v * v <= 1
  if shape == "square":
    return in_box
  if shape == "triangle":
    return in_box & (np.abs(u) <= (v + 1) / 2)
  if shape == "diamond":
    return np.abs(u) + np.abs(v) <= 1
  if shape == "cross":
    return in_box & (np.minimum(np.abs(u), np.abs(v)) <= CROSS_ARM)
  raise ValueError(f"Unknown shape {shape!r}.")


def coverage(shape: str, u_edges: tuple[float, float], v_edges: tuple[float, float], width: int,
              height: int) -> np.ndarray:
  """Fraction of each of `height x width` pixels inside `shape`, where the pixel grid spans box coordinates
  `u_edges` horizontally and `v_edges` vertically; supersampled for anti-aliasing."""
  u = u_edges[0] + (np.arange(width * _SUPERSAMPLE) + 0.5) * (u_edges[1] - u_edges[0]) / (width * _SUPERSAMPLE)
  v = v_edges[0] + (np.arange(height * _SUPERSAMPLE) + 0.5) * (v_edges[1] - v_edges[0]) / (height * _SUPERSAMPLE)
  inside = _inside(shape, u[None, :], v[:, None]).astype(np.float32)
  return inside.reshape(height, _SUPERSAMPLE, width, _SUPERSAMPLE).mean(axis=(1, 3))


def _check_size(size: int) -> int:
  if int(size) != size or size < MIN_SIZE:
    raise ConfigError(f"shapes image size {size!r} is too small or not an integer; shapes need at least {MIN_SIZE} "
                      "pixels a side. Set config.data.image_size (configs.data.shapes(image_size=...)) or the "
                      f"`size` argument to an integer >= {MIN_SIZE}.")
  return int(size)


def _paint(canvas: np.ndarray, obj: ShapeSpec, t: float) -> None:
  size = canvas.shape[0]
  x, y = (coordinate * size for coordinate in _center(obj, t))
  half = BOX_SIDES[obj.size] * size / 2
  left, right = max(0, int(np.floor(x - half))), min(size, int(np.ceil(x + half)))
  top, bottom = max(0, int(np.floor(y - half))), min(size, int(np.ceil(y + half)))
  alpha = coverage(obj.shape, ((left - x) / half, (right - x) / half), ((top - y) / half, (bottom - y) / half),
                    right - left, bottom - top)[..., None]
  region = canvas[top:bottom, left:right]
  region += alpha * (np.asarray(COLORS[obj.color], np.float32) - region)


def render(scene: Scene, size: int = 32, num_frames: int = 0) -> np.ndarray:
  """uint8 `[size, size, 3]`, or `[num_frames, size, size, 3]` when `num_frames` > 0 (frame k at clip time
  k / (num_frames - 1), so the first frame shows the named positions and the last the full `TRAVEL`)."""
  size = _check_size(size)
  if num_frames < 0 or int(num_frames) != num_frames:
    raise ConfigError(f"shapes num_frames={num_frames!r} must be 0 (an image) or a positive frame count.")
  times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(max(1, num_frames))
  frames = []
  for t in times:
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = BACKGROUND
    for obj in scene.objects:
      _paint(canvas, obj, float(t))
    frames.append(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
  return frames[0] if num_frames == 0 else np.stack(frames)


# --------------------------------------------------------------------------------------------------- source


class ShapesSource:
  """Random-access shapes-world examples (the dicts described in the module docstring), deterministic per index.

  Grain-compatible: `grain.MapDataset.source(ShapesSource(...))` works as is.
  """

  def __init__(self, split: str = "train", size: int = 32, num_examples: int = 10_000,
               num_shapes: int | Sequence[int] = (1, 2), num_frames: int = 0, seed: int = 0):
    if split not in _SPLIT_STREAMS:
      raise ConfigError(f"shapes split {split!r} must be one of {tuple(_SPLIT_STREAMS)}.")
    if int(num_examples) != num_examples or num_examples < 1:
      raise ConfigError(f"shapes num_examples={num_examples!r} must be a positive integer (the spec in "
                        "config.data.name sets it as train_examples / eval_examples).")
    if int(num_frames) != num_frames or num_frames < 0 or num_frames == 1:
      raise ConfigError(f"shapes num_frames={num_frames!r} must be 0 for images or at least 2 for videos (one frame "
                        "shows no motion); set config.data.num_frames, e.g. 17 (1 + 4k suits causal video "
                        "tokenizers).")
    self.split, self.size, self.num_examples = split, _check_size(size), int(num_examples)
    self.num_shapes, self.num_frames, self.seed = _check_num_shapes(num_shapes), int(num_frames), int(seed)

  def __len__(self) -> int:
    return self.num_examples

  def _rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_STREAMS[self.split], index]))

  def _check_index(self, index: int) -> int:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"ShapesSource index {index} out of range [0, {self.num_examples}).")
    return index

  def scene(self, index: int) -> Scene:
    return sample_scene(self._rng(self._check_index(index)), self.num_shapes, moving=self.num_frames > 0)

  def __getitem__(self, index: int) -> dict[str, Any]:
    scene = self.scene(index)
    pixels_key = "video" if self.num_frames else "image"
    return {pixels_key: render(scene, self.size, self.num_frames), "label": np.int32(scene.label),
            "caption": caption(scene), "num_shapes": np.int32(len(scene.objects)),
            "attributes": attribute_arrays(scene)}

  def __repr__(self) -> str:
    return (f"ShapesSource({self.split!r}, size={self.size}, num_examples={self.num_examples}, "
            f"num_shapes={self.num_shapes}, num_frames={self.num_frames}, seed={self.seed})")


def attribute_arrays(scene: Scene) -> dict[str, np.ndarray]:
  """int32 `[MAX_SHAPES]` vocabulary indices per attribute; -1 for an absent shape or no motion."""
  vocabularies = dict(shape=SHAPES, color=COLOR_NAMES, position=POSITIONS, size=SIZES, motion=MOTIONS)
  arrays = {name: np.full(MAX_SHAPES, -1, np.int32) for name in vocabularies}
  for slot, obj in enumerate(scene.objects):
    for name, vocabulary in vocabularies.items():
      value = getattr(obj, name)
      arrays[name][slot] = -1 if value is None else vocabulary.index(value)
  return arrays


# ------------------------------------------------------------------------------------- pipeline (config.data)

SPEC_DEFAULTS = dict(size=32, train_examples=50_000, eval_examples=1_000, num_shapes="1-2", seed=0)


def spec_string(size: int = 32, train_examples: int = 50_000, eval_examples: int = 1_000,
                num_shapes: int | Sequence[int] = (1, 2), seed: int = 0) -> str:
  """The `config.data.name` that configures the 'shapes' / 'shapes_video' sources, e.g.
  'size=32,train_examples=50000,eval_examples=1000,num_shapes=1-2,seed=0'."""
  counts = "-".join(str(count) for count in _check_num_shapes(num_shapes))
  return (f"size={size},train_examples={train_examples},eval_examples={eval_examples},num_shapes={counts},"
          f"seed={seed}")


def parse_spec(spec: str) -> dict[str, Any]:
  """`spec_string`'s fields from `config.data.name` (missing keys take `SPEC_DEFAULTS`)."""
  fields = dict(SPEC_DEFAULTS)

  def fail(problem: str) -> ConfigError:
    return ConfigError(f"config.data.name={spec!r} is not a shapes spec: {problem}. It holds comma-separated "
                       f"key=value pairs with keys {tuple(SPEC_DEFAULTS)}, e.g. {spec_string()!r}; the preset "
                       "configs.data.shapes(...) writes it.")

  for item in filter(None, (part.strip() for part in str(spec).split(","))):
    key, separator, value = item.partition("=")
    if not separator or key.strip() not in SPEC_DEFAULTS:
      raise fail(f"{item!r} is not key=value with a known key")
    fields[key.strip()] = value.strip()
  try:
    parsed = {key: int(fields[key]) for key in ("size", "train_examples", "eval_examples", "seed")}
    parsed["num_shapes"] = tuple(int(count) for count in str(fields["num_shapes"]).split("-"))
  except ValueError as error:
    raise fail(f"a value is not an integer ({error})") from error
  return parsed


def open_shapes(split: str, spec: str, num_frames: int = 0) -> ShapesSource:
  """The ShapesSource of `split` ('train' | 'eval') that `config.data.name` describes."""
  fields = parse_spec(spec)
  return ShapesSource(split, fields["size"], fields[f"{split}_examples"], fields["num_shapes"], num_frames,
                      fields["seed"])


@registry.register(registry.IMAGE, "shapes")
def _open_image_source(split: str, *, name: str, **_) -> sources.ImageSource:
  return image_source(split, name)  # config.data.name holds the world's spec (see spec_string)


@registry.register(registry.VIDEO, "shapes_video")
def _open_video_source(split: str, *, name: str, num_frames: int, **_) -> video.VideoSource:
  return video_source(split, name, num_frames)


def image_source(split: str, spec: str) -> sources.ImageSource:
  """`config.data.source='shapes'`: images for the image pipeline; the label and caption are dropped there."""
  records = open_shapes(split, spec)
  return sources.ImageSource(records=records, decode=operator.itemgetter("image"),
                             read_shape=lambda index: (records.size, records.size), description=repr(records))


def video_source(split: str, spec: str, num_frames: int) -> video.VideoSource:
  """`config.data.source='shapes_video'`: clips of exactly `config.data.num_frames` frames."""
  records = open_shapes(split, spec, num_frames)
  return video.VideoSource(
      len(records), info=lambda index: video.VideoInfo(num_frames, records.size, records.size),
      read=lambda index, start, count: records[index]["video"][start:start + count], description=repr(records))
