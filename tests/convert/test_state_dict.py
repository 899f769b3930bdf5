"""`load_state_dict` / `save_safetensors`: round trips, and a clear ConfigError for every bad file."""

import os
import pickle
import shlex
import sys

import numpy as np
import pytest

from tokgen_jax.convert.state_dict import load_state_dict, save_safetensors
from tokgen_jax.errors import ConfigError

torch = pytest.importorskip("torch")


class _Payload:
  """Unpickling this runs a shell command that creates `marker`: what a malicious weight file would do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",)


def _tensors():
  rng = np.random.default_rng(0)
  return {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "conv.bias": np.arange(4, dtype=np.int64)}


def test_safetensors_round_trip_is_exact_and_atomic(tmp_path):
  path = tmp_path / "w.safetensors"
  save_safetensors(path, {"old": np.zeros(2, np.float32)})
  save_safetensors(path, _tensors(), metadata={"format": "test"})  # overwrites in place
  loaded = load_state_dict(path)
  assert sorted(loaded) == sorted(_tensors())
  for key, value in _tensors().items():
    np.testing.assert_array_equal(loaded[key], value)
    assert loaded[key].dtype == value.dtype
  assert os.listdir(tmp_path) == ["w.safetensors"]  # no temporary file left behind


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path):
  path = tmp_path / "w.safetensors"
  save_safetensors(path, _tensors())
  with pytest.raises(Exception):
    save_safetensors(path, {"bad": np.array([object()])})
  assert os.listdir(tmp_path) == ["w.safetensors"]
  np.testing.assert_array_equal(load_state_dict(path)["conv.weight"], _tensors()["conv.weight"])


def test_torch_file_flattens_nested_dicts_and_drops_non_tensors(tmp_path):
  path = tmp_path / "ckpt.pth"
  weight = torch.randn(2, 3)
  torch.save({"epoch": 3, "state_dict": {"a.weight": weight, "b": {"c": weight.to(torch.bfloat16)}}}, path)
  loaded = load_state_dict(path)
  assert sorted(loaded) == ["state_dict.a.weight", "state_dict.b.c"]
  np.testing.assert_array_equal(loaded["state_dict.a.weight"], weight.numpy())
  assert loaded["state_dict.b.c"].dtype == np.float32


def test_missing_file_and_directory(tmp_path):
  with pytest.raises(ConfigError, match="not found") as error:
    load_state_dict(tmp_path / "nope.pth")
  assert "nope.pth" in str(error.value)
  with pytest.raises(ConfigError, match="not a file"):
    load_state_dict(tmp_path)


@pytest.mark.parametrize("name", ["w.pth", "w.safetensors"])
def test_zero_byte_file(tmp_path, name):
  (tmp_path / name).write_bytes(b"")
  with pytest.raises(ConfigError, match="empty") as error:
    load_state_dict(tmp_path / name)
  assert name in str(error.value) and "again" in str(error.value)


@pytest.mark.parametrize("name", ["w.pth", "w.safetensors"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_corrupt_file(tmp_path, name, damage):
  path = tmp_path / name
  if name.endswith(".pth"):
    torch.save({key: torch.from_numpy(value) for key, value in _tensors().items()}, path)
  else:
    save_safetensors(path, _tensors())
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
  with pytest.raises(ConfigError, match="truncated or corrupt") as error:
    load_state_dict(path)
  assert name in str(error.value)


def test_unknown_suffix(tmp_path):
  path = tmp_path / "w.npz"
  path.write_bytes(b"x")
  with pytest.raises(ConfigError, match=r"unknown weight file suffix '\.npz'.*\.safetensors"):
    load_state_dict(path)


def test_not_a_state_dict(tmp_path):
  path = tmp_path / "tensor.pt"
  torch.save(torch.zeros(3), path)
  with pytest.raises(ConfigError, match="not a state dict"):
    load_state_dict(path)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
  marker = tmp_path / "pwned.txt"
  path = tmp_path / "evil.pth"
  if writer == "pickle":
    path.write_bytes(pickle.dumps({"weight": _Payload(marker)}, protocol=2))
  else:
    torch.save({"weight": _Payload(marker)}, path)
  with pytest.raises(ConfigError, match="refused to load") as error:
    load_state_dict(path)
  assert "evil.pth" in str(error.value)
  assert not marker.exists()


def test_torch_missing_says_how_to_fix(tmp_path, monkeypatch):
  path = tmp_path / "w.pth"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  with pytest.raises(ConfigError, match=r"pip install torch.*safetensors"):
    load_state_dict(path)


def test_weight_files_in_a_bucket_load_like_local_ones(gcs_bucket, tmp_path):
  from tokgen_jax.data import files

  arrays = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "fc.bias": np.ones(3, np.float32)}
  remote = files.as_path(gcs_bucket) / "weights" / "model.safetensors"
  save_safetensors(remote, arrays)
  loaded = load_state_dict(str(remote))
  assert loaded.keys() == arrays.keys() and all(np.array_equal(loaded[k], v) for k, v in arrays.items())
  torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "model.pth")
  (remote.parent / "model.pth").write_bytes((tmp_path / "model.pth").read_bytes())
  assert np.array_equal(load_state_dict(str(remote.parent / "model.pth"))["fc.bias"], arrays["fc.bias"])
  (remote.parent / "cut.safetensors").write_bytes(remote.read_bytes()[:40])
  with pytest.raises(ConfigError, match=rf"^{gcs_bucket}/weights/cut.safetensors: cannot read as safetensors"):
    load_state_dict(f"{gcs_bucket}/weights/cut.safetensors")
  with pytest.raises(ConfigError, match="weight file not found"):
    load_state_dict(f"{gcs_bucket}/weights/absent.pth")
