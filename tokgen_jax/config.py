"""Experiment-argument parsing and config (de)serialization.

An experiment file defines `get_config(arg)`; `arg` is a comma-separated list like `local,size=B`, parsed by
`parse_arg` against declared defaults (a bare name sets a boolean flag). Unknown names fail.
"""

import ast
import importlib.util
import json
import pathlib
from typing import Any

import ml_collections

from tokgen_jax.errors import ConfigError


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parse `"local,size=B,steps=100"` into a ConfigDict over `defaults`, casting each value to its default's type."""
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (part.strip() for part in (arg or "").split(","))):
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ConfigError(f"experiment argument {name!r} in {arg!r} is not known; valid names: {sorted(defaults)}.")
    default = defaults[name]
    if not value:
      if not isinstance(default, bool):
        raise ConfigError(f"experiment argument {name!r} needs a value, e.g. {name}={default}.")
      parsed[name] = True
    else:
      parsed[name] = _cast(name, value, default, arg)
  return parsed


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _cast(name: str, value: str, default: Any, arg: str) -> Any:
  """`value` as the type of `default`; a ConfigError rather than a silent False, truncation or a bare ast error."""
  if isinstance(default, bool):
    if value.lower() in _TRUE + _FALSE:
      return value.lower() in _TRUE
    raise ConfigError(f"experiment argument {name}={value!r} in {arg!r} is not a boolean; write {name}=true or "
                      f"{name}=false (or {name} alone for true).")
  if isinstance(default, str):
    return value
  try:
    literal = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    literal = None
  # int(1.5) would silently drop the fraction, and bool is an int subclass: accept only the default's kind.
  if isinstance(default, int):
    kind, fits = "an integer", isinstance(literal, int) and not isinstance(literal, bool)
  elif isinstance(default, float):
    kind, fits = "a number", isinstance(literal, (int, float)) and not isinstance(literal, bool)
  else:
    kind, fits = f"a {type(default).__name__}", isinstance(literal, type(default))
  if not fits:
    raise ConfigError(f"experiment argument {name}={value!r} in {arg!r} is not {kind}; write e.g. {name}={default!r}.")
  return type(default)(literal)


def to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-serializable dict of the config (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def load_experiment(path_and_arg: str) -> ml_collections.ConfigDict:
  """Load `experiments/name.py:arg` the way `--config` does, for tests and scripts."""
  path, _, arg = path_and_arg.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"experiment file {path!r} does not exist; pass a path like experiments/quickstart.py:local.")
  spec = importlib.util.spec_from_file_location(f"_experiment_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  return config
