"""The source registry: every source module registers an opener per `config.data.source` kind, and whoever opens
a source looks the kind up here. So a source module never imports another to dispatch on kinds (the shapes world
registers its own image and video sources), and a new source is one `register` line in its own module.

Openers take the split ('train' | 'eval') and keyword arguments (name, data_dir, path, split_name, split_key,
max_corrupt_fraction, num_threads, and for video num_frames, fps, lavfi_sources, lavfi_size, clip_seconds,
lavfi_codec); each reads the ones it needs. `tokgen_jax.data` imports every source module, so the tables are full
once any data module is imported.
"""

from collections.abc import Callable
from typing import Any

from tokgen_jax.errors import ConfigError

IMAGE: dict[str, Callable[..., Any]] = {}
VIDEO: dict[str, Callable[..., Any]] = {}


def register(table: dict[str, Callable[..., Any]], kind: str) -> Callable:
  """Decorator: `@register(IMAGE, 'photos')` makes the function the opener of that kind."""

  def add(opener: Callable[..., Any]) -> Callable[..., Any]:
    if kind in table:
      raise ValueError(f"data source kind {kind!r} is registered twice.")
    table[kind] = opener
    return opener

  return add


def opener(table: dict[str, Callable[..., Any]], kind: str) -> Callable[..., Any]:
  if kind not in table:
    image, video = ", ".join(sorted(IMAGE)), ", ".join(sorted(VIDEO))
    raise ConfigError(f"Unknown config.data.source {kind!r}; valid image sources: {image}; video sources: {video}.")
  return table[kind]
