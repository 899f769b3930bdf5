import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer, area_downsample, area_weights

SCALES = (1, 2, 3, 4, 6, 8)  # 8→3 and 8→6 are non-integer ratios
DIM = 4


def _setup(phi_mix=0.5, codebook_size=64, scales=SCALES, seed=0):
  quantizer = MultiScaleResidualQuantizer(codebook_size, DIM, scales=scales, phi_mix=phi_mix)
  size = scales[-1]
  z = jax.random.normal(jax.random.key(seed), (2, size, size, DIM))
  variables = nn.meta.unbox(quantizer.init(jax.random.key(seed + 1), z))
  return quantizer, z, variables


def test_default_scales_give_680_tokens_split_row_major():
  quantizer = MultiScaleResidualQuantizer(16, DIM)
  assert quantizer.num_tokens == 680
  np.testing.assert_allclose(quantizer.bits_per_token, 4.0)
  z = jax.random.normal(jax.random.key(0), (1, 16, 16, DIM))
  variables = quantizer.init(jax.random.key(1), z)
  _, out = quantizer.apply(variables, z)
  chex.assert_shape(out.indices, (1, 680))
  chex.assert_type(out.indices, jnp.int32)
  maps = quantizer.split_scales(out.indices)
  assert [m.shape for m in maps] == [(1, s, s) for s in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
  np.testing.assert_array_equal(maps[2].reshape(1, 9), out.indices[:, 5:14])  # after 1 + 4 tokens
  with pytest.raises(ValueError, match="whole number of scales"):
    quantizer.split_scales(out.indices[:, :6])


def test_area_downsample_is_block_mean_for_integer_ratios():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  expected = x.reshape(2, 4, 4, 4, 4, 3).mean(axis=(2, 4))
  chex.assert_trees_all_close(area_downsample(x, 4), expected, atol=1e-6)
  chex.assert_trees_all_close(area_downsample(x, 16), x, atol=1e-6)


@pytest.mark.parametrize("size", [13, 10, 3, 5])
def test_area_downsample_is_exact_area_average_for_any_ratio(size):
  """Reference: split every pixel into size×size equal sub-pixels; each output cell is then a 16×16 block mean."""
  x = np.random.default_rng(size).normal(size=(2, 16, 16, 3))
  fine = np.repeat(np.repeat(x, size, axis=1), size, axis=2)  # [2, 16·size, 16·size, 3], same area measure
  expected = fine.reshape(2, size, 16, size, 16, 3).mean(axis=(2, 4))
  down = area_downsample(jnp.asarray(x, jnp.float32), size)
  np.testing.assert_allclose(down, expected, atol=1e-5)
  np.testing.assert_allclose(down.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-6)
  np.testing.assert_allclose(area_weights(16, size).sum(axis=1), 1.0, rtol=1e-6)


def test_codes_from_indices_rebuilds_the_quantized_output():
  quantizer, z, variables = _setup(phi_mix=0.5)
  z_q, out = quantizer.apply(variables, z)
  chex.assert_shape(out.indices, (2, quantizer.num_tokens))
  f_hat = quantizer.apply(variables, out.indices, method=quantizer.codes_from_indices)
  chex.assert_trees_all_close(f_hat, z_q, atol=1e-5)


def test_loss_is_vars_mean_over_scales_of_prefix_errors():
  """codebook term = commitment term = mean_k ‖f̂_k - f‖², so loss = (1 + β)·mean_k mse(f̂_k, f)."""
  quantizer, z, variables = _setup(phi_mix=0.5)
  _, out = quantizer.apply(variables, z)
  prefix = np.cumsum([s * s for s in SCALES])
  mse = [float(jnp.mean(jnp.square(
      quantizer.apply(variables, out.indices[:, :n], method=quantizer.codes_from_indices) - z))) for n in prefix]
  np.testing.assert_allclose(out.metrics["commitment"], np.mean(mse), rtol=1e-5)
  np.testing.assert_allclose(out.loss, 1.25 * np.mean(mse), rtol=1e-5)


def test_error_falls_as_scales_are_added():
  # φ = identity (phi_mix 0) and a codebook spanning radii 0.01…3 so every scale's residual has near codes.
  quantizer, _, variables = _setup(phi_mix=0.0, codebook_size=512)
  rng = np.random.default_rng(0)
  directions = rng.normal(size=(512, DIM))
  radii = np.exp(rng.uniform(np.log(0.01), np.log(3.0), size=(512, 1)))
  codebook = directions / np.linalg.norm(directions, axis=1, keepdims=True) * radii
  variables["params"]["vq"]["codebook"] = jnp.asarray(codebook, jnp.float32)
  # A smooth field plus detail, so the coarse scales carry signal.
  z = jax.image.resize(jax.random.normal(jax.random.key(5), (2, 3, 3, DIM)), (2, 8, 8, DIM), "bicubic")
  z = z + 0.3 * jax.random.normal(jax.random.key(6), z.shape)
  z_q, out = quantizer.apply(variables, z)
  errors = [float(jnp.mean(jnp.square(
      quantizer.apply(variables, out.indices[:, :n], method=quantizer.codes_from_indices) - z)))
      for n in np.cumsum([s * s for s in SCALES])]
  assert all(b < a for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.1 * float(jnp.mean(jnp.square(z))), errors
  np.testing.assert_allclose(errors[-1], jnp.mean(jnp.square(z_q - z)), rtol=1e-4)


def test_straight_through_gradient_is_identity():
  quantizer, z, variables = _setup()
  cotangent = jax.random.normal(jax.random.key(9), z.shape)
  grad = jax.grad(lambda z: jnp.sum(quantizer.apply(variables, z)[0] * cotangent))(z)
  chex.assert_trees_all_close(grad, cotangent, atol=1e-6)


def test_rejects_latent_size_other_than_last_scale():
  quantizer, _, variables = _setup()
  with pytest.raises(ValueError, match=r"H = W = scales\[-1\]"):
    quantizer.apply(variables, jnp.zeros((2, 16, 16, DIM)))
