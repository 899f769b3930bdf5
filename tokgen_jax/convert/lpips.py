"""Import LPIPS (v0.1, "vgg") weights into `tokgen_jax.losses.LPIPS` params; convert once to one safetensors file.

LPIPS needs two files, neither of which is downloaded at run time; fetch them once:
- VGG16 ImageNet weights from torchvision, `vgg16-397923af.pth` (the file behind
  `torchvision.models.VGG16_Weights.IMAGENET1K_V1`, i.e. https://download.pytorch.org/models/vgg16-397923af.pth,
  or `~/.cache/torch/hub/checkpoints/` after torchvision fetched it once). Only its `features.*` keys are used.
- the linear heads, which the `lpips` PyPI package ships as `<site-packages>/lpips/weights/v0.1/vgg.pth`
  (`pip download lpips==0.1.4 --no-deps` and unzip the wheel, or `pip install --no-deps lpips`).

Then `python -m tokgen_jax.convert.lpips --vgg=vgg16-397923af.pth --heads=.../lpips/weights/v0.1/vgg.pth
--out=lpips_vgg.safetensors` writes both into one file that `load_lpips` reads without torch.
"""

import importlib.util
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tokgen_jax.convert.state_dict import (check_output_suffix, converter_parser, fail_on_problems, load_converted,
                                           load_state_dict, run_cli, save_converted)
from tokgen_jax.errors import ConfigError
from tokgen_jax.losses.perceptual import VGG16_BLOCKS, vgg16_conv_names

FORMAT = "tokgen_jax.lpips_vgg_v0.1"
VGG16_FILE = "vgg16-397923af.pth"
HEADS_FILE = "lpips/weights/v0.1/vgg.pth"


def _vgg16_layout() -> list[tuple[int, str, int, int]]:
  """(torchvision features index, Flax name, in channels, out channels) per conv: a ReLU follows each conv and a
  max-pool ends each block, so indices run 0, 2, then 5 (after ReLU 3 and pool 4), ..."""
  layout, index, channels = [], 0, 3
  names = iter(vgg16_conv_names())
  for widths in VGG16_BLOCKS:
    for width in widths:
      layout.append((index, next(names), channels, width))
      index, channels = index + 2, width
    index += 1
  return layout


def _head_channels() -> list[int]:
  return [widths[-1] for widths in VGG16_BLOCKS]


def vgg16_params_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """`{"conv1_1": {"kernel": HWIO, "bias": [O]}, ...}` (a `VGG16Features` param tree) from torchvision VGG16 keys.

  Reads `features.{0,2,5,...,28}.{weight,bias}` (OIHW convs); other keys (`classifier.*`) are ignored. A missing
  key, a wrong shape or an unknown `features.*` key (e.g. from vgg16_bn) raises a ConfigError listing them all.
  """
  params, problems, used = {}, [], set()
  for index, name, cin, cout in _vgg16_layout():
    expected = {"weight": (cout, cin, 3, 3), "bias": (cout,)}
    layer = {}
    for kind, shape in expected.items():
      key = f"features.{index}.{kind}"
      used.add(key)
      if key not in state_dict:
        problems.append(f"missing {key} (shape {shape})")
      elif tuple(np.shape(state_dict[key])) != shape:
        problems.append(f"{key} has shape {tuple(np.shape(state_dict[key]))}, expected {shape}")
      else:
        layer[kind] = np.asarray(state_dict[key], np.float32)
    if len(layer) == 2:
      params[name] = {"kernel": layer["weight"].transpose(2, 3, 1, 0), "bias": layer["bias"]}
  problems += [f"unexpected key {key}" for key in sorted(state_dict) if key.startswith("features.") and key not in used]
  if not params:
    problems.insert(0, f"no torchvision VGG16 conv found; the file's keys begin {sorted(state_dict)[:5]}")
  fail_on_problems("VGG16 state dict", problems,
        f"Pass torchvision's plain (not batch-norm) VGG16 ImageNet weights, {VGG16_FILE}.")
  return params


def lpips_heads_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """`{"lin0": {"kernel": [C, 1]}, ...}` from the lpips package's head file keys `lin{k}.model.1.weight` `[1, C, 1, 1]`.

  Keys outside `lin*` (e.g. `net.*` of a whole saved LPIPS module) are ignored; a missing, misshapen or extra
  `lin*` key (the alex or squeeze heads) raises a ConfigError listing them all.
  """
  params, problems, used = {}, [], set()
  for k, channels in enumerate(_head_channels()):
    key, shape = f"lin{k}.model.1.weight", (1, channels, 1, 1)
    used.add(key)
    if key not in state_dict:
      problems.append(f"missing {key} (shape {shape})")
    elif tuple(np.shape(state_dict[key])) != shape:
      problems.append(f"{key} has shape {tuple(np.shape(state_dict[key]))}, expected {shape}")
    else:
      params[f"lin{k}"] = {"kernel": np.asarray(state_dict[key], np.float32).reshape(channels, 1)}
  problems += [f"unexpected key {key}" for key in sorted(state_dict) if key.startswith("lin") and key not in used]
  fail_on_problems("LPIPS heads state dict", problems, f"Pass the lpips package's VGG v0.1 heads, {HEADS_FILE}.")
  return params


def load_lpips_params(vgg_path: str | os.PathLike, heads_path: str | os.PathLike) -> dict:
  """`LPIPS` params from the two standard PyTorch (or safetensors) files; see the module docstring for where."""
  return {"vgg": vgg16_params_from_torch(load_state_dict(vgg_path)),
          **lpips_heads_from_torch(load_state_dict(heads_path))}


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """"/"-joined param name → shape, for every param of an `LPIPS` module."""
  shapes = {}
  for _, name, cin, cout in _vgg16_layout():
    shapes[f"vgg/{name}/kernel"] = (3, 3, cin, cout)
    shapes[f"vgg/{name}/bias"] = (cout,)
  for k, channels in enumerate(_head_channels()):
    shapes[f"lin{k}/kernel"] = (channels, 1)
  return shapes


_RECONVERT = "Convert the weights again with `python -m tokgen_jax.convert.lpips --vgg=... --heads=... --out=...`."


def save_lpips(path: str | os.PathLike, params: Mapping) -> Path:
  """Write `LPIPS` params (nested, as `load_lpips_params` returns them) to one safetensors file, atomically."""
  return save_converted(path, params, expected_shapes(), FORMAT, _RECONVERT)


def load_lpips(path: str | os.PathLike) -> dict:
  """`LPIPS` params from a file `save_lpips` (or this module's CLI) wrote; needs no torch."""
  return load_converted(path, expected_shapes(), "LPIPS weights", _RECONVERT)


def default_heads_path() -> Path | None:
  """The heads file of an installed `lpips` package, found without importing it (its import needs torchvision)."""
  spec = importlib.util.find_spec("lpips")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "vgg.pth"
  return path if path.is_file() else None


def main(argv: Sequence[str] | None = None) -> Path:
  parser = converter_parser("lpips", __doc__)
  parser.add_argument("--vgg", required=True, help=f"torchvision VGG16 ImageNet weights, {VGG16_FILE}")
  parser.add_argument("--heads", default=None,
                      help=f"LPIPS heads, {HEADS_FILE}; defaults to the installed lpips package's file")
  args = parser.parse_args(argv)
  heads = args.heads or default_heads_path()
  if heads is None:
    raise ConfigError(f"--heads not given and no installed lpips package found; pass --heads=<path to {HEADS_FILE}> "
                      "(`pip download lpips==0.1.4 --no-deps` and unzip the wheel to get it)")
  check_output_suffix(args.out, "load_lpips")
  out = save_lpips(args.out, load_lpips_params(args.vgg, heads))
  print(f"wrote {out} (VGG16 from {args.vgg}, heads from {heads})")
  return out


if __name__ == "__main__":
  run_cli(main)
