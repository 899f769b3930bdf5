"""Reconstruction evaluation: the eval JSON carries every metric, feature-network metrics appear exactly when
their weights are configured (here converted random weights), and sharded evaluation equals single-device."""

import json

import jax
import numpy as np
import pytest

from tests.helpers import tiny_config
from tokgen_jax import trainer
from tokgen_jax import run as run_lib
from tokgen_jax.configs import mesh as mesh_presets

EVAL_176 = {"data.eval_image_size": 176}  # MS-SSIM's minimum; the held-out photos give 8 such tiles


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
  """Random LPIPS and FID-Inception weights saved as converted files (stand-ins for the real ones)."""
  from tokgen_jax.convert import inception as inception_convert, lpips as lpips_convert, state_dict
  directory = tmp_path_factory.mktemp("weights")
  rng = np.random.default_rng(0)

  def random_like(shapes):  # LeCun-normal kernels, zero biases; LPIPS heads non-negative like the released ones
    return state_dict.unflatten({key: (rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1])) if len(shape) > 1
                                          else np.zeros(shape)).astype(np.float32) for key, shape in shapes.items()})

  lpips = random_like(lpips_convert.expected_shapes())
  lpips = {name: jax.tree.map(np.abs, value) if name.startswith("lin") else value for name, value in lpips.items()}
  return (str(lpips_convert.save_lpips(directory / "lpips.safetensors", lpips)),
          str(inception_convert.save_inception(directory / "inception.safetensors",
                                               random_like(inception_convert.expected_shapes()))))


def _evaluate(config, workdir, devices=None):
  run = run_lib.setup(config, str(workdir), devices=devices)
  return trainer.evaluate(run, run.init_state(), 0), run


@pytest.mark.slow
def test_eval_json_carries_every_metric_with_weights(weight_files, tmp_path):
  lpips_path, inception_path = weight_files
  config = tiny_config(**EVAL_176, **{"eval.lpips_weights": lpips_path, "eval.inception_weights": inception_path})
  results, _ = _evaluate(config, tmp_path)
  written = json.loads((tmp_path / "eval" / "step_0.json").read_text())
  for name in ("psnr", "ssim", "ms_ssim", "bpp", "codebook_usage", "codebook_perplexity", "lpips", "rfid"):
    assert name in written and np.isfinite(written[name]), name
    np.testing.assert_allclose(results[f"eval_{name}"], written[name])
  assert written["num_examples"] == 8
  assert 0.0 < written["codebook_usage"] <= 1.0 and written["rfid"] > 0.0 and written["lpips"] > 0.0


def test_feature_metrics_are_left_out_without_weights(tmp_path, caplog):
  caplog.set_level("INFO")
  results, _ = _evaluate(tiny_config(), tmp_path)
  assert "eval_rfid" not in results and "eval_lpips" not in results and "eval_ms_ssim" not in results
  assert "not computing rfid" in caplog.text and "not computing lpips" in caplog.text


def test_sharded_evaluation_equals_single_device(tmp_path):
  config = tiny_config()
  single, _ = _evaluate(config, tmp_path / "one", devices=jax.devices()[:1])
  with config.unlocked():
    config.mesh = mesh_presets.mesh(data=2, fsdp=4)
  sharded, _ = _evaluate(config, tmp_path / "eight")
  assert single.keys() == sharded.keys()
  for name in single:
    np.testing.assert_allclose(sharded[name], single[name], rtol=1e-5, err_msg=name)


def test_stats_mode_saves_reference_statistics_of_the_eval_split(weight_files, tmp_path):
  from tokgen_jax.metrics import FeatureStatistics
  _, inception_path = weight_files
  config = tiny_config(**EVAL_176, **{"eval.inception_weights": inception_path})
  summary = trainer.run(config, str(tmp_path), "stats")
  assert summary["path"].endswith("stats/photos_eval.npz") and summary["count"] == 8
  statistics = FeatureStatistics.load(summary["path"])
  assert statistics.mean.shape == (2048,) and statistics.covariance.shape == (2048, 2048)
  np.testing.assert_allclose(statistics.covariance, statistics.covariance.T)
  assert statistics.kept.shape == (8, 2048)  # every eval feature (under 10,000) kept for precision/recall
  np.testing.assert_allclose(statistics.kept.mean(0), statistics.mean, rtol=1e-4, atol=1e-6)


def test_stats_mode_without_weights_says_which_file_to_set(tmp_path):
  from tokgen_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="config.eval.inception_weights"):
    trainer.run(tiny_config(), str(tmp_path), "stats")


def test_codebook_usage_counts_distinct_ids_over_all_batches_and_levels():
  from tokgen_jax.tasks import ReconstructionEvaluator
  blank = lambda n: {"reconstruction": np.zeros((n, 1)), "psnr": np.zeros(n)}
  one_level = ReconstructionEvaluator({}, codebook_size=16)
  one_level.update(blank(2) | {"tokens": np.array([[0, 1, 1], [2, 2, 2]])}, np.zeros((2, 1)), np.ones(2, bool))
  one_level.update(blank(2) | {"tokens": np.array([[3, 0, 0], [9, 9, 9]])}, np.zeros((2, 1)), np.array([True, False]))
  assert one_level.results()["codebook_usage"] == 4 / 16  # ids 0-3; the masked-out row's 9s do not count
  levels = ReconstructionEvaluator({}, codebook_size=4)
  levels.update(blank(1) | {"tokens": np.array([[[0, 1], [1, 1], [2, 1]]])}, np.zeros((1, 1)), np.ones(1, bool))
  assert levels.results()["codebook_usage"] == (3 / 4 + 1 / 4) / 2


def test_usage_per_scale_counts_each_scales_tokens_against_the_codes_it_could_reach():
  """Scales (1, 2) of a 16-code book: 1 + 4 tokens per example. Over 3 examples a uniform codebook would show
  16·(1 − (15/16)³) = 2.81 distinct codes at the 1x1 scale, and 16·(1 − (15/16)¹²) = 8.28 at the 2x2."""
  from tokgen_jax.tasks import ReconstructionEvaluator
  blank = lambda n: {"reconstruction": np.zeros((n, 1)), "psnr": np.zeros(n)}
  evaluator = ReconstructionEvaluator({}, codebook_size=16, scale_lengths=(1, 4))
  tokens = np.array([[5, 0, 1, 2, 3], [5, 0, 1, 2, 3], [6, 4, 4, 4, 4]])
  evaluator.update(blank(3) | {"tokens": tokens}, np.zeros((3, 1)), np.ones(3, bool))
  results = evaluator.results()
  assert results["codebook_usage_scale_0"] == 2 / 16 and results["codebook_usage_scale_1"] == 5 / 16
  np.testing.assert_allclose(results["reachable_usage_scale_0"], 2 / (16 * (1 - (15 / 16) ** 3)), rtol=1e-12)
  np.testing.assert_allclose(results["reachable_usage_scale_1"], 5 / (16 * (1 - (15 / 16) ** 12)), rtol=1e-12)
  np.testing.assert_allclose(results["codebook_perplexity_scale_0"], np.exp(-(2 / 3) * np.log(2 / 3) - np.log(1 / 3) / 3))
  single = ReconstructionEvaluator({}, codebook_size=16, scale_lengths=(4,))  # one scale: no per-scale figures
  single.update(blank(3) | {"tokens": tokens[:, 1:]}, np.zeros((3, 1)), np.ones(3, bool))
  assert "codebook_usage_scale_0" not in single.results() and single.results()["codebook_usage"] == 5 / 16
