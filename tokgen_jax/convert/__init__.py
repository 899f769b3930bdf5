"""Weight import from PyTorch and safetensors files into Flax param trees.

`state_dict` reads any weight file into flat numpy arrays (PyTorch files only with `weights_only=True`) and writes
safetensors; one module per network (`lpips`, ...) maps those keys and layouts onto a tokgen_jax module's params,
and saves the result once as safetensors so later runs need no torch.

The per-network names are imported on first use: importing them here would load `convert.lpips` before
`python -m tokgen_jax.convert.lpips` runs it (runpy warns about that), and would pull in Flax for callers that
only read a state dict.
"""

import importlib

from tokgen_jax.convert.state_dict import load_state_dict, save_safetensors

_LAZY = {
    "vgg16_params_from_torch": "lpips", "lpips_heads_from_torch": "lpips", "load_lpips_params": "lpips",
    "save_lpips": "lpips", "load_lpips": "lpips",
    "inception_params_from_torch": "inception", "load_inception_params": "inception",
    "save_inception": "inception", "load_inception": "inception",
    "i3d_variables_from_torch": "i3d", "load_i3d_variables": "i3d", "save_i3d": "i3d", "load_i3d": "i3d",
}

__all__ = ["load_state_dict", "save_safetensors", *_LAZY]


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(f"tokgen_jax.convert.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'tokgen_jax.convert' has no attribute {name!r}")
