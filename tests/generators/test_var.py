"""VAR: block-causal mask, teacher-forced inputs = the quantizer's f̂, cached scale steps == full forward, the
scale-by-scale sampler against a full-recompute reference (with VAR's CFG ramp), conditioning and errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import sampling
from tokgen_jax.generators.var import VARTransformer
from tokgen_jax.generators.var_sampling import sample_scales
from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer, area_weights
from tests.helpers import perturb_params

SCALES = (1, 2, 3, 4)
CODES, VAE_DIM, BATCH = 16, 4, 2


@pytest.fixture(scope="module")
def setup():
  quantizer = MultiScaleResidualQuantizer(CODES, VAE_DIM, scales=SCALES)
  z = jax.random.normal(jax.random.key(1), (BATCH, 4, 4, VAE_DIM))
  quantizer_params = quantizer.init(jax.random.key(2), z)
  z_q, out = quantizer.apply(quantizer_params, z)
  model = VARTransformer(SCALES, CODES, VAE_DIM, embed_dim=32, num_layers=2, num_heads=4, num_classes=5,
                         drop_path_rate=0.1)
  inputs = quantizer.apply(quantizer_params, out.indices, method="next_scale_inputs")
  cond = {"label": jnp.asarray([1, 4])}
  params = nn.unbox(jax.jit(lambda key: model.init({"params": key, "dropout": key}, inputs, cond))(
      jax.random.key(0))["params"])
  params = perturb_params(params, scale=0.2)  # adaLN-Zero starts every block as the identity
  return quantizer, quantizer_params, z_q, out.indices, model, params, inputs, cond


def test_block_causal_mask_is_vars_definition():
  """A token at scale i reads key j iff scale(j) <= scale(i) (VAR's `attn_bias_for_masking`)."""
  model = VARTransformer(SCALES, CODES, VAE_DIM)
  scale_of = np.repeat(np.arange(len(SCALES)), [s * s for s in SCALES])
  positions = jnp.arange(model.num_tokens)
  np.testing.assert_array_equal(np.asarray(model.mask()(positions, positions)), scale_of[None, :] <= scale_of[:, None])


def test_teacher_forced_inputs_are_the_quantizers_cumulative_reconstruction_area_downsampled(setup):
  quantizer, quantizer_params, z_q, indices, _, _, inputs, _ = setup
  assert inputs.shape == (BATCH, 30 - 1, VAE_DIM)
  bounds = np.cumsum([s * s for s in SCALES])
  for k, side in enumerate(SCALES[1:], start=1):
    f_hat = quantizer.apply(quantizer_params, indices[:, :bounds[k - 1]], method="codes_from_indices")
    weights = area_weights(4, side)
    expected = np.einsum("ih,bhwd,jw->bijd", weights, np.asarray(f_hat), weights).reshape(BATCH, -1, VAE_DIM)
    np.testing.assert_allclose(inputs[:, bounds[k - 1] - 1:bounds[k] - 1], expected, rtol=1e-5, atol=1e-5)
  # and the reconstruction of all scales is the quantizer's own output in the forward pass
  full = quantizer.apply(quantizer_params, indices, method="codes_from_indices")
  np.testing.assert_allclose(full, z_q, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # one compile per scale step (the quick loop's budget)
def test_cached_scale_steps_equal_the_full_forward(setup):
  _, _, _, _, model, params, inputs, cond = setup
  full = model.apply({"params": params}, inputs, cond)
  assert full.shape == (BATCH, model.num_tokens, CODES)
  caches = model.init_cache(BATCH)
  bounds = model.scale_bounds()
  for k in range(model.num_scales):
    scale_inputs = inputs[:, bounds[k] - 1:bounds[k + 1] - 1] if k else None
    logits, caches = model.apply({"params": params}, k, scale_inputs, cond, None, caches, method="step")
    np.testing.assert_allclose(logits, full[:, bounds[k]:bounds[k + 1]], rtol=1e-4, atol=1e-4)


def test_logits_of_a_scale_ignore_the_inputs_of_finer_scales(setup):
  _, _, _, _, model, params, inputs, cond = setup
  full = model.apply({"params": params}, inputs, cond)
  changed = model.apply({"params": params}, inputs.at[:, 13:].add(1.0), cond)  # scale 3 (positions 14..29)
  np.testing.assert_allclose(changed[:, :14], full[:, :14], rtol=1e-5, atol=1e-5)
  assert not np.allclose(changed[:, 14:], full[:, 14:])


def _feedback(quantizer, variables):
  return lambda f_hat, k, code_map: quantizer.apply(variables, f_hat, code_map, k, method="advance")


def _draw(model, params, quantizer, quantizer_params, cond, key, settings):
  return sample_scales(model, params, cond, key, _feedback(quantizer, quantizer_params),
                       quantizer.empty_reconstruction(BATCH), settings)


def _reference_draw(model, params, quantizer, quantizer_params, cond, cfg: float):
  """Greedy next-scale decoding by full recomputation and VAR's own guidance formula `(1 + t)·c − t·u`."""
  bounds = model.scale_bounds()
  tokens = jnp.zeros((BATCH, model.num_tokens), jnp.int32)
  for k in range(model.num_scales):
    inputs = quantizer.apply(quantizer_params, tokens, method="next_scale_inputs")
    c = model.apply({"params": params}, inputs, cond)[:, bounds[k]:bounds[k + 1]]
    u = model.apply({"params": params}, inputs, cond, jnp.ones((BATCH,), bool))[:, bounds[k]:bounds[k + 1]]
    t = cfg * k / (model.num_scales - 1)
    tokens = tokens.at[:, bounds[k]:bounds[k + 1]].set(jnp.argmax((1 + t) * c - t * u, axis=-1))
  return tokens


@pytest.mark.parametrize("cfg", [pytest.param(0.0, marks=pytest.mark.slow), 1.5])
def test_greedy_scale_sampler_equals_full_recompute_with_vars_cfg_ramp(setup, cfg):
  quantizer, quantizer_params, _, _, model, params, _, cond = setup
  settings = sampling.SamplingSettings(cfg_scale=sampling.guidance_scale_from(cfg, "var"), cfg_ramp=True,
                                       greedy=True)
  drawn = jax.jit(lambda p, q: _draw(model, p, quantizer, q, cond, jax.random.key(0), settings))(
      params, quantizer_params)
  np.testing.assert_array_equal(drawn, _reference_draw(model, params, quantizer, quantizer_params, cond, cfg))


@pytest.mark.slow  # two more sampler compiles (~17 s): slow tier, for the quick loop's budget
def test_top_k_one_sampling_is_greedy(setup):
  quantizer, quantizer_params, _, _, model, params, _, cond = setup
  greedy = _draw(model, params, quantizer, quantizer_params, cond, jax.random.key(0),
                 sampling.SamplingSettings(greedy=True))
  top1 = _draw(model, params, quantizer, quantizer_params, cond, jax.random.key(3),
               sampling.SamplingSettings(top_k=1, top_p=0.96))
  np.testing.assert_array_equal(greedy, top1)


def test_vars_ramp_is_the_linear_ramp_over_scales():
  settings = sampling.SamplingSettings(cfg_scale=sampling.guidance_scale_from(1.5, "var"), cfg_ramp=True)
  for k in range(10):
    np.testing.assert_allclose(sampling.guidance_scale(settings, jnp.int32(k), 10), 1 + 1.5 * k / 9, rtol=1e-6)


def test_null_class_and_condition_dropout(setup):
  _, _, _, _, model, params, inputs, cond = setup
  conditional = model.apply({"params": params}, inputs, cond)
  null = model.apply({"params": params}, inputs, cond, jnp.ones((BATCH,), bool))
  other_label = model.apply({"params": params}, inputs, {"label": jnp.asarray([0, 0])}, jnp.ones((BATCH,), bool))
  assert not np.allclose(conditional, null)
  np.testing.assert_allclose(null, other_label, rtol=1e-6, atol=1e-6)  # the null row ignores the label
  dropped = VARTransformer(SCALES, CODES, VAE_DIM, embed_dim=32, num_layers=2, num_heads=4, num_classes=5,
                           cond_dropout_rate=0.999)
  train = dropped.apply({"params": params}, inputs, cond, train=True, rngs={"dropout": jax.random.key(5)})
  no_drop_path = VARTransformer(SCALES, CODES, VAE_DIM, embed_dim=32, num_layers=2, num_heads=4, num_classes=5)
  np.testing.assert_allclose(train, no_drop_path.apply({"params": params}, inputs, cond, jnp.ones((BATCH,), bool)),
                             rtol=1e-5, atol=1e-5)


def test_drop_path_drops_whole_examples_in_training_only(setup):
  _, _, _, _, model, params, inputs, cond = setup
  heavy = model.clone(drop_path_rate=0.9, cond_dropout_rate=0.0)
  eval_logits = heavy.apply({"params": params}, inputs, cond)
  np.testing.assert_allclose(eval_logits, model.apply({"params": params}, inputs, cond), rtol=1e-6)
  train = [heavy.apply({"params": params}, inputs, cond, train=True, rngs={"dropout": jax.random.key(i)})
           for i in range(4)]
  assert any(not np.allclose(a, b) for a, b in zip(train, train[1:]))
  np.testing.assert_allclose(heavy.drop_path_rates(), [0.0, 0.9])


def test_parameter_names_and_normalized_attention_scale(setup):
  *_, model, _, inputs, cond = setup
  params = nn.unbox(model.init(jax.random.key(0), inputs, cond)["params"])
  assert {"class_embedding", "start", "positions", "level_embedding", "input_projection", "blocks_0", "blocks_1",
          "head_modulation", "head"} == set(params)
  np.testing.assert_allclose(params["blocks_0"]["attention"]["scale"], np.full(4, np.log(4.0)), rtol=1e-6)
  assert params["positions"].shape == (30, 32) and params["class_embedding"]["embedding"].shape == (6, 32)


@pytest.mark.parametrize("overrides, match", [
    (dict(scales=(4,)), "at least two"), (dict(scales=(1, 3, 2)), "strictly increasing"),
    (dict(conditioning="text"), "class-conditional"), (dict(num_heads=5), "divisible")])
def test_bad_configs_are_refused(overrides, match):
  kwargs = dict(scales=SCALES, codebook_size=CODES, vae_dim=VAE_DIM, embed_dim=32) | overrides
  with pytest.raises(ConfigError, match=match):
    VARTransformer(**kwargs).validate()


def test_wrong_input_shape_names_the_expected_one(setup):
  *_, model, params, inputs, cond = setup
  with pytest.raises(ConfigError, match=r"\[B, 29, 4\]"):
    model.apply({"params": params}, inputs[:, :-1], cond)
