"""adaLN modulation: `modulate`/`gate`/`layer_norm` in closed form, AdaLNModulation's rank-0 (adaLN-Zero) and
rank-r (AdaLN-LoRA) parameter shapes, zero init giving zeros for any condition, and its errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.adaln import AdaLNModulation, gate, layer_norm, modulate

BATCH, WIDTH = 3, 8


def _shapes(params):
  return jax.tree.map(lambda a: a.shape, nn.unbox(params))


def test_modulate_and_gate_broadcast_per_example_vectors_over_tokens():
  x = np.random.default_rng(0).normal(size=(BATCH, 5, WIDTH)).astype(np.float32)
  shift, scale, alpha = np.random.default_rng(1).normal(size=(3, BATCH, WIDTH)).astype(np.float32)
  np.testing.assert_allclose(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None], rtol=1e-6)
  np.testing.assert_allclose(gate(x, alpha), x * alpha[:, None], rtol=1e-6)
  # Zero shift and scale leave x as it is (what adaLN-Zero relies on).
  np.testing.assert_array_equal(modulate(x, 0 * shift, 0 * scale), x)


def test_layer_norm_has_no_affine_and_matches_numpy():
  x = np.random.default_rng(2).normal(3.0, 2.0, size=(BATCH, 4, WIDTH)).astype(np.float32)
  x64 = x.astype(np.float64)
  expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(layer_norm(x), expected, atol=1e-5)
  assert layer_norm(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("rank", (0, 4))
def test_zero_init_gives_zero_outputs_and_the_rank_sets_the_shapes(rank):
  c = jax.random.normal(jax.random.key(0), (BATCH, WIDTH))
  module = AdaLNModulation(6, rank=rank)
  params = module.init(jax.random.key(1), c)["params"]
  if rank:
    assert _shapes(params) == {"down": {"kernel": (WIDTH, rank)},
                               "up": {"kernel": (rank, 6, WIDTH), "bias": (6, WIDTH)}}
    assert np.abs(nn.unbox(params)["down"]["kernel"]).max() > 0  # only the last Linear starts at zero
  else:
    assert _shapes(params) == {"linear": {"kernel": (WIDTH, 6, WIDTH), "bias": (6, WIDTH)}}
  outputs = module.apply({"params": params}, c)
  assert len(outputs) == 6 and all(o.shape == (BATCH, WIDTH) for o in outputs)
  assert all(np.all(np.asarray(o) == 0) for o in outputs)
  # Every parameter carries one logical axis name per dimension, so it shards with the mesh rules.
  for box in jax.tree.leaves(params, is_leaf=lambda a: isinstance(a, nn.Partitioned)):
    assert isinstance(box, nn.Partitioned) and len(box.names) == box.value.ndim


def test_outputs_are_the_chunks_of_silu_linear():
  c = jax.random.normal(jax.random.key(0), (BATCH, WIDTH))
  module = AdaLNModulation(2, zero_init=False, features=5)
  params = nn.unbox(module.init(jax.random.key(1), c)["params"])
  shift, scale = module.apply({"params": params}, c)
  kernel, bias = params["linear"]["kernel"], params["linear"]["bias"]
  expected = np.einsum("bd,dnf->bnf", np.asarray(jax.nn.silu(c)), kernel) + bias
  np.testing.assert_allclose(shift, expected[:, 0], atol=1e-5)
  np.testing.assert_allclose(scale, expected[:, 1], atol=1e-5)
  assert shift.shape == (BATCH, 5)


def test_lora_saves_parameters_and_bad_arguments_are_named():
  c = jnp.zeros((1, 64))
  count = lambda rank: sum(a.size for a in jax.tree.leaves(nn.unbox(
      AdaLNModulation(6, rank=rank).init(jax.random.key(0), c))))
  assert count(0) == 64 * 6 * 64 + 6 * 64
  assert count(8) == 64 * 8 + 8 * 6 * 64 + 6 * 64
  with pytest.raises(ConfigError, match="rank=-1"):
    AdaLNModulation(6, rank=-1).init(jax.random.key(0), c)
