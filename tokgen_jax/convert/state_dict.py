"""Read flat weight dicts from safetensors or PyTorch files, and write safetensors atomically.

A state dict here is `{"features.0.weight": np.ndarray, ...}`: PyTorch's own key names, PyTorch's own layouts
(OIHW convs, `[out, in]` linears). Model-specific importers (`convert/lpips.py`, ...) rename and transpose.

PyTorch files are loaded with `torch.load(..., weights_only=True)`, which only rebuilds tensors and plain
containers: a pickle is a program, and a weight file from the internet must not get to run it. torch is imported
only when a PyTorch file is read, so safetensors files load without it.
"""

import argparse
import os
import pickletools
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from tokgen_jax.data import files
from tokgen_jax.errors import ConfigError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a `.safetensors` or PyTorch (`.pth/.pt/.bin/.ckpt`) file as numpy arrays, keyed by name.

  Nested dicts in a PyTorch file (e.g. `{"state_dict": {...}, "epoch": 3}`) are flattened with "." joins, as
  `nn.Module.state_dict()` names them; non-tensor leaves (step counters, strings) are dropped. bfloat16 tensors
  come back as float32, which numpy can hold.
  """
  path = files.as_path(path)  # a local path or gs://
  _check_file(path)
  suffix = path.suffix.lower()
  load = {**{s: _load_safetensors for s in SAFETENSORS_SUFFIXES}, **{s: _load_torch for s in TORCH_SUFFIXES}}
  if suffix in load:
    with files.readable_file(path) as local:
      try:
        return load[suffix](Path(local))
      except ConfigError as error:  # name the file the user gave, not a download's temporary copy
        raise ConfigError(str(error).replace(local, str(path))) from error.__cause__
  raise ConfigError(f"{path}: unknown weight file suffix {path.suffix!r}; expected one of "
                    f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}. Rename the file if it is one of those "
                    "formats, or convert it to .safetensors")


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
                     ) -> Path:
  """Write `{name: array}` to `path` as safetensors; returns the path.

  Written to a temporary file in the same folder and renamed over `path`, so a crash or a full disk never leaves
  a half-written file under the final name (a reader sees the old file or the new one); on gs:// one upload.
  """
  path = files.as_path(path)
  arrays = {}
  for name, value in tensors.items():
    if not isinstance(name, str):
      raise ConfigError(f"save_safetensors({path}): key {name!r} is not a string; flatten nested params first")
    arrays[name] = np.ascontiguousarray(np.asarray(value))
  from safetensors.numpy import save
  data = save(arrays, metadata=dict(metadata) if metadata else None)
  with files.atomic_path(path) as temporary:
    with open(temporary, "wb") as file:  # not safetensors' save_file, which makes the file private (0600)
      file.write(data)
  return path


def _check_file(path: Path) -> None:
  if not path.exists():
    raise ConfigError(f"{path}: weight file not found; check the path (relative paths start at {Path.cwd()})")
  if not path.is_file():
    raise ConfigError(f"{path}: is not a file; pass the weight file itself, not its folder")
  if files.size(path) == 0:
    raise ConfigError(f"{path}: weight file is empty (0 bytes), likely an interrupted download or copy; "
                      "fetch it again")


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  try:
    return dict(load_file(path))
  except Exception as error:  # safetensors raises its own SafetensorError, or OSError / TypeError for odd dtypes.
    raise ConfigError(f"{path}: cannot read as safetensors ({type(error).__name__}: {error}); the file is "
                      "truncated or corrupt, or not safetensors: fetch or convert it again") from error


def _load_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as error:
    raise ConfigError(f"{path}: reading PyTorch weight files needs torch; `pip install torch` once, or convert "
                      "the file to .safetensors on a machine that has torch (then torch is not needed)") from error
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # UnpicklingError, the zip reader's RuntimeError, EOFError, ...
    detail = _torch_error_detail(str(error))
    imports = _foreign_pickle_imports(path)
    if "GLOBAL" in detail or imports:
      shown = f"; it imports {', '.join(imports[:5])}" if imports else ""
      raise ConfigError(
          f"{path}: refused to load: its pickle names a Python callable or class ({detail}{shown}), which a plain "
          "state dict never does and torch.load(weights_only=True) rejects, because unpickling it could run code. "
          "Do not load it with weights_only=False unless you trust its source; then re-save only its state dict "
          "(or safetensors) in a separate environment") from error
    raise ConfigError(f"{path}: cannot read as a PyTorch weight file ({type(error).__name__}: {detail}); the file "
                      "is truncated or corrupt, or not a torch.save file: download it again") from error
  if not isinstance(loaded, Mapping):
    raise ConfigError(f"{path}: holds a {type(loaded).__name__}, not a state dict of named tensors; save "
                      "`model.state_dict()` instead of the model or a single tensor")
  flat = {}
  _flatten_torch(loaded, "", flat, torch)
  if not flat:
    raise ConfigError(f"{path}: holds no tensors; is this a weight file (keys: {sorted(loaded)[:10]})?")
  return flat


# Modules a torch.save state dict may import (tensor rebuilding, OrderedDict, numpy scalars); others mean code.
_STATE_DICT_MODULES = ("torch", "collections", "_codecs", "numpy")


def _foreign_pickle_imports(path: Path) -> list[str]:
  """`module.name` of every import in the file's pickle outside `_STATE_DICT_MODULES`, read with pickletools
  (which parses opcodes and runs nothing); [] when the file is no complete pickle (then it is merely corrupt: a
  truncated stream runs nothing, and random bytes must not pass for a pickle naming code)."""
  try:
    with zipfile.ZipFile(path) as archive:  # torch.save's format: the pickle is <name>/data.pkl
      member = next((name for name in archive.namelist() if name.endswith("data.pkl")), None)
      data = archive.read(member) if member else b""
  except (zipfile.BadZipFile, OSError):
    data = path.read_bytes()  # legacy torch.save, or a plain pickle
  imports, strings, memo, complete = [], [], {}, False
  try:
    for opcode, arg, _ in pickletools.genops(data):
      if opcode.name in ("GLOBAL", "INST"):  # protocols 0-3: arg is "module name"
        imports.append(arg.replace(" ", "."))
      elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:  # protocol 4+: module and name pushed before
        imports.append(f"{strings[-2]}.{strings[-1]}")
      elif isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
        strings.append(arg)
      elif opcode.name == "MEMOIZE" and strings:
        memo[len(memo)] = strings[-1]
      elif opcode.name.endswith("GET") and arg in memo:
        strings.append(memo[arg])
      complete = opcode.name == "STOP"
  except (ValueError, EOFError, KeyError, TypeError, UnicodeDecodeError):  # not a pickle, or a truncated one
    return []
  foreign = {name for name in imports if name.split(".")[0] not in _STATE_DICT_MODULES}
  return sorted(foreign) if complete else []


def _torch_error_detail(message: str) -> str:
  """The informative line of a torch.load error: weights_only errors open with a long generic preamble."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  for line in lines:
    if "GLOBAL" in line or "Unsupported" in line or ("failed" in line.lower() and "Weights only" not in line):
      return line
  return lines[0] if lines else "no message"


def _flatten_torch(tree: Mapping, prefix: str, out: dict[str, np.ndarray], torch) -> None:
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      _flatten_torch(value, name + ".", out, torch)
    elif isinstance(value, torch.Tensor):
      tensor = value.detach().cpu()
      if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
      out[name] = tensor.numpy().copy()


# ------------------------------------------------------------------------------------ converted-file helpers


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dict → `{"vgg/conv1_1/kernel": array, ...}` ("/"-joined paths, the converted files' keys)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = np.asarray(value)
  return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  """`{"a/b": x}` → `{"a": {"b": x}}`."""
  tree = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def fail_on_problems(what: str, problems: list[str], fix: str) -> None:
  """Raise one ConfigError listing every problem (none: return), so a wrong file is diagnosed in one go."""
  if problems:
    shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
    raise ConfigError(f"{what}: {len(problems)} problem(s):\n  {shown}\n{fix}")


def check_shapes(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], where: str,
                 fix: str) -> None:
  """Every expected key present with its shape, and no other key."""
  problems = [f"missing {key} (shape {shape})" for key, shape in expected.items() if key not in flat]
  problems += [f"{key} has shape {tuple(np.shape(flat[key]))}, expected {shape}"
               for key, shape in expected.items() if key in flat and tuple(np.shape(flat[key])) != shape]
  problems += [f"unexpected key {key}" for key in sorted(flat) if key not in expected]
  fail_on_problems(where, problems, fix)


def save_converted(path: str | os.PathLike, tree: Mapping, expected: Mapping[str, tuple[int, ...]],
                   file_format: str, fix: str) -> Path:
  """Check a converted (nested) tree against `expected` shapes and write it as float32 safetensors, atomically."""
  flat = {key: np.asarray(value, np.float32) for key, value in flatten(tree).items()}
  check_shapes(flat, expected, f"saving {path}", fix)
  return save_safetensors(path, flat, metadata={"format": file_format})


def load_converted(path: str | os.PathLike, expected: Mapping[str, tuple[int, ...]], what: str, fix: str) -> dict:
  """A nested tree from a file `save_converted` wrote, checked against `expected` shapes; needs no torch."""
  flat = load_state_dict(path)
  check_shapes(flat, expected, f"{path} ({what})", fix)
  return unflatten(flat)


def check_output_suffix(out: str, reader: str) -> None:
  """Converters write safetensors only: the format the `load_*` functions read without torch."""
  if not str(out).endswith(".safetensors"):
    raise ConfigError(f"--out={out}: name the output *.safetensors, the format `{reader}` reads")


def converter_parser(name: str, doc: str) -> argparse.ArgumentParser:
  """The command line of `python -m tokgen_jax.convert.<name>`: its docstring as help, and `--out`."""
  parser = argparse.ArgumentParser(prog=f"python -m tokgen_jax.convert.{name}", description=doc.split("\n\n")[0],
                                   epilog=doc.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="the .safetensors file to write")
  return parser


def run_cli(main: Callable[[], Any]) -> None:
  """Run a converter's `main`, turning a ConfigError into a one-line message and exit status 1."""
  try:
    main()
  except ConfigError as error:
    sys.exit(f"error: {error}")
