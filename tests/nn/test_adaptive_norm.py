"""AdaptiveGroupNorm: standardization per frame and group, the conditioning's affine, causal resize, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.adaptive_norm import AdaptiveGroupNorm, causal_frame_index, group_standardize, resize_nearest


def _video(key, shape=(2, 5, 4, 4, 8)):
  return jax.random.normal(jax.random.key(key), shape) * 3.0 + 1.0


def test_group_standardize_matches_flax_group_norm_without_affine():
  x = _video(0)
  flax_all = nn.GroupNorm(num_groups=4, epsilon=1e-6, use_bias=False, use_scale=False)
  np.testing.assert_allclose(group_standardize(x, 4, per_frame=False), flax_all.apply({}, x), atol=1e-5)
  frames = x.reshape((10,) + x.shape[2:])  # per frame = GroupNorm of frames folded into the batch
  np.testing.assert_allclose(group_standardize(x, 4, per_frame=True),
                             flax_all.apply({}, frames).reshape(x.shape), atol=1e-5)


def test_zero_initialized_projections_give_unit_groups_per_frame():
  x, cond = _video(0), _video(1, (2, 3, 2, 2, 6))
  layer = AdaptiveGroupNorm(num_groups=4)
  out, variables = layer.init_with_output(jax.random.key(2), x, cond)
  assert variables["params"]["gamma"]["kernel"].names == (None, None, None, "conv_in", "conv_out")
  grouped = np.asarray(out).reshape(2, 5, 4, 4, 4, 2)
  np.testing.assert_allclose(grouped.mean(axis=(2, 3, 5)), 0.0, atol=1e-5)
  np.testing.assert_allclose(grouped.var(axis=(2, 3, 5)), 1.0, atol=1e-4)


def test_output_follows_the_resized_conditioning():
  x, cond = _video(0), _video(1, (2, 3, 2, 2, 6))
  layer = AdaptiveGroupNorm(num_groups=4, zero_init=False)
  variables = layer.init(jax.random.key(2), x, cond)
  params = nn.unbox(variables)["params"]
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases too
  out = np.asarray(layer.apply({"params": params}, x, cond))
  # Hand resize: time [0, 1, 1, 2, 2] (frame i reads ceil(i / 2)), space each pixel twice.
  up = np.repeat(np.repeat(np.asarray(cond)[:, [0, 1, 1, 2, 2]], 2, axis=2), 2, axis=3)
  gamma = up @ np.asarray(params["gamma"]["kernel"])[0, 0, 0] + np.asarray(params["gamma"]["bias"])
  beta = up @ np.asarray(params["beta"]["kernel"])[0, 0, 0] + np.asarray(params["beta"]["bias"])
  x_np = np.asarray(x).reshape(2, 5, 4, 4, 4, 2)
  mean = x_np.mean(axis=(2, 3, 5), keepdims=True)
  normed = ((x_np - mean) / np.sqrt(x_np.var(axis=(2, 3, 5), keepdims=True) + 1e-6)).reshape(x.shape)
  np.testing.assert_allclose(out, normed * (1 + gamma) + beta, atol=1e-4)


def test_causal_resize_maps_frames_to_their_latent_chunk():
  np.testing.assert_array_equal(causal_frame_index(3, 5), [0, 1, 1, 2, 2])
  np.testing.assert_array_equal(causal_frame_index(2, 5), [0, 1, 1, 1, 1])
  np.testing.assert_array_equal(causal_frame_index(1, 3), [0, 0, 0])
  np.testing.assert_array_equal(causal_frame_index(4, 4), [0, 1, 2, 3])
  with pytest.raises(ConfigError, match=r"1 \+ k·\(t - 1\)"):
    causal_frame_index(3, 4)
  cond = jnp.arange(6.0).reshape(1, 1, 2, 3, 1)
  assert resize_nearest(cond, (1, 4, 3))[0, 0, :, :, 0].tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]]


def test_per_frame_layer_is_causal_in_x_and_in_the_latent():
  x, cond = _video(0), _video(1, (2, 3, 2, 2, 6))
  layer = AdaptiveGroupNorm(num_groups=4, zero_init=False)
  variables = layer.init(jax.random.key(2), x, cond)
  out = np.asarray(layer.apply(variables, x, cond))
  # Change video frames ≥ 3 and latent frame 2 (which covers frames 3, 4): frames 0..2 are untouched.
  noise = jax.random.normal(jax.random.key(3), x.shape)
  changed = np.asarray(layer.apply(variables, x.at[:, 3:].add(noise[:, 3:]), cond.at[:, 2].add(1.0)))
  np.testing.assert_array_equal(changed[:, :3], out[:, :3])
  assert np.all(np.abs(changed[:, 3:] - out[:, 3:]).max(axis=(0, 2, 3, 4)) > 1e-3)


def test_groups_are_capped_at_channels_and_indivisible_widths_raise():
  x = _video(0, (1, 1, 4, 4, 6))
  out, _ = AdaptiveGroupNorm(num_groups=32).init_with_output(jax.random.key(0), x, x)
  np.testing.assert_allclose(np.asarray(out).mean(axis=(1, 2, 3)), 0.0, atol=1e-5)  # 6 groups of 1 channel
  with pytest.raises(ConfigError, match="not divisible"):
    AdaptiveGroupNorm(num_groups=4).init(jax.random.key(0), x, x)


def test_style_form_is_open_magvit2s_linear_maps_of_the_latent_statistics():
  """`GN(x)·(W_γ·std(z) + b_γ) + (W_β·mean(z) + b_β)` per sample, statistics over (h, w) with torch's default
  unbiased variance, `std = sqrt(var + eps)`; latent frame ceil(i / 2) serves frame i."""
  x, cond = _video(0), _video(1, (2, 3, 2, 2, 6))
  layer = AdaptiveGroupNorm(num_groups=4, conditioning="style")
  params = nn.unbox(layer.init(jax.random.key(2), x, cond))["params"]
  assert params["gamma"]["kernel"].shape == (6, 8)
  np.testing.assert_array_equal(params["gamma"]["bias"], 1.0)  # scale ≈ 1 at init
  params = jax.tree.map(lambda p: p + 0.1, params)
  out = np.asarray(layer.apply({"params": params}, x, cond))
  c = np.asarray(cond, np.float64).reshape(2, 3, 4, 6)
  std = np.sqrt(c.var(axis=2, ddof=1) + 1e-6)[:, [0, 1, 1, 2, 2], None, None]
  mean = c.mean(axis=2)[:, [0, 1, 1, 2, 2], None, None]
  gamma = std @ np.asarray(params["gamma"]["kernel"]) + np.asarray(params["gamma"]["bias"])
  beta = mean @ np.asarray(params["beta"]["kernel"]) + np.asarray(params["beta"]["bias"])
  x_np = np.asarray(x).reshape(2, 5, 4, 4, 4, 2)
  mu = x_np.mean(axis=(2, 3, 5), keepdims=True)
  normed = ((x_np - mu) / np.sqrt(x_np.var(axis=(2, 3, 5), keepdims=True) + 1e-6)).reshape(x.shape)
  np.testing.assert_allclose(out, normed * gamma + beta, atol=1e-4)


def test_style_form_is_causal_and_unknown_forms_raise():
  x, cond = _video(0), _video(1, (2, 3, 2, 2, 6))
  layer = AdaptiveGroupNorm(num_groups=4, conditioning="style")
  variables = layer.init(jax.random.key(2), x, cond)
  out = np.asarray(layer.apply(variables, x, cond))
  changed = np.asarray(layer.apply(variables, x, cond.at[:, 2].multiply(3.0)))  # latent frame 2: frames 3, 4
  np.testing.assert_array_equal(changed[:, :3], out[:, :3])
  assert np.abs(changed[:, 3:] - out[:, 3:]).max() > 1e-3
  with pytest.raises(ConfigError, match="'spade' is not known"):
    AdaptiveGroupNorm(num_groups=4, conditioning="spade").init(jax.random.key(0), x, cond)
