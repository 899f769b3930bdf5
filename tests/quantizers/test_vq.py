import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.quantizers import VectorQuantizer, build
from tokgen_jax.quantizers.base import codebook_statistics
from tokgen_jax.errors import ConfigError


def _apply(quantizer, z, codebook):
  return quantizer.apply({"params": {"codebook": codebook}}, z)


def test_nearest_code_and_losses_match_hand_computation():
  codebook = jnp.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
  z = jnp.array([[[0.1, -0.2], [0.9, 1.3], [-0.8, 1.5]]])  # [1, 3, 2]
  quantizer = VectorQuantizer(codebook_size=3, dim=2, commitment_weight=0.25)
  z_q, out = _apply(quantizer, z, codebook)
  np.testing.assert_array_equal(out.indices, [[0, 1, 2]])
  chex.assert_trees_all_close(z_q, codebook[None], atol=1e-6)
  squared_error = np.mean((np.asarray(z) - np.asarray(codebook)[None]) ** 2)
  np.testing.assert_allclose(out.metrics["codebook_loss"], squared_error, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["commitment"], squared_error, rtol=1e-6)
  np.testing.assert_allclose(out.loss, 1.25 * squared_error, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["codebook_usage"], 1.0)
  np.testing.assert_allclose(out.metrics["perplexity"], 3.0, rtol=1e-6)


def test_straight_through_gradient_is_identity():
  codebook = jax.random.normal(jax.random.key(0), (16, 4))
  z = jax.random.normal(jax.random.key(1), (2, 5, 4))
  quantizer = VectorQuantizer(codebook_size=16, dim=4)
  cotangent = jax.random.normal(jax.random.key(2), z.shape)
  grad = jax.grad(lambda z: jnp.sum(_apply(quantizer, z, codebook)[0] * cotangent))(z)
  chex.assert_trees_all_close(grad, cotangent, atol=1e-6)


def test_loss_gradients_split_between_encoder_and_codebook():
  """Codebook term trains only the codes, commitment only the encoder: d loss/dz = 2β(z - e)/n."""
  codebook = jnp.array([[0.0, 0.0], [1.0, 1.0]])
  z = jnp.array([[0.2, 0.4]])
  quantizer = VectorQuantizer(codebook_size=2, dim=2, commitment_weight=0.25)
  grad_z = jax.grad(lambda z: _apply(quantizer, z, codebook)[1].loss)(z)
  np.testing.assert_allclose(grad_z, 2 * 0.25 * (z - codebook[0]) / 2, rtol=1e-6)
  grad_codes = jax.grad(lambda c: _apply(quantizer, z, c)[1].loss)(codebook)
  np.testing.assert_allclose(grad_codes[0], 2 * (codebook[0] - z[0]) / 2, rtol=1e-6)
  np.testing.assert_allclose(grad_codes[1], 0.0)


def test_l2_normalized_codes_are_unit_vectors_and_roundtrip():
  quantizer = VectorQuantizer(codebook_size=32, dim=8, l2_normalize=True)
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  variables = quantizer.init(jax.random.key(1), z)
  z_q, out = quantizer.apply(variables, z)
  chex.assert_shape(out.indices, (2, 4, 4))
  chex.assert_type(out.indices, jnp.int32)
  np.testing.assert_allclose(jnp.linalg.norm(z_q, axis=-1), 1.0, rtol=1e-5)
  codes = quantizer.apply(variables, out.indices, method=quantizer.codes_from_indices)
  chex.assert_trees_all_close(codes, z_q, atol=1e-6)


def test_codebook_statistics_closed_form():
  stats = codebook_statistics(jnp.array([0, 0, 1, 1]), codebook_size=8)
  np.testing.assert_allclose(stats["codebook_usage"], 2 / 8)
  np.testing.assert_allclose(stats["perplexity"], 2.0, rtol=1e-6)


def test_registry_builds_by_name_and_rejects_unknown():
  assert isinstance(build("vq", codebook_size=4, dim=2), VectorQuantizer)
  with pytest.raises(ConfigError, match="config.model.quantizer.name"):
    build("nope")
