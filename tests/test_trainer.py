"""The one training loop on the offline photos: it trains, evaluates, checkpoints, resumes bit-exactly, and
fails clearly on bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from tokgen_jax import checkpoint, trainer
from tokgen_jax import run as run_lib
from tokgen_jax.errors import ConfigError


def _params(workdir, config):
  run = run_lib.setup(config, str(workdir))
  manager = checkpoint.Manager(str(workdir), keep=5)
  state = manager.restore(manager.latest_step(), run.abstract_state)
  manager.close()
  return jax.device_get(state)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config(eval_every_steps=6)
  summary = trainer.run(config, str(workdir), "train")
  return workdir, config, summary


def test_train_writes_metrics_eval_samples_and_checkpoints(finished_run):
  workdir, _, summary = finished_run
  assert summary["step"] == 6
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_records] == [2, 4, 6]
  for key in ("loss", "lr", "steps_per_sec", "examples_per_sec", "data_wait_frac", "codebook_usage", "perplexity",
              "tflops_per_device", "mfu"):
    assert key in train_records[-1]
  evaluation = json.loads((workdir / "eval" / "step_6.json").read_text())
  assert evaluation["num_examples"] == 88  # 128x128... 64x64 tiles: chelsea 4x7 + flower 6x10
  assert evaluation["protocol"] == {"name": "reconstruction", "use_ema": True}
  assert 0.0 < evaluation["psnr"] < 60.0 and -1.0 <= evaluation["ssim"] <= 1.0
  assert (workdir / "samples" / "eval_step_6.png").is_file()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
  assert list((workdir / "tensorboard").iterdir())


def test_eval_mode_reproduces_the_training_eval(finished_run):
  workdir, config, summary = finished_run
  results = trainer.run(config, str(workdir), "eval")
  np.testing.assert_allclose(results["eval_psnr"], summary["eval_psnr"], rtol=1e-6)


def test_sample_mode_writes_reconstructions(finished_run, tmp_path):
  workdir, config, _ = finished_run
  from PIL import Image
  image = tmp_path / "noise.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 21, 3), dtype=np.uint8)).save(image)
  with config.unlocked():
    config.sample.inputs = str(image)
  written = trainer.run(config, str(workdir), "sample")
  # cropped to 30x20 (multiples of the downsampling factor 2); original | reconstruction with a 2-pixel gutter
  assert Image.open(written[str(image)]).size == (20 + 2 + 20, 30)


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path, monkeypatch, finished_run):
  """Stop after 3 steps as SIGTERM would, resume to 6: the parameters equal an uninterrupted run's."""
  _, config, _ = finished_run
  monkeypatch.setattr(trainer._Preemption, "reached", lambda self, step: step == 3)
  interrupted = trainer.run(config, str(tmp_path), "train")
  assert interrupted["step"] == 3 and interrupted["preempted"]
  monkeypatch.undo()
  assert trainer.run(config, str(tmp_path), "train")["step"] == 6
  resumed, uninterrupted = _params(tmp_path, config), _params(finished_run[0], config)
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)


@pytest.mark.slow
def test_init_from_loads_parameters_and_restarts_the_step(tmp_path, finished_run):
  source_dir, config, _ = finished_run
  with config.unlocked():
    config.init_from = str(source_dir)
    config.total_steps = 1
  trainer.run(config, str(tmp_path), "train")
  assert int(_params(tmp_path, config).step) == 1


def test_init_from_restores_the_groups_the_source_has_and_refuses_foreign_ones(finished_run):
  """A run may add a parameter group to the run it starts from (MarkovGen's MRF over a trained masked model): only
  the source's groups are read; a source holding a group this model lacks is refused."""
  source_dir, config, _ = finished_run
  abstract = run_lib.setup(config, str(source_dir)).abstract_state
  extra = jax.ShapeDtypeStruct((3,), jnp.float32)
  grown = abstract.replace(params=abstract.params | {"extra": {"w": extra}},
                           opt_state=abstract.opt_state | {"extra": {"w": extra}})
  loaded = checkpoint.restore_params(str(source_dir), grown)
  assert set(loaded.params) == {"autoencoder"} and set(loaded.opt_state) == {"autoencoder"}
  jax.tree.map(np.testing.assert_array_equal, loaded.params, _params(source_dir, config).params)
  shrunk = abstract.replace(params={}, opt_state={}, ema_params={}, model_state={})
  with pytest.raises(ConfigError, match=r"groups \['autoencoder'\] this model does not have"):
    checkpoint.restore_params(str(source_dir), shrunk)


@pytest.mark.parametrize("overrides,match", [
    ({"batch_size": 12}, r"config.batch_size=12 is not divisible .* multiple of 8"),
    ({"data.image_size": 17}, r"config.data.image_size=17 is not divisible by the model's downsampling factor 2"),
    ({"model.name": "vqvae"}, r"config.model.name='vqvae' is not a known tokenizer"),
    ({"model.quantizer.name": "pq"}, r"config.model.quantizer.name='pq' is not a known quantizer"),
    ({"task": "gan"}, r"config.task='gan' is not a known task"),
])
def test_bad_config_errors_name_key_and_fix(overrides, match, tmp_path):
  with pytest.raises(ConfigError, match=match):
    trainer.run(tiny_config(**overrides), str(tmp_path), "train")
  assert not (tmp_path / "checkpoints").exists()


def test_unknown_data_source_is_named(tmp_path):
  with pytest.raises(ConfigError, match="config.data.source"):
    trainer.run(tiny_config(**{"data.source": "webcam"}), str(tmp_path), "train")


def test_eval_without_checkpoint_explains_how_to_train(tmp_path):
  with pytest.raises(ConfigError, match="no checkpoint in .* Train first"):
    trainer.run(tiny_config(), str(tmp_path), "eval")


VIDEO_OVERRIDES = {
    "model.channels": 8, "model.num_groups": 4, "model.quantizer.bits": 6,
    "adversarial.discriminator.channels": 4, "adversarial.discriminator.channel_multipliers": (2, 2),
    "adversarial.start_step": 2,
    "data.num_frames": 5, "data.image_size": 16, "data.eval_image_size": 16, "data.lavfi_sources": ("testsrc2",),
    "data.clip_seconds": 3.0, "data.num_threads": 1, "data.prefetch": 1,
    "batch_size": 8, "eval.batch_size": 8, "total_steps": 4, "log_every_steps": 2, "eval_every_steps": 4,
    "checkpoint_every_steps": 4, "optimizer.warmup_steps": 1,
}


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
  """The MAGVIT-v2 video experiment at test size: lavfi clips, causal 3D CNN + LFQ, GAN from step 2."""
  from tests.helpers import set_fields
  from tokgen_jax.config import load_experiment
  workdir = tmp_path_factory.mktemp("video")
  config = set_fields(load_experiment("experiments/magvit2_video.py:local"), VIDEO_OVERRIDES)
  summary = trainer.run(config, str(workdir), "train")
  return workdir, config, summary


@pytest.mark.slow
def test_video_experiment_trains_both_groups_and_writes_video_samples(video_run):
  workdir, _, summary = video_run
  assert summary["step"] == 4 and np.isfinite(summary["loss"])
  last = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if "loss" in line][-1]
  assert last["discriminator_loss"] > 0.0 and last["generator_adversarial_loss"] != 0.0
  evaluation = json.loads((workdir / "eval" / "step_4.json").read_text())
  assert evaluation["num_examples"] > 0 and 0.0 < evaluation["psnr"] < 60.0
  # 5x16x16 clips → 3x4x4 tokens of 6 bits.
  np.testing.assert_allclose(evaluation["bpp"], 3 * 4 * 4 * 6 / (5 * 16 * 16))
  for name in ("eval_step_4.mp4", "eval_step_4.gif", "eval_step_4_frames.png"):
    assert (workdir / "samples" / name).stat().st_size > 0, name
  from PIL import Image
  strip = Image.open(workdir / "samples" / "eval_step_4_frames.png")
  assert strip.size[0] == 5 * 16 + 4 * 2  # one column per frame, 2-pixel gutters


@pytest.mark.slow
def test_video_sample_mode_reconstructs_a_video_file(video_run, tmp_path):
  import imageio.v3 as iio
  workdir, config, _ = video_run
  clip = tmp_path / "clip.mp4"
  frames = np.random.default_rng(0).integers(0, 255, (7, 20, 18, 3), dtype=np.uint8)
  iio.imwrite(clip, frames, extension=".mp4", fps=8, macro_block_size=2)
  with config.unlocked():
    config.sample.inputs = str(clip)
  written = trainer.run(config, str(workdir), "sample")
  assert written[str(clip)].endswith("recon_clip.mp4")
  assert (workdir / "samples" / "recon_clip.gif").is_file() and (workdir / "samples" / "recon_clip_frames.png").is_file()


def test_bench_mode_reports_step_time_mfu_and_shares(tmp_path):
  config = tiny_config()
  with config.unlocked():
    config.bench = {"warmup_steps": 1, "steps": 4, "checkpoint_every_steps": 2}
  result = trainer.run(config, str(tmp_path), "bench")
  assert result["steps"] == 4 and result["step_ms"] > 0 and result["tflops_per_device"] > 0
  assert 0 < result["mfu"] < 1
  for share in ("data_wait_frac", "checkpoint_block_frac"):
    assert 0 <= result[share] < 1
  assert json.loads((tmp_path / "bench.json").read_text())["steps"] == 4
  assert sorted(p.name for p in (tmp_path / "bench" / "checkpoints").iterdir()) == ["4"]
