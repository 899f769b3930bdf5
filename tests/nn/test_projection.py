"""Projection: the out_in kernel layout computes the in_out map, and relayout_kernels converts between them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.projection import Projection, relayout_kernels


def _init(module, x):
  return module.init(jax.random.key(0), x)["params"]


@pytest.mark.parametrize("in_axes, features, axes", [
    (1, (4, 3), ("embed", "heads", "kv")),  # a query projection: [E] -> [heads, head_dim]
    (2, (6,), ("heads", "kv", "embed")),    # an attention output: [heads, head_dim] -> [E]
])
def test_out_in_kernels_compute_the_same_map_as_in_out(in_axes, features, axes):
  in_shape = (6,) if in_axes == 1 else (4, 3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5) + in_shape), jnp.float32)
  in_out = Projection(features, axes, in_axes=in_axes, use_bias=True)
  out_in = in_out.clone(kernel_layout="out_in")
  boxed = _init(in_out, x)
  boxed = jax.tree.map(lambda a: a + 0.5, boxed)  # a non-zero bias too
  target = jax.eval_shape(lambda: _init(out_in, x))
  converted = relayout_kernels(boxed, target)

  kernel = converted["kernel"]
  assert kernel.names == axes[in_axes:] + axes[:in_axes]  # logical names follow their dims
  assert kernel.value.shape == tuple(features) + x.shape[x.ndim - in_axes:]
  expected = in_out.apply({"params": nn.unbox(boxed)}, x)
  np.testing.assert_allclose(out_in.apply({"params": nn.unbox(converted)}, x), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(converted["bias"].value, boxed["bias"].value)


def test_out_in_init_scales_by_the_contracted_dims():
  """lecun init: variance 1 / fan_in, where fan_in is the product of the in dims, now the trailing ones."""
  module = Projection((64, 64), ("embed", "heads", "kv"), kernel_layout="out_in")
  kernel = np.asarray(nn.unbox(_init(module, jnp.zeros((1, 256))))["kernel"])
  assert kernel.shape == (64, 64, 256)
  assert abs(kernel.std() * np.sqrt(256) - 1) < 0.05


def test_relayout_transposes_square_kernels_and_keeps_other_leaves():
  kernel = jnp.arange(9.0).reshape(3, 3)
  params = {"dense": {"kernel": kernel, "bias": jnp.ones(3)}, "scale": jnp.ones(3)}
  shapes = jax.eval_shape(lambda: params)
  out = relayout_kernels(params, shapes)
  np.testing.assert_array_equal(out["dense"]["kernel"], kernel.T)
  np.testing.assert_array_equal(out["dense"]["bias"], params["dense"]["bias"])
  np.testing.assert_array_equal(out["scale"], params["scale"])


def test_relayout_refuses_kernels_that_do_not_fit_the_target():
  params = {"kernel": jnp.zeros((2, 3, 4))}
  with pytest.raises(ConfigError, match=r"\['kernel'\].*\(2, 3, 4\) maps onto \(4, 2, 2\) by no rotation"):
    relayout_kernels(params, {"kernel": jax.ShapeDtypeStruct((4, 2, 2), jnp.float32)})
  with pytest.raises(ConfigError, match="more than one rotation"):
    relayout_kernels({"kernel": jnp.zeros((2, 2, 2))}, {"kernel": jax.ShapeDtypeStruct((2, 2, 2), jnp.float32)})


def test_unknown_kernel_layout_is_refused():
  with pytest.raises(ConfigError, match="kernel_layout='io'"):
    _init(Projection((3,), ("embed", "mlp"), kernel_layout="io"), jnp.zeros((1, 2)))
