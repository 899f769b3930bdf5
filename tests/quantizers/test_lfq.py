import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.quantizers import lfq
from tokgen_jax.quantizers.lfq import LookupFreeQuantizer, factorize_indices, merge_indices, per_sample_entropy

# Whole computations are jitted: one compile each instead of one per primitive in eager mode.
codebook_entropy = jax.jit(lfq.codebook_entropy, static_argnames="group_size")
factorize = jax.jit(factorize_indices, static_argnames=("bits", "num_factors"))
merge = jax.jit(merge_indices, static_argnames=("bits", "num_factors"))
codes_from_indices = jax.jit(lambda quantizer, indices: quantizer.codes_from_indices(indices), static_argnums=0)


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
  """Host-side normal samples: no per-shape random-number program to compile."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _all_codes(d: int) -> np.ndarray:
  """Every code of {-1,1}^d, row c holding the code with little-endian index c."""
  bits = (np.arange(2 ** d)[:, None] >> np.arange(d)) & 1
  return (2.0 * bits - 1.0).astype(np.float64)


def _brute_entropies(z: np.ndarray, tau: float) -> tuple[float, float]:
  """Per-sample and batch entropy of softmax_c(2τ<z,c>) over all 2^d codes, in float64."""
  z = z.reshape(-1, z.shape[-1]).astype(np.float64)
  logits = 2.0 * tau * z @ _all_codes(z.shape[-1]).T
  logits -= logits.max(axis=-1, keepdims=True)
  q = np.exp(logits)
  q /= q.sum(axis=-1, keepdims=True)
  xlogx = lambda p: np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  return float(np.mean(-np.sum(xlogx(q), axis=-1))), float(-np.sum(xlogx(q.mean(axis=0))))


@functools.partial(jax.jit, static_argnames=("quantizer", "train"))
def _run(quantizer, z, train=False):
  return quantizer.apply({}, z, train=train)


def test_signs_indices_and_straight_through_gradient():
  quantizer = LookupFreeQuantizer(bits=4, code_scale=0.5)
  z = jnp.array([[0.5, -1.0, 0.0, 2.0], [-0.1, -0.2, -0.3, -0.4]])
  z_q, out = _run(quantizer, z)
  np.testing.assert_array_equal(z_q, [[0.5, -0.5, 0.5, 0.5], [-0.5, -0.5, -0.5, -0.5]])  # zero → +1
  np.testing.assert_array_equal(out.indices, [1 + 4 + 8, 0])  # little-endian: bit i weighs 2^i
  chex.assert_type(out.indices, jnp.int32)
  assert quantizer.dim == 4 and quantizer.bits_per_token == 4.0
  z = _normal(0, (2, 3, 3, 4))
  cotangent = _normal(1, z.shape)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(_run(quantizer, z)[0] * cotangent)))(z)
  chex.assert_trees_all_close(grad, cotangent, atol=1e-6)


@pytest.mark.parametrize("bits", [6, 31, 40])
def test_indices_roundtrip_through_codes(bits):
  quantizer = LookupFreeQuantizer(bits=bits)
  z = _normal(bits, (2, 4, 4, bits))
  z_q, out = _run(quantizer, z)
  words = math.ceil(bits / 31)
  chex.assert_shape(out.indices, (2, 4, 4) if words == 1 else (2, 4, 4, words))
  assert int(out.indices.min()) >= 0
  chex.assert_trees_all_close(codes_from_indices(quantizer, out.indices), z_q, atol=0)
  if words > 1:  # word w holds bits 31·w … 31·w+30, low bits first
    bits01 = np.asarray(z >= 0, np.int64).reshape(-1, bits)
    expected = [(bits01[:, 31 * w:31 * (w + 1)] << np.arange(min(31, bits - 31 * w))).sum(-1) for w in range(words)]
    np.testing.assert_array_equal(out.indices.reshape(-1, words), np.stack(expected, -1))
    with pytest.raises(ValueError, match="words"):
      codes_from_indices(quantizer, out.indices[..., 0])


def test_factorize_and_merge_indices():
  indices = jnp.asarray(np.random.default_rng(0).integers(0, 2 ** 18, (3, 5)), jnp.int32)
  sub = factorize(indices, bits=18, num_factors=2)
  np.testing.assert_array_equal(sub[..., 0], indices & 511)  # low 9 bits first
  np.testing.assert_array_equal(sub[..., 1], indices >> 9)
  np.testing.assert_array_equal(merge(sub, bits=18, num_factors=2), indices)
  sub3 = factorize(indices, bits=18, num_factors=3)
  assert int(sub3.max()) < 2 ** 6
  np.testing.assert_array_equal(merge(sub3, bits=18, num_factors=3), indices)
  _, out = _run(LookupFreeQuantizer(bits=40), _normal(1, (4, 40)))
  sub = factorize(out.indices, bits=40, num_factors=2)  # word layout → two 2^20 tokens
  assert sub.shape == (4, 2) and int(sub.max()) < 2 ** 20
  np.testing.assert_array_equal(merge(sub, bits=40, num_factors=2), out.indices)
  with pytest.raises(ValueError, match="divisible"):
    factorize(indices, bits=18, num_factors=4)
  with pytest.raises(ValueError, match="divisible"):
    merge(sub3, bits=18, num_factors=4)


@pytest.mark.parametrize("bits", [4, 5, 6])
def test_entropies_match_brute_force_over_all_codes(bits):
  tau = 0.7
  z = _normal(bits, (2, 8, 8, bits)) * 0.5
  z = z.at[0, 0, 0].set(0.0)
  _, out = _run(LookupFreeQuantizer(bits=bits, inv_temperature=tau), z)
  sample, batch = _brute_entropies(np.asarray(z), tau)
  assert sample > 0.1 * bits and batch > sample  # a non-degenerate case
  np.testing.assert_allclose(out.metrics["per_sample_entropy"], sample, rtol=2e-5)
  np.testing.assert_allclose(out.metrics["codebook_entropy"], batch, rtol=2e-5)
  np.testing.assert_allclose(out.metrics["perplexity"], np.exp(batch), rtol=1e-4)


def test_grouped_codebook_entropy_is_exact_with_one_group_and_an_upper_bound_otherwise():
  d = 8
  base = _normal(0, (2 ** d, 1))
  z = base + 0.3 * _normal(1, (2 ** d, d))  # correlated bits: grouping overestimates
  logits = 4.0 * z
  exact = codebook_entropy(logits, group_size=d)
  np.testing.assert_allclose(exact, _brute_entropies(np.asarray(z), tau=1.0)[1], rtol=2e-5)
  np.testing.assert_allclose(codebook_entropy(logits, group_size=d + 5), exact, rtol=1e-6)
  for group_size in (3, 4):
    assert float(codebook_entropy(logits, group_size=group_size)) > float(exact) + 1e-3
  # Independent groups (bits 0-3 and 4-7 drawn independently, uniformly): the sum of marginals is exact.
  codes = _all_codes(d)
  np.testing.assert_allclose(codebook_entropy(1e3 * codes, 4), codebook_entropy(1e3 * codes, d), rtol=1e-6)


@pytest.mark.parametrize("bits", [5, 9])
def test_entropy_bounds_and_uniform_usage_reaches_d_ln2(bits):
  ln2 = math.log(2.0)
  for scale in (0.01, 0.3, 10.0):
    z = scale * _normal(bits, (2, 8, 8, bits))
    _, out = _run(LookupFreeQuantizer(bits=bits, group_size=4), z)
    for key in ("per_sample_entropy", "codebook_entropy"):
      assert -1e-6 <= float(out.metrics[key]) <= bits * ln2 * (1 + 1e-6)
    assert 0.0 <= float(out.metrics["bit_balance"]) <= 1.0
  codes = jnp.asarray(_all_codes(bits), jnp.float32)  # the batch uses every code once
  _, out = _run(LookupFreeQuantizer(bits=bits), codes)
  np.testing.assert_allclose(out.metrics["codebook_entropy"], bits * ln2, rtol=1e-5)
  np.testing.assert_allclose(out.metrics["per_sample_entropy"], 0.0, atol=1e-6)
  np.testing.assert_allclose(out.metrics["perplexity"], 2 ** bits, rtol=1e-4)
  np.testing.assert_allclose(out.metrics["codebook_usage"], 1.0)
  np.testing.assert_allclose(out.metrics["bit_balance"], 1.0)
  np.testing.assert_array_equal(out.indices, np.arange(2 ** bits))
  np.testing.assert_allclose(codebook_entropy(4e2 * codes, group_size=3), bits * ln2, rtol=1e-5)


def test_loss_composition_and_binary_entropy_gradient_closed_form():
  z = 0.2 * _normal(0, (2, 4, 4, 6))
  quantizer = LookupFreeQuantizer(bits=6, inv_temperature=1.0, entropy_weight=0.3, commitment_weight=0.25,
                                  codebook_entropy_weight=0.5)
  _, out = _run(quantizer, z)
  m = out.metrics
  commitment = np.mean((np.asarray(z) - np.where(np.asarray(z) >= 0, 1.0, -1.0)) ** 2)
  np.testing.assert_allclose(m["commitment"], commitment, rtol=1e-6)
  np.testing.assert_allclose(m["entropy_loss"], m["per_sample_entropy"] - 0.5 * m["codebook_entropy"], rtol=1e-6)
  np.testing.assert_allclose(out.loss, 0.3 * m["entropy_loss"] + 0.25 * commitment, rtol=1e-5)
  # d/da of the binary entropy of sigmoid(a) is -a·σ(a)·σ(-a); the mean runs over the 32 tokens.
  a = 4.0 * z
  grad = jax.jit(jax.grad(per_sample_entropy))(a)
  np.testing.assert_allclose(grad, -a * jax.nn.sigmoid(a) * jax.nn.sigmoid(-a) / 32, rtol=1e-4, atol=1e-7)


def test_entropy_gradients_are_finite_for_saturated_inputs():
  quantizer = LookupFreeQuantizer(bits=16, inv_temperature=100.0, group_size=9)  # d > 14: grouped entropy

  @jax.jit
  def gradients(z):
    loss_and_grad = jax.value_and_grad(lambda z: _run(quantizer, z)[1].loss)(z)
    return loss_and_grad, jax.grad(lambda z: _run(quantizer, z)[1].metrics["entropy_loss"])(z)

  saturated = 1e3 * np.asarray(_normal(0, (2, 8, 8, 16)))
  saturated[0, 0, 0, :3] = 0.0
  small = 1e-3 * _normal(1, (2, 8, 8, 16))  # logits 4τz ~ 0.4: the entropy gradients flow
  for z in (saturated, small):
    (loss, grad), entropy_grad = gradients(jnp.asarray(z))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad)) and np.all(np.isfinite(entropy_grad))
  assert float(jnp.abs(entropy_grad).max()) > 0


def test_entropy_weight_anneals_linearly_with_the_step_counter():
  quantizer = LookupFreeQuantizer(bits=4, entropy_weight=0.1, entropy_weight_start=1.0, entropy_anneal_steps=4)
  z = _normal(0, (2, 8, 4))
  variables = jax.jit(quantizer.init)(jax.random.key(1), z)
  assert int(variables["quantizer_stats"]["step"]) == 0
  step = jax.jit(lambda v, z: quantizer.apply(v, z, train=True, mutable=["quantizer_stats"]))
  weights = []
  for _ in range(6):
    (_, out), variables = step(variables, z)
    weights.append(float(out.metrics["entropy_weight"]))
    np.testing.assert_allclose(out.loss, weights[-1] * out.metrics["entropy_loss"]
                               + 0.25 * out.metrics["commitment"], rtol=1e-5)
  np.testing.assert_allclose(weights, [1.0 - 0.9 * min(t / 4, 1.0) for t in range(6)], rtol=1e-6)
  assert int(variables["quantizer_stats"]["step"]) == 6
  evaluate = jax.jit(lambda v, z: quantizer.apply(v, z, train=False, mutable=["quantizer_stats"]))
  _, state = evaluate(variables, z)  # eval does not count
  assert int(state["quantizer_stats"]["step"]) == 6
  immutable = jax.jit(lambda v, z: quantizer.apply(v, z, train=True))
  _, out = immutable({"quantizer_stats": {"step": jnp.int32(1)}}, z)  # not mutable → the final weight
  np.testing.assert_allclose(out.metrics["entropy_weight"], 0.1, rtol=1e-6)


def test_eighteen_bits_jit_on_a_video_token_grid():
  quantizer = LookupFreeQuantizer(bits=18)
  z = _normal(0, (8, 16, 16, 18))
  z_q, out = _run(quantizer, z, train=True)
  chex.assert_shape(out.indices, (8, 16, 16))
  chex.assert_type(out.indices, jnp.int32)
  assert 0 <= int(out.indices.min()) and int(out.indices.max()) < 2 ** 18
  assert "codebook_usage" not in out.metrics
  assert 0.0 <= float(out.metrics["codebook_entropy"]) <= 18 * math.log(2.0) + 1e-4
  assert np.isfinite(float(out.loss))
  chex.assert_trees_all_close(codes_from_indices(quantizer, out.indices), z_q, atol=0)
  sub = factorize(out.indices, bits=18, num_factors=2)
  np.testing.assert_array_equal(sub[..., 0] + 512 * sub[..., 1], out.indices)


def test_wrong_channel_count_is_rejected():
  with pytest.raises(ValueError, match="bits=8"):
    _run(LookupFreeQuantizer(bits=8), jnp.zeros((2, 6)))
