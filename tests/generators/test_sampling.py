"""Samplers: greedy KV-cache decoding == full recompute, determinism, filters, CFG formula and ramp, frequencies."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import sampling
from tokgen_jax.generators.ar import ARTransformer
from tokgen_jax.generators.sampling import SamplingSettings

BATCH = 3


@pytest.fixture(scope="module", params=["class", "text"])
def model_and_params(request):
  model = ARTransformer(vocab_sizes=(12, 6), layer_grids=((2, 3), (2, 3)), embed_dim=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mlp_dim=48, conditioning=request.param, num_classes=4, text_length=2,
                        text_dim=5, ordering="z_curve")
  rng = np.random.default_rng(0)
  cond = ({"label": jnp.asarray([0, 2, 3])} if request.param == "class" else
          {"text": jnp.asarray(rng.normal(size=(BATCH, 2, 5)), jnp.float32), "text_mask": jnp.ones((BATCH, 2), bool)})
  tokens = jnp.zeros((BATCH, model.num_tokens), jnp.int32)
  params = jax.jit(lambda key: nn.unbox(model.init(key, tokens, cond)["params"]))(jax.random.key(1))
  # Random init gives near-uniform logits; sharpen them so greedy paths are not decided by rounding.
  params = jax.tree.map(lambda p: p * 4.0, params)
  return model, params, cond


@functools.lru_cache(maxsize=None)
def _sampler(model, settings, cached, cache_buckets=None, kernel_layout="in_out"):
  fn = (functools.partial(sampling.sample_with_cache, cache_buckets=cache_buckets, kernel_layout=kernel_layout)
        if cached else sampling.sample_without_cache)
  return jax.jit(lambda params, cond, key: fn(model, params, cond, key, settings))


@pytest.mark.parametrize("settings", [SamplingSettings(greedy=True),
                                      SamplingSettings(greedy=True, cfg_scale=3.0),
                                      SamplingSettings(greedy=True, cfg_scale=2.5, cfg_ramp=True)],
                         ids=["plain", "cfg", "cfg_ramp"])
def test_greedy_cached_decoding_equals_full_recompute(model_and_params, settings):
  model, params, cond = model_and_params
  key = jax.random.key(0)
  cached = np.asarray(_sampler(model, settings, True)(params, cond, key))
  full = np.asarray(_sampler(model, settings, False)(params, cond, key))
  np.testing.assert_array_equal(cached, full)
  assert cached.shape == (BATCH, model.num_tokens)
  assert len(np.unique(cached)) > 1  # a degenerate constant sequence would prove little


def test_samples_are_deterministic_per_key_and_inside_each_layer_vocabulary(model_and_params):
  model, params, cond = model_and_params
  sample = _sampler(model, SamplingSettings(temperature=1.5, cfg_scale=2.0), True)
  first, again = (np.asarray(sample(params, cond, jax.random.key(5))) for _ in range(2))
  other = np.asarray(sample(params, cond, jax.random.key(6)))
  np.testing.assert_array_equal(first, again)
  assert np.any(first != other)
  coarse, fine = np.split(first, [model.layer_lengths[0]], axis=1)
  assert coarse.max() < 12 and fine.max() < 6 and first.min() >= 0


def test_cache_buckets_do_not_change_the_draw(model_and_params):
  """One decode loop over the full cache, or several over a growing one: the same tokens for the same key."""
  model, params, cond = model_and_params
  settings = SamplingSettings(temperature=1.3, top_k=5, top_p=0.9, cfg_scale=2.0)
  draws = [np.asarray(_sampler(model, settings, True, buckets)(params, cond, jax.random.key(3)))
           for buckets in (1, 3)]
  for other in draws[1:]:
    np.testing.assert_array_equal(other, draws[0])


def test_out_in_kernels_decode_the_same_greedy_tokens(model_and_params):
  """The decoding kernel layout is a speed choice only: greedy tokens equal the full recompute in either."""
  model, params, cond = model_and_params
  settings = SamplingSettings(greedy=True, cfg_scale=2.0)
  out_in = np.asarray(_sampler(model, settings, True, kernel_layout="out_in")(params, cond, jax.random.key(0)))
  np.testing.assert_array_equal(out_in, np.asarray(_sampler(model, settings, False)(params, cond, jax.random.key(0))))


def test_decode_segments_tile_the_steps_with_just_enough_cache():
  segments = sampling.decode_segments(255, prefix_length=1, buckets=4)
  assert [(first, end) for first, end, _ in segments] == [(0, 64), (64, 128), (128, 191), (191, 255)]
  assert [length for _, _, length in segments] == [65, 129, 192, 256]  # the last is the full cache_length
  assert sampling.decode_segments(3, prefix_length=2, buckets=8) == [(0, 1, 3), (1, 2, 4), (2, 3, 5)]
  assert sampling.decode_segments(0, prefix_length=1, buckets=4) == []
  assert len(sampling.decode_segments(255, prefix_length=1)) == 4  # default: one per 64 positions, at most 4
  assert len(sampling.decode_segments(100, prefix_length=1)) == 1 == len(sampling.decode_segments(20, 1))
  with pytest.raises(ConfigError, match="cache_buckets=0"):
    sampling.decode_segments(10, prefix_length=1, buckets=0)


def test_top_k_top_p_draws_follow_the_renormalized_tempered_softmax():
  """Drawn among the k survivors only: frequencies are the tempered softmax renormalized over the kept set."""
  probs = np.asarray([0.4, 0.25, 0.2, 0.1, 0.05])
  logits = jnp.tile(jnp.log(jnp.asarray(probs))[jnp.asarray([3, 0, 4, 2, 1])], (40_000, 1))  # shuffled columns
  draws = lambda settings: np.bincount(np.asarray(sampling.choose(logits, jax.random.key(0), jnp.int32(0), settings,
                                                                  1)), minlength=5) / logits.shape[0]
  tempered = probs ** 0.5
  top3 = np.zeros(5)
  top3[[1, 4, 3]] = tempered[:3] / tempered[:3].sum()  # columns holding 0.4, 0.25, 0.2
  np.testing.assert_allclose(draws(SamplingSettings(temperature=2.0, top_k=3)), top3, atol=0.01)
  top2 = np.zeros(5)  # at T = 1 the top-3 masses are .47, .29, .24: top_p=0.6 keeps two
  top2[[1, 4]] = probs[:2] / probs[:2].sum()
  np.testing.assert_allclose(draws(SamplingSettings(top_k=3, top_p=0.6)), top2, atol=0.01)


def test_top_k_keeps_exactly_k_tokens():
  logits = jnp.asarray([[3.0, 1.0, 2.0, 0.5, -1.0]])
  kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_k=2)))
  np.testing.assert_array_equal(kept, [[True, False, True, False, False]])


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
  probs = np.asarray([0.5, 0.3, 0.15, 0.05])
  logits = jnp.log(jnp.asarray(probs))[None]
  kept = lambda p: np.isfinite(np.asarray(sampling.filter_logits(logits, top_p=p)))[0]
  np.testing.assert_array_equal(kept(0.5), [True, False, False, False])
  np.testing.assert_array_equal(kept(0.75), [True, True, False, False])
  np.testing.assert_array_equal(kept(0.9), [True, True, True, False])
  np.testing.assert_array_equal(kept(1.0), [True] * 4)


def test_guidance_is_u_plus_s_times_c_minus_u():
  cond = jnp.asarray([[2.0, 1.0, 0.0]])
  uncond = jnp.asarray([[2.5, 0.0, 0.0]])
  logits = jnp.concatenate([cond, uncond])
  pick = lambda s: int(sampling.choose(logits, jax.random.key(0), jnp.int32(0), SamplingSettings(greedy=True,
                                                                                                  cfg_scale=s), 4)[0])
  assert pick(1.0 + 1e-6) == 0  # ≈ c: argmax 0
  assert pick(3.0) == 1  # u + 3(c − u) = [1.0, 3.0, 0.0]


def test_cfg_ramp_grows_linearly_from_one_to_the_scale():
  settings = SamplingSettings(cfg_scale=4.0, cfg_ramp=True)
  scales = [float(sampling.guidance_scale(settings, jnp.int32(i), 7)) for i in range(7)]
  np.testing.assert_allclose(scales, np.linspace(1.0, 4.0, 7), rtol=1e-6)
  assert float(sampling.guidance_scale(SamplingSettings(cfg_scale=4.0), jnp.int32(3), 7)) == 4.0


def test_draws_follow_the_tempered_softmax():
  logits = jnp.tile(jnp.log(jnp.asarray([0.6, 0.3, 0.1])), (20_000, 1))
  settings = SamplingSettings(temperature=2.0)
  draws = np.asarray(sampling.choose(logits, jax.random.key(0), jnp.int32(0), settings, 1))
  expected = np.asarray([0.6, 0.3, 0.1]) ** 0.5
  np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), expected / expected.sum(), atol=0.015)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_settings_are_named(kwargs):
  with pytest.raises(ConfigError):
    SamplingSettings(**kwargs)


def test_unconditional_sampling_needs_a_batch_size():
  model = ARTransformer(vocab_sizes=(4,), layer_grids=((2, 2),), embed_dim=16, num_layers=1, num_heads=2,
                        conditioning="none")
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), {})["params"]
  with pytest.raises(ConfigError, match="batch_size"):
    sampling.sample_with_cache(model, params, {}, jax.random.key(0))
  tokens = sampling.sample_with_cache(model, params, {}, jax.random.key(0), batch_size=2)
  assert tokens.shape == (2, 4)


def test_var_guidance_convention_is_the_linear_ramp_at_one_plus_cfg():
  """VAR (FoundationVision/VAR): `t = cfg·si/(S-1)`, `logits = (1+t)·c - t·u`; here that is `cfg_ramp` with
  `s = guidance_scale_from(cfg, 'var') = 1 + cfg`, so VAR's FID cfg 1.5 is s = 2.5."""
  cfg, num_scales = 1.5, 10
  settings = SamplingSettings(cfg_scale=sampling.guidance_scale_from(cfg, "var"), cfg_ramp=True)
  assert settings.cfg_scale == 2.5 and sampling.guidance_value_in(2.5, "var") == 1.5
  cond, uncond = jax.random.normal(jax.random.key(0), (2, 3, 7))
  for si in range(num_scales):
    t = cfg * si / (num_scales - 1)
    ours = uncond + sampling.guidance_scale(settings, jnp.int32(si), num_scales) * (cond - uncond)
    np.testing.assert_allclose(ours, (1 + t) * cond - t * uncond, rtol=1e-5, atol=1e-6)
  assert sampling.guidance_scale_from(4.0, "standard") == 4.0 and sampling.guidance_scale_from(0.0, "var") == 1.0
  with pytest.raises(ConfigError, match="cfg_convention"):
    sampling.guidance_scale_from(1.5, "muse")
