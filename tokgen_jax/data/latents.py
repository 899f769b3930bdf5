"""Latent shards: the named arrays a frozen tokenizer produced, written once by `--mode=encode` and read lazily.

A second stage (an AR, masked, next-scale or diffusion generator) trains on a tokenizer's latents, not on pixels,
so the tokenizer runs over the dataset once. Each example is a dict of named arrays: `tokens` (int ids, any
grid, optionally a levels dim), `latents` (float), one array per hierarchy layer, scale or plane (`tokens_0`,
`latents_xy`, ...), boolean masks (`tokens_0_mask`), `label` (int scalar), plus an optional caption whose text
embedding is stored once per distinct caption.

Layout of one split, `directory/<split>/`: one `part_<p>/` per writing process (process p encodes the p-th
contiguous block of the dataset, so the parts in order are the dataset in order), each holding
- `shard_<k>.<name>.npy`: `shard_size` examples of array `name` (the last shard fewer). Integer arrays are stored
  as uint16 when every value of the shard fits, else int32; other dtypes as given. Captions are `caption` (fixed
  width unicode) and `text_row` (int32, the caption's row of the part's text table).
- `text.captions.npy`, `text.embeddings.npy` (float16 [U, L, D]), `text.mask.npy` (bool [U, L]): the part's
  distinct captions in first-seen order and their text encoder states (only with a text encoder).
- `metadata.json`, written last: its presence marks a finished part. It records the part index and count, the
  per-example spec of every array (shape, dtype, largest value for integers), every shard with its count, the
  tokenizer's own metadata, and the moments of every float array per channel of its last axis (count, Σx,
  Σx²), from which `LatentSource.scale_factor` gives LDM's latent scale 1 / std and `channel_moments` each
  channel's mean and std, over all parts.

Every file is written under a temporary name and renamed into place, so a killed encode never leaves a
half-written file under a final name; a part without `metadata.json` is unfinished, and the next writer for it
deletes its leftovers. A finished part is never overwritten.

`LatentSource` reads a split without loading it: each `.npy` is memory-mapped (`np.load(mmap_mode="r")`) when an
example of its shard is first read, at most `max_open_shards` shards stay mapped, and an example is copied out on
access. Memory therefore stays flat whatever the split's size (`python -m tokgen_jax.bench.latent_reading`).
Every file is checked against `metadata.json` when it is mapped, and every integer example against the recorded
range when it is read. `make_latent_pipeline` turns a split into Grain batches with the image pipeline's
structure: train is this process's slice of the global stream (`streams.global_stream`), eval one contiguous
block per process padded with masked zero examples; both are `MapDataset`s, so iterator state resumes exactly.
"""

from __future__ import annotations

import collections
import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np
from etils import epath

from tokgen_jax.data import streams
from tokgen_jax.data import files
from tokgen_jax.data.files import atomic_path
from tokgen_jax.errors import ConfigError

FORMAT_VERSION = 2
SOURCE_NAMES = ("latents", "tokens")  # config.data.source values that read latent shards
METADATA_FILE = "metadata.json"
CAPTION, TEXT_ROW = "caption", "text_row"
_TEXT_ARRAYS = ("captions", "embeddings", "mask")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_LEFTOVER = re.compile(r"(shard_\d{5,}|text)\.[A-Za-z0-9_]+\.npy|\..*\.tmp(\.\w+)?")  # data, or atomic_path temps
_INT32_MAX = np.iinfo(np.int32).max
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def part_name(part: int) -> str:
  return f"part_{part:05d}"


def _shard_file(shard: int, name: str) -> str:
  return f"shard_{shard:05d}.{name}.npy"


def _save_npy(path: epath.Path, array: np.ndarray) -> None:
  """`array` as `.npy` at `path`, all of it or nothing (`atomic_path` syncs and renames, or uploads once)."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as file:
      np.save(file, array, allow_pickle=False)


def _storage_dtype(array: np.ndarray) -> np.dtype:
  if array.dtype.kind not in "iu":
    return array.dtype
  fits_uint16 = array.size == 0 or (array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max)
  return np.dtype(np.uint16) if fits_uint16 else np.dtype(np.int32)


def _logical_dtype(array: np.ndarray) -> str:
  """The dtype a reader hands out: int32 for any integers, "str" for captions of any width, else as stored."""
  return {"i": "int32", "u": "int32", "U": "str"}.get(array.dtype.kind, array.dtype.name)


# ------------------------------------------------------------------------------------------------------ writer


class LatentShardWriter:
  """Writes this process's part of one split: `directory/<split>/part_<p>/shard_<k>.<name>.npy` + `metadata.json`.

  Use as a context manager, or call `close()` yourself: nothing counts as written until `close()` has written
  `metadata.json`. Leaving the `with` block through an exception writes no metadata, so readers refuse the split.
  """

  def __init__(self, directory: str | os.PathLike, split: str, *, shard_size: int = 10_000, part: int = 0,
               num_parts: int = 1, metadata: dict | None = None):
    if not isinstance(split, str) or not split or split in (".", "..") or "/" in split or os.sep in split:
      raise ConfigError(f"LatentShardWriter split={split!r} must be a plain directory name such as 'train'.")
    if int(shard_size) < 1:
      raise ConfigError(f"LatentShardWriter shard_size={shard_size} must be at least 1 (examples per shard file).")
    if not 0 <= int(part) < int(num_parts):
      raise ConfigError(f"LatentShardWriter part={part} must lie in [0, num_parts={num_parts}) (one part per "
                        "writing process: part = process index, num_parts = process count).")
    self.part_dir = files.as_path(directory) / split / part_name(int(part))
    self._split, self._part, self._num_parts = split, int(part), int(num_parts)
    self._shard_size = int(shard_size)
    self._user_metadata = _json_checked(dict(metadata or {}))
    self._prepare_directory()
    self._pending: list[dict[str, np.ndarray]] = []
    self._num_pending = 0
    self._shards: list[dict[str, Any]] = []
    self._spec: dict[str, dict[str, Any]] | None = None  # per-example layout fixed by the first add()
    self._text_rows: dict[str, int] = {}  # caption → row of the part's text table, in first-seen order
    self._moments: dict[str, tuple] = {}  # float array → (values per channel, Σx, Σx² per last-axis channel)
    self._closed = False

  def _prepare_directory(self) -> None:
    if (self.part_dir / METADATA_FILE).exists():
      raise ConfigError(
          f"{self.part_dir / METADATA_FILE} exists: part {self._part} of latent split '{self._split}' was already "
          f"written there. Finished latents are never overwritten; delete {self.part_dir.parent} to write the split "
          "again, or pick another path.")
    self.part_dir.mkdir(parents=True, exist_ok=True)
    leftovers = self.part_dir.iterdir() if self.part_dir.is_dir() else ()  # gs:// has no empty directories
    for path in leftovers:  # of an interrupted encode (no metadata.json: unfinished)
      if _LEFTOVER.fullmatch(path.name):
        path.unlink()

  def add(self, arrays: dict[str, np.ndarray], captions: Sequence[str] | None = None) -> None:
    """`arrays`: name → [n, ...] (integers ≥ 0, floats or bools; e.g. `tokens`, `latents`, `label`, masks);
    captions: n strings. Every call must give the same names, per-example shapes and dtype kinds."""
    if self._closed:
      raise RuntimeError(f"LatentShardWriter for {self.part_dir} is closed; add() must come before close().")
    batch = _checked_batch(arrays, captions)
    if captions is not None:
      batch[TEXT_ROW] = np.asarray([self._text_rows.setdefault(c, len(self._text_rows)) for c in captions], np.int32)
    self._check_spec(batch)
    self._pending.append(batch)
    self._num_pending += len(next(iter(batch.values())))
    if self._num_pending >= self._shard_size:
      self._flush(final=False)

  def _check_spec(self, batch: dict[str, np.ndarray]) -> None:
    spec = {name: {"shape": list(array.shape[1:]), "dtype": _logical_dtype(array)} for name, array in batch.items()}
    if self._spec is None:
      self._spec = {name: dict(entry, max_value=-1) for name, entry in spec.items()}
    elif spec != {name: {k: v for k, v in entry.items() if k != "max_value"} for name, entry in self._spec.items()}:
      raise ConfigError(f"LatentShardWriter.add for {self.part_dir}: this call gives {_describe(spec)} but earlier "
                        f"calls gave {_describe(self._spec)}. Every add() of a split must give the same arrays "
                        "with the same per-example shapes and dtypes, and captions either always or never.")
    for name, array in batch.items():
      if array.dtype.kind in "iu" and array.size:
        self._spec[name]["max_value"] = max(self._spec[name]["max_value"], int(array.max()))
      if array.dtype.kind == "f":  # per-channel moments for a latent normalization, summed in float64
        values = array.astype(np.float64).reshape(-1, array.shape[-1] if array.ndim > 1 else 1)
        count, total, squares = self._moments.get(name, (0, 0.0, 0.0))
        self._moments[name] = (count + len(values), total + values.sum(0), squares + np.square(values).sum(0))

  def _flush(self, final: bool) -> None:
    """Writes every full shard of the pending examples (and, when `final`, the partial last one); the rest stay."""
    merged = {name: np.concatenate([batch[name] for batch in self._pending]) for name in self._pending[0]}
    count = len(next(iter(merged.values())))
    end = count if final else count - count % self._shard_size
    for start in range(0, end, self._shard_size):
      self._write_shard({name: value[start:start + self._shard_size] for name, value in merged.items()})
    self._pending = [{name: value[end:] for name, value in merged.items()}] if end < count else []
    self._num_pending = count - end

  def _write_shard(self, batch: dict[str, np.ndarray]) -> None:
    index = len(self._shards)
    for name, array in batch.items():
      _save_npy(self.part_dir / _shard_file(index, name), array.astype(_storage_dtype(array)))
    self._shards.append({"index": index, "num_examples": int(len(next(iter(batch.values()))))})

  def close(self, encode_texts: Callable[[list[str]], tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Flush the last shard; if captions were given and `encode_texts` is not None, call it once on the part's
    distinct captions → (embeddings float [U, L, D], mask bool [U, L]) and write the text table; then write
    `metadata.json` and return it."""
    if self._closed:
      raise RuntimeError(f"LatentShardWriter for {self.part_dir} is already closed.")
    if not self._shards and not self._num_pending:
      raise ConfigError(f"LatentShardWriter for {self.part_dir} got no examples, so there is nothing to write. "
                        f"Check that this process's share of split '{self._split}' has examples.")
    if self._num_pending:
      self._flush(final=True)
    text_shape = self._write_text(encode_texts) if CAPTION in self._spec and encode_texts else None
    metadata = self._metadata(text_shape)
    with atomic_path(self.part_dir / METADATA_FILE) as tmp:
      epath.Path(tmp).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    self._closed = True
    return metadata

  def _write_text(self, encode_texts: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]) -> tuple[int, int]:
    captions = list(self._text_rows)  # dicts keep insertion order: row r is the r-th distinct caption
    embeddings, mask = _checked_text(encode_texts(captions), len(captions))
    for name, array in zip(_TEXT_ARRAYS, (np.asarray(captions, dtype=str), embeddings, mask)):
      _save_npy(self.part_dir / f"text.{name}.npy", array)
    return embeddings.shape[1], embeddings.shape[2]

  def _metadata(self, text_shape: tuple[int, int] | None) -> dict:
    text_length, text_dim = text_shape or (0, 0)
    return {
        "format_version": FORMAT_VERSION, "split": self._split, "part": self._part, "num_parts": self._num_parts,
        "num_examples": sum(shard["num_examples"] for shard in self._shards), "arrays": self._spec,
        "shards": self._shards, "has_text": text_shape is not None, "num_texts": len(self._text_rows),
        "text_length": int(text_length), "text_dim": int(text_dim), "tokenizer": self._user_metadata,
        "moments": {name: {"count": int(count), "sum": np.asarray(total).tolist(),
                           "sum_squares": np.asarray(squares).tolist()}
                    for name, (count, total, squares) in self._moments.items()},
    }

  def __enter__(self) -> LatentShardWriter:
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    if exc_type is None and not self._closed:
      self.close()


def _json_checked(metadata: dict) -> dict:
  try:
    json.dumps(metadata)
  except (TypeError, ValueError) as error:
    raise ConfigError(f"LatentShardWriter metadata must be JSON-serializable (it goes into {METADATA_FILE}): "
                      f"{error}. Pass plain str / int / float / bool / list / dict values.") from error
  return metadata


def _checked_batch(arrays: dict[str, np.ndarray], captions: Sequence[str] | None) -> dict[str, np.ndarray]:
  """The add() arguments as arrays, after checking names, kinds, ranges and that they agree on n."""
  if not arrays:
    raise ConfigError("LatentShardWriter.add got no arrays; pass e.g. {'tokens': ids} or {'latents': z}.")
  batch = {}
  for name, array in arrays.items():
    array = np.asarray(array)
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (CAPTION, TEXT_ROW):
      raise ConfigError(f"LatentShardWriter.add array name {name!r} must be an identifier (letters, digits, '_') "
                        f"other than {CAPTION!r} / {TEXT_ROW!r}; it becomes part of a file name.")
    if array.ndim < 1 or array.dtype.kind not in "iufb":
      raise ConfigError(f"LatentShardWriter.add '{name}' must be a numeric or bool array [n, ...], got "
                        f"{array.dtype} {array.shape}.")
    if array.dtype.kind in "iu" and array.size and (array.min() < 0 or array.max() > _INT32_MAX):
      raise ConfigError(f"LatentShardWriter.add '{name}' ids must lie in [0, {_INT32_MAX}], got "
                        f"[{array.min()}, {array.max()}]. Pass codebook indices, not signed or packed codes.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
      raise ConfigError(f"LatentShardWriter.add '{name}' holds NaN or inf; the tokenizer's latents are not finite. "
                        "Check the tokenizer checkpoint before encoding with it.")
    batch[name] = array
  counts = {name: len(array) for name, array in batch.items()}
  if captions is not None:
    captions = list(captions)
    if not all(isinstance(caption, str) for caption in captions):
      raise ConfigError(f"LatentShardWriter.add captions must be strings, got types "
                        f"{sorted({type(c).__name__ for c in captions})}.")
    counts[CAPTION] = len(captions)
    batch[CAPTION] = np.asarray(captions, dtype=str).reshape(len(captions))
  if len(set(counts.values())) != 1:
    raise ConfigError(f"LatentShardWriter.add arrays disagree on the example count: {counts}; give every array "
                      "(and the captions) one row per example.")
  return batch


def _describe(spec: dict[str, dict[str, Any]]) -> str:
  return ", ".join(f"{name} {entry['dtype']} {tuple(entry['shape'])}" for name, entry in sorted(spec.items()))


def _checked_text(encoded, count: int) -> tuple[np.ndarray, np.ndarray]:
  """encode_texts' `(embeddings [U, L, D], mask [U, L])` as (float16, bool), after checking shapes and range."""
  embeddings, mask = (np.asarray(array) for array in encoded)
  if embeddings.ndim != 3 or len(embeddings) != count or mask.shape != embeddings.shape[:2]:
    raise ConfigError(f"LatentShardWriter.close encode_texts must return (embeddings [U={count}, L, D], mask "
                      f"[U, L]) for the {count} distinct captions, got shapes {embeddings.shape} and {mask.shape}.")
  if not np.isfinite(embeddings).all() or np.abs(embeddings).max(initial=0.0) > _FLOAT16_MAX:
    raise ConfigError("LatentShardWriter.close encode_texts returned non-finite or out-of-float16-range "
                      "embeddings; text embeddings are stored as float16. Check the text encoder.")
  return embeddings.astype(np.float16), mask.astype(bool)


# ------------------------------------------------------------------------------------------------------ reader


def _corrupt(path: epath.Path, problem: str) -> str:
  split_dir = path.parent.parent if path.parent.name.startswith("part_") else path.parent
  return (f"{path} is unusable: {problem}. The latent split is incomplete or damaged; delete {split_dir} and "
          "re-run `--mode=encode` with this config.")


_METADATA_KEYS = ("format_version", "split", "part", "num_parts", "num_examples", "arrays", "shards", "has_text",
                  "num_texts", "text_length", "text_dim", "tokenizer")


def _read_json(path: epath.Path) -> dict:
  try:
    metadata = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ConfigError(_corrupt(path, f"not readable JSON ({error})")) from error
  if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
    version = metadata.get("format_version") if isinstance(metadata, dict) else None
    raise ConfigError(f"{path} has format_version {version!r}, but this code reads format version "
                      f"{FORMAT_VERSION}. Delete {path.parent.parent} and re-run `--mode=encode` with this code.")
  missing = [key for key in _METADATA_KEYS if key not in metadata]
  if missing:
    raise ConfigError(_corrupt(path, f"it lacks the fields {missing}"))
  return metadata


def read_split_metadata(split_dir: epath.Path) -> list[dict]:
  """The metadata of every part of a finished split, in part order; ConfigError when any part is missing."""
  first = split_dir / part_name(0) / METADATA_FILE
  if not first.is_file():
    raise ConfigError(
        f"No finished latent split at {split_dir} ({part_name(0)}/{METADATA_FILE} is missing; an interrupted encode "
        "leaves none). Run `--mode=encode` with this config first, or point config.data.path at the directory it "
        "wrote.")
  parts = [_read_json(first)]
  for part in range(1, int(parts[0]["num_parts"])):
    path = split_dir / part_name(part) / METADATA_FILE
    if not path.is_file():
      raise ConfigError(f"{split_dir}: part {part} of {parts[0]['num_parts']} is unfinished ({path} is missing): "
                        "a process of the encode did not finish. Re-run `--mode=encode` with the same number of "
                        f"processes after deleting {split_dir}.")
    parts.append(_read_json(path))
  for part in parts[1:]:
    if part["arrays"].keys() != parts[0]["arrays"].keys() or part["has_text"] != parts[0]["has_text"] or any(
        part["arrays"][n]["shape"] != parts[0]["arrays"][n]["shape"] for n in part["arrays"]):
      raise ConfigError(_corrupt(split_dir / part_name(part["part"]) / METADATA_FILE,
                                 f"its arrays {_describe(part['arrays'])} differ from part 0's "
                                 f"{_describe(parts[0]['arrays'])}"))
  return parts


def _open_npy(path: epath.Path, shape: tuple[int, ...], kinds: str) -> np.ndarray:
  """`path` opened lazily (`files.open_npy_rows`: memory-mapped, or row reads on gs://) after checking it against
  the metadata's shape and dtype kinds."""
  if not path.is_file():
    raise ConfigError(_corrupt(path, "the file is missing"))
  try:
    array = files.open_npy_rows(path)
  except (OSError, ValueError, EOFError) as error:
    raise ConfigError(_corrupt(path, f"not a readable .npy file ({type(error).__name__}: {error})")) from error
  if array.shape != shape:
    raise ConfigError(_corrupt(path, f"its shape is {array.shape}, {METADATA_FILE} says {shape}"))
  if array.dtype.kind not in kinds or (kinds == "iu" and array.dtype not in (np.uint16, np.int32)):
    raise ConfigError(_corrupt(path, f"its dtype is {array.dtype}, not what {METADATA_FILE} records"))
  return array


def _kinds(dtype: str) -> str:
  return {"int32": "iu", "str": "U"}.get(dtype) or np.dtype(dtype).kind


class LatentSource:
  """Random access over one split written by LatentShardWriter: `len()`, `source[i] -> dict`, read lazily.

  Attributes:
    specs: name → {"shape", "dtype", "max_value"} of every stored array (captions excluded).
    metadata: part 0's metadata (the tokenizer's own metadata is under "tokenizer").
  """

  def __init__(self, directory: str | os.PathLike, split: str, max_open_shards: int = 4):
    self.split_dir = files.as_path(directory) / split
    self._parts = read_split_metadata(self.split_dir)
    self.metadata = self._parts[0]
    self.specs = {name: entry for name, entry in self.metadata["arrays"].items() if name not in (CAPTION, TEXT_ROW)}
    self.has_captions = CAPTION in self.metadata["arrays"]
    self._shards = [(part["part"], shard["index"], shard["num_examples"]) for part in self._parts
                    for shard in part["shards"]]
    self._starts = np.cumsum([0] + [count for _, _, count in self._shards])
    self._open: collections.OrderedDict[tuple[int, int], dict[str, np.ndarray]] = collections.OrderedDict()
    self._texts: dict[int, dict[str, np.ndarray]] = {}
    self._max_open = max(1, int(max_open_shards))
    self._lock = threading.Lock()

  @property
  def description(self) -> str:
    return f"latent split {self.split_dir}"

  def _moment_sums(self, names: str | Sequence[str]) -> tuple[float, np.ndarray, np.ndarray]:
    """(rows, per-channel sums, sums of squares) of the float arrays `names`, pooled over them and all parts (a
    factorized tokenizer's planes share one normalization)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    stored = [(name, part.get("moments", {}).get(name)) for name in names for part in self._parts]
    missing = sorted({name for name, entry in stored if entry is None})
    if missing:
      raise ConfigError(f"{self.split_dir}: no moments of {missing} in its metadata (written by an older version, "
                        f"or not float arrays: {sorted(self.specs)}). Encode the split again.")
    entries = [entry for _, entry in stored]
    if len({np.asarray(entry["sum"]).shape for entry in entries}) != 1:
      raise ConfigError(f"{self.split_dir}: the arrays {list(names)} have different channel counts, so they "
                        "cannot share one latent normalization.")
    return (sum(entry["count"] for entry in entries), sum(np.asarray(entry["sum"]) for entry in entries),
            sum(np.asarray(entry["sum_squares"]) for entry in entries))

  def channel_moments(self, names: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) `[C]` of each channel (last axis) of the float array(s) `names` over the split, all parts."""
    count, total, squares = self._moment_sums(names)
    if total.ndim != 1:
      raise ConfigError(f"{self.split_dir}: the metadata holds one moment of {names} for all channels (written by "
                        "an older version); encode the split again for per-channel moments.")
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))

  def moments(self, names: str | Sequence[str]) -> tuple[float, float]:
    """(mean, std) over every value of the float array(s) `names` in the split, all parts together."""
    count, total, squares = self._moment_sums(names)
    mean = float(total.sum()) / (count * total.size)
    variance = max(float(squares.sum()) / (count * total.size) - mean * mean, 0.0)
    return mean, float(np.sqrt(variance))

  def scale_factor(self, names: str | Sequence[str] = "latents") -> float:
    """1 / std of `names` over the split: LDM's latent scale factor (0.18215 for its f8 KL autoencoder), which
    brings the latents to unit variance before diffusion."""
    _, std = self.moments(names)
    if not std > 0:
      raise ConfigError(f"{self.split_dir}: {names} have zero variance; its tokenizer encodes every example alike. "
                        "Check the tokenizer checkpoint.")
    return 1.0 / std

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _locate(self, index: int) -> tuple[int, int]:
    if not 0 <= index < len(self):
      raise IndexError(f"{self.description} has {len(self)} examples; index {index} is out of range.")
    position = int(np.searchsorted(self._starts, index, side="right")) - 1
    return position, index - int(self._starts[position])

  def _shard(self, position: int) -> dict[str, np.ndarray]:
    part, shard, count = self._shards[position]
    key = (part, shard)
    with self._lock:  # Grain reads from several threads
      if key not in self._open:
        part_dir = self.split_dir / part_name(part)
        self._open[key] = {name: _open_npy(part_dir / _shard_file(shard, name), (count, *entry["shape"]),
                                           _kinds(entry["dtype"]))
                           for name, entry in self.metadata["arrays"].items()}
        if len(self._open) > self._max_open:
          self._open.popitem(last=False)  # unmapping a shard lets its pages go (readers holding it keep it alive)
      self._open.move_to_end(key)
      return self._open[key]

  def _text(self, part: int) -> dict[str, np.ndarray]:
    with self._lock:
      return self._texts[part] if part in self._texts else self._open_text(part)

  def _open_text(self, part: int) -> dict[str, np.ndarray]:
    meta, part_dir = self._parts[part], self.split_dir / part_name(part)
    count, length, dim = meta["num_texts"], meta["text_length"], meta["text_dim"]
    shapes = {"captions": (count,), "embeddings": (count, length, dim), "mask": (count, length)}
    self._texts[part] = {name: _open_npy(part_dir / f"text.{name}.npy", shapes[name], kinds)
                         for name, kinds in zip(_TEXT_ARRAYS, ("U", "f", "b"))}
    return self._texts[part]

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    """Every stored array of example `index` (integers as int32), plus `text` (float32 [L, D]) and `text_mask`
    (bool [L]), the encoding of its caption, when the split has them."""
    position, offset = self._locate(int(index))
    shard, part_specs = self._shard(position), self._parts[self._shards[position][0]]["arrays"]
    example = {name: _checked_value(np.array(shard[name][offset]), part_specs[name], self._path(position, name))
               for name in self.specs}
    if self.metadata["has_text"]:
      text = self._text(self._shards[position][0])
      row = int(shard[TEXT_ROW][offset])
      example["text"] = text["embeddings"][row].astype(np.float32)
      example["text_mask"] = np.array(text["mask"][row])
    return example

  def caption(self, index: int) -> str:
    position, offset = self._locate(int(index))
    return str(self._shard(position)[CAPTION][offset])

  def _path(self, position: int, name: str) -> epath.Path:
    part, shard, _ = self._shards[position]
    return self.split_dir / part_name(part) / _shard_file(shard, name)

  def padding_example(self) -> dict[str, np.ndarray]:
    """An all-zero example with this split's layout (for eval padding)."""
    example = {name: np.zeros(entry["shape"], np.dtype(entry["dtype"])) for name, entry in self.specs.items()}
    if self.metadata["has_text"]:
      length, dim = self.metadata["text_length"], self.metadata["text_dim"]
      example["text"], example["text_mask"] = np.zeros((length, dim), np.float32), np.zeros(length, bool)
    return example


def _checked_value(value: np.ndarray, entry: dict[str, Any], path: epath.Path) -> np.ndarray:
  """One example's array in its logical dtype; integers outside [0, max_value] would index past an embedding
  table, which JAX does not catch, so they are refused naming the file."""
  if entry["dtype"] != "int32":
    return value
  if value.size and (value.min() < 0 or value.max() > entry["max_value"]):
    raise ConfigError(_corrupt(path, f"its values span [{value.min()}, {value.max()}], outside [0, "
                                     f"max_value={entry['max_value']}] that {METADATA_FILE} records"))
  return value.astype(np.int32)


def check_split_fits(directory: str | os.PathLike, split: str, specs: dict[str, Any]) -> None:
  """ConfigError when the finished split `directory/split` lacks an array of `specs` (name → `LatentSpec`), holds
  it in another shape, or holds ids at or above its vocabulary: another tokenizer wrote it. A split not written
  yet passes (`--mode=encode` writes it)."""
  split_dir = files.as_path(directory) / split
  if not (split_dir / part_name(0) / METADATA_FILE).is_file():
    return
  stored = read_split_metadata(split_dir)
  fix = (f"Point config.tokenizer at the tokenizer that wrote them, or delete {split_dir} and re-run "
         "`--mode=encode` with this config.")
  path = split_dir / part_name(0) / METADATA_FILE
  for name, spec in specs.items():
    if name not in stored[0]["arrays"]:
      raise ConfigError(f"{path}: it holds the arrays {sorted(stored[0]['arrays'])}, but the configured tokenizer "
                        f"encodes '{name}'. {fix}")
    if tuple(stored[0]["arrays"][name]["shape"]) != tuple(spec.shape):
      raise ConfigError(f"{path}: its '{name}' have per-example shape {tuple(stored[0]['arrays'][name]['shape'])}, "
                        f"but config.tokenizer.experiment makes shape {tuple(spec.shape)}. {fix}")
    highest = max(part["arrays"][name].get("max_value", -1) for part in stored)
    if spec.vocab_size and highest >= spec.vocab_size:
      raise ConfigError(f"{path}: its '{name}' ids reach {highest}, outside the configured tokenizer's vocabulary "
                        f"of {spec.vocab_size} ids (config.tokenizer.experiment.model.quantizer). {fix}")


# ---------------------------------------------------------------------------------------------------- pipeline


def make_latent_pipeline(data_config, split: str, *, global_batch_size: int, process_index: int | None = None,
                         process_count: int | None = None) -> grain.DatasetIterator:
  """An iterator of batches of every stored array (`[B, ...]`, integers as int32), plus 'text' float32 [B, L, D]
  and 'text_mask' bool [B, L] when the split has them; eval adds 'mask': bool [B] (False on padding).

  Args:
    data_config: `config.data` (fields: path, the directory `--mode=encode` wrote; train_split, eval_split, the
      split directory names; seed, num_threads, prefetch).
    split: 'train' (infinite, shuffled) or 'eval' (one deterministic pass).
    global_batch_size: batch size over all processes; each process yields `global_batch_size // process_count`.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of data-loading processes; defaults to `jax.process_count()`.
  """
  if split not in streams.SPLITS:
    raise ValueError(f"make_latent_pipeline split must be one of {streams.SPLITS}, got {split!r}.")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch_size = streams.local_batch_size(global_batch_size, process_index, process_count)
  source = open_configured_source(data_config, split)
  if split == "train":
    dataset = _train_dataset(source, data_config, local_batch_size, process_index, process_count)
  else:
    dataset = _eval_dataset(source, local_batch_size, process_index, process_count)
  read_options = grain.ReadOptions(num_threads=int(data_config.num_threads),
                                   prefetch_buffer_size=int(data_config.prefetch))
  return iter(dataset.to_iter_dataset(read_options))


def open_configured_source(data_config, split: str) -> LatentSource:
  """The `LatentSource` of `split` ('train' | 'eval') under `config.data.path`."""
  if not str(data_config.path):
    raise ConfigError("config.data.path is empty, so there is no latent directory to read. Set it to the directory "
                      "`--mode=encode` wrote (the trainer fills in WORKDIR/tokens when it runs encode itself).")
  split_name = data_config.train_split if split == "train" else data_config.eval_split
  return LatentSource(str(data_config.path), str(split_name))


def _train_dataset(source: LatentSource, data_config, local_batch_size: int, process_index: int,
                   process_count: int) -> grain.MapDataset:
  stream = streams.global_stream(len(source), int(data_config.seed), local_batch_size * process_count,
                                  process_index, process_count)
  return stream.map(lambda element: source[element[0]]).batch(local_batch_size, drop_remainder=True)


def _eval_dataset(source: LatentSource, local_batch_size: int, process_index: int,
                  process_count: int) -> grain.MapDataset:
  if len(source) == 0:
    raise ConfigError(f"{source.description} has no examples to evaluate on. Encode a non-empty eval split.")
  # shard_and_pad works on (record, top, left) tile specs and pads with (-1, 0, 0): a 1-tuple per example keeps
  # the record index in front, so -1 marks padding.
  specs = streams.shard_and_pad([(index,) for index in range(len(source))], local_batch_size, process_index,
                                 process_count)
  padding = source.padding_example()

  def example(index: int) -> dict[str, np.ndarray]:
    if index < 0:
      return {**padding, "mask": np.bool_(False)}
    return {**source[index], "mask": np.bool_(True)}

  return grain.MapDataset.source([spec[0] for spec in specs]).map(example).batch(local_batch_size)
