"""MarkovGen's MRF: the message equals the dense double sum, mean field lowers the free energy and finds the known
optimum of a toy field, given labels stay clamped, and the kernel and compatibility keep their symmetries."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.markovgen import MarkovRandomField


def _params(mrf, unary, **overrides):
  params = nn.unbox(mrf.init(jax.random.key(0), unary))["params"]
  return params | overrides


def test_messages_equal_the_dense_double_sum():
  mrf = MarkovRandomField(vocab_size=6, grid=(3, 4), rank=2, kernel_size=3)
  unary = jax.random.normal(jax.random.key(1), (2, 12, 6))
  params = _params(mrf, unary, spatial_kernel=jax.random.normal(jax.random.key(2), (9,)),
                   compatibility_a=jax.random.normal(jax.random.key(3), (6, 2)),
                   compatibility_b=jax.random.normal(jax.random.key(4), (6, 2)))
  q = jax.nn.softmax(jax.random.normal(jax.random.key(5), (2, 12, 6)))
  messages = mrf.apply({"params": params}, q, method="messages")
  kernel = np.asarray(mrf.apply({"params": params}, method="spatial_kernel"))
  c = np.asarray(mrf.apply({"params": params}, method="compatibility"))
  np.testing.assert_allclose(kernel, kernel[::-1, ::-1])  # s(d) = s(-d)
  assert kernel[1, 1] == 0 and np.allclose(c, c.T)
  cells = list(itertools.product(range(3), range(4)))
  expected = np.zeros((2, 12, 6))
  for i, (ri, ci) in enumerate(cells):
    for j, (rj, cj) in enumerate(cells):
      dr, dc = rj - ri, cj - ci
      if abs(dr) <= 1 and abs(dc) <= 1:
        expected[:, i] += kernel[1 + dr, 1 + dc] * np.asarray(q[:, j]) @ c.T
  np.testing.assert_allclose(messages, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def toy():
  """A 3x3 Potts field on two labels: four-neighbour attraction w = 1.5, every unary leans to label 0 except the
  centre, which leans to 1. The optimum (by enumerating all 512 labellings) is every cell 0."""
  mrf = MarkovRandomField(vocab_size=2, grid=(3, 3), rank=2, kernel_size=3, iterations=8)
  unary = np.full((1, 9, 2), [0.3, 0.0], np.float32)
  unary[0, 4] = [0.0, 0.8]
  kernel = np.zeros((3, 3), np.float32)
  kernel[0, 1] = kernel[1, 0] = kernel[1, 2] = kernel[2, 1] = 1.0
  root = np.sqrt(1.5).astype(np.float32)
  params = _params(mrf, jnp.asarray(unary), spatial_kernel=jnp.asarray(kernel.reshape(-1)),
                   compatibility_a=jnp.eye(2) * root, compatibility_b=jnp.eye(2) * root)
  return mrf, params, jnp.asarray(unary)


def test_mean_field_lowers_the_free_energy_and_reaches_the_known_optimum(toy):
  mrf, params, unary = toy
  labellings = jnp.asarray(list(itertools.product(range(2), repeat=9)))
  energies = jax.vmap(lambda x: mrf.apply({"params": params}, x[None], unary, method="labelling_energy")[0])(
      labellings)
  optimum = np.asarray(labellings[jnp.argmin(energies)])
  np.testing.assert_array_equal(optimum, np.zeros(9))
  iterates = mrf.apply({"params": params}, unary, return_all=True)
  free = [float(mrf.apply({"params": params}, q, unary, method="free_energy")[0]) for q in iterates]
  assert all(later <= earlier + 1e-6 for earlier, later in zip(free, free[1:])), free
  assert free[-1] < free[0] - 0.5
  assert np.argmax(np.asarray(iterates[0][0, 4])) == 1  # the unary alone labels the centre 1
  np.testing.assert_array_equal(np.argmax(np.asarray(iterates[-1][0]), -1), optimum)


def test_given_labels_stay_clamped(toy):
  mrf, params, unary = toy
  given = jnp.zeros((1, 9), bool).at[0, 0].set(True)
  q = mrf.apply({"params": params}, unary, given, jnp.ones((1, 9), jnp.int32))
  np.testing.assert_array_equal(q[0, 0], [0.0, 1.0])
  assert float(q[0, 1, 1]) > float(mrf.apply({"params": params}, unary)[0, 1, 1])  # a neighbour follows it


def test_errors_name_the_field():
  with pytest.raises(ConfigError, match="kernel_size=4"):
    MarkovRandomField(vocab_size=4, grid=(2, 2), kernel_size=4).validate()
  mrf = MarkovRandomField(vocab_size=4, grid=(2, 2))
  with pytest.raises(ConfigError, match=r"\[B, 4, 4\]"):
    mrf.init(jax.random.key(0), jnp.zeros((1, 5, 4)))
