"""StyleGAN-style discriminators: blur downsampling, shapes, axis names, gradients and one training step."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.losses.adversarial import hinge_discriminator_loss, r1_penalty
from tokgen_jax.losses.discriminator import StyleGANDiscriminator2D, StyleGANDiscriminator3D, _blur_downsample

SMALL_2D = dict(channels=8, channel_multipliers=(1, 2, 2, 2))
SMALL_3D = dict(channels=4, channel_multipliers=(1, 2, 2))


def test_blur_downsample_is_strided_binomial_filter():
  x = jax.random.normal(jax.random.key(0), (1, 8, 3))
  out = _blur_downsample(x, axes=(1,))
  # Zero pad 1 each side, filter [1, 3, 3, 1] / 8, keep every second output.
  padded = np.pad(np.asarray(x[0]), ((1, 1), (0, 0)))
  expected = np.stack([np.convolve(padded[:, c], [1, 3, 3, 1], mode="valid")[::2] / 8 for c in range(3)], -1)
  np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_blur_downsample_3d_sizes_and_constant_interior():
  x = jnp.full((1, 5, 8, 8, 2), 3.0)
  out = _blur_downsample(x, axes=(1, 2, 3))
  chex.assert_shape(out, (1, 3, 4, 4, 2))  # T 5 → ceil(5/2), H, W halved
  np.testing.assert_allclose(out[:, 1, 1:3, 1:3], 3.0, rtol=1e-6)  # the taps sum to 1 away from the border
  chex.assert_shape(_blur_downsample(x[:, :1], axes=(2, 3)), (1, 1, 4, 4, 2))  # space only
  chex.assert_shape(_blur_downsample(x, axes=(1, 2, 3), blur=False), (1, 3, 4, 4, 2))


@pytest.fixture(scope="module")
def disc2d():
  """One small 2D discriminator, initialized once (jitted: far faster than op-by-op) for the tests below."""
  model = StyleGANDiscriminator2D(**SMALL_2D)
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
  return model, x, jax.jit(model.init)(jax.random.key(1), x)


def test_2d_discriminator_shapes_and_axis_names(disc2d):
  model, x, variables = disc2d
  apply = jax.jit(model.apply)
  logits = apply(variables, x)
  chex.assert_shape(logits, (1,))
  params = variables["params"]
  assert params["Conv_0"]["conv"]["kernel"].names == (None, None, "conv_in", "conv_out")
  assert params["_ResBlockDown_0"]["skip"]["kernel"].names == (None, None, "conv_in", "conv_out")
  assert params["Dense_0"]["kernel"].names == ("embed", "mlp")
  # A video is judged frame by frame with the same parameters.
  video = jnp.stack([x[0], -x[0]])[None]
  per_frame = apply(variables, video)
  chex.assert_shape(per_frame, (1, 2))
  np.testing.assert_allclose(per_frame[0, 0], logits[0], rtol=1e-5, atol=1e-6)


def test_3d_discriminator_shapes_for_video_and_image():
  model = StyleGANDiscriminator3D(**SMALL_3D)
  video = jax.random.uniform(jax.random.key(0), (1, 5, 32, 32, 3), minval=-1, maxval=1)
  logits, variables = jax.jit(model.init_with_output)(jax.random.key(1), video)
  chex.assert_shape(logits, (1,))
  assert variables["params"]["Conv_0"]["conv"]["kernel"].names == (None, None, None, "conv_in", "conv_out")
  # T 5 → 3 → 2 → 1 and T 1 stays 1: the head sees the same size, so one parameter set judges both.
  image_logits = jax.jit(model.apply)(variables, video[:, :1])
  chex.assert_shape(image_logits, (1,))
  assert np.all(np.isfinite(image_logits))


def test_logits_are_finite_and_translation_sensitive(disc2d):
  model, _, variables = disc2d
  x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3), minval=-1, maxval=1)
  logits = jax.jit(model.apply)(variables, jnp.concatenate([x, jnp.roll(x, 8, axis=2)]))
  assert np.all(np.isfinite(logits))
  assert np.all(np.abs(np.asarray(logits[:2]) - np.asarray(logits[2:])) > 1e-6)


@pytest.mark.parametrize("model, shape, match", [
    (StyleGANDiscriminator2D(**SMALL_2D), (1, 24, 32, 3), "divisible by"),
    (StyleGANDiscriminator2D(channels=4, channel_multipliers=()), (1, 8, 8, 3), "empty"),
    (StyleGANDiscriminator3D(**SMALL_3D), (1, 32, 32, 3), r"\[B, T, H, W, C\]"),
])
def test_bad_inputs_raise_config_error(model, shape, match):
  with pytest.raises(ConfigError, match=match):
    model.init(jax.random.key(0), jnp.zeros(shape))


@pytest.fixture(scope="module")
def hinge_value_and_grad(disc2d):
  """A jitted `(loss, grads)` of the hinge loss in the params, on one fixed real/fake pair; compiled once."""
  model = disc2d[0]
  real = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3), minval=-1, maxval=1)
  fake = jnp.tanh(jax.random.normal(jax.random.key(4), (2, 32, 32, 3)))
  loss_fn = lambda p, real, fake: hinge_discriminator_loss(model.apply({"params": p}, real),
                                                           model.apply({"params": p}, fake))
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
  return real, lambda params: value_and_grad(params, real, fake)


def test_hinge_gradients_reach_every_parameter(disc2d, hinge_value_and_grad):
  model, _, variables = disc2d
  real, value_and_grad = hinge_value_and_grad
  params = nn.unbox(variables["params"])
  # With the output bias at 10 every real logit clears the margin, so only the fake term is active and the
  # output bias gradient is exactly 1 (with both terms active it would cancel to 0).
  params["Dense_1"]["bias"] = jnp.full((1,), 10.0)
  assert np.all(np.asarray(jax.jit(model.apply)({"params": params}, real)) > 1.0)
  loss, grads = value_and_grad(params)
  assert np.isfinite(loss)
  np.testing.assert_allclose(grads["Dense_1"]["bias"], [1.0], rtol=1e-6)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)), path
    assert np.any(np.asarray(grad) != 0), path


def test_one_adam_step_lowers_hinge_loss(disc2d, hinge_value_and_grad):
  _, value_and_grad = hinge_value_and_grad
  params = nn.unbox(disc2d[2]["params"])
  optimizer = optax.adam(1e-3)
  # Jitted: op-by-op Adam over every leaf compiles dozens of tiny programs.
  step = jax.jit(lambda p, g: optax.apply_updates(p, optimizer.update(g, optimizer.init(p), p)[0]))
  before, grads = value_and_grad(params)
  after, _ = value_and_grad(step(params, grads))
  assert float(after) < float(before)


def test_r1_through_discriminator_matches_per_sample_gradients():
  """The summed-logit trick equals per-sample gradients because no logit reads another sample."""
  model = StyleGANDiscriminator3D(channels=4, channel_multipliers=(1, 2))
  video = jax.random.uniform(jax.random.key(0), (2, 3, 8, 8, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(1), video)
  apply = lambda x: model.apply(variables, x)
  sample_grad = jax.jit(jax.grad(lambda v: apply(v[None])[0]))
  per_sample = [np.sum(np.square(sample_grad(video[i]))) for i in range(2)]
  np.testing.assert_allclose(jax.jit(lambda v: r1_penalty(apply, v))(video), np.mean(per_sample), rtol=1e-4)
  assert np.mean(per_sample) > 0
