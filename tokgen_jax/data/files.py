"""Files replaced as a whole are written atomically: to a temporary file in the same directory, then
`os.replace`, so a crash or preemption never leaves a truncated file behind."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yield a temporary path next to `path`; on success move it over `path`, on failure delete it.

  The temporary name keeps the final extension so format-sniffing writers (imageio, PIL) still see it, and
  lives in the same directory so `os.replace` is a rename within one filesystem, which is atomic.
  """
  path = os.fspath(path)
  directory, filename = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  stem, suffix = os.path.splitext(filename)
  temporary = os.path.join(directory, f".{stem}.{uuid.uuid4().hex}.tmp{suffix}")
  try:
    yield temporary
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
