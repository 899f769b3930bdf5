"""Import pytorch-fid's FID InceptionV3 weights into `tokgen_jax.metrics.inception.FIDInceptionV3` params.

The weights are not downloaded at run time; fetch the file once from pytorch-fid's GitHub release:
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(or `~/.cache/torch/hub/checkpoints/` after pytorch-fid fetched it once). It holds the TF `inception-2015-12-05`
graph's weights under torchvision's InceptionV3 module names (`Conv2d_1a_3x3.conv.weight`,
`Mixed_5b.branch1x1.bn.running_var`, ..., `fc.weight` `[1008, 2048]`). torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` comes from the same TF graph under the same module names, so it should
import too (not tested). torchvision's ImageNet InceptionV3
(`inception_v3_google-*.pth`) is a different network (1000 classes, an aux head) and is rejected.

Then `python -m tokgen_jax.convert.inception --weights=pt_inception-2015-12-05-6726825d.pth
--out=fid_inception.safetensors` folds every BatchNorm into its conv and writes one file that `load_inception`
reads without torch.
"""

import functools
import os
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.convert.state_dict import (check_output_suffix, converter_parser, fail_on_problems, load_converted,
                                           load_state_dict, run_cli, save_converted, unflatten)
from tokgen_jax.metrics.inception import BN_EPS, MIN_SIZE, FIDInceptionV3

FORMAT = "tokgen_jax.fid_inception_v3"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
_BN_KINDS = ("weight", "bias", "running_mean", "running_var")
_IGNORED_SUFFIX = ".num_batches_tracked"  # a BatchNorm counter, present or not depending on the torch version


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict[str, tuple[int, ...]]:
  """"/"-joined param name → shape, for every param of a `FIDInceptionV3` (traced once, without computing)."""
  tree = jax.eval_shape(FIDInceptionV3(resize_to=None).init, jax.random.key(0),
                        jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32))["params"]
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(entry.key for entry in path): tuple(leaf.shape) for path, leaf in leaves}


def _conv_layers() -> dict[str, tuple[int, ...]]:
  """Flax module path ("Mixed_5b/branch1x1") → HWIO kernel shape, for the 94 convs."""
  return {key[:-len("/kernel")]: shape for key, shape in expected_shapes().items()
          if key.endswith("/kernel") and not key.startswith("fc/")}


def _take(state_dict: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], problems: list[str]
          ) -> np.ndarray | None:
  """`state_dict[key]` as float64 if present with `shape`; else note the problem and return None."""
  if key not in state_dict:
    problems.append(f"missing {key} (shape {shape})")
    return None
  if tuple(np.shape(state_dict[key])) != shape:
    problems.append(f"{key} has shape {tuple(np.shape(state_dict[key]))}, expected {shape}")
    return None
  return np.asarray(state_dict[key], np.float64)


def _fold_conv(state_dict: Mapping[str, np.ndarray], prefix: str, kernel_shape: tuple[int, ...],
               problems: list[str]) -> dict[str, np.ndarray] | None:
  """BasicConv2d `prefix.conv.weight` (OIHW, no bias) + `prefix.bn.*` (eval mode, eps 1e-3) → one biased conv:
  `kernel·s` (HWIO) and `β - μ·s` with `s = γ/√(σ² + ε)`, in float64 so folding adds no rounding of its own."""
  kh, kw, cin, cout = kernel_shape
  weight = _take(state_dict, f"{prefix}.conv.weight", (cout, cin, kh, kw), problems)
  bn = {kind: _take(state_dict, f"{prefix}.bn.{kind}", (cout,), problems) for kind in _BN_KINDS}
  if weight is None or any(value is None for value in bn.values()):
    return None
  scale = bn["weight"] / np.sqrt(bn["running_var"] + BN_EPS)
  kernel = (weight * scale[:, None, None, None]).transpose(2, 3, 1, 0)
  return {"kernel": kernel.astype(np.float32), "bias": (bn["bias"] - bn["running_mean"] * scale).astype(np.float32)}


def _used_keys() -> set[str]:
  keys = {"fc.weight", "fc.bias"}
  for path in _conv_layers():
    prefix = path.replace("/", ".")
    keys |= {f"{prefix}.conv.weight"} | {f"{prefix}.bn.{kind}" for kind in _BN_KINDS}
  return keys


def inception_params_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """A `FIDInceptionV3` param tree from pytorch-fid's state dict keys, each BatchNorm folded into its conv.

  `{"Conv2d_1a_3x3": {"kernel": HWIO, "bias": [O]}, ..., "Mixed_7c": {"branch_pool": {...}, ...},
  "fc": {"kernel": [2048, 1008], "bias": [1008]}}`, float32. `*.num_batches_tracked` keys are ignored. Every
  missing key, wrong shape and unknown key (e.g. torchvision's `AuxLogits.*`) is listed in one ConfigError.
  """
  params, problems = {}, []
  for path, kernel_shape in _conv_layers().items():
    layer = _fold_conv(state_dict, path.replace("/", "."), kernel_shape, problems)
    if layer is not None:
      params[path] = layer
  features, classes = expected_shapes()["fc/kernel"]
  weight = _take(state_dict, "fc.weight", (classes, features), problems)
  bias = _take(state_dict, "fc.bias", (classes,), problems)
  if weight is not None and bias is not None:
    params["fc"] = {"kernel": weight.T.astype(np.float32), "bias": bias.astype(np.float32)}
  used = _used_keys()
  unknown = [key for key in sorted(state_dict) if key not in used and not key.endswith(_IGNORED_SUFFIX)]
  problems += [f"unexpected key {key}" for key in unknown]
  if len(unknown) == len(state_dict):
    problems.insert(0, f"no FID InceptionV3 key found; the file's keys begin {sorted(state_dict)[:5]}")
  fail_on_problems("FID InceptionV3 state dict", problems,
        f"Pass pytorch-fid's FID weights, {WEIGHTS_FILE} (not torchvision's ImageNet InceptionV3, which has 1000 "
        "classes and AuxLogits).")
  return unflatten({f"{path}/{name}": value for path, layer in params.items() for name, value in layer.items()})


def load_inception_params(path: str | os.PathLike) -> dict:
  """`FIDInceptionV3` params from pytorch-fid's PyTorch file (or a safetensors copy with the same keys)."""
  return inception_params_from_torch(load_state_dict(path))


_RECONVERT = (f"Convert the weights again with `python -m tokgen_jax.convert.inception --weights={WEIGHTS_FILE} "
              "--out=fid_inception.safetensors`.")


def save_inception(path: str | os.PathLike, params: Mapping) -> Path:
  """Write `FIDInceptionV3` params (nested, BatchNorm folded) to one safetensors file, atomically."""
  return save_converted(path, params, expected_shapes(), FORMAT, _RECONVERT)


def load_inception(path: str | os.PathLike) -> dict:
  """`FIDInceptionV3` params from a file `save_inception` (or this module's CLI) wrote; needs no torch."""
  return load_converted(path, expected_shapes(), "FID InceptionV3 weights", _RECONVERT)


def main(argv: Sequence[str] | None = None) -> Path:
  parser = converter_parser("inception", __doc__)
  parser.add_argument("--weights", required=True, help=f"pytorch-fid's FID InceptionV3 weights, {WEIGHTS_FILE}")
  args = parser.parse_args(argv)
  check_output_suffix(args.out, "load_inception")
  out = save_inception(args.out, load_inception_params(args.weights))
  print(f"wrote {out} (FID InceptionV3 from {args.weights}, BatchNorm folded into the convs)")
  return out


if __name__ == "__main__":
  run_cli(main)
