"""Latent diffusion end to end at toy size: train a KL tokenizer, --mode=encode (float latent shards with their
moments), train a DiT with sample eval (CFG on/off, shapes scores, the latent scale read from the shards),
--mode=sample from prompts; the same for W.A.L.T. on a causal video VAE, with frame prediction in the eval and
--mode=sample from a given first frame; and the errors of a discrete tokenizer."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from tests.helpers import set_fields, tiny_shapes_data
from tokgen_jax import tasks, trainer
from tokgen_jax.config import load_experiment
from tokgen_jax.configs import data as data_presets
from tokgen_jax.data import latents as latent_data
from tokgen_jax.data import shapes
from tokgen_jax.errors import ConfigError

PROMPTS = "red circle;blue square"
EXPERIMENT = "experiments/dit_shapes.py"


def _tokenizer_config():
  return set_fields(load_experiment(f"{EXPERIMENT}:tokenizer"), {
      "model.channels": 8, "model.channel_multipliers": (1, 2, 2), "model.num_groups": 4, "batch_size": 8,
      "total_steps": 2, "eval_every_steps": 0, "checkpoint_every_steps": 2, "eval.batch_size": 8,
      "data": tiny_shapes_data()})


def _dit_config(tokenizer_workdir: str, **overrides):
  return set_fields(load_experiment(f"{EXPERIMENT}:local,condition=class"), {
      "tokenizer.experiment": _tokenizer_config(), "tokenizer.workdir": tokenizer_workdir,
      "tokenize.data": tiny_shapes_data(), "tokenize.batch_size": 16, "tokenize.shard_size": 32,
      "model.hidden_size": 32, "model.depth": 1, "model.num_heads": 2,
      "batch_size": 8, "total_steps": 4, "log_every_steps": 2, "eval_every_steps": 4, "checkpoint_every_steps": 4,
      "eval.batch_size": 8, "eval.protocol.num_samples": 4, "eval.protocol.num_steps": 5,
      "eval.num_grid_images": 4, "sample.num_per_prompt": 2, "sample.num_steps": 5,
      "data.num_threads": 1, "data.prefetch": 1} | overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("diffusion")
  tokenizer_dir, dit_dir = str(root / "tokenizer"), str(root / "dit")
  trainer.run(_tokenizer_config(), tokenizer_dir, "train")
  counts = trainer.run(_dit_config(tokenizer_dir), dit_dir, "encode")
  summary = trainer.run(_dit_config(tokenizer_dir), dit_dir, "train")
  return tokenizer_dir, root / "dit", counts, summary


@pytest.mark.slow
def test_encode_writes_float_latents_with_their_scale(trained):
  tokenizer_dir, dit_dir, counts, _ = trained
  assert counts["train"] == 48 and counts["eval"] == 8
  source = latent_data.LatentSource(dit_dir / "tokens", "train")
  assert source.specs["latents"]["shape"] == [4, 4, 4] and source.specs["latents"]["dtype"] == "float32"
  values = np.stack([source[i]["latents"] for i in range(len(source))]).astype(np.float64)
  np.testing.assert_allclose(source.scale_factor(), 1.0 / values.std(), rtol=1e-6)
  task = tasks.build(_dit_config(tokenizer_dir, **{"data.path": str(dit_dir / "tokens"),
                                                   "diffusion.latent_normalization": "scale"}))
  assert task.latent_scale == pytest.approx(source.scale_factor()) and task.latent_shift == ()
  task = tasks.build(_dit_config(tokenizer_dir, **{"data.path": str(dit_dir / "tokens"),
                                                   "diffusion.latent_normalization": "channel"}))
  np.testing.assert_allclose(task.latent_shift, values.mean((0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(task.latent_scale, 1.0 / values.std((0, 1, 2)), rtol=1e-5)


@pytest.mark.slow
def test_training_evaluates_buckets_and_scores_samples_with_and_without_cfg(trained):
  _, dit_dir, _, summary = trained
  assert summary["step"] == 4
  result = json.loads((dit_dir / "eval" / "step_4.json").read_text())
  assert result["num_examples"] == 8 and result["protocol"]["name"] == "shapes"
  assert result["protocol"]["num_steps"] == 5 and result["protocol"]["method"] == "ddpm"
  buckets = [key for key in result if key.startswith("loss_t")]
  assert len(buckets) == 4 and np.isclose(result["loss"], np.mean([result[k] for k in buckets]))
  for prefix in ("reference", "cfg", "nocfg"):
    assert 0.0 <= result[f"{prefix}_color_shape"] <= 1.0
  assert (dit_dir / "samples" / "eval_step_4.png").is_file()


@pytest.mark.slow
def test_sample_mode_draws_each_prompt_and_times_the_sampler(trained):
  tokenizer_dir, dit_dir, _, _ = trained
  for method in ("ddpm", "ddim"):
    config = _dit_config(tokenizer_dir, **{"sample.prompts": PROMPTS, "sample.method": method})
    summary = trainer.run(config, str(dit_dir), "sample")
    assert summary["sample_seconds"] > 0 and 0.0 <= summary["color_shape"] <= 1.0
  assert (dit_dir / "samples" / "prompts_step_4.png").is_file()


def test_a_discrete_tokenizer_is_refused(tmp_path):
  config = _dit_config(str(tmp_path))
  with config.unlocked():
    config.tokenizer.experiment.model.quantizer = load_experiment("experiments/ar_shapes.py:tokenizer").model.quantizer
  with pytest.raises(ConfigError, match="is discrete .* needs continuous latents"):
    tasks.build(config)


VIDEO_EXPERIMENT = "experiments/walt_shapes_video.py"


def _video_data():
  return data_presets.shapes(16, num_frames=5, num_shapes=1, train_examples=32, eval_examples=8, num_threads=1,
                             prefetch=1)


def _video_tokenizer_config():
  return set_fields(load_experiment(f"{VIDEO_EXPERIMENT}:tokenizer"), {
      "model.channels": 8, "model.channel_multipliers": (1, 2), "model.temporal_downsample": (True,),
      "model.num_groups": 4, "batch_size": 8, "total_steps": 2, "eval_every_steps": 0,
      "checkpoint_every_steps": 2, "eval.batch_size": 8, "data": _video_data()})


def _walt_config(tokenizer_workdir: str, **overrides):
  return set_fields(load_experiment(f"{VIDEO_EXPERIMENT}:local"), {
      "tokenizer.experiment": _video_tokenizer_config(), "tokenizer.workdir": tokenizer_workdir,
      "tokenize.data": _video_data(), "tokenize.batch_size": 8, "tokenize.shard_size": 16,
      "model.hidden_size": 32, "model.depth": 2, "model.num_heads": 2, "model.adaln_rank": 8,
      "batch_size": 8, "total_steps": 2, "log_every_steps": 1, "eval_every_steps": 2, "checkpoint_every_steps": 2,
      "eval.batch_size": 8, "eval.protocol.num_samples": 4, "eval.protocol.num_steps": 3, "eval.num_grid_images": 2,
      "sample.num_per_prompt": 2, "sample.num_steps": 3, "data.num_threads": 1, "data.prefetch": 1} | overrides)


@pytest.fixture(scope="module")
def trained_video(tmp_path_factory):
  root = tmp_path_factory.mktemp("walt")
  tokenizer_dir, walt_dir = str(root / "tokenizer"), str(root / "walt")
  trainer.run(_video_tokenizer_config(), tokenizer_dir, "train")
  trainer.run(_walt_config(tokenizer_dir), walt_dir, "encode")
  trainer.run(_walt_config(tokenizer_dir), walt_dir, "train")
  return tokenizer_dir, root / "walt"


@pytest.mark.slow
def test_walt_eval_scores_text_to_video_and_frame_prediction(trained_video):
  _, walt_dir = trained_video
  result = json.loads((walt_dir / "eval" / "step_2.json").read_text())
  assert result["protocol"]["given_frames"] == 1 and result["protocol"]["method"] == "ddim"
  for prefix in ("reference", "cfg", "nocfg", "pred"):
    assert 0.0 <= result[f"{prefix}_color_shape"] <= 1.0 and 0.0 <= result[f"{prefix}_motion"] <= 1.0
  assert np.isfinite(result["pred_psnr"]) and result["pred_psnr"] > 0
  assert (walt_dir / "samples" / "eval_step_2.mp4").is_file()


@pytest.mark.slow
def test_walt_samples_continue_a_given_first_frame(trained_video, tmp_path):
  tokenizer_dir, walt_dir = trained_video
  scene = shapes.sample_scene(np.random.default_rng(0), 1, moving=True)
  clip = shapes.render(scene, 16, num_frames=5)
  iio.imwrite(tmp_path / "first.png", clip[0])
  iio.imwrite(tmp_path / "clip.mp4", clip, fps=8)
  config = _walt_config(tokenizer_dir, **{"sample.prompts": shapes.caption(scene),
                                           "sample.inputs": str(tmp_path / "first.png")})
  summary = trainer.run(config, str(walt_dir), "sample")
  assert summary["sample_seconds"] > 0 and 0.0 <= summary["color_shape"] <= 1.0
  assert (walt_dir / "samples" / "prompts_step_2.mp4").is_file()
  # Two latent frames of the video are its first 1 + 2 frames; a single image cannot give them.
  config = _walt_config(tokenizer_dir, **{"sample.prompts": shapes.caption(scene), "sample.given_frames": 2,
                                           "sample.inputs": str(tmp_path / "clip.mp4")})
  assert trainer.run(config, str(walt_dir), "sample")["sample_seconds"] > 0
  config = _walt_config(tokenizer_dir, **{"sample.prompts": shapes.caption(scene), "sample.given_frames": 2,
                                           "sample.inputs": str(tmp_path / "first.png")})
  with pytest.raises(ConfigError, match="gives 1 frames of .*2 latent frames need 3 frames"):
    trainer.run(config, str(walt_dir), "sample")


PLANE_EXPERIMENT = "experiments/fourplane_video.py"


def _plane_config(variant: str, tokenizer_workdir: str = "", **overrides):
  """fourplane_video.py at toy size: 5 frames of 16² → a 3×8×8 latent, four planes of 64 + 64 + 24 + 24 tokens."""
  tokenizer = set_fields(load_experiment(f"{PLANE_EXPERIMENT}:tokenizer"), {
      "model.channels": 8, "model.channel_multipliers": (1, 2), "model.temporal_downsample": (True,),
      "model.num_groups": 4, "batch_size": 8, "total_steps": 2, "eval_every_steps": 0,
      "checkpoint_every_steps": 2, "eval.batch_size": 8, "data": _video_data()})
  if variant == "tokenizer":
    return tokenizer
  return set_fields(load_experiment(f"{PLANE_EXPERIMENT}:local"), {
      "tokenizer.experiment": tokenizer, "tokenizer.workdir": tokenizer_workdir,
      "tokenize.data": _video_data(), "tokenize.batch_size": 8, "tokenize.shard_size": 16,
      "model.hidden_size": 32, "model.depth": 2, "model.num_heads": 2, "model.adaln_rank": 8,
      "batch_size": 8, "total_steps": 2, "log_every_steps": 1, "eval_every_steps": 2, "checkpoint_every_steps": 2,
      "eval.batch_size": 8, "eval.protocol.num_samples": 4, "eval.protocol.num_steps": 3, "eval.num_grid_images": 2,
      "sample.num_per_prompt": 2, "sample.num_steps": 3, "data.num_threads": 1, "data.prefetch": 1} | overrides)


@pytest.mark.slow
def test_a_plane_generator_trains_on_encoded_planes_and_continues_a_given_frame(tmp_path):
  tokenizer_dir, generator_dir = str(tmp_path / "tokenizer"), tmp_path / "planes"
  trainer.run(_plane_config("tokenizer"), tokenizer_dir, "train")
  config = _plane_config("local", tokenizer_dir)
  trainer.run(config, str(generator_dir), "encode")
  source = latent_data.LatentSource(str(generator_dir / "tokens"), "train")
  assert {name: list(spec["shape"]) for name, spec in source.specs.items() if name.startswith("latents")} == {
      "latents_xy0": [8, 8, 8], "latents_xy1": [8, 8, 8], "latents_tw": [3, 8, 8], "latents_th": [3, 8, 8]}
  task = tasks.build(_plane_config("local", tokenizer_dir, **{"data.path": str(generator_dir / "tokens")}))
  assert task.latent_shape == (176, 8) and task.describe()["sequence_length"] == 176
  mean, std = source.channel_moments(sorted(task.layout.names))  # one normalization pooled over the planes
  np.testing.assert_allclose(task.latent_shift, mean, rtol=1e-6)
  np.testing.assert_allclose(task.latent_scale, 1.0 / std, rtol=1e-6)
  trainer.run(config, str(generator_dir), "train")
  result = json.loads((generator_dir / "eval" / "step_2.json").read_text())
  for prefix in ("reference", "cfg", "nocfg", "pred"):
    assert 0.0 <= result[f"{prefix}_color_shape"] <= 1.0
  assert np.isfinite(result["pred_psnr"])
  scene = shapes.sample_scene(np.random.default_rng(0), 1, moving=True)
  iio.imwrite(tmp_path / "first.png", shapes.render(scene, 16, num_frames=5)[0])
  summary = trainer.run(_plane_config("local", tokenizer_dir, **{
      "sample.prompts": shapes.caption(scene), "sample.inputs": str(tmp_path / "first.png")}), str(generator_dir),
      "sample")
  assert summary["sample_seconds"] > 0 and (generator_dir / "samples" / "prompts_step_2.mp4").is_file()
