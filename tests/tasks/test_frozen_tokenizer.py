"""The frozen tokenizer: loaded through the run, encode gives the tokenizer's named latents, decode(encode(x)) is the
tokenizer's own reconstruction, and a missing tokenizer run is a ConfigError that says what to train."""

import jax
import ml_collections
import numpy as np
import pytest

from tests.helpers import tiny_config
from tokgen_jax import run as run_lib
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
