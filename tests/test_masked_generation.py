"""The masked path end to end at toy size: a tokenizer, --mode=encode, the masked model with its sample eval, then
MarkovGen started from it by `init_from` (only the MRF trains), its three-way eval, --mode=sample with the MRF
fill, and the decoding benchmark."""

import json

import jax
import numpy as np
import pytest

from tests.helpers import set_fields, tiny_shapes_data, tiny_shapes_tokenizer
from tokgen_jax import checkpoint, trainer
from tokgen_jax import run as run_lib
from tokgen_jax.bench import masked_decoding
from tokgen_jax.config import load_experiment

pytestmark = pytest.mark.slow  # trains three runs through the trainer

SMALL = {"model.embed_dim": 32, "model.num_layers": 1, "model.num_heads": 2, "model.mlp_dim": 64,
         "tokenize.data": tiny_shapes_data(), "tokenize.batch_size": 16, "tokenize.shard_size": 32,
         "batch_size": 8, "log_every_steps": 2, "checkpoint_every_steps": 4, "eval.batch_size": 8,
         "eval.protocol.num_samples": 4, "eval.protocol.num_steps": 4, "eval.num_grid_images": 4,
         "sample.num_steps": 4, "sample.num_per_prompt": 2, "data.num_threads": 1, "data.prefetch": 1}


def _masked_config(tokenizer_dir: str, **overrides):
  return set_fields(load_experiment("experiments/maskgit_shapes.py:local"), SMALL | {
      "tokenizer.experiment": tiny_shapes_tokenizer(), "tokenizer.workdir": tokenizer_dir, "total_steps": 4,
      "eval_every_steps": 4} | overrides)


def _markovgen_config(tokenizer_dir: str, masked_dir: str):
  config = load_experiment(f"experiments/markovgen_shapes.py:local,exit_steps=2,masked_workdir={masked_dir},"
                           f"tokenizer_workdir={tokenizer_dir}")
  return set_fields(config, SMALL | {"tokenizer.experiment": tiny_shapes_tokenizer(), "total_steps": 4,
                                     "eval_every_steps": 4, "markovgen.num_steps": 4})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("masked")
  tokenizer_dir, masked_dir, mrf_dir = (str(root / name) for name in ("tokenizer", "masked", "markovgen"))
  trainer.run(tiny_shapes_tokenizer(), tokenizer_dir, "train")
  trainer.run(_masked_config(tokenizer_dir), masked_dir, "encode")
  trainer.run(_masked_config(tokenizer_dir), masked_dir, "train")
  trainer.run(_markovgen_config(tokenizer_dir, masked_dir), mrf_dir, "train")
  return tokenizer_dir, root / "masked", root / "markovgen"


def _state(workdir, config):
  run = run_lib.setup(config, str(workdir))
  manager = checkpoint.Manager(str(workdir), keep=5)
  state = manager.restore(manager.latest_step(), run.abstract_state)
  manager.close()
  return jax.device_get(state)


def test_masked_eval_scores_samples_under_its_protocol(runs):
  _, masked_dir, _ = runs
  result = json.loads((masked_dir / "eval" / "step_4.json").read_text())
  assert result["protocol"]["name"] == "shapes" and result["protocol"]["num_steps"] == 4
  assert np.isclose(result["perplexity"], np.exp(result["nll"]), rtol=1e-6)
  for prefix in ("reference", "cfg", "nocfg"):
    assert 0.0 <= result[f"{prefix}_color_shape"] <= 1.0


def test_markovgen_starts_from_the_masked_run_and_trains_only_the_mrf(runs):
  tokenizer_dir, masked_dir, mrf_dir = runs
  masked = _state(masked_dir, _masked_config(tokenizer_dir))
  mrf = _state(mrf_dir, _markovgen_config(tokenizer_dir, str(masked_dir)))
  assert set(mrf.params) == {"generator", "markovgen"}
  jax.tree.map(np.testing.assert_array_equal, mrf.params["generator"], masked.params["generator"])
  assert np.any(mrf.params["markovgen"]["spatial_kernel"] != 1 / 8)  # the MRF moved from its init
  result = json.loads((mrf_dir / "eval" / "step_4.json").read_text())
  assert result["protocol"]["exit_steps"] == 2
  for prefix in ("cfg", "early_exit", "markovgen"):
    assert 0.0 <= result[f"{prefix}_color_shape"] <= 1.0


def test_sample_mode_fills_with_the_mrf_and_the_benchmark_compares_the_three(runs):
  tokenizer_dir, masked_dir, mrf_dir = runs
  config = set_fields(_markovgen_config(tokenizer_dir, str(masked_dir)), {
      "sample.prompts": "red circle;blue square", "sample.final_fill": "mrf"})
  summary = trainer.run(config, str(mrf_dir), "sample")
  assert summary["sample_seconds"] > 0 and 0.0 <= summary["color_shape"] <= 1.0
  rows = masked_decoding.measure(_markovgen_config(tokenizer_dir, str(masked_dir)), str(mrf_dir), per_class=1,
                                 repeats=1)
  assert rows["early_exit"]["steps"] == rows["markovgen"]["steps"] == 2 and rows["full"]["steps"] == 4
  assert rows["mrf_pass"]["seconds"] > 0 and 0.0 <= rows["markovgen"]["color_shape"] <= 1.0
