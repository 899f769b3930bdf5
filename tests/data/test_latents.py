"""Latent shards: named-array round trip (int, float, bool), parts of several processes, lazy reading, storage
dtype, metadata, train/eval pipelines, resume, errors."""

import concurrent.futures
import json
import re

import numpy as np
import pytest

from tokgen_jax.configs import data as data_presets
from tokgen_jax.data import files
from tokgen_jax.data import latents as store
from tokgen_jax.data import make_pipeline
from tokgen_jax.errors import ConfigError
from tokgen_jax.tokenizers import LatentSpec

_CAPTIONS = ("a red circle", "two blue squares", "a green star")


def _example_tokens(indices, shape=(2, 3)):
  """Example i is the grid i * 100 + arange: distinct per example, so a batch element tells where it came from."""
  grid = np.arange(np.prod(shape)).reshape(shape)
  return np.stack([index * 100 + grid for index in indices]).astype(np.int64)


def _fake_encoder(calls):
  """encode_texts stand-in: caption c -> rows [len(c), ord(c[0]), position], mask True on the first len(c) % 4 + 1."""

  def encode(captions):
    calls.append(list(captions))
    embeddings = np.zeros((len(captions), 4, 3), np.float32)
    mask = np.zeros((len(captions), 4), bool)
    for row, caption in enumerate(captions):
      embeddings[row] = [[len(caption), ord(caption[0]), position] for position in range(4)]
      mask[row, :len(caption) % 4 + 1] = True
    return embeddings, mask

  return encode


def _arrays(indices, labels=True):
  arrays = {"tokens": _example_tokens(indices)}
  return arrays | {"label": np.asarray(indices)} if labels else arrays


def _write_split(root, split, count, *, sizes=None, shard_size=4, labels=True, captions=True, calls=None, part=0,
                 num_parts=1, first=0):
  """Writes examples first..first+count-1 in add() calls of `sizes`; label i = i, caption i = _CAPTIONS[i % 3]."""
  sizes = sizes or [count]
  assert sum(sizes) == count
  writer = store.LatentShardWriter(root, split, shard_size=shard_size, part=part, num_parts=num_parts,
                                   metadata={"name": "fake", "levels": 1})
  start = first
  for size in sizes:
    indices = list(range(start, start + size))
    writer.add(_arrays(indices, labels), [_CAPTIONS[i % 3] for i in indices] if captions else None)
    start += size
  return writer.close(_fake_encoder(calls if calls is not None else []) if captions else None)


def _config(root, **overrides):
  return data_presets.tokens(str(root), **overrides)


def _check_example(example, index, embeddings_of):
  assert set(example) == {"tokens", "label", "text", "text_mask"}
  assert example["tokens"].dtype == np.int32 and example["label"].dtype == np.int32
  np.testing.assert_array_equal(example["tokens"], _example_tokens([index])[0])
  assert example["label"] == index
  embeddings, mask = embeddings_of[_CAPTIONS[index % 3]]
  assert example["text"].dtype == np.float32 and example["text_mask"].dtype == np.bool_
  np.testing.assert_array_equal(example["text"], embeddings)  # small ints: exact in float16
  np.testing.assert_array_equal(example["text_mask"], mask)


def _embeddings_of():
  embeddings, mask = _fake_encoder([])(list(_CAPTIONS))
  return {caption: (embeddings[i], mask[i]) for i, caption in enumerate(_CAPTIONS)}


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
  """Where latents are written and read: a local directory, or a bucket of the GCS emulator."""
  if request.param == "local":
    return tmp_path
  return files.as_path(request.getfixturevalue("gcs_bucket") + "/latents")


def test_round_trip_spans_shards(root):
  calls = []
  metadata = _write_split(root, "train", 13, sizes=[3, 6, 4], shard_size=4, calls=calls)
  assert [shard["num_examples"] for shard in metadata["shards"]] == [4, 4, 4, 1]  # leftovers carry to the next
  assert calls == [list(_CAPTIONS)]  # encoded once, each distinct caption once, in first-seen order
  source = store.LatentSource(root, "train")
  assert len(source) == 13 and source.has_captions
  assert [source.caption(i) for i in range(13)] == [_CAPTIONS[i % 3] for i in range(13)]
  for index in range(13):
    _check_example(source[index], index, _embeddings_of())


def test_float_and_bool_arrays_of_any_names_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"tokens_0": rng.integers(0, 9, (5, 2, 2)), "tokens_1": rng.integers(0, 70_000, (5, 4)),
            "latents_xy": rng.normal(size=(5, 3, 3, 4)).astype(np.float32),
            "scale_2": rng.normal(size=(5, 6)).astype(np.float16), "tokens_0_mask": rng.random((5, 2, 2)) > 0.5}
  arrays["tokens_1"][0, 0] = 69_999
  with store.LatentShardWriter(tmp_path, "eval", shard_size=2) as writer:
    writer.add({name: value[:3] for name, value in arrays.items()})
    writer.add({name: value[3:] for name, value in arrays.items()})
  source = store.LatentSource(tmp_path, "eval")
  assert {name: spec["dtype"] for name, spec in source.specs.items()} == {
      "tokens_0": "int32", "tokens_1": "int32", "latents_xy": "float32", "scale_2": "float16",
      "tokens_0_mask": "bool"}
  for index in range(5):
    example = source[index]
    for name, value in arrays.items():
      np.testing.assert_array_equal(example[name], value[index])
      assert example[name].dtype == (np.int32 if value.dtype.kind == "i" else value.dtype)
  assert (tmp_path / "eval" / "part_00000" / "shard_00000.tokens_0.npy").is_file()
  assert np.load(tmp_path / "eval" / "part_00000" / "shard_00000.tokens_1.npy").dtype == np.int32  # ids > 65535
  assert not source.has_captions and set(source[0]) == set(arrays)


def test_scale_factor_and_channel_moments_cover_every_part(tmp_path):
  rng = np.random.default_rng(1)
  latents = (3.0 + 0.25 * rng.normal(size=(9, 2, 2, 3))).astype(np.float32)
  for part, rows in enumerate((slice(0, 4), slice(4, 9))):
    with store.LatentShardWriter(tmp_path, "train", shard_size=3, part=part, num_parts=2) as writer:
      writer.add({"latents": latents[rows], "label": np.arange(9)[rows]})
  source = store.LatentSource(tmp_path, "train")
  mean, std = source.moments("latents")
  np.testing.assert_allclose([mean, std], [latents.astype(np.float64).mean(), latents.astype(np.float64).std()],
                             rtol=1e-9)
  np.testing.assert_allclose(source.scale_factor(), 1.0 / latents.astype(np.float64).std(), rtol=1e-9)
  channel_mean, channel_std = source.channel_moments("latents")
  np.testing.assert_allclose(channel_mean, latents.astype(np.float64).mean((0, 1, 2)), rtol=1e-9)
  np.testing.assert_allclose(channel_std, latents.astype(np.float64).std((0, 1, 2)), rtol=1e-9)
  with pytest.raises(ConfigError, match=r"no moments of \['label'\].*Encode the split again"):
    source.moments("label")


def test_planes_pool_their_moments_into_one_normalization(tmp_path):
  """A factorized tokenizer's planes (different grids, same channels) share one per-channel mean and std."""
  rng = np.random.default_rng(2)
  planes = {"latents_xy": 1.0 + rng.normal(size=(6, 4, 4, 3)), "latents_tw": -2.0 + 3 * rng.normal(size=(6, 5, 4, 3))}
  with store.LatentShardWriter(tmp_path, "train", shard_size=4) as writer:
    writer.add({name: value.astype(np.float32) for name, value in planes.items()})
  source = store.LatentSource(tmp_path, "train")
  values = np.concatenate([v.astype(np.float32).astype(np.float64).reshape(-1, 3) for v in planes.values()])
  mean, std = source.channel_moments(["latents_tw", "latents_xy"])
  np.testing.assert_allclose(mean, values.mean(0), rtol=1e-9)
  np.testing.assert_allclose(std, values.std(0), rtol=1e-9)
  np.testing.assert_allclose(source.scale_factor(["latents_tw", "latents_xy"]), 1.0 / values.std(), rtol=1e-9)
  with pytest.raises(ConfigError, match=r"no moments of \['latents_th'\]"):
    source.channel_moments(["latents_th", "latents_xy"])


def test_parts_of_two_processes_read_as_the_dataset_in_order(root):
  _write_split(root, "train", 5, shard_size=2, part=1, num_parts=2, first=7)  # process 1 may finish first
  with pytest.raises(ConfigError, match=r"part_00000/metadata\.json is missing"):
    store.LatentSource(root, "train")
  _write_split(root, "train", 7, shard_size=3, part=0, num_parts=2)
  source = store.LatentSource(root, "train")
  assert len(source) == 12
  for index in range(12):
    _check_example(source[index], index, _embeddings_of())  # each part has its own text table
  assert [source.caption(i) for i in (0, 7, 11)] == [_CAPTIONS[0], _CAPTIONS[1], _CAPTIONS[2]]


def test_an_unfinished_part_is_named(tmp_path):
  _write_split(tmp_path, "train", 4, part=0, num_parts=3)
  _write_split(tmp_path, "train", 4, part=2, num_parts=3, first=8)
  with pytest.raises(ConfigError, match=r"part 1 of 3 is unfinished .*part_00001/metadata\.json is missing"):
    store.LatentSource(tmp_path, "train")


def test_reading_maps_at_most_max_open_shards(tmp_path):
  _write_split(tmp_path, "train", 20, shard_size=2, captions=False)
  source = store.LatentSource(tmp_path, "train", max_open_shards=3)
  for index in np.random.default_rng(0).permutation(20):
    assert source[index]["label"] == index
    assert len(source._open) <= 3  # pylint: disable=protected-access
  assert all(isinstance(array, np.memmap) for array in next(iter(source._open.values())).values())


def test_concurrent_reads_through_a_one_shard_window_return_every_example(tmp_path):
  _write_split(tmp_path, "train", 30, shard_size=3)
  source = store.LatentSource(tmp_path, "train", max_open_shards=1)
  order = np.random.default_rng(1).permutation(30).tolist() * 4
  with concurrent.futures.ThreadPoolExecutor(8) as pool:  # Grain's read threads
    examples = list(pool.map(source.__getitem__, order))
  for index, example in zip(order, examples):
    _check_example(example, index, _embeddings_of())


def test_storage_dtype_follows_max_id_and_reads_int32(tmp_path):
  for split, top, dtype in (("small", 65535, np.uint16), ("large", 65536, np.int32)):
    with store.LatentShardWriter(tmp_path, split) as writer:
      writer.add({"tokens": np.array([[[0, 1], [2, top]]])})  # one 2x2 grid
    files = sorted(path.name for path in (tmp_path / split / "part_00000").iterdir())
    assert files == ["metadata.json", "shard_00000.tokens.npy"]
    assert np.load(tmp_path / split / "part_00000" / "shard_00000.tokens.npy").dtype == dtype
    source = store.LatentSource(tmp_path, split)
    assert source[0]["tokens"].dtype == np.int32 and source[0]["tokens"][1, 1] == top
    assert set(source[0]) == {"tokens"} and not source.has_captions


def test_metadata_contents(tmp_path):
  writer = store.LatentShardWriter(tmp_path, "eval", shard_size=3, metadata={"name": "vq", "codebook": 512})
  writer.add({"tokens": np.zeros((4, 2, 3, 3, 2), np.int32)}, captions=["x"] * 4)  # [n, t, h, w, levels]
  metadata = writer.close()  # captions but no encoder: no text table
  on_disk = json.loads((tmp_path / "eval" / "part_00000" / "metadata.json").read_text())
  assert on_disk == metadata
  assert metadata == {
      "format_version": store.FORMAT_VERSION, "split": "eval", "part": 0, "num_parts": 1, "num_examples": 4,
      "arrays": {"tokens": {"shape": [2, 3, 3, 2], "dtype": "int32", "max_value": 0},
                 "caption": {"shape": [], "dtype": "str", "max_value": -1},
                 "text_row": {"shape": [], "dtype": "int32", "max_value": 0}},
      "shards": [{"index": 0, "num_examples": 3}, {"index": 1, "num_examples": 1}],
      "has_text": False, "num_texts": 1, "text_length": 0, "text_dim": 0, "tokenizer": {"name": "vq", "codebook": 512},
      "moments": {}}  # no float arrays
  assert sorted(path.name for path in (tmp_path / "eval" / "part_00000").iterdir()) == [
      "metadata.json", "shard_00000.caption.npy", "shard_00000.text_row.npy", "shard_00000.tokens.npy",
      "shard_00001.caption.npy", "shard_00001.text_row.npy", "shard_00001.tokens.npy"]  # no temporary files


def _labels(batches, key="label"):
  return np.concatenate([batch[key][batch["mask"]] if "mask" in batch else batch[key] for batch in batches])


def test_train_two_processes_slice_every_epoch_once(tmp_path):
  _write_split(tmp_path, "train", 12, shard_size=5)
  per_process = []
  for index in range(2):
    iterator = make_pipeline(_config(tmp_path), "train", global_batch_size=4, process_index=index, process_count=2)
    batches = [next(iterator) for _ in range(6)]  # 6 global batches of 4 = two epochs of 12
    batch = batches[0]
    assert set(batch) == {"tokens", "label", "text", "text_mask"}
    assert batch["tokens"].shape == (2, 2, 3) and batch["tokens"].dtype == np.int32
    assert batch["label"].shape == (2,) and batch["text"].shape == (2, 4, 3) and batch["text_mask"].shape == (2, 4)
    np.testing.assert_array_equal(np.concatenate([b["tokens"] for b in batches]), _example_tokens(_labels(batches)))
    per_process.append(batches)
  # Global batch b = process 0's slice followed by process 1's.
  labels = np.concatenate([np.concatenate([a["label"], b["label"]]) for a, b in zip(*per_process)])
  assert sorted(labels[:12]) == sorted(labels[12:]) == list(range(12))
  assert labels[:12].tolist() != labels[12:].tolist()  # reshuffled
  single = make_pipeline(_config(tmp_path), "train", global_batch_size=4, process_index=0, process_count=1)
  np.testing.assert_array_equal(np.concatenate([next(single)["label"] for _ in range(6)]), labels)


def test_train_resume_from_json_state(tmp_path):
  _write_split(tmp_path, "train", 7, captions=False)

  def fresh():
    return make_pipeline(_config(tmp_path, seed=3), "train", global_batch_size=3, process_index=0, process_count=1)

  uninterrupted = fresh()
  expected = [next(uninterrupted) for _ in range(5)]  # crosses epoch boundaries (7 examples, 3 a batch)
  interrupted = fresh()
  for _ in range(3):
    next(interrupted)
  state = json.loads(json.dumps(interrupted.get_state()))
  restored = fresh()
  restored.set_state(state)
  for want in expected[3:]:
    got = next(restored)
    assert got.keys() == want.keys() == {"tokens", "label"}
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_eval_pads_and_two_processes_cover_every_example_once(tmp_path):
  _write_split(tmp_path, "eval", 7, shard_size=3)
  per_process = [list(make_pipeline(_config(tmp_path), "eval", global_batch_size=4, process_index=index,
                                    process_count=2)) for index in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 2  # 4 examples a process, 2 a batch
  masks = [np.concatenate([batch["mask"] for batch in batches]).tolist() for batches in per_process]
  assert masks == [[True] * 4, [True] * 3 + [False]]
  padded = per_process[1][-1]
  assert padded["tokens"].dtype == np.int32 and padded["mask"].dtype == np.bool_
  for key in ("tokens", "label", "text", "text_mask"):
    assert not padded[key][1].any()
  labels = np.concatenate([_labels(batches) for batches in per_process])
  assert labels.tolist() == list(range(7))  # contiguous blocks, in order, each example once
  tokens = np.concatenate([batch["tokens"][batch["mask"]] for batches in per_process for batch in batches])
  np.testing.assert_array_equal(tokens, _example_tokens(range(7)))


def test_missing_metadata_says_run_encode(tmp_path):
  with pytest.raises(ConfigError, match=r"metadata\.json is missing.*--mode=encode"):
    store.LatentSource(tmp_path, "train")
  with pytest.raises(ConfigError, match="--mode=encode"):
    make_pipeline(_config(tmp_path), "eval", global_batch_size=2, process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="config.data.path is empty"):
    make_pipeline(_config(""), "train", global_batch_size=2, process_index=0, process_count=1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_damaged_shard_names_file_and_fix(root, damage):
  _write_split(root, "train", 6, shard_size=4)
  shard = root / "train" / "part_00000" / "shard_00001.tokens.npy"
  if damage == "garbage":
    shard.write_bytes(b"not an npy file at all" * 10)
  elif damage == "truncated":
    shard.write_bytes(shard.read_bytes()[:100])
  else:
    shard.unlink()
  source = store.LatentSource(root, "train")
  assert source[3]["label"] == 3  # the intact shard still reads
  message = re.escape(str(shard)) + r".*delete " + re.escape(str(root / "train")) + r".*--mode=encode"
  with pytest.raises(ConfigError, match=message):
    source[4]


def test_metadata_mismatch_out_of_range_ids_and_unknown_version(tmp_path):
  _write_split(tmp_path, "train", 6, shard_size=4)
  path = tmp_path / "train" / "part_00000" / "metadata.json"
  metadata = json.loads(path.read_text())
  path.write_text(json.dumps({**metadata, "shards": [metadata["shards"][0], {"index": 1, "num_examples": 3}]}))
  with pytest.raises(ConfigError, match=r"shard_00001\.tokens\.npy.*shape is \(2, 2, 3\).*says \(3, 2, 3\)"):
    store.LatentSource(tmp_path, "train")[4]
  arrays = dict(metadata["arrays"], tokens=dict(metadata["arrays"]["tokens"], max_value=400))
  path.write_text(json.dumps({**metadata, "arrays": arrays}))
  with pytest.raises(ConfigError, match=r"shard_00001\.tokens\.npy.*values span \[500, 505\].*max_value=400"):
    store.LatentSource(tmp_path, "train")[5]
  path.write_text(json.dumps({**metadata, "format_version": 99}))
  with pytest.raises(ConfigError, match="format_version 99.*reads format version 2"):
    store.LatentSource(tmp_path, "train")


def test_check_split_fits_names_the_other_tokenizer(tmp_path):
  _write_split(tmp_path, "train", 3, captions=False)  # ids up to 205, grid (2, 3)
  store.check_split_fits(tmp_path, "train", {"tokens": LatentSpec((2, 3), "int32", 512)})
  store.check_split_fits(tmp_path, "absent", {"tokens": LatentSpec((9, 9), "int32", 2)})  # not written yet
  with pytest.raises(ConfigError, match=r"per-example shape \(2, 3\).*makes shape \(4, 4\)"):
    store.check_split_fits(tmp_path, "train", {"tokens": LatentSpec((4, 4), "int32", 512)})
  with pytest.raises(ConfigError, match="ids reach 205, outside the configured tokenizer's vocabulary of 64"):
    store.check_split_fits(tmp_path, "train", {"tokens": LatentSpec((2, 3), "int32", 64)})
  with pytest.raises(ConfigError, match=r"holds the arrays \['label', 'tokens'\].*encodes 'latents'"):
    store.check_split_fits(tmp_path, "train", {"latents": LatentSpec((2, 3, 4), "float32")})


def test_refuses_to_overwrite_a_finished_part(tmp_path):
  _write_split(tmp_path, "train", 3)
  metadata = tmp_path / "train" / "part_00000" / "metadata.json"
  before = metadata.read_bytes()
  with pytest.raises(ConfigError, match=r"metadata\.json exists.*delete .*or pick another"):
    store.LatentShardWriter(tmp_path, "train")
  assert metadata.read_bytes() == before


def test_exception_leaves_no_metadata_and_rerun_starts_clean(tmp_path):
  part_dir = tmp_path / "train" / "part_00000"
  with pytest.raises(KeyboardInterrupt):
    with store.LatentShardWriter(tmp_path, "train", shard_size=2) as writer:
      writer.add({"tokens": _example_tokens(range(5))})
      raise KeyboardInterrupt
  assert sorted(path.name for path in part_dir.iterdir()) == ["shard_00000.tokens.npy", "shard_00001.tokens.npy"]
  with pytest.raises(ConfigError, match="--mode=encode"):
    store.LatentSource(tmp_path, "train")
  (part_dir / "shard_00007.tokens.npy").write_bytes(b"stale")
  (part_dir / ".shard_00008.tokens.0123.tmp.npy").write_bytes(b"half")
  with store.LatentShardWriter(tmp_path, "train", shard_size=10) as writer:
    writer.add({"tokens": _example_tokens(range(3))})
  assert sorted(path.name for path in part_dir.iterdir()) == ["metadata.json", "shard_00000.tokens.npy"]
  assert len(store.LatentSource(tmp_path, "train")) == 3


def test_inconsistent_or_bad_add_calls_are_refused(tmp_path):
  writer = store.LatentShardWriter(tmp_path, "train")
  writer.add(_arrays(range(2)))
  with pytest.raises(ConfigError, match=r"tokens int32 \(4, 4\).*earlier calls gave .*tokens int32 \(2, 3\)"):
    writer.add({"tokens": np.zeros((2, 4, 4), np.int64), "label": np.arange(2)})
  with pytest.raises(ConfigError, match="earlier calls gave label"):
    writer.add({"tokens": _example_tokens(range(2))})
  with pytest.raises(ConfigError, match="captions either always or never"):
    writer.add(_arrays(range(2)), captions=["a", "b"])
  with pytest.raises(ConfigError, match="tokens float32"):
    writer.add({"tokens": np.zeros((2, 2, 3), np.float32), "label": np.arange(2)})
  with pytest.raises(ConfigError, match=r"disagree on the example count: \{'tokens': 2, 'label': 3\}"):
    writer.add({"tokens": _example_tokens(range(2)), "label": np.arange(3)})
  with pytest.raises(ConfigError, match=r"'tokens' ids must lie in \[0"):
    writer.add({"tokens": -_example_tokens(range(1, 3)), "label": np.arange(2)})
  with pytest.raises(ConfigError, match="holds NaN or inf"):
    writer.add({"latents": np.full((2, 3), np.nan, np.float32)})
  with pytest.raises(ConfigError, match="must be an identifier"):
    writer.add({"../tokens": _example_tokens(range(2))})
  with pytest.raises(ConfigError, match=r"part=2 must lie in \[0, num_parts=2\)"):
    store.LatentShardWriter(tmp_path, "eval", part=2, num_parts=2)
  assert writer.close()["num_examples"] == 2  # refused calls added nothing
