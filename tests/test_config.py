import pytest

from tokgen_jax.config import load_experiment, parse_arg, to_json
from tokgen_jax.errors import ConfigError


def test_parse_arg_casts_to_default_types():
  arg = parse_arg("local,steps=20,size=B,lr=0.5", local=False, steps=10, size="S", lr=1.0)
  assert (arg.local, arg.steps, arg.size, arg.lr) == (True, 20, "B", 0.5)


def test_parse_arg_rejects_unknown_names():
  with pytest.raises(ConfigError, match="'stepz' .* not known"):
    parse_arg("stepz=3", steps=10)


def test_quickstart_config_is_locked_and_serializable():
  config = load_experiment("experiments/quickstart.py:local")
  assert config.model.name == "vqgan" and config.data.source == "photos"
  with pytest.raises(AttributeError):
    config.modle = 3
  with pytest.raises(AttributeError):
    config.model.widht = 3
  assert to_json(config)["model"]["channel_multipliers"] == list(config.model.channel_multipliers)


def test_missing_experiment_file_is_named():
  with pytest.raises(ConfigError, match="nope.py"):
    load_experiment("experiments/nope.py:local")
