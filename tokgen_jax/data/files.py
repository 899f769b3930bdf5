"""Paths that may be local or on Cloud Storage (`gs://bucket/...`), and the few file operations whose guarantees
differ between the two.

Every path the project reads or writes goes through `as_path`, an etils `epath.Path` (what Orbax uses): local
paths as `pathlib`-like paths, `gs://` ones through gcsfs. What object storage lacks, and what stands in for it:

* No atomic rename. A file replaced as a whole (`atomic_path`) is written locally first; on a local disk it is
  renamed over the target, on GCS it is uploaded as one object, which readers see whole or not at all.
* No append. A log written line by line lives in a `MirroredDirectory`: appended on local disk as before, and
  on GCS appended to a local copy that is uploaded whole (at most once a second, GCS's per-object update rate,
  and on close), so the object in the bucket is always a whole file of whole lines.
* No directory rename. `move_tree` copies every file and only then deletes the source, so a kill in between
  leaves the source intact.

Readers that open real files only (ffmpeg, array_record, torch.load) get a local copy from `LocalFileCache`
(`readable_file`, `readable_directory`), downloaded once and reused by later runs.

gcsfs caches directory listings by default; several processes (and TensorStore, which writes Orbax's arrays)
change a bucket behind its back, so the cache is turned off here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import fsspec.config
import numpy as np
from etils import epath

from tokgen_jax.errors import ConfigError

REMOTE_PREFIXES = ("gs://",)
_UPLOAD_CHUNK = 16 * 2**20
_GCS_ENDPOINT = "https://storage.googleapis.com"

for _protocol in ("gs", "gcs"):  # before any gcsfs instance exists: fsspec applies this config on creation
  fsspec.config.conf.setdefault(_protocol, {})["use_listings_cache"] = False


def is_remote(path: str | os.PathLike) -> bool:
  return os.fspath(path).startswith(REMOTE_PREFIXES)


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an `epath.Path`: a `gs://` URL kept as it is, a local path made absolute (`~` expanded)."""
  text = os.fspath(path)
  return epath.Path(text if is_remote(text) else os.path.abspath(os.path.expanduser(text)))


def bucket_of(path: str | os.PathLike) -> str:
  """`gs://bucket/a/b` → `bucket`."""
  return os.fspath(path).split("://", 1)[1].split("/", 1)[0]


def size(path: str | os.PathLike) -> int:
  return int(as_path(path).stat().length)


def relative_files(directory: str | os.PathLike) -> list[str]:
  """The paths of every file under `directory`, relative to it with '/' separators, sorted (the same order on
  every platform and store)."""
  directory = as_path(directory)
  found = []
  for root, _, names in directory.walk():
    if is_remote(directory) and not is_remote(root):  # fsspec walks gs:// without the scheme
      root = f"gs://{root}"
    relative_root = epath.Path(root).relative_to(directory).as_posix()
    found += [name if relative_root == "." else f"{relative_root}/{name}" for name in names]
  return sorted(found)


def file_sizes(directory: str | os.PathLike, skip: tuple[str, ...] = ()) -> dict[str, int]:
  """`{relative path: bytes}` of every file under `directory` (names in `skip` left out)."""
  directory = as_path(directory)
  return {relative: size(directory / relative) for relative in relative_files(directory)
          if relative.rsplit("/", 1)[-1] not in skip}


# ------------------------------------------------------------------------------------------------ whole files


def _upload(local: str, target: epath.Path) -> None:
  """One object from a local file; GCS makes it visible only once the upload completes."""
  with open(local, "rb") as source, target.open("wb") as destination:
    shutil.copyfileobj(source, destination, _UPLOAD_CHUNK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yield a local temporary path to write; on success it becomes `path` whole, on failure it is deleted.

  Local: the temporary file sits next to `path` (one filesystem, so `os.replace` is an atomic rename) and is
  fsynced first. `gs://`: it sits in the system temp directory and is uploaded as one object. The temporary name
  keeps the final extension so format-sniffing writers (imageio, PIL) still see it.
  """
  remote = is_remote(path)
  target = as_path(path)
  if remote:
    directory = tempfile.mkdtemp(prefix="tokgen_upload_")
  else:
    directory = os.fspath(target.parent)
    os.makedirs(directory, exist_ok=True)
  stem, suffix = os.path.splitext(target.name)
  temporary = os.path.join(directory, f".{stem}.{uuid.uuid4().hex}.tmp{suffix}")
  try:
    yield temporary
    if remote:
      _upload(temporary, target)
    else:
      with open(temporary, "rb") as file:
        os.fsync(file.fileno())  # data on disk before the rename: a power loss cannot leave an empty new name
      os.replace(temporary, target)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
    if remote:
      shutil.rmtree(directory, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
  """`text` (UTF-8) as the whole content of `path`, atomically (`atomic_path`)."""
  with atomic_path(path) as temporary:
    with open(temporary, "w", encoding="utf-8") as file:
      file.write(text)


def move_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
  """Move the directory `source` to `target` (which must not exist). Local: one rename. GCS has no rename:
  every file is copied, then the source deleted, so a kill part-way leaves the source whole."""
  source, target = as_path(source), as_path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  if not is_remote(source):
    os.replace(source, target)
    return
  for relative in file_sizes(source):
    (target / relative).parent.mkdir(parents=True, exist_ok=True)
    (source / relative).copy(target / relative)
  source.rmtree()


# ------------------------------------------------------------------------------------------------ local cache


class LocalFileCache:
  """Local copies of gs:// objects for readers that open real files only (ffmpeg for videos, array_record's C++
  reader for TFDS): each object is downloaded once, into `directory` under a name derived from its URL and size
  (so a replaced object is fetched again and a later run reuses the copy), and this process deletes its least
  recently used copies once they add up to more than `max_bytes`; a copy in use (`open`) is never deleted.
  """

  def __init__(self, directory: str | os.PathLike, max_bytes: int):
    self.directory = os.fspath(directory)
    self.max_bytes = max_bytes
    self._lock = threading.Lock()
    self._copies: dict[str, int] = {}  # local path -> bytes, least recently used first
    self._in_use: dict[str, int] = {}
    self._downloads: dict[str, threading.Lock] = {}

  def _local_name(self, path: str, length: int) -> str:
    digest = hashlib.sha256(f"{path}\0{length}".encode()).hexdigest()[:32]
    return os.path.join(self.directory, f"{digest}-{as_path(path).name}")

  def _download(self, path: str, local: str, length: int) -> None:
    os.makedirs(self.directory, exist_ok=True)
    free = shutil.disk_usage(self.directory).free
    if free < length:
      raise ConfigError(
          f"{path} ({length / 2**30:.2f} GiB) must be copied to local disk to be read, but the cache directory "
          f"{self.directory} has {free / 2**30:.2f} GiB free. Point TOKGEN_CACHE_DIR at a larger disk, or mount "
          "the bucket (gcsfuse) and give its local path instead of the gs:// URL.")
    temporary = f"{local}.{uuid.uuid4().hex}.part"
    try:
      with as_path(path).open("rb") as source, open(temporary, "wb") as destination:
        shutil.copyfileobj(source, destination, _UPLOAD_CHUNK)
      if os.path.getsize(temporary) != length:
        raise OSError(f"{path}: downloaded {os.path.getsize(temporary)} of {length} bytes")
      os.replace(temporary, local)  # other processes on this host see the whole copy or none
    finally:
      if os.path.exists(temporary):
        os.remove(temporary)

  def _evict(self) -> None:
    """Drop unused copies, oldest first, until the rest fit `max_bytes` (caller holds the lock)."""
    total = sum(self._copies.values())
    for local in list(self._copies):
      if total <= self.max_bytes:
        return
      if not self._in_use.get(local):
        total -= self._copies.pop(local)
        with contextlib.suppress(FileNotFoundError):
          os.remove(local)

  @contextlib.contextmanager
  def open(self, path: str | os.PathLike) -> Iterator[str]:
    """The local path of a copy of the gs:// object `path`, kept while the context is open."""
    path = os.fspath(path)
    length = size(path)
    local = self._local_name(path, length)
    with self._lock:
      download_lock = self._downloads.setdefault(local, threading.Lock())
      self._in_use[local] = self._in_use.get(local, 0) + 1
    try:
      with download_lock:  # two threads asking for one object download it once
        if not (os.path.exists(local) and os.path.getsize(local) == length):
          self._download(path, local, length)
      with self._lock:
        self._copies.pop(local, None)
        self._copies[local] = length  # now the most recently used
      yield local
    finally:
      with self._lock:
        self._in_use[local] -= 1
        self._evict()

  def mirror(self, root: str | os.PathLike, under: str = "") -> str:
    """A local directory laid out as the gs:// `root`, holding a copy of every file under `root/under` (all of
    `root` by default), kept for the life of this process: readers such as TFDS open many files by name."""
    root = os.fspath(root).rstrip("/")
    local_root = os.path.join(self.directory, "trees", hashlib.sha256(root.encode()).hexdigest()[:32])
    source = f"{root}/{under}".rstrip("/") if under else root
    sizes = {f"{under}/{relative}" if under else relative: length for relative, length in file_sizes(source).items()}
    missing = {relative: length for relative, length in sizes.items()
               if not _has_size(os.path.join(local_root, relative), length)}
    os.makedirs(local_root, exist_ok=True)
    free = shutil.disk_usage(local_root).free
    if sum(missing.values()) > free:
      raise ConfigError(
          f"{source} ({sum(missing.values()) / 2**30:.2f} GiB still to copy) must be on local disk to be read, but "
          f"{local_root} has {free / 2**30:.2f} GiB free. Point TOKGEN_CACHE_DIR at a larger disk, or mount the "
          "bucket (gcsfuse) and give its local path instead of the gs:// URL.")
    for relative, length in missing.items():  # present copies (an earlier run's) are kept
      local = os.path.join(local_root, relative)
      os.makedirs(os.path.dirname(local), exist_ok=True)
      self._download(f"{root}/{relative}", local, length)
    return local_root


def _has_size(path: str, length: int) -> bool:
  return os.path.exists(path) and os.path.getsize(path) == length


_CACHE: LocalFileCache | None = None


def cache() -> LocalFileCache:
  """The process's `LocalFileCache`: `$TOKGEN_CACHE_DIR` (default `<temp dir>/tokgen_cache`), holding at most
  `$TOKGEN_CACHE_GB` GiB (default 64) of single-file copies."""
  global _CACHE
  if _CACHE is None:
    directory = os.environ.get("TOKGEN_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tokgen_cache")
    _CACHE = LocalFileCache(directory, int(float(os.environ.get("TOKGEN_CACHE_GB", "64")) * 2**30))
  return _CACHE


@contextlib.contextmanager
def readable_file(path: str | os.PathLike) -> Iterator[str]:
  """A real local file with `path`'s content: `path` itself on local disk, a cached copy of a gs:// object."""
  if not is_remote(path):
    yield os.fspath(path)
    return
  with cache().open(path) as local:
    yield local


def readable_directory(root: str | os.PathLike, under: str = "") -> str:
  """A real local directory standing for `root`: itself on local disk; for gs://, a cached mirror holding the
  files under `root/under` (`LocalFileCache.mirror`)."""
  return cache().mirror(root, under) if is_remote(root) else os.fspath(root)


# ------------------------------------------------------------------------------------------------- array rows


class RemoteNpyRows:
  """Rows of a C-ordered `.npy` object read on demand with ranged reads: what `np.load(mmap_mode="r")` gives on
  local disk, for object storage (no memory map). `array[i]` is row i; `shape` and `dtype` are the file's."""

  def __init__(self, path: epath.Path):
    self.path = path
    self._file = path.open("rb")
    version = np.lib.format.read_magic(self._file)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    self.shape, fortran_order, self.dtype = read_header(self._file)
    if fortran_order or not self.shape or self.dtype.hasobject:
      raise ValueError(f"{path}: only C-ordered arrays of at least one axis and no objects are read by rows")
    self._data_start = self._file.tell()
    self._row_shape = tuple(self.shape[1:])
    self._row_bytes = self.dtype.itemsize * int(np.prod(self._row_shape, dtype=np.int64))
    expected = self._data_start + self._row_bytes * self.shape[0]
    if size(path) < expected:
      raise ValueError(f"{path}: {size(path)} bytes, the header promises {expected} (truncated)")
    self._lock = threading.Lock()  # one file position, several reader threads

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index: int) -> np.ndarray:
    index = int(index)
    if not 0 <= index < self.shape[0]:
      raise IndexError(f"{self.path}: row {index} of {self.shape[0]}")
    with self._lock:
      self._file.seek(self._data_start + index * self._row_bytes)
      data = self._file.read(self._row_bytes)
    return np.frombuffer(data, self.dtype).reshape(self._row_shape)


def open_npy_rows(path: str | os.PathLike):
  """A `.npy` file for row access without loading it: memory-mapped on local disk, `RemoteNpyRows` on gs://."""
  if is_remote(path):
    return RemoteNpyRows(as_path(path))
  return np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)


# ---------------------------------------------------------------------------------------------- appended logs


class MirroredDirectory:
  """A directory for logs that are appended to: local files, mirrored whole to `target` when it is `gs://`.

  `local` is where writers open their files. For a local `target` it is `target` itself and `sync` does nothing.
  For `gs://` it is a fresh temporary directory; `fetch(name)` first copies an existing object down (a resumed
  run appends after the earlier lines), and `sync()` uploads every file that changed since the last upload, as a
  whole object, at most once per `min_interval_s` (`force=True` on close). A kill loses at most the lines of the
  last interval; the bucket never holds a partial file.
  """

  def __init__(self, target: str | os.PathLike, min_interval_s: float = 1.0):
    self.target = as_path(target)
    self.remote = is_remote(target)
    self.min_interval_s = min_interval_s
    self._uploaded: dict[str, tuple[int, int]] = {}
    self._last_sync = 0.0
    if self.remote:
      self.local = epath.Path(tempfile.mkdtemp(prefix="tokgen_mirror_"))
    else:
      self.local = self.target
      self.local.mkdir(parents=True, exist_ok=True)

  def fetch(self, name: str) -> epath.Path:
    """The local path of `name`, holding the target's current content if it exists there."""
    local = self.local / name
    if self.remote and (self.target / name).exists():
      local.parent.mkdir(parents=True, exist_ok=True)
      local.write_bytes((self.target / name).read_bytes())
      self._uploaded[name] = self._signature(local)
    return local

  @staticmethod
  def _signature(path: epath.Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns

  def sync(self, force: bool = False) -> None:
    if not self.remote or (not force and time.monotonic() - self._last_sync < self.min_interval_s):
      return
    for name in file_sizes(self.local):
      signature = self._signature(self.local / name)
      if self._uploaded.get(name) != signature:
        _upload(os.fspath(self.local / name), self.target / name)
        self._uploaded[name] = signature
    self._last_sync = time.monotonic()

  def close(self) -> None:
    self.sync(force=True)
    if self.remote:
      shutil.rmtree(self.local, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ reachability


def _endpoint() -> str:
  return os.environ.get("STORAGE_EMULATOR_HOST") or _GCS_ENDPOINT


def _check_endpoint(path: str, what: str, timeout_s: float) -> None:
  """A TCP connection to the storage endpoint, so an unreachable one fails in seconds, not after gcsfs's
  minute of retries."""
  endpoint = _endpoint()
  parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  try:
    socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
  except OSError as error:
    raise ConfigError(
        f"{what}={path}: the Cloud Storage endpoint {endpoint} cannot be reached ({error}). Check the network "
        f"(on a TPU VM: its service account and VPC access to storage.googleapis.com) or, for an emulator, "
        f"STORAGE_EMULATOR_HOST; or use a local path.") from error


def _forbidden(error: OSError) -> bool:
  """gcsfs reports HTTP 403 as a plain OSError("Forbidden: ..."), not a PermissionError."""
  return isinstance(error, PermissionError) or str(error).startswith("Forbidden")


def check_writable(path: str | os.PathLike, what: str = "--workdir", timeout_s: float = 10.0) -> None:
  """Raise ConfigError naming `what`, the path and the fix unless a file can be created under `path` (and
  deleted again): an unreachable endpoint, a missing bucket and a missing permission each fail here, before
  any step runs. Creates a missing local `path` (a bucket has no directories to create).

  On gs:// the probe object is written without looking the bucket up first: reading a bucket's metadata needs
  `storage.buckets.get`, which a write-only role such as objectAdmin lacks, and gcsfs's `mkdir` would create a
  missing bucket instead of failing. The upload's own 404 or 403 says which problem it is."""
  text = os.fspath(path)
  directory = as_path(text)
  remote = is_remote(text)
  if remote:
    _check_endpoint(text, what, timeout_s)
  probe = directory / f".tokgen_write_check_{uuid.uuid4().hex}"
  try:
    if not remote:
      directory.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    probe.unlink()
  except FileNotFoundError as error:
    if not remote:
      raise ConfigError(f"{what}={text}: cannot write there ({error!r}). Fix the path.") from error
    bucket = bucket_of(text)
    raise ConfigError(f"{what}={text}: the bucket gs://{bucket} does not exist. Create it (gcloud storage "
                      f"buckets create gs://{bucket} --location=<the TPU's region>) or fix the path.") from error
  except OSError as error:
    if _forbidden(error):
      grant = ("grant this machine's service account roles/storage.objectAdmin on the bucket (gcloud storage "
               f"buckets add-iam-policy-binding gs://{bucket_of(text)} --member=serviceAccount:<account> "
               "--role=roles/storage.objectAdmin)" if remote else "grant write access (chmod/chown)")
      reason = " / ".join(line.strip() for line in str(error).splitlines() if line.strip())
      raise ConfigError(f"{what}={text}: no permission to write there ({reason}). To fix it, {grant}, or "
                        "choose a path this machine may write.") from error
    raise ConfigError(f"{what}={text}: cannot write there ({error!r}). Fix the path or its storage.") from error


def main(argv: list[str]) -> int:
  """`python -m tokgen_jax.data.files PATH...`: check each path is writable from this machine (launch scripts run
  it on every worker before a job starts)."""
  if len(argv) < 2:
    print("usage: python -m tokgen_jax.data.files PATH [PATH...]", file=sys.stderr)
    return 2
  for path in argv[1:]:
    try:
      check_writable(path)
    except ConfigError as error:
      print(f"{socket.gethostname()}: {error}", file=sys.stderr)
      return 1
    print(f"{socket.gethostname()}: {path} is writable")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
