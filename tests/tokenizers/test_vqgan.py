import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.quantizers import VectorQuantizer
from tokgen_jax.tokenizers import VQGAN, Factors, LatentSpec


@pytest.fixture(scope="module")
def model_and_variables():
  model = VQGAN(quantizer=VectorQuantizer(64, 4, l2_normalize=True), channels=16, channel_multipliers=(1, 2, 2),
                num_res_blocks=1, use_attention=True, num_groups=8)
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
  return model, jax.jit(model.init)(jax.random.key(1), images), images


def test_shapes_and_dtypes(model_and_variables):
  model, variables, images = model_and_variables
  reconstruction, aux = jax.jit(model.apply)(variables, images)
  chex.assert_shape(reconstruction, images.shape)
  chex.assert_type(reconstruction, jnp.float32)
  chex.assert_shape(aux["quantizer"].indices, (2, 4, 4))
  assert model.factors == Factors(temporal=1, spatial=4)


def test_encode_decode_equals_forward_and_specs_describe_encode(model_and_variables):
  model, variables, images = model_and_variables
  reconstruction, aux = jax.jit(model.apply)(variables, images)
  latents = jax.jit(lambda v, x: model.apply(v, x, method=model.encode))(variables, images)
  assert list(latents) == ["tokens"]
  np.testing.assert_array_equal(latents["tokens"], aux["quantizer"].indices)
  decoded = jax.jit(lambda v, i: model.apply(v, i, method=model.decode))(variables, latents)
  chex.assert_trees_all_close(decoded, reconstruction, atol=1e-5)
  assert model.latent_specs((16, 16, 3)) == {"tokens": LatentSpec((4, 4), "int32", 64)}
  assert model.latent_grid((16, 16, 3)) == (4, 4)


@pytest.mark.parametrize("multipliers,factor", [((1, 1, 2, 2), 8), ((1, 1, 2, 2, 4), 16)])
def test_downsampling_factor(multipliers, factor):
  model = VQGAN(quantizer=VectorQuantizer(16, 4), channels=8, channel_multipliers=multipliers, num_groups=4)
  images = jnp.zeros((1, 32, 32, 3))
  indices = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), images)[0][1]["quantizer"].indices)
  assert indices.shape == (1, 32 // factor, 32 // factor)


def test_reconstruction_gradient_reaches_encoder_through_quantizer(model_and_variables):
  """Straight-through estimation: every encoder and decoder weight gets a non-zero reconstruction gradient."""
  model, variables, images = model_and_variables
  loss = lambda params: jnp.mean(jnp.abs(model.apply({"params": params}, images)[0] - images))
  grads = jax.jit(jax.grad(loss))(variables["params"])
  for part in ("encoder", "decoder"):
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads[part])]
    assert min(norms) > 0.0, part


def test_rejects_size_not_divisible_by_factor(model_and_variables):
  model, variables, _ = model_and_variables
  with pytest.raises(ValueError, match="not divisible by the downsampling factor 4"):
    model.apply(variables, jnp.zeros((1, 18, 18, 3)))
