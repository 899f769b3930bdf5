import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.quantizers.residual import ResidualQuantizer

DEPTH, K, DIM = 4, 32, 4


def _nearest(x, codebook):
  return np.argmin(((x[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)


def _fit_codebooks(data, rng):
  """Greedy residual k-means: level k's codebook is fit (5 Lloyd steps) to what levels < k left over."""
  codebooks, residual = [], data
  for _ in range(DEPTH):
    codebook = residual[rng.choice(len(residual), K, replace=False)]
    for _ in range(5):
      assign = _nearest(residual, codebook)
      codebook = np.stack([residual[assign == k].mean(0) if np.any(assign == k) else codebook[k]
                           for k in range(K)])
    codebooks.append(codebook.astype(np.float32))
    residual = residual - codebook[_nearest(residual, codebook)]
  return codebooks


def _variables(codebooks):
  return {"params": {f"level_{k}": {"codebook": jnp.asarray(c)} for k, c in enumerate(codebooks)}}


@pytest.fixture(scope="module")
def fitted():
  rng = np.random.default_rng(0)
  codebooks = _fit_codebooks(rng.normal(size=(2048, DIM)), rng)
  z = jnp.asarray(rng.normal(size=(2, 8, 8, DIM)), jnp.float32)  # held-out data
  quantizer = ResidualQuantizer(DEPTH, K, DIM, commitment_weight=0.25)
  z_q, out = quantizer.apply(_variables(codebooks), z)
  return quantizer, codebooks, z, z_q, out


def test_indices_shape_and_bits(fitted):
  quantizer, _, _, _, out = fitted
  chex.assert_shape(out.indices, (2, 8, 8, DEPTH))
  chex.assert_type(out.indices, jnp.int32)
  np.testing.assert_allclose(quantizer.bits_per_token, DEPTH * 5.0)
  for k in range(DEPTH):
    assert f"codebook_usage_{k}" in out.metrics and f"perplexity_{k}" in out.metrics
  np.testing.assert_allclose(out.metrics["codebook_usage"],
                             np.mean([out.metrics[f"codebook_usage_{k}"] for k in range(DEPTH)]), rtol=1e-6)


def test_error_falls_with_depth_and_matches_reference(fitted):
  quantizer, codebooks, z, z_q, out = fitted
  variables = _variables(codebooks)
  errors, residual, reference = [], np.asarray(z).reshape(-1, DIM), np.zeros((128, DIM))
  for depth in range(1, DEPTH + 1):
    f_hat = quantizer.apply(variables, out.indices[..., :depth], method=quantizer.codes_from_indices)
    errors.append(float(jnp.mean(jnp.square(f_hat - z))))
    code = codebooks[depth - 1][_nearest(residual, codebooks[depth - 1])]
    residual, reference = residual - code, reference + code
    np.testing.assert_allclose(np.asarray(f_hat).reshape(-1, DIM), reference, atol=1e-5)
  assert all(b < a for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.5 * errors[0], errors
  # Full-depth codes round trip to the quantized output.
  f_hat = quantizer.apply(variables, out.indices, method=quantizer.codes_from_indices)
  chex.assert_trees_all_close(f_hat, z_q, atol=1e-5)


def test_loss_sums_level_losses_with_rq_vae_commitment(fitted):
  """Level k's residual error is ‖z - ẑ_k‖²: loss = (1+β)·Σ_k mse_k and d loss/dz = 2β·Σ_k(z - ẑ_k)/n."""
  quantizer, codebooks, z, _, out = fitted
  variables = _variables(codebooks)
  partial = [quantizer.apply(variables, out.indices[..., :d], method=quantizer.codes_from_indices)
             for d in range(1, DEPTH + 1)]
  mse = [float(jnp.mean(jnp.square(z - p))) for p in partial]
  np.testing.assert_allclose(out.loss, 1.25 * sum(mse), rtol=1e-5)
  np.testing.assert_allclose(out.metrics["commitment"], sum(mse), rtol=1e-5)
  for k in range(DEPTH):
    np.testing.assert_allclose(out.metrics[f"codebook_loss_{k}"], mse[k], rtol=1e-5)
  grad = jax.grad(lambda z: quantizer.apply(variables, z)[1].loss)(z)
  expected = 2 * 0.25 * sum(z - p for p in partial) / z.size
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-8)


def test_straight_through_gradient_is_identity(fitted):
  quantizer, codebooks, z, _, _ = fitted
  cotangent = jax.random.normal(jax.random.key(0), z.shape)
  grad = jax.grad(lambda z: jnp.sum(quantizer.apply(_variables(codebooks), z)[0] * cotangent))(z)
  chex.assert_trees_all_close(grad, cotangent, atol=1e-6)


def test_shared_codebook_has_one_codebook_and_round_trips():
  quantizer = ResidualQuantizer(3, 16, DIM, shared_codebook=True)
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, DIM))
  variables = nn.meta.unbox(quantizer.init(jax.random.key(1), z))
  assert list(variables["params"]) == ["shared"]
  z_q, out = quantizer.apply(variables, z)
  chex.assert_shape(out.indices, (2, 4, 4, 3))
  codes = quantizer.apply(variables, out.indices, method=quantizer.codes_from_indices)
  chex.assert_trees_all_close(codes, z_q, atol=1e-5)
  with pytest.raises(ValueError, match="levels in the last axis"):
    quantizer.apply(variables, jnp.zeros((2, 4), jnp.int32), method=quantizer.codes_from_indices)
