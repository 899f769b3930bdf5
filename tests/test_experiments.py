"""Paper-size generator experiments build (abstractly, no weights in memory) with the published sizes."""

import pytest

from tokgen_jax import trainer
from tokgen_jax.config import load_experiment


@pytest.mark.parametrize("size, low, high", [("B", 105e6, 115e6), ("L", 330e6, 355e6)])
def test_llamagen_c2i_parameter_count(size, low, high, tmp_path):
  """LlamaGen Table 1: GPT-B 111M, GPT-L 343M parameters (16384-entry VQ vocabulary, 1000 classes)."""
  run = trainer.setup(load_experiment(f"experiments/llamagen_c2i.py:size={size}"), str(tmp_path))
  params = trainer.count_params(run.abstract_state)
  print(f"\nllamagen_c2i GPT-{size}: {params:,} parameters, token shape {run.task.token_shape}")
  assert run.task.token_shape == (16, 16) and run.task.model.vocab_sizes == (16384,)
  assert low < params < high


def test_lfq_entropy_annealing_is_settable_on_the_locked_config():
  """The LFQ preset carries the annealing keys, so `--config.model.quantizer.entropy_anneal_steps=N` reaches the
  module (a locked config refuses keys a preset lacks)."""
  from tokgen_jax import tasks  # pylint: disable=import-outside-toplevel
  config = load_experiment("experiments/magvit2_video.py:local")
  assert config.model.quantizer.entropy_anneal_steps == 0
  config.model.quantizer.entropy_anneal_steps = 2000
  config.model.quantizer.entropy_weight_start = 0.3
  quantizer = tasks.build_tokenizer(config.model).quantizer
  assert quantizer.annealing and quantizer.entropy_anneal_steps == 2000 and quantizer.entropy_weight_start == 0.3
