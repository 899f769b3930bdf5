"""The frozen tokenizer: loaded through the run, encode gives the tokenizer's named latents, decode(encode(x)) is the
tokenizer's own reconstruction, and a missing tokenizer run is a ConfigError that says what to train."""

import jax
import ml_collections
import numpy as np
import pytest

from tests.helpers import tiny_config
from tokgen_jax import run as run_lib
from tokgen_jax.configs import data as data_presets
from tokgen_jax.configs import quantizers as quantizer_presets
from tokgen_jax.data import examples as example_data
from tokgen_jax.data import latents as latent_data
from tokgen_jax.errors import ConfigError
from tokgen_jax.tasks import frozen_tokenizer


class _Run:
  """The RunContext methods the frozen tokenizer uses, over a real run (or failing to load)."""

  def __init__(self, loaded=None, error=None, run=None):
    self._loaded, self._error, self._run = loaded, error, run

  def load_experiment(self, config, workdir, step=0):
    if self._error:
      raise self._error
    return self._loaded

  def map_local(self, fn, state, local_batch):
    return self._run.map_local(fn, state, local_batch)


def _tokenizer_config(workdir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"experiment": tiny_config(), "workdir": workdir, "checkpoint_step": 0})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  run = run_lib.setup(tiny_config(), str(tmp_path_factory.mktemp("tokenizer")))
  loaded = (run.task, run.init_state(), 7)
  return frozen_tokenizer.load(_Run(loaded=loaded, run=run), _tokenizer_config("/unused")), run


def test_encode_then_decode_is_the_tokenizers_reconstruction(tokenizer):
  frozen, run = tokenizer
  pixels = np.asarray(jax.random.uniform(jax.random.key(0), (8, 16, 16, 3), minval=-1.0, maxval=1.0))  # 8 devices
  latents = frozen.encode(pixels)
  assert list(latents) == ["tokens"] and frozen.step == 7
  assert latents["tokens"].shape == (8, 8, 8) and np.issubdtype(latents["tokens"].dtype, np.integer)
  assert frozen.latent_specs()["tokens"].shape == (8, 8)
  reconstruction = np.asarray(jax.jit(run.task.reconstruct)(frozen.state, pixels))
  np.testing.assert_allclose(frozen.decode(latents), reconstruction, atol=1e-5)


def test_a_missing_tokenizer_run_says_what_to_train():
  with pytest.raises(ConfigError, match=r"config.tokenizer.workdir='/nowhere': no checkpoint .* needs a trained "
                                        r"tokenizer there"):
    frozen_tokenizer.load(_Run(error=ConfigError("no checkpoint in /nowhere/checkpoints.")),
                          _tokenizer_config("/nowhere"))


def test_encode_dataset_stores_continuous_latents_with_labels_and_captions(tmp_path):
  """A KL tokenizer (latent diffusion's) through `encode_dataset`: the shards hold its float `latents`, equal to
  encoding the same scenes directly, in dataset order."""
  config = tiny_config(quantizer_overrides={"model.quantizer": quantizer_presets.kl(dim=4)},
                       data=data_presets.shapes(16, num_shapes=1, train_examples=12, eval_examples=5, num_threads=1,
                                                prefetch=1))
  run = run_lib.setup(config, str(tmp_path / "tokenizer"))
  frozen = frozen_tokenizer.load(_Run(loaded=(run.task, run.init_state(), 3), run=run), _tokenizer_config("/unused"))
  assert {name: spec.is_discrete for name, spec in frozen.latent_specs().items()} == {"latents": False}
  encode_config = ml_collections.ConfigDict({
      "tokenize": {"data": config.data, "batch_size": 8, "shard_size": 5, "text_encoder": False},
      "data": {"train_split": "train", "eval_split": "eval"}, "tokenizer": {"workdir": "/unused"}})
  counts = frozen_tokenizer.encode_dataset(encode_config, frozen, str(tmp_path / "latents"))
  assert counts == {"train": 12, "eval": 5}
  source = latent_data.LatentSource(tmp_path / "latents", "train")
  assert set(source.specs) == {"latents", "label"} and source.specs["latents"]["dtype"] == "float32"
  scenes = example_data.labeled_source(config.data, "train")
  pixels = np.stack([scenes[i]["image"] for i in range(8)]).astype(np.float32) / 127.5 - 1.0
  direct = frozen.encode(pixels)["latents"]
  for index in range(8):
    np.testing.assert_allclose(source[index]["latents"], direct[index], atol=1e-6)
    assert source[index]["label"] == scenes[index]["label"] and source.caption(index) == scenes[index]["caption"]
