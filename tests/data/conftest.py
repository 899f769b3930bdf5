"""Shared fixtures for the data-layer tests: a `config.data` factory with the preset defaults."""

import ml_collections
import pytest

_DEFAULTS = dict(source="photos", name="", data_dir="", path="", train_split="train", eval_split="eval",
                 image_size=32, eval_image_size=64, resize=0, random_flip=True, seed=0, num_threads=2, prefetch=4)


@pytest.fixture
def make_data_config():
  """Returns `make(**overrides) -> ConfigDict` with the same fields as the preset (small sizes for speed)."""

  def make(**overrides):
    unknown = set(overrides) - set(_DEFAULTS)
    assert not unknown, f"not a config.data field: {unknown}"
    return ml_collections.ConfigDict({**_DEFAULTS, **overrides})

  return make
