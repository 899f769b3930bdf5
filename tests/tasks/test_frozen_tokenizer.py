"""The frozen tokenizer: loaded through the run, encode gives the tokenizer's token grid, decode(encode(x)) is the
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
  """The one RunContext method `load` uses."""

  def __init__(self, loaded=None, error=None):
    self._loaded, self._error = loaded, error

  def load_experiment(self, config, workdir, step=0):
    if self._error:
      raise self._error
    return self._loaded


def _tokenizer_config(workdir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"experiment": tiny_config(), "workdir": workdir, "checkpoint_step": 0})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  run = run_lib.setup(tiny_config(), str(tmp_path_factory.mktemp("tokenizer")))
  return frozen_tokenizer.load(_Run(loaded=(run.task, run.init_state(), 7)), _tokenizer_config("/unused")), run


def test_encode_then_decode_is_the_tokenizers_reconstruction(tokenizer):
  frozen, run = tokenizer
  pixels = np.asarray(jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1.0, maxval=1.0))
  tokens = frozen.encode(pixels)
  assert tokens.shape == (2, 8, 8) and np.issubdtype(tokens.dtype, np.integer) and frozen.step == 7
  reconstruction = np.asarray(jax.jit(run.task.reconstruct)(frozen.state, pixels))
  np.testing.assert_allclose(frozen.decode(tokens), reconstruction, atol=1e-5)


def test_a_missing_tokenizer_run_says_what_to_train():
  with pytest.raises(ConfigError, match=r"config.tokenizer.workdir='/nowhere': no checkpoint .* needs a trained "
                                        r"tokenizer there"):
    frozen_tokenizer.load(_Run(error=ConfigError("no checkpoint in /nowhere/checkpoints.")),
                          _tokenizer_config("/nowhere"))
