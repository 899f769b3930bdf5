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


QUANTIZER = ResidualQuantizer(DEPTH, K, DIM, commitment_weight=0.25)


@jax.jit
def _run(variables, z, cotangent):
  """One compiled program: outputs, ẑ from the first d levels, d<z_q, cotangent>/dz and d loss/dz."""
  z_q, vjp, out = jax.vjp(lambda z: QUANTIZER.apply(variables, z), z, has_aux=True)
  partial = [QUANTIZER.apply(variables, out.indices[..., :d], method=QUANTIZER.codes_from_indices)
             for d in range(1, DEPTH + 1)]
  loss_grad = jax.grad(lambda z: QUANTIZER.apply(variables, z)[1].loss)(z)
  return z_q, out, jnp.stack(partial), vjp(cotangent)[0], loss_grad


@pytest.fixture(scope="module")
def fitted():
  rng = np.random.default_rng(0)
  codebooks = _fit_codebooks(rng.normal(size=(2048, DIM)), rng)
  z = jnp.asarray(rng.normal(size=(2, 8, 8, DIM)), jnp.float32)  # held-out data
  cotangent = jnp.asarray(rng.normal(size=z.shape), jnp.float32)
  return (codebooks, z, cotangent) + _run(_variables(codebooks), z, cotangent)


def test_indices_shape_bits_and_metrics(fitted):
  *_, out, _, _, _ = fitted
  chex.assert_shape(out.indices, (2, 8, 8, DEPTH))
  chex.assert_type(out.indices, jnp.int32)
  np.testing.assert_allclose(QUANTIZER.bits_per_token, DEPTH * 5.0)
  usage = []
  for k in range(DEPTH):
    counts = np.bincount(np.asarray(out.indices[..., k]).ravel(), minlength=K)
    usage.append(np.mean(counts > 0))
    np.testing.assert_allclose(out.metrics[f"codebook_usage_{k}"], usage[-1], rtol=1e-6)
    assert f"perplexity_{k}" in out.metrics
  np.testing.assert_allclose(out.metrics["codebook_usage"], np.mean(usage), rtol=1e-6)


def test_error_falls_with_depth_and_matches_reference(fitted):
  codebooks, z, _, z_q, out, partial, _, _ = fitted
  errors = np.mean(np.square(np.asarray(partial) - np.asarray(z)[None]), axis=(1, 2, 3, 4))
  assert np.all(np.diff(errors) < 0), errors
  assert errors[-1] < 0.5 * errors[0], errors
  residual, reference = np.asarray(z).reshape(-1, DIM), np.zeros((128, DIM))
  for depth in range(DEPTH):  # greedy nearest-code reference in numpy
    code = codebooks[depth][_nearest(residual, codebooks[depth])]
    residual, reference = residual - code, reference + code
    np.testing.assert_allclose(np.asarray(partial[depth]).reshape(-1, DIM), reference, atol=1e-5)
  chex.assert_trees_all_close(partial[-1], z_q, atol=1e-5)  # full-depth codes round trip to the output


def test_loss_sums_level_losses_with_rq_vae_commitment(fitted):
  """Level k's residual error is ‖z - ẑ_k‖²: loss = (1+β)·Σ_k mse_k and d loss/dz = 2β·Σ_k(z - ẑ_k)/n."""
  _, z, _, _, out, partial, _, loss_grad = fitted
  mse = np.mean(np.square(np.asarray(partial) - np.asarray(z)[None]), axis=(1, 2, 3, 4))
  np.testing.assert_allclose(out.loss, 1.25 * np.sum(mse), rtol=1e-5)
  np.testing.assert_allclose(out.metrics["commitment"], np.sum(mse), rtol=1e-5)
  for k in range(DEPTH):
    np.testing.assert_allclose(out.metrics[f"codebook_loss_{k}"], mse[k], rtol=1e-5)
  expected = 2 * 0.25 * np.sum(np.asarray(z)[None] - np.asarray(partial), axis=0) / z.size
  np.testing.assert_allclose(loss_grad, expected, rtol=1e-4, atol=1e-8)


def test_straight_through_gradient_is_identity(fitted):
  _, _, cotangent, _, _, _, grad, _ = fitted
  chex.assert_trees_all_close(grad, cotangent, atol=1e-6)


def test_shared_codebook_has_one_codebook_and_round_trips():
  quantizer = ResidualQuantizer(3, 16, DIM, shared_codebook=True)
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, DIM))
  shapes = jax.tree.map(jnp.shape, nn.meta.unbox(jax.eval_shape(quantizer.init, jax.random.key(1), z)))
  assert shapes == {"params": {"shared": {"codebook": (16, DIM)}}}
  codebook = jax.random.normal(jax.random.key(2), (16, DIM))

  @jax.jit
  def run(codebook, z):
    variables = {"params": {"shared": {"codebook": codebook}}}
    z_q, out = quantizer.apply(variables, z)
    return z_q, out, quantizer.apply(variables, out.indices, method=quantizer.codes_from_indices)

  z_q, out, codes = run(codebook, z)
  chex.assert_shape(out.indices, (2, 4, 4, 3))
  expected = np.asarray(codebook)[np.asarray(out.indices)].sum(axis=-2)  # every level reads the one codebook
  np.testing.assert_allclose(codes, expected, atol=1e-5)
  chex.assert_trees_all_close(codes, z_q, atol=1e-5)
  with pytest.raises(ValueError, match="levels in the last axis"):
    quantizer.apply({"params": {"shared": {"codebook": codebook}}}, jnp.zeros((2, 4), jnp.int32),
                    method=quantizer.codes_from_indices)
