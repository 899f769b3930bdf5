"""Every registered quantizer: one interface, built by name, and batch sharding does not change its outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tokgen_jax import quantizers
from tokgen_jax.configs import quantizers as presets

SMALL = {
    "vq": dict(codebook_size=32, dim=4),
    "lfq": dict(bits=6),
    "fsq": dict(levels=(5, 4, 3)),
    "rvq": dict(depth=2, codebook_size=16, dim=4),
    "msrq": dict(codebook_size=32, dim=4, scales=(1, 2, 4)),
    "kl": dict(dim=4),
}
CONTINUOUS = {"kl"}  # no token ids: codes_from_indices raises (tested in test_kl.py)


def _preset(name):
  config = presets.by_name(name)
  config.update(SMALL[name])
  kwargs = config.to_dict()
  return quantizers.build(kwargs.pop("name"), **kwargs)


@pytest.mark.parametrize("name", sorted(quantizers.REGISTRY))
def test_interface_and_sharded_equals_single_device(name):
  quantizer = _preset(name)
  z = jax.random.normal(jax.random.key(0), (8, 4, 4, quantizer.dim))
  variables = quantizer.init(jax.random.key(1), z)
  apply = jax.jit(lambda z: quantizer.apply(variables, z))
  z_q, out = apply(z)
  assert z_q.shape == z.shape and out.indices.dtype == jnp.int32 and out.loss.shape == ()
  assert quantizer.bits_per_token > 0
  if name not in CONTINUOUS:
    np.testing.assert_allclose(quantizer.apply(variables, out.indices, method=quantizer.codes_from_indices), z_q,
                               atol=1e-5)
  sharded_z = jax.device_put(z, NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), P("data")))
  sharded_q, sharded_out = apply(sharded_z)
  np.testing.assert_array_equal(sharded_out.indices, out.indices)
  np.testing.assert_allclose(sharded_q, z_q, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sharded_out.metrics, out.metrics)


def test_bits_per_pixel_closed_forms():
  assert quantizers.bits_per_pixel(32 * 32, 10, 128 * 128) == pytest.approx(10 / 16)
  assert quantizers.tokens_per_image(_preset("msrq"), (4, 4)) == 1 + 4 + 16
  assert quantizers.tokens_per_image(_preset("vq"), (5, 16, 16)) == 1280  # MAGVIT-v2 17x128x128 latent grid
