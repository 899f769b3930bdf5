"""The generator path end to end at toy size: train a tokenizer, --mode=tokenize (latent shards), train the AR
generator with sample eval (CFG on/off, shapes scores), --mode=sample from prompts; and the errors of a missing
tokenizer."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import set_fields, tiny_shapes_data, tiny_shapes_tokenizer
from tokgen_jax import trainer
from tokgen_jax.metrics import shapes as shape_metrics
from tokgen_jax.config import load_experiment
from tokgen_jax.data import files
from tokgen_jax.data import latents as latent_data
from tokgen_jax.errors import ConfigError

PROMPTS = "a large red circle in the center;a small blue square in the top left"


_shapes = tiny_shapes_data
_tokenizer_config = tiny_shapes_tokenizer


def _generator_config(tokenizer_workdir: str, **overrides):
  config = load_experiment("experiments/ar_shapes.py:local")
  return set_fields(config, {
      "tokenizer.experiment": _tokenizer_config(), "tokenizer.workdir": tokenizer_workdir,
      "tokenize.data": _shapes(), "tokenize.batch_size": 16, "tokenize.shard_size": 32,
      "model.embed_dim": 32, "model.num_layers": 1, "model.num_heads": 2, "model.num_kv_heads": 1,
      "batch_size": 8, "total_steps": 4, "log_every_steps": 2, "eval_every_steps": 4, "checkpoint_every_steps": 4,
      "eval.batch_size": 8, "eval.protocol.num_samples": 4, "eval.num_grid_images": 4, "sample.num_per_prompt": 2,
      "data.num_threads": 1, "data.prefetch": 1} | overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("generation")
  tokenizer_dir, generator_dir = str(root / "tokenizer"), str(root / "generator")
  trainer.run(_tokenizer_config(), tokenizer_dir, "train")
  counts = trainer.run(_generator_config(tokenizer_dir), generator_dir, "tokenize")
  summary = trainer.run(_generator_config(tokenizer_dir), generator_dir, "train")
  return tokenizer_dir, root / "generator", counts, summary


@pytest.mark.slow
def test_tokenize_writes_every_example_with_captions_and_text(trained):
  _, generator_dir, counts, _ = trained
  assert counts["train"] == 48 and counts["eval"] == 8
  source = latent_data.LatentSource(generator_dir / "tokens", "train")
  assert len(source) == 48 and source.specs["tokens"]["shape"] == [4, 4] and source.metadata["has_text"]
  assert set(source.specs) == {"tokens", "label"}
  example = source[0]
  assert example["tokens"].shape == (4, 4) and example["tokens"].max() < 32
  assert example["text"].shape == (24, 384) and example["text_mask"].sum() > 3
  assert source.caption(0).startswith("a ")


@pytest.mark.slow
def test_training_evaluates_tokens_and_scores_samples_with_and_without_cfg(trained):
  _, generator_dir, _, summary = trained
  assert summary["step"] == 4
  result = json.loads((generator_dir / "eval" / "step_4.json").read_text())
  assert result["num_examples"] == 8
  assert result["protocol"] == {"name": "shapes", "cfg_scale": 3.0, "cfg_convention": "standard", "cfg_ramp": False,
                                "temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_samples": 4, "use_ema": True,
                                "seed": 0}
  assert np.isclose(result["perplexity"], np.exp(result["nll"]), rtol=1e-6)
  assert 0.0 <= result["token_accuracy"] <= 1.0
  for prefix in ("reference", "cfg", "nocfg"):
    assert 0.0 <= result[f"{prefix}_color_shape"] <= 1.0 and f"{prefix}_all" in result
  assert (generator_dir / "samples" / "eval_step_4.png").is_file()
  prompts = (generator_dir / "samples" / "eval_step_4_prompts.txt").read_text().splitlines()
  assert len(prompts) == 4 and all(p.startswith("a ") for p in prompts)


@pytest.mark.slow
def test_sample_mode_draws_each_prompt_and_scores_it(trained):
  tokenizer_dir, generator_dir, _, _ = trained
  config = _generator_config(tokenizer_dir, **{"sample.prompts": PROMPTS})
  summary = trainer.run(config, str(generator_dir), "sample")
  assert summary["path"].endswith("prompts_step_4.png") and 0.0 <= summary["color_shape"] <= 1.0
  assert (generator_dir / "samples" / "prompts_step_4.txt").read_text().splitlines() == PROMPTS.split(";")


@pytest.mark.slow
def test_tokenize_refuses_to_overwrite_finished_shards(trained):
  tokenizer_dir, generator_dir, _, _ = trained
  with pytest.raises(ConfigError, match="metadata.json"):
    trainer.run(_generator_config(tokenizer_dir), str(generator_dir), "tokenize")


def test_missing_tokenizer_checkpoint_names_the_workdir(tmp_path):
  with pytest.raises(ConfigError, match="config.tokenizer.workdir"):
    trainer.run(_generator_config(str(tmp_path / "nothing")), str(tmp_path / "generator"), "tokenize")


@pytest.mark.slow
def test_sample_mode_needs_prompts(trained):
  tokenizer_dir, generator_dir, _, _ = trained
  with pytest.raises(ConfigError, match="prompts"):
    trainer.run(_generator_config(tokenizer_dir), str(generator_dir), "sample")


def test_shapes_scores_read_color_and_shape_back_from_pixels():
  from tokgen_jax.data import shapes  # pylint: disable=g-import-not-at-top
  scene = shapes.parse_caption("a large red circle in the center")
  pixels = shapes.render(scene, 32)
  assert shape_metrics.score_prompts(["a large red circle in the center"], pixels[None])["color_shape"] == 1.0
  assert shape_metrics.score_prompts(["a large blue circle in the center"], pixels[None])["color_shape"] == 0.0
  assert shape_metrics.score_prompts([shapes.class_label("circle", "red")], pixels[None])["color_shape"] == 1.0


def _copy_tree(source, target):
  for relative in files.file_sizes(source):
    (target / relative).write_bytes((files.as_path(source) / relative).read_bytes())


@pytest.mark.slow
def test_generator_reads_its_tokenizer_and_writes_its_latents_in_a_bucket(trained, gcs_bucket):
  """The same tokenizer checkpoint read from a bucket encodes the same shards, into the bucket, and the generator
  trained on them there ends where the local one did."""
  tokenizer_dir, generator_dir, counts, summary = trained
  bucket = files.as_path(gcs_bucket)
  _copy_tree(files.as_path(tokenizer_dir) / "checkpoints", bucket / "tokenizer" / "checkpoints")
  config = _generator_config(str(bucket / "tokenizer"))
  written = trainer.run(config, str(bucket / "generator"), "tokenize")
  assert written == counts | {"path": str(bucket / "generator" / "tokens")}
  remote, local = (latent_data.LatentSource(root / "tokens", "train") for root in (bucket / "generator", generator_dir))
  for index in range(len(local)):
    np.testing.assert_array_equal(remote[index]["tokens"], local[index]["tokens"])
  remote_summary = trainer.run(_generator_config(str(bucket / "tokenizer")), str(bucket / "generator"), "train")
  assert remote_summary["loss"] == summary["loss"]
  assert (bucket / "generator" / "eval" / "step_4.json").exists()


def _features(pixels):
  """A 3-d stand-in for InceptionV3's pool features."""
  return jnp.stack([pixels.mean((1, 2, 3)), pixels.std((1, 2, 3)), pixels[..., 0].mean((1, 2))], axis=-1)


def _inception(pixels):
  """A stand-in for FIDInceptionV3's outputs: `_features` as the pool, logits over 5 classes from its pixels."""
  pooled = pixels.mean((1, 2))  # [B, 3]
  return {"pool": _features(pixels), "logits_unbiased": 8.0 * pooled @ jnp.asarray(_CLASSIFIER)}


_CLASSIFIER = np.random.default_rng(1).normal(size=(3, 5))


def _sample_evaluation(generator_dir, tokenizer_dir, statistics_path, sample_batch_size, networks=None):
  from tokgen_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from tokgen_jax.tasks import second_stage  # pylint: disable=g-import-not-at-top
  config = _generator_config(tokenizer_dir, **{"eval.protocol.num_samples": 8, "eval.num_grid_images": 5,
                                               "eval.sample_batch_size": sample_batch_size,
                                               "eval.reference_statistics": str(statistics_path)})
  run = run_lib.setup(config, str(generator_dir))
  state, _ = run.restore()
  evaluation = second_stage.SampleEvaluation(run.task, run, state, networks=networks or {"rfid": _features})
  return evaluation, run, state


@pytest.mark.slow
def test_eval_samples_in_chunks_and_scores_their_frechet_distance(trained, tmp_path):
  """8 eval samples drawn 3 rows a call score the reference column as one 8-row call does; each column's FID is
  the Fréchet distance of its features to the reference statistics; the first chunk draws as `draw` does."""
  from tokgen_jax.metrics import FeatureStatistics, frechet_distance  # pylint: disable=g-import-not-at-top
  tokenizer_dir, generator_dir, _, _ = trained
  statistics_path = tmp_path / "real.npz"
  real = FeatureStatistics().update(np.random.default_rng(0).normal(size=(64, 3)) * 0.1)
  real.save(statistics_path)
  whole, run, state = _sample_evaluation(generator_dir, tokenizer_dir, statistics_path, 0)
  chunked, _, _ = _sample_evaluation(generator_dir, tokenizer_dir, statistics_path, 3)
  one_call, in_chunks = whole.results(), chunked.results()
  assert set(one_call) == set(in_chunks) >= {"reference_fid", "cfg_fid", "nocfg_fid", "cfg_color_shape"}
  for name in ("reference_fid", "reference_color_shape", "reference_all"):
    np.testing.assert_allclose(in_chunks[name], one_call[name], rtol=1e-6, err_msg=name)

  task, source = run.task, latent_data.open_configured_source(run.config.data, "eval")
  examples = [source[i] for i in range(8)]
  reference = task.decode(run, task.example_latents(examples))
  cond = {"text": np.stack([e["text"] for e in examples]), "text_mask": np.stack([e["text_mask"] for e in examples])}
  settings = task.sample_settings(run.config.eval.protocol, True)
  guided = task.decode(run, task.draw(state, cond, settings, 0, 8))
  for name, pixels in (("reference", reference), ("cfg", guided)):
    ours = FeatureStatistics().update(_features(jnp.asarray(pixels)))
    np.testing.assert_allclose(one_call[f"{name}_fid"], frechet_distance(ours.mean, ours.covariance, real.mean,
                                                                         real.covariance), rtol=1e-6)
  first_chunk = task.decode(run, task.draw(state, {k: v[:3] for k, v in cond.items()}, settings, 0, 3))
  np.testing.assert_allclose(chunked._columns[1][:3], first_chunk, atol=1e-6)  # pylint: disable=protected-access
  assert len(chunked._columns[0]) == 5 and len(chunked._prompts) == 5  # pylint: disable=protected-access


@pytest.mark.slow
def test_eval_scores_the_inception_score_of_each_sample_set_from_one_network_pass(trained, tmp_path):
  """With the full Inception network, each column's `_is` is `inception_score` of its logits (one split per sample
  below 10), the same drawn in chunks; its FID, precision and recall come from the same pass's pool features."""
  from tokgen_jax.metrics.inception import inception_score  # pylint: disable=g-import-not-at-top
  from tokgen_jax.metrics.precision_recall import precision_recall  # pylint: disable=g-import-not-at-top
  tokenizer_dir, generator_dir, _, _ = trained
  from tokgen_jax.metrics import FeatureStatistics  # pylint: disable=g-import-not-at-top
  statistics_path = tmp_path / "real.npz"
  real = FeatureStatistics(keep=64).update(np.random.default_rng(0).normal(size=(64, 3)) * 0.1)
  real.save(statistics_path)

  def second_pass(pixels):
    raise AssertionError("the pool features come from the 'inception' pass")

  networks = {"rfid": second_pass, "inception": _inception}
  results = {rows: _sample_evaluation(generator_dir, tokenizer_dir, statistics, rows, networks)[0].results()
             for rows, statistics in ((0, ""), (3, ""))}
  assert not any(name.endswith("_fid") for name in results[0])  # no reference statistics: FID left out
  with_fid, run, state = _sample_evaluation(generator_dir, tokenizer_dir, statistics_path, 0, networks)
  with_fid = with_fid.results()
  only_fid = _sample_evaluation(generator_dir, tokenizer_dir, statistics_path, 0)[0].results()
  assert not any(name.endswith("_is") for name in only_fid)  # no 'inception' network: no Inception Score
  for name in ("reference_fid", "cfg_fid", "cfg_is"):
    np.testing.assert_allclose(with_fid[name], (only_fid | results[0])[name], rtol=1e-6, err_msg=name)
  for name in ("reference", "cfg", "nocfg"):
    assert results[0][f"{name}_is"] >= 1.0 and results[0][f"{name}_is_std"] >= 0.0
  np.testing.assert_allclose(results[3]["reference_is"], results[0]["reference_is"], rtol=1e-5)
  task, source = run.task, latent_data.open_configured_source(run.config.data, "eval")
  examples = [source[i] for i in range(8)]
  cond = {"text": np.stack([e["text"] for e in examples]), "text_mask": np.stack([e["text_mask"] for e in examples])}
  guided = task.decode(run, task.draw(state, cond, task.sample_settings(run.config.eval.protocol, True), 0, 8))
  expected = inception_score(np.asarray(_inception(jnp.asarray(guided))["logits_unbiased"]), splits=8)
  np.testing.assert_allclose((results[0]["cfg_is"], results[0]["cfg_is_std"]), expected, rtol=1e-5)
  # The reference file keeps its real features: precision and recall of the same pass's pool features.
  expected = precision_recall(real.kept, np.asarray(_features(jnp.asarray(guided))))
  np.testing.assert_allclose((with_fid["cfg_precision"], with_fid["cfg_recall"]), expected)
  assert only_fid["cfg_precision"] == with_fid["cfg_precision"]  # the rfid view of the same network


@pytest.mark.slow
def test_eval_fid_needs_readable_reference_statistics_of_the_same_features(trained, tmp_path):
  tokenizer_dir, generator_dir, _, _ = trained
  with pytest.raises(ConfigError, match="config.eval.reference_statistics.*--mode=stats"):
    _sample_evaluation(generator_dir, tokenizer_dir, tmp_path / "missing.npz", 0)[0].results()
  from tokgen_jax.metrics import FeatureStatistics  # pylint: disable=g-import-not-at-top
  FeatureStatistics().update(np.random.default_rng(0).normal(size=(8, 5))).save(tmp_path / "wide.npz")
  with pytest.raises(ConfigError, match="5-d features.*3-d"):
    _sample_evaluation(generator_dir, tokenizer_dir, tmp_path / "wide.npz", 0)[0].results()


@pytest.mark.slow
def test_eval_leaves_fid_out_without_reference_statistics_and_says_so(trained, caplog):
  caplog.set_level("INFO")
  tokenizer_dir, generator_dir, _, _ = trained
  results = _sample_evaluation(generator_dir, tokenizer_dir, "", 0)[0].results()
  assert "cfg_color_shape" in results and not any(name.endswith("_fid") for name in results)
  assert "config.eval.reference_statistics is empty" in caplog.text
