"""Latent diffusion end to end at toy size: train a KL tokenizer, --mode=encode (float latent shards with their
moments), train a DiT with sample eval (CFG on/off, shapes scores, the latent scale read from the shards),
--mode=sample from prompts; and the errors of a discrete tokenizer."""

import json

import numpy as np
import pytest

from tests.helpers import set_fields, tiny_shapes_data
from tokgen_jax import tasks, trainer
from tokgen_jax.config import load_experiment
from tokgen_jax.data import latents as latent_data
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
