"""Shapes world: determinism, captions, the analyzer's accuracy on ground truth, match, the pipeline, errors."""

import dataclasses

import grain
import numpy as np
import pytest

from tokgen_jax.configs import data as data_presets
from tokgen_jax.data import make_pipeline
from tokgen_jax.data import shapes
from tokgen_jax.metrics import shapes as shape_metrics
from tokgen_jax.data import transforms
from tokgen_jax.errors import ConfigError

_MIN_ACCURACY = 0.99


def _pipeline(config, split, batch=4):
  return make_pipeline(config, split, global_batch_size=batch, process_index=0, process_count=1)


def _accuracy(source, count):
  """Per-attribute share of ground-truth shapes the analyzer gets right (plus `count` and `all`), over `count`
  examples of `source`."""
  results = []
  for index in range(count):
    example = source[index]
    results.append(shape_metrics.match(example["caption"], example["video" if source.num_frames else "image"]))
  return {key: float(np.mean([result[key] for result in results])) for key in results[0]}


def _assert_accurate(accuracy):
  low = {key: value for key, value in accuracy.items() if value < _MIN_ACCURACY}
  assert not low, f"analyzer accuracy below {_MIN_ACCURACY}: {low} (all: {accuracy})"


# ------------------------------------------------------------------------------------------------ the world


def test_examples_are_deterministic_per_index_and_seed():
  source = shapes.ShapesSource("train", num_examples=50, seed=3)
  again = shapes.ShapesSource("train", num_examples=50, seed=3)
  for index in (0, 7, 49, 7):
    first, second = source[index], again[index]
    np.testing.assert_array_equal(first["image"], second["image"])
    assert first["caption"] == second["caption"] and first["label"] == second["label"]
  other_seed = shapes.ShapesSource("train", num_examples=50, seed=4)
  eval_split = shapes.ShapesSource("eval", num_examples=50, seed=3)
  captions = [source[index]["caption"] for index in range(50)]
  assert captions != [other_seed[index]["caption"] for index in range(50)]
  assert captions != [eval_split[index]["caption"] for index in range(50)]
  with pytest.raises(IndexError):
    source[50]  # pylint: disable=pointless-statement


def test_example_layout_and_vocabulary_coverage():
  source = shapes.ShapesSource("train", size=32, num_examples=400)
  example = source[0]
  assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
  assert example["label"].dtype == np.int32 and isinstance(example["caption"], str)
  assert set(example["attributes"]) == {"shape", "color", "position", "size", "motion"}
  scenes = [source.scene(index) for index in range(400)]
  objects = [obj for scene in scenes for obj in scene.objects]
  assert {len(scene.objects) for scene in scenes} == {1, 2}
  for name, vocabulary in (("shape", shapes.SHAPES), ("color", shapes.COLOR_NAMES),
                           ("position", shapes.POSITIONS), ("size", shapes.SIZES)):
    assert {getattr(obj, name) for obj in objects} == set(vocabulary), name
  for scene in scenes:
    if len(scene.objects) == 2:
      first, second = scene.objects
      assert first.position != second.position and "center" not in (first.position, second.position)
  clip = shapes.ShapesSource("train", size=32, num_examples=4, num_frames=5)[0]
  assert clip["video"].shape == (5, 32, 32, 3) and "image" not in clip
  assert (clip["attributes"]["motion"][:clip["num_shapes"]] >= 0).all()


def test_captions_labels_and_attributes_agree():
  source = shapes.ShapesSource("eval", num_examples=200, num_frames=3)
  for index in range(200):
    example, scene = source[index], source.scene(index)
    parsed = shapes.parse_caption(example["caption"])
    assert parsed.objects == tuple(dataclasses.replace(obj, offset=(0.0, 0.0)) for obj in scene.objects)
    first = scene.objects[0]
    assert example["label"] == shapes.class_label(first.shape, first.color)
    assert shapes.class_name(example["label"]) == f"{first.color} {first.shape}"
    for slot, obj in enumerate(scene.objects):
      place = obj.position.replace("-", " ")
      phrase = f"a {obj.size} {obj.color} {obj.shape} in the {place} moving {obj.motion}"
      assert example["caption"].split(" and ")[slot] == phrase
      assert shapes.SHAPES[example["attributes"]["shape"][slot]] == obj.shape
      assert shapes.MOTIONS[example["attributes"]["motion"][slot]] == obj.motion
    assert (example["attributes"]["shape"][len(scene.objects):] == -1).all()
  assert shapes.class_label("circle", "red") == 0 and shapes.class_name(shapes.NUM_CLASSES - 1) == "white cross"
  assert shapes.caption(shapes.Scene((shapes.ShapeSpec("circle", "red", "top-left", "large"),))) == (
      "a large red circle in the top left")


def test_render_is_deterministic_at_any_size():
  scene = shapes.parse_caption("a large red circle in the top left and a small blue square in the bottom right")
  for size in (32, 64, 48):
    image = shapes.render(scene, size)
    np.testing.assert_array_equal(image, shapes.render(scene, size))
    assert image.shape == (size, size, 3)
    assert [(obj.shape, obj.color, obj.position, obj.size) for obj in shape_metrics.analyze(image)] == [
        ("circle", "red", "top-left", "large"), ("square", "blue", "bottom-right", "small")]


# ------------------------------------------------------------------------------------------------- analyzer


@pytest.mark.parametrize("size,num_shapes,count", [(32, (1, 2), 400), (64, (1, 2), 100), (32, 2, 200)])
def test_analyzer_reads_back_images(size, num_shapes, count):
  _assert_accurate(_accuracy(shapes.ShapesSource("eval", size=size, num_examples=count, num_shapes=num_shapes),
                             count))


@pytest.mark.parametrize("size,num_frames,count", [(32, 9, 100), (64, 5, 40)])
def test_analyzer_reads_back_videos(size, num_frames, count):
  accuracy = _accuracy(shapes.ShapesSource("eval", size=size, num_examples=count, num_frames=num_frames), count)
  assert "motion" in accuracy
  _assert_accurate(accuracy)


def test_match_scores_wrong_and_missing_content():
  prompt = "a large red circle in the top left and a small blue square in the bottom right"
  image = shapes.render(shapes.parse_caption(prompt))
  assert shape_metrics.match(prompt, image) == dict(shape=1.0, color=1.0, position=1.0, size=1.0, count=1.0, all=1.0)
  as_model_output = transforms.scale_to_signed_unit(image)  # float [-1, 1], the model convention
  assert shape_metrics.match(prompt, as_model_output)["all"] == 1.0
  wrong_color = shape_metrics.match(prompt.replace("blue", "green"), image)
  assert wrong_color["color"] == 0.5 and wrong_color["shape"] == 1.0 and wrong_color["all"] == 0.0
  blank = np.broadcast_to(np.asarray(shapes.BACKGROUND, np.uint8), image.shape)
  assert shape_metrics.match(prompt, blank) == dict(shape=0.0, color=0.0, position=0.0, size=0.0, count=0.0, all=0.0)
  still = np.stack([image] * 5)  # a clip whose shapes do not move
  moving_prompt = shapes.Scene(tuple(dataclasses.replace(obj, motion="right") for obj in
                                     shapes.parse_caption(prompt).objects[:1]))
  assert shape_metrics.match(moving_prompt, still[:, :, :, :])["motion"] == 0.0
  assert shape_metrics.mean_match([prompt, prompt], [image, blank])["count"] == 0.5


# ------------------------------------------------------------------------------------------------- pipeline


def test_pipeline_serves_shapes_images():
  config = data_presets.shapes(image_size=32, train_examples=40, eval_examples=10)
  batch = next(_pipeline(config, "train"))
  assert set(batch) == {"image"}
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
  batches = list(_pipeline(config, "eval"))
  assert len(batches) == 3 and np.concatenate([b["mask"] for b in batches]).sum() == 10
  source = shapes.ShapesSource("eval", size=32, num_examples=10)
  for index in range(4):
    np.testing.assert_array_equal(batches[0]["image"][index], transforms.scale_to_signed_unit(source[index]["image"]))


def test_pipeline_serves_shapes_videos():
  config = data_presets.shapes(image_size=32, num_frames=5, train_examples=20, eval_examples=3)
  assert config.source == "shapes_video"
  batch = next(_pipeline(config, "train", batch=2))
  assert set(batch) == {"video"} and batch["video"].shape == (2, 5, 32, 32, 3)
  first_eval = next(_pipeline(config, "eval", batch=2))
  clip = shapes.ShapesSource("eval", size=32, num_examples=3, num_frames=5)[0]
  np.testing.assert_array_equal(first_eval["video"][0], transforms.scale_to_signed_unit(clip["video"]))
  assert shape_metrics.match(clip["caption"], first_eval["video"][0])["all"] == 1.0


def test_source_batches_with_labels_and_captions_through_grain():
  batch = grain.MapDataset.source(shapes.ShapesSource("train", num_examples=8, num_shapes=1)).batch(4)[0]
  assert batch["image"].shape == (4, 32, 32, 3) and batch["label"].shape == (4,)
  assert len(batch["caption"]) == 4 and batch["attributes"]["color"].shape == (4, shapes.MAX_SHAPES)


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,needle", [
    (dict(split="test"), "split"),
    (dict(size=8), "config.data.image_size"),
    (dict(num_shapes=3), "num_shapes"),
    (dict(num_shapes=()), "num_shapes"),
    (dict(num_frames=1), "config.data.num_frames"),
    (dict(num_examples=0), "num_examples"),
])
def test_bad_source_arguments_raise_config_error(kwargs, needle):
  with pytest.raises(ConfigError, match=needle):
    shapes.ShapesSource(**kwargs)


@pytest.mark.parametrize("name", ["size=abc", "colour=3", "size32", "num_shapes=1-3"])
def test_bad_spec_in_config_raises_config_error(name):
  config = data_presets.shapes(eval_examples=4)
  config.name = name
  with pytest.raises(ConfigError, match="num_shapes|config.data.name"):
    _pipeline(config, "eval")


def test_bad_captions_and_attributes_raise_config_error():
  with pytest.raises(ConfigError, match="shapes-world phrase"):
    shapes.parse_caption("a huge red circle somewhere")
  with pytest.raises(ConfigError, match="color"):
    shapes.parse_caption("a large purple circle in the center")
  with pytest.raises(ConfigError, match="motion"):
    shapes.ShapeSpec("circle", "red", "center", "large", motion="sideways")
