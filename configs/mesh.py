"""Mesh presets: how devices split into the `data`, `fsdp` and `tensor` axes, and the logical-axis rules."""

import ml_collections

# Logical dimension name → mesh axes. Batch spans data and fsdp; weights shard their larger dimension over fsdp
# (ZeRO-3 style) and their output/head dimension over tensor.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
    ("height", None),
    ("width", None),
)


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.shape = ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})
  config.logical_axis_rules = LOGICAL_AXIS_RULES
  return config
