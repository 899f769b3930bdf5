import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax import quantizers
from tokgen_jax.errors import ConfigError
from tokgen_jax.quantizers.kl import KLBottleneck

DIM = 8


def _init(dim=DIM, shape=(2, 4, 4)):
  kl = KLBottleneck(dim=dim)
  z = jax.random.normal(jax.random.key(0), shape + (dim,))
  return kl, z, kl.init(jax.random.key(1), z)


def _with_projection(variables, kernel, bias):
  """The same variables with the (unboxed) projection kernel and bias replaced."""
  params = nn.meta.unbox(variables)["params"]
  return {"params": {"proj": {"kernel": jnp.broadcast_to(kernel, params["proj"]["kernel"].shape).astype(jnp.float32),
                              "bias": jnp.asarray(bias, jnp.float32)}}}


def test_eval_is_the_mean_projection_and_deterministic():
  kl, z, variables = _init()
  mean, _ = kl.apply(variables, z, method=kl.moments)
  z_q, out = kl.apply(variables, z, train=False)
  again, _ = kl.apply(variables, z)
  np.testing.assert_array_equal(z_q, mean)
  np.testing.assert_array_equal(again, z_q)
  params = nn.meta.unbox(variables)["params"]["proj"]
  np.testing.assert_allclose(mean, (np.asarray(z) @ np.asarray(params["kernel"]) + np.asarray(params["bias"]))
                             [..., :DIM], rtol=1e-5, atol=1e-5)
  chex.assert_shape(out.indices, z.shape[:-1])
  chex.assert_type(out.indices, jnp.int32)
  assert not np.any(out.indices)


def test_training_samples_have_the_posterior_mean_and_std():
  """With a zero kernel every position shares (mean, logvar) = the bias, so samples estimate them directly."""
  kl, z, variables = _init(shape=(4096,))
  mean, logvar = np.linspace(-1.0, 1.0, DIM), np.linspace(-2.0, 1.0, DIM)
  variables = _with_projection(variables, 0.0, np.concatenate([mean, logvar]))
  samples, out = kl.apply(variables, z, train=True, rngs={"noise": jax.random.key(2)})
  samples, std = np.asarray(samples, np.float64), np.exp(logvar / 2)
  n = samples.shape[0]
  np.testing.assert_allclose(samples.mean(0), mean, atol=float(np.max(5 * std / np.sqrt(n))))
  np.testing.assert_allclose(samples.std(0), std, rtol=5 / np.sqrt(2 * n))
  np.testing.assert_allclose(out.metrics["latent_std"], std.mean(), rtol=1e-6)
  np.testing.assert_allclose(out.metrics["mean_abs_mean"], np.abs(mean).mean(), rtol=1e-6)
  other, _ = kl.apply(variables, z, train=True, rngs={"noise": jax.random.key(3)})
  assert not np.allclose(other, samples)


def test_kl_loss_matches_the_closed_form():
  kl, z, variables = _init()
  mean, logvar = (np.asarray(x, np.float64) for x in kl.apply(variables, z, method=kl.moments))
  per_example = 0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))
  for train in (False, True):
    _, out = kl.apply(variables, z, train=train, rngs={"noise": jax.random.key(4)})
    np.testing.assert_allclose(out.metrics["kl"], per_example.mean(), rtol=1e-5)
    np.testing.assert_allclose(out.loss, 1e-6 * per_example.mean(), rtol=1e-5)


def test_kl_is_zero_for_the_standard_normal_posterior():
  kl, z, variables = _init()
  _, out = kl.apply(_with_projection(variables, 0.0, np.zeros(2 * DIM)), z, train=True,
                    rngs={"noise": jax.random.key(5)})
  assert float(out.metrics["kl"]) == 0.0 and float(out.loss) == 0.0
  np.testing.assert_allclose(out.metrics["latent_std"], 1.0)


def test_logvar_is_clipped():
  kl, z, variables = _init()
  _, logvar = kl.apply(_with_projection(variables, 0.0, np.r_[np.zeros(DIM), np.full(DIM, 1e3)]), z,
                       method=kl.moments)
  np.testing.assert_array_equal(logvar, 20.0)


def test_gradients_reach_the_input_through_mean_and_noise():
  kl, z, variables = _init()

  def sample_sum(z):
    z_q, out = kl.apply(variables, z, train=True, rngs={"noise": jax.random.key(6)})
    return jnp.sum(z_q) + out.loss

  grad = jax.grad(sample_sum)(z)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  # The sampled part alone (no mean) still has a gradient: the reparameterized std depends on z.
  noise_only = _with_projection(variables, jnp.concatenate([jnp.zeros((DIM, DIM)), jnp.eye(DIM)], axis=1),
                                np.zeros(2 * DIM))
  sample = lambda z: jnp.sum(kl.apply(noise_only, z, train=True, rngs={"noise": jax.random.key(6)})[0])
  noise_grad = jax.grad(sample)(z)
  assert np.all(np.abs(noise_grad) > 0)


def test_missing_noise_rng_raises():
  kl, z, variables = _init()
  with pytest.raises(ConfigError, match=r"rngs=\{'noise': key\}"):
    kl.apply(variables, z, train=True)


def test_registry_build_interface_and_no_codes():
  kl = quantizers.build("kl", dim=8)
  assert isinstance(kl, KLBottleneck) and kl.dim == 8 and kl.bits_per_token == 128.0
  z = jnp.zeros((2, 3, 3, 8))
  variables = kl.init(jax.random.key(0), z)
  with pytest.raises(ConfigError, match="no token ids"):
    kl.apply(variables, jnp.zeros((2, 3, 3), jnp.int32), method=kl.codes_from_indices)
  with pytest.raises(ConfigError, match="dim=8"):
    kl.apply(variables, jnp.zeros((2, 4)))
