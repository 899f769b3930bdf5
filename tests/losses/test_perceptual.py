"""LPIPS properties on a randomly initialized network (equality with PyTorch lives in tests/convert/test_lpips.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.losses.perceptual import LPIPS, VGG16Features, _unit_normalize

_SHAPE = (2, 32, 32, 3)


@pytest.fixture(scope="module")
def params():
  """Random backbone (He normal, random biases) and random positive heads, drawn with numpy: compiling the
  module's own init costs seconds. Fresh heads are all ones, which would hide a mix-up of heads."""
  zeros = jnp.zeros(_SHAPE)
  shapes = jax.eval_shape(LPIPS().init, jax.random.key(0), zeros, zeros)["params"]
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "lin" in name:
      return rng.uniform(0.0, 1.0, leaf.shape).astype(np.float32)
    if "bias" in name:
      return rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / (9 * leaf.shape[-1]))).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def lpips():
  return jax.jit(lambda params, x, y: LPIPS().apply({"params": params}, x, y))


def _images(seed, shape=_SHAPE):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def test_taps_have_vgg_shapes(params):
  taps = jax.eval_shape(VGG16Features().apply, {"params": params["vgg"]}, jnp.zeros((1, 64, 48, 3)))
  assert [tap.shape for tap in taps] == [(1, 64, 48, 64), (1, 32, 24, 128), (1, 16, 12, 256), (1, 8, 6, 512),
                                         (1, 4, 3, 512)]


def test_identical_inputs_give_zero_and_distinct_inputs_do_not(params, lpips):
  x, y = _images(1), _images(2)
  np.testing.assert_allclose(lpips(params, x, x), np.zeros(2), atol=1e-10)  # float rounding, ~1e-15
  distance = lpips(params, x, y)
  assert distance.shape == (2,) and distance.dtype == jnp.float32
  assert np.all(distance > 0)


def test_symmetric(params, lpips):
  x, y = _images(1), _images(2)
  np.testing.assert_allclose(lpips(params, x, y), lpips(params, y, x), rtol=1e-6)


def test_closer_images_are_closer(params, lpips):
  x = _images(1)
  near = jnp.clip(x + 0.05 * jax.random.normal(jax.random.key(3), x.shape), -1, 1)
  assert np.all(lpips(params, x, near) < lpips(params, x, _images(2)))


def test_video_is_the_mean_over_frames(params, lpips):
  x, y = _images(1, (2, 3) + _SHAPE[1:]), _images(2, (2, 3) + _SHAPE[1:])
  per_frame = np.stack([lpips(params, x[:, t], y[:, t]) for t in range(3)], axis=1)
  np.testing.assert_allclose(lpips(params, x, y), per_frame.mean(axis=1), rtol=1e-5)


def test_normalization_matches_lpips_and_has_finite_gradient_at_zero():
  """ReLU features can be all zero at a pixel; there `x / (sqrt(sum x^2) + eps)` has a NaN gradient (0 * inf)."""
  features = jnp.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(_unit_normalize(features), [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)
  grad = jax.grad(lambda f: jnp.sum(_unit_normalize(f) * jnp.array([1.0, 2.0, 3.0])))(features)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad[1], [1e10, 2e10, 3e10], rtol=1e-6)  # the derivative of x / eps, as in lpips


def test_bad_inputs_raise_config_error(params):
  apply = lambda x, y: LPIPS().apply({"params": params}, x, y)
  with pytest.raises(ConfigError, match="same shape"):
    apply(jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 16, 3)))
  with pytest.raises(ConfigError, match="RGB"):
    apply(jnp.zeros((1, 32, 32, 1)), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ConfigError, match=">= 16"):
    apply(jnp.zeros((1, 8, 32, 3)), jnp.zeros((1, 8, 32, 3)))
