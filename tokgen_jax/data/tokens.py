"""Token shards: the ids a frozen tokenizer produced, written once by `--mode=tokenize` and read back by a generator.

An autoregressive generator trains on token ids, not pixels, so the tokenizer runs over the dataset once and each
split is stored under `directory/<split>/`:
- `shard_00000.npz`, `shard_00001.npz`, ...: uncompressed `np.savez` archives of `shard_size` examples each (the
  last one fewer) with `tokens` (per-example grid, stored as uint16 when every id of the shard fits, else int32),
  optional `labels` (int32 [n]) and optional `captions` (unicode [n]).
- `text.npz` (only when the split has captions and the writer was given a text encoder): the split's sorted unique
  `captions`, their per-token `embeddings` (float16 [U, L, D]) and `mask` (bool [U, L]). Each caption is encoded
  once however many examples share it.
- `metadata.json`: written last, so its presence marks a finished split. It records the example count, the
  per-example token shape, every shard with its count, what the examples carry and the tokenizer's own metadata.

Every file is written under a temporary name and renamed into place (`os.replace`), so a killed tokenize never
leaves a half-written file under a final name; a split without `metadata.json` is unfinished, and the next writer
for it deletes its leftovers. A finished split is never overwritten.

`TokenSource` loads a split into memory (token data is small) after checking every file against `metadata.json`.
`make_token_pipeline` turns it into Grain batches with the same train / eval structure as the image pipeline
(`pipeline`): train is this process's slice of the global stream (`streams.global_stream`: shuffled every epoch,
repeated forever, the same global batches for any number of processes); eval is one contiguous
block per process padded with masked zero examples, so every process runs the same number of steps. Both are
`MapDataset`s, so the iterator's `get_state()` / `set_state()` resume exactly.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import zipfile
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import grain
import jax
import numpy as np

from tokgen_jax.data import streams
from tokgen_jax.errors import ConfigError

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
TEXT_FILE = "text.npz"
_TMP_SUFFIX = ".tmp"
_SHARD_PATTERN = re.compile(r"shard_\d{5,}\.npz")
_INT32_MAX = np.iinfo(np.int32).max
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _shard_name(index: int) -> str:
  return f"shard_{index:05d}.npz"


def _write_atomically(path: pathlib.Path, write: Callable[[BinaryIO], None]) -> None:
  """`write(file)` into `path + .tmp`, synced to disk, then renamed to `path`: readers see all of it or nothing."""
  tmp = path.with_name(path.name + _TMP_SUFFIX)
  try:
    with open(tmp, "wb") as file:
      write(file)
      file.flush()
      os.fsync(file.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def _storage_dtype(tokens: np.ndarray) -> np.dtype:
  """The smallest of uint16 / int32 that holds every id of `tokens` (ids were checked to be in [0, 2^31))."""
  return np.dtype(np.uint16) if tokens.size == 0 or tokens.max() <= np.iinfo(np.uint16).max else np.dtype(np.int32)


# ------------------------------------------------------------------------------------------------------ writer


class TokenShardWriter:
  """Writes one split's examples into `directory/<split>/shard_00000.npz, ...` plus `directory/<split>/metadata.json`.

  Use as a context manager, or call `close()` yourself: nothing counts as written until `close()` has written
  `metadata.json`. Leaving the `with` block through an exception writes no metadata, so readers refuse the split.
  """

  def __init__(self, directory: str | os.PathLike, split: str, *, shard_size: int = 10_000,
               metadata: dict | None = None):
    if not isinstance(split, str) or not split or split in (".", "..") or "/" in split or os.sep in split:
      raise ConfigError(f"TokenShardWriter split={split!r} must be a plain directory name such as 'train'.")
    if int(shard_size) < 1:
      raise ConfigError(f"TokenShardWriter shard_size={shard_size} must be at least 1 (examples per shard file).")
    self.split_dir = pathlib.Path(directory) / split
    self._split = split
    self._shard_size = int(shard_size)
    self._user_metadata = _json_checked(dict(metadata or {}))
    self._prepare_directory()
    self._pending: list[dict[str, Any]] = []  # add() calls not yet written, in order
    self._num_pending = 0
    self._shards: list[dict[str, Any]] = []
    self._spec: dict[str, Any] | None = None  # per-example layout fixed by the first add()
    self._captions: set[str] = set()
    self._max_id = -1
    self._dtypes: set[str] = set()
    self._closed = False

  def _prepare_directory(self) -> None:
    if (self.split_dir / METADATA_FILE).exists():
      raise ConfigError(
          f"{self.split_dir / METADATA_FILE} exists: token split '{self._split}' was already written there. "
          f"Finished token data is never overwritten; delete {self.split_dir} to write it again, or pick another "
          "tokens path.")
    self.split_dir.mkdir(parents=True, exist_ok=True)
    for path in self.split_dir.iterdir():  # leftovers of an interrupted tokenize (no metadata.json: unfinished)
      if _SHARD_PATTERN.fullmatch(path.name) or path.name == TEXT_FILE or path.name.endswith(_TMP_SUFFIX):
        path.unlink()

  def add(self, tokens: np.ndarray, labels: np.ndarray | None = None,
          captions: Sequence[str] | None = None) -> None:
    """tokens int [n, ...] (a grid like [n, h, w], [n, t, h, w], or with a trailing levels dim); labels int [n];
    captions n str. Every call must give the same per-example token shape / dtype-kind and the same presence of
    labels/captions (ConfigError otherwise)."""
    if self._closed:
      raise RuntimeError(f"TokenShardWriter for {self.split_dir} is closed; add() must come before close().")
    batch = _checked_batch(tokens, labels, captions)
    self._check_spec(batch)
    if batch["tokens"].size:
      self._max_id = max(self._max_id, int(batch["tokens"].max()))
    if "captions" in batch:
      self._captions.update(batch["captions"].tolist())
    self._pending.append(batch)
    self._num_pending += len(batch["tokens"])
    if self._num_pending >= self._shard_size:
      self._flush(final=False)

  def _check_spec(self, batch: dict[str, np.ndarray]) -> None:
    spec = dict(token_shape=list(batch["tokens"].shape[1:]), kind=batch["tokens"].dtype.kind,
                has_labels="labels" in batch, has_captions="captions" in batch)
    if self._spec is None:
      self._spec = spec
    elif spec != self._spec:
      raise ConfigError(
          f"TokenShardWriter.add for {self.split_dir}: this call gives {_describe(spec)} but earlier calls gave "
          f"{_describe(self._spec)}. Every add() of a split must give the same per-example token shape and integer "
          "kind, and labels / captions either always or never.")

  def _flush(self, final: bool) -> None:
    """Writes every full shard of the pending examples (and, when `final`, the partial last one); the rest stay."""
    merged = {key: np.concatenate([batch[key] for batch in self._pending]) for key in self._pending[0]}
    count = len(merged["tokens"])
    end = count if final else count - count % self._shard_size
    for start in range(0, end, self._shard_size):
      self._write_shard({key: value[start:start + self._shard_size] for key, value in merged.items()})
    self._pending = [{key: value[end:] for key, value in merged.items()}] if end < count else []
    self._num_pending = count - end

  def _write_shard(self, batch: dict[str, np.ndarray]) -> None:
    dtype = _storage_dtype(batch["tokens"])
    arrays = dict(batch, tokens=batch["tokens"].astype(dtype))
    name = _shard_name(len(self._shards))
    _write_atomically(self.split_dir / name, lambda file: np.savez(file, **arrays))
    self._shards.append({"file": name, "num_examples": int(len(batch["tokens"]))})
    self._dtypes.add(dtype.name)

  def close(self, encode_texts: Callable[[list[str]], tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Flush the last shard, then, if captions were given and encode_texts is not None, call encode_texts ONCE on the
    sorted unique captions of the split -> (embeddings float [U, L, D], mask bool [U, L]) and write `text.npz`
    (captions, embeddings as float16, mask). Finally write metadata.json atomically (tmp file + os.replace) and
    return it (see the module docstring for its fields)."""
    if self._closed:
      raise RuntimeError(f"TokenShardWriter for {self.split_dir} is already closed.")
    if not self._shards and not self._num_pending:
      raise ConfigError(f"TokenShardWriter for {self.split_dir} got no examples, so there is nothing to write. "
                        f"Check that split '{self._split}' of the dataset being tokenized has examples.")
    if self._num_pending:
      self._flush(final=True)
    text_shape = self._write_text(encode_texts) if self._spec["has_captions"] and encode_texts else None
    metadata = self._metadata(text_shape)
    _write_atomically(self.split_dir / METADATA_FILE,
                      lambda file: file.write(json.dumps(metadata, indent=2).encode("utf-8")))
    self._closed = True
    return metadata

  def _write_text(self, encode_texts: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]) -> tuple[int, int]:
    captions = sorted(self._captions)
    embeddings, mask = _checked_text(encode_texts(list(captions)), len(captions))
    arrays = dict(captions=np.asarray(captions, dtype=str), embeddings=embeddings, mask=mask)
    _write_atomically(self.split_dir / TEXT_FILE, lambda file: np.savez(file, **arrays))
    return embeddings.shape[1], embeddings.shape[2]

  def _metadata(self, text_shape: tuple[int, int] | None) -> dict:
    text_length, text_dim = text_shape or (0, 0)
    return {
        "format_version": FORMAT_VERSION, "split": self._split,
        "num_examples": sum(shard["num_examples"] for shard in self._shards),
        "token_shape": self._spec["token_shape"],
        "token_dtype": "int32" if "int32" in self._dtypes else "uint16",  # the widest any shard uses
        "max_token_id": self._max_id, "shards": self._shards,
        "has_labels": self._spec["has_labels"], "has_captions": self._spec["has_captions"],
        "has_text": text_shape is not None, "text_length": int(text_length), "text_dim": int(text_dim),
        "tokenizer": self._user_metadata,
    }

  def __enter__(self) -> TokenShardWriter:
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    if exc_type is None and not self._closed:
      self.close()


def _json_checked(metadata: dict) -> dict:
  try:
    json.dumps(metadata)
  except (TypeError, ValueError) as error:
    raise ConfigError(f"TokenShardWriter metadata must be JSON-serializable (it goes into {METADATA_FILE}): "
                      f"{error}. Pass plain str / int / float / bool / list / dict values.") from error
  return metadata


def _checked_batch(tokens, labels, captions) -> dict[str, np.ndarray]:
  """The add() arguments as arrays, after checking their kinds, ranges and that they agree on n."""
  tokens = np.asarray(tokens)
  if tokens.ndim < 2 or tokens.dtype.kind not in "iu":
    raise ConfigError(f"TokenShardWriter.add tokens must be an integer array [n, ...] with a per-example grid, "
                      f"got {tokens.dtype} {tokens.shape}. Pass the tokenizer's ids, not codes or embeddings.")
  if tokens.size and (tokens.min() < 0 or tokens.max() > _INT32_MAX):
    raise ConfigError(f"TokenShardWriter.add token ids must lie in [0, {_INT32_MAX}], got "
                      f"[{tokens.min()}, {tokens.max()}]. Pass codebook indices, not signed or packed codes.")
  batch = {"tokens": tokens}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != tokens.shape[:1] or labels.dtype.kind not in "iu":
      raise ConfigError(f"TokenShardWriter.add labels must be integers [n={len(tokens)}] (one per example), got "
                        f"{labels.dtype} {labels.shape}.")
    batch["labels"] = labels.astype(np.int32)
  if captions is not None:
    captions = list(captions)
    if len(captions) != len(tokens) or not all(isinstance(caption, str) for caption in captions):
      raise ConfigError(f"TokenShardWriter.add captions must be {len(tokens)} strings (one per example), got "
                        f"{len(captions)} items of types {sorted({type(c).__name__ for c in captions})}.")
    batch["captions"] = np.asarray(captions, dtype=str).reshape(len(captions))
  return batch


def _describe(spec: dict[str, Any]) -> str:
  kind = {"i": "signed", "u": "unsigned"}[spec["kind"]]
  return (f"tokens of per-example shape {tuple(spec['token_shape'])} ({kind} integers), "
          f"labels {'given' if spec['has_labels'] else 'absent'}, "
          f"captions {'given' if spec['has_captions'] else 'absent'}")


def _checked_text(encoded, count: int) -> tuple[np.ndarray, np.ndarray]:
  """encode_texts' `(embeddings [U, L, D], mask [U, L])` as (float16, bool), after checking shapes and range."""
  embeddings, mask = (np.asarray(array) for array in encoded)
  if embeddings.ndim != 3 or len(embeddings) != count or mask.shape != embeddings.shape[:2]:
    raise ConfigError(f"TokenShardWriter.close encode_texts must return (embeddings [U={count}, L, D], mask [U, L]) "
                      f"for the {count} unique captions, got shapes {embeddings.shape} and {mask.shape}.")
  if not np.isfinite(embeddings).all() or np.abs(embeddings).max(initial=0.0) > _FLOAT16_MAX:
    raise ConfigError("TokenShardWriter.close encode_texts returned non-finite or out-of-float16-range "
                      "embeddings; text embeddings are stored as float16. Check the text encoder.")
  return embeddings.astype(np.float16), mask.astype(bool)


# ------------------------------------------------------------------------------------------------------ reader


class TokenSource:
  """Random access over one split written by TokenShardWriter: len(), __getitem__(i) -> dict.

  Attributes:
    metadata: the parsed metadata.json.
    captions: per-example captions, or None when the split has none.
  """

  def __init__(self, directory: str | os.PathLike, split: str):
    self.split_dir = pathlib.Path(directory) / split
    self.metadata = _read_metadata(self.split_dir)
    shards = [_read_shard(self.split_dir / shard["file"], shard["num_examples"], self.metadata)
              for shard in self.metadata["shards"]]
    self._tokens = _concatenate([shard["tokens"] for shard in shards], (0, *self.metadata["token_shape"]), np.int32)
    self._labels = (_concatenate([shard["labels"] for shard in shards], (0,), np.int32)
                    if self.metadata["has_labels"] else None)
    self.captions = ([caption for shard in shards for caption in shard["captions"].tolist()]
                     if self.metadata["has_captions"] else None)
    self._text = (_read_text(self.split_dir / TEXT_FILE, self.captions, self.metadata)
                  if self.metadata["has_text"] else None)
    if len(self._tokens) != self.metadata["num_examples"]:
      raise ConfigError(_corrupt(self.split_dir / METADATA_FILE, f"its num_examples={self.metadata['num_examples']} "
                                 f"disagrees with the {len(self._tokens)} examples of its shards"))

  @property
  def description(self) -> str:
    return f"token split {self.split_dir}"

  def __len__(self) -> int:
    return len(self._tokens)

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    """{'tokens': int32 [*token_shape]} plus 'label' (int32 scalar) and 'text' (float32 [L, D]) / 'text_mask'
    (bool [L]), the encoding of this example's caption, when the split has them."""
    example = {"tokens": self._tokens[index]}
    if self._labels is not None:
      example["label"] = self._labels[index]
    if self._text is not None:
      row = self._text["rows"][index]
      example["text"] = self._text["embeddings"][row].astype(np.float32)
      example["text_mask"] = self._text["mask"][row]
    return example

  def padding_example(self) -> dict[str, np.ndarray]:
    """An all-zero example with this split's layout (for eval padding)."""
    example = {"tokens": np.zeros(self.metadata["token_shape"], np.int32)}
    if self._labels is not None:
      example["label"] = np.int32(0)
    if self._text is not None:
      length, dim = self.metadata["text_length"], self.metadata["text_dim"]
      example["text"], example["text_mask"] = np.zeros((length, dim), np.float32), np.zeros(length, bool)
    return example


def _corrupt(path: pathlib.Path, problem: str) -> str:
  return (f"{path} is unusable: {problem}. The token split is incomplete or damaged; delete {path.parent} and "
          "re-run `--mode=tokenize` with this config.")


_METADATA_KEYS = ("format_version", "split", "num_examples", "token_shape", "token_dtype", "max_token_id", "shards",
                  "has_labels", "has_captions", "has_text", "text_length", "text_dim", "tokenizer")


def _read_metadata(split_dir: pathlib.Path) -> dict:
  path = split_dir / METADATA_FILE
  if not path.is_file():
    raise ConfigError(
        f"No finished token split at {split_dir} ({METADATA_FILE} is missing; an interrupted tokenize leaves none). "
        "Run `--mode=tokenize` with this config first, or point config.data.path at the directory it wrote.")
  try:
    metadata = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ConfigError(_corrupt(path, f"not readable JSON ({error})")) from error
  if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
    version = metadata.get("format_version") if isinstance(metadata, dict) else None
    raise ConfigError(f"{path} has format_version {version!r}, but this code reads format version "
                      f"{FORMAT_VERSION}. Delete {split_dir} and re-run `--mode=tokenize` with this code.")
  missing = [key for key in _METADATA_KEYS if key not in metadata]
  if missing:
    raise ConfigError(_corrupt(path, f"it lacks the fields {missing}"))
  if metadata["has_text"] and not metadata["has_captions"]:
    raise ConfigError(_corrupt(path, "it says has_text but not has_captions (text is looked up by caption)"))
  return metadata


def _load_npz(path: pathlib.Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """Every array in `keys` from `path`, fully read (np.load is lazy), or ConfigError naming the file."""
  if not path.is_file():
    raise ConfigError(_corrupt(path, "the file is missing"))
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {key: archive[key] for key in keys if key in archive.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise ConfigError(_corrupt(path, f"not a readable .npz archive ({type(error).__name__}: {error})")) from error
  missing = [key for key in keys if key not in arrays]
  if missing:
    raise ConfigError(_corrupt(path, f"it lacks the arrays {missing}"))
  return arrays


def _read_shard(path: pathlib.Path, num_examples: int, metadata: dict) -> dict[str, np.ndarray]:
  keys = ["tokens"] + ["labels"] * metadata["has_labels"] + ["captions"] * metadata["has_captions"]
  arrays = _load_npz(path, keys)
  expected = {"tokens": (num_examples, *metadata["token_shape"]), "labels": (num_examples,),
              "captions": (num_examples,)}
  for key, array in arrays.items():
    if array.shape != expected[key]:
      raise ConfigError(_corrupt(path, f"its '{key}' has shape {array.shape}, {METADATA_FILE} says {expected[key]}"))
  tokens = arrays["tokens"]
  if tokens.dtype not in (np.uint16, np.int32):
    raise ConfigError(_corrupt(path, f"its tokens are {tokens.dtype}, not uint16 or int32"))
  # Ids outside [0, max_token_id] would index past the generator's embedding table, which JAX does not catch.
  if tokens.size and (tokens.min() < 0 or tokens.max() > metadata["max_token_id"]):
    raise ConfigError(_corrupt(path, f"its token ids span [{tokens.min()}, {tokens.max()}], outside [0, "
                               f"max_token_id={metadata['max_token_id']}] that {METADATA_FILE} records"))
  return arrays


def _concatenate(arrays: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
  return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(empty_shape, dtype)


def _read_text(path: pathlib.Path, captions: list[str] | None, metadata: dict) -> dict[str, np.ndarray]:
  """text.npz's embeddings (kept float16) and masks, plus `rows`: each example's row, found through its caption."""
  arrays = _load_npz(path, ("captions", "embeddings", "mask"))
  unique = arrays["captions"].tolist()
  shape = (len(unique), metadata["text_length"], metadata["text_dim"])
  if arrays["embeddings"].shape != shape or arrays["mask"].shape != shape[:2]:
    raise ConfigError(_corrupt(path, f"its embeddings {arrays['embeddings'].shape} / mask {arrays['mask'].shape} "
                               f"disagree with {len(unique)} captions of length {shape[1]} and width {shape[2]}"))
  row_of = {caption: row for row, caption in enumerate(unique)}
  missing = sorted(set(captions or ()) - row_of.keys())
  if missing:
    raise ConfigError(_corrupt(path, f"it has no encoding for {len(missing)} captions, e.g. {missing[0]!r}"))
  rows = np.asarray([row_of[caption] for caption in captions or ()], np.int64)
  return {"embeddings": arrays["embeddings"], "mask": arrays["mask"].astype(bool), "rows": rows}


def check_split_fits(directory: str | os.PathLike, split: str, *, token_shape: Sequence[int],
                     codebook_size: int) -> None:
  """ConfigError when the finished split `directory/split` holds tokens of another shape than `token_shape`, or ids
  at or above `codebook_size`: it was written by another tokenizer than the one configured. A split not written
  yet passes (`--mode=tokenize` writes it)."""
  split_dir = pathlib.Path(directory) / split
  if not (split_dir / METADATA_FILE).is_file():
    return
  metadata = _read_metadata(split_dir)
  fix = (f"Point config.tokenizer at the tokenizer that wrote them, or delete {split_dir} and re-run "
         "`--mode=tokenize` with this config.")
  if tuple(metadata["token_shape"]) != tuple(token_shape):
    raise ConfigError(f"{split_dir / METADATA_FILE}: its tokens have per-example shape {tuple(metadata['token_shape'])}"
                      f", but config.tokenizer.experiment makes tokens of shape {tuple(token_shape)}. {fix}")
  if metadata["max_token_id"] >= codebook_size:
    raise ConfigError(f"{split_dir / METADATA_FILE}: its token ids reach {metadata['max_token_id']}, outside the "
                      f"configured tokenizer's vocabulary of {codebook_size} ids (config.tokenizer.experiment.model."
                      f"quantizer). {fix}")


# ---------------------------------------------------------------------------------------------------- pipeline


def make_token_pipeline(data_config, split: str, *, global_batch_size: int, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """Returns an iterator of `{'tokens': int32 [B, *token_shape]}` plus 'label' int32 [B], 'text' float32 [B, L, D]
  and 'text_mask' bool [B, L] when the split has them; eval adds 'mask': bool [B] (False on padding).

  Args:
    data_config: `config.data` (fields: path, the directory `--mode=tokenize` wrote; train_split, eval_split, the
      split directory names; seed, num_threads, prefetch).
    split: 'train' (infinite, shuffled) or 'eval' (one deterministic pass).
    global_batch_size: batch size over all processes; each process yields `global_batch_size // process_count`.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of data-loading processes; defaults to `jax.process_count()`.
  """
  if split not in streams.SPLITS:
    raise ValueError(f"make_token_pipeline split must be one of {streams.SPLITS}, got {split!r}.")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  # pylint: disable-next=protected-access  (the same checks and message as the image pipeline)
  local_batch_size = streams.local_batch_size(global_batch_size, process_index, process_count)
  source = open_configured_token_source(data_config, split)
  if split == "train":
    dataset = _train_dataset(source, data_config, local_batch_size, process_index, process_count)
  else:
    dataset = _eval_dataset(source, local_batch_size, process_index, process_count)
  read_options = grain.ReadOptions(num_threads=int(data_config.num_threads),
                                   prefetch_buffer_size=int(data_config.prefetch))
  return iter(dataset.to_iter_dataset(read_options))


def open_configured_token_source(data_config, split: str) -> TokenSource:
  """The `TokenSource` of `split` ('train' | 'eval') under `config.data.path`."""
  if not str(data_config.path):
    raise ConfigError("config.data.path is empty, so there is no token directory to read. Set it to the directory "
                      "`--mode=tokenize` wrote (the trainer fills in WORKDIR/tokens when it runs tokenize itself).")
  split_name = data_config.train_split if split == "train" else data_config.eval_split
  return TokenSource(str(data_config.path), str(split_name))


def _train_dataset(source: TokenSource, data_config, local_batch_size: int, process_index: int,
                   process_count: int) -> grain.MapDataset:
  stream = streams.global_stream(len(source), int(data_config.seed), local_batch_size * process_count,
                                  process_index, process_count)
  return stream.map(lambda element: source[element[0]]).batch(local_batch_size, drop_remainder=True)


def _eval_dataset(source: TokenSource, local_batch_size: int, process_index: int,
                  process_count: int) -> grain.MapDataset:
  if len(source) == 0:
    raise ConfigError(f"{source.description} has no examples to evaluate on. Tokenize a non-empty eval split.")
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
