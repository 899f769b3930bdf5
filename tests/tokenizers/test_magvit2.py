import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.quantizers import LookupFreeQuantizer
from tokgen_jax.tokenizers import REGISTRY, Factors, LatentSpec, MagvitV2

BITS = 6


def small_model(**overrides):
  config = dict(quantizer=LookupFreeQuantizer(bits=BITS), channels=8, channel_multipliers=(1, 2, 2),
                num_res_blocks=1, temporal_downsample=(False, True), num_groups=4)
  return MagvitV2(**(config | overrides))


@pytest.fixture(scope="module")
def small():
  """The small model (s_t = 2, f = 4) on a 1x5x16x16x3 video: 3x4x4 latent frames."""
  model = small_model()
  videos = jax.random.uniform(jax.random.key(0), (1, 5, 16, 16, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(1), videos)
  return model, variables, videos


@pytest.fixture(scope="module")
def forward(small):
  """One jitted function (compiled once per input shape): continuous latent, token indices, reconstruction."""
  model, variables, _ = small

  @jax.jit
  def run(videos):
    latent = model.apply(variables, videos, method="encode_latent")
    reconstruction, aux = model.apply(variables, videos)
    return latent, aux["quantizer"].indices, reconstruction

  return run


@pytest.fixture(scope="module")
def detokenize(small):
  model, variables, _ = small
  return jax.jit(lambda indices: model.apply(variables, {"tokens": indices}, method="decode"))


def test_registered():
  assert REGISTRY["magvit2"] is MagvitV2


def test_shapes_and_factors(small, forward):
  model, _, videos = small
  latent, indices, reconstruction = forward(videos)
  assert model.factors == Factors(temporal=2, spatial=4)
  assert model.latent_grid(videos.shape[1:]) == (3, 4, 4) and model.latent_grid((16, 16, 3)) == (4, 4)
  chex.assert_shape(latent, (1, 3, 4, 4, BITS))
  chex.assert_shape(indices, (1, 3, 4, 4))
  chex.assert_shape(reconstruction, videos.shape)
  chex.assert_type(reconstruction, jnp.float32)


def test_latent_frame_spans_are_one_frame_per_position(small):
  model, _, videos = small
  spans = model.latent_frame_spans(videos.shape[1:])
  assert list(spans) == ["tokens"] and spans["tokens"].shape == (3, 4, 4, 2)
  np.testing.assert_array_equal(spans["tokens"][:, 2, 1], [[0, 1], [1, 2], [2, 3]])
  with pytest.raises(ConfigError, match="video input"):
    model.latent_frame_spans((16, 16, 3))


def test_encoder_is_exactly_causal(small, forward):
  """Changing input frames > t leaves latent frame j (which reads input frames ≤ 2j) bit-for-bit unchanged."""
  _, _, videos = small
  reference = np.asarray(forward(videos)[0])
  noise = jax.random.uniform(jax.random.key(2), videos.shape, minval=-1, maxval=1)
  for t in range(videos.shape[1] - 1):
    perturbed = videos.at[:, t + 1:].set(noise[:, t + 1:])
    latent = np.asarray(forward(perturbed)[0])
    for j in range(latent.shape[1]):
      if 2 * j <= t:
        np.testing.assert_array_equal(latent[:, j], reference[:, j], err_msg=f"t={t}, latent frame {j}")
    first_dependent = t // 2 + 1  # the first latent frame that reads a changed input frame
    assert not np.allclose(latent[:, first_dependent], reference[:, first_dependent]), (t, first_dependent)


def test_decoder_is_exactly_causal(small, forward, detokenize):
  """Changing tokens of latent frames > j leaves output frames i ≤ 2j (which read latent frames ≤ ceil(i/2))
  bit-for-bit unchanged; detokenizing the unchanged tokens reproduces the forward pass."""
  _, _, videos = small
  _, indices, reconstruction = forward(videos)
  decoded = np.asarray(detokenize(indices))
  np.testing.assert_allclose(decoded, reconstruction, atol=1e-5)
  other = jax.random.randint(jax.random.key(3), indices.shape, 0, 2 ** BITS)
  for j in range(indices.shape[1] - 1):
    out = np.asarray(detokenize(indices.at[:, j + 1:].set(other[:, j + 1:])))
    np.testing.assert_array_equal(out[:, :2 * j + 1], decoded[:, :2 * j + 1], err_msg=f"latent frames > {j}")
    assert not np.allclose(out[:, 2 * j + 1], decoded[:, 2 * j + 1]), j


def test_image_equals_first_frame(small, forward):
  """An image `[B, H, W, 3]` is a one-frame video: same latent, tokens and reconstruction as frame 0."""
  _, _, videos = small
  latent, indices, reconstruction = forward(videos)
  image_latent, image_indices, image_reconstruction = forward(videos[:, 0])
  chex.assert_shape(image_latent, (1, 4, 4, BITS))
  chex.assert_shape(image_reconstruction, videos[:, 0].shape)
  np.testing.assert_allclose(image_latent, latent[:, 0], atol=1e-5)
  np.testing.assert_array_equal(image_indices, indices[:, 0])
  np.testing.assert_allclose(image_reconstruction, reconstruction[:, 0], atol=1e-5)


def _abstract_outputs(model, shape):
  """Shapes of the forward pass's (reconstruction, indices) and the param count, without running anything."""
  def run():
    (reconstruction, aux), variables = model.init_with_output(jax.random.key(0), jnp.zeros(shape))
    return reconstruction, aux["quantizer"].indices, variables["params"]

  reconstruction, indices, params = jax.eval_shape(run)
  return reconstruction.shape, indices.shape, sum(math.prod(p.shape) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("frames,size,blur_pool", [(1, 16, False), (5, 16, False), (9, 16, True), (5, 32, False),
                                                   (9, 24, False)])
def test_token_grid_shapes(frames, size, blur_pool):
  model = small_model(temporal_downsample=(True, True), blur_pool=blur_pool)
  shape = (2, frames, size, size, 3)
  reconstruction, indices, _ = _abstract_outputs(model, shape)
  assert reconstruction == shape
  assert indices == (2, 1 + (frames - 1) // 4, size // 4, size // 4)


def test_image_token_grid_shape():
  reconstruction, indices, _ = _abstract_outputs(small_model(temporal_downsample=(True, True)), (2, 16, 16, 3))
  assert (reconstruction, indices) == ((2, 16, 16, 3), (2, 4, 4))


def test_rejects_frame_count_that_does_not_fit(small):
  model, variables, _ = small
  with pytest.raises(ConfigError, match=r"4 frames .* one of \[1, 3, 5, 7\]"):
    model.apply(variables, jnp.zeros((1, 4, 16, 16, 3)))
  with pytest.raises(ConfigError, match=r"4 frames .* one of \[1, 5, 9, 13\]"):
    _abstract_outputs(small_model(temporal_downsample=(True, True)), (1, 4, 16, 16, 3))


def test_rejects_bad_config_and_sizes(small):
  model, variables, _ = small
  with pytest.raises(ConfigError, match="not divisible by the spatial downsampling factor 4"):
    model.apply(variables, jnp.zeros((1, 5, 18, 18, 3)))
  with pytest.raises(ConfigError, match="one entry per downsampling step"):
    _abstract_outputs(small_model(temporal_downsample=(True,)), (1, 5, 16, 16, 3))


def test_paper_size_config_token_grid():
  """17x128x128 video, f=8, s_t=4, 2^18 LFQ: a 5x16x16 = 1280-token grid (MAGVIT-v2's UCF/K600 setup)."""
  model = MagvitV2(quantizer=LookupFreeQuantizer(bits=18), channels=128, channel_multipliers=(1, 2, 2, 4),
                   num_res_blocks=2, temporal_downsample=(False, True, True))
  reconstruction, indices, num_params = _abstract_outputs(model, (1, 17, 128, 128, 3))
  assert reconstruction == (1, 17, 128, 128, 3)
  assert indices == (1, 5, 16, 16) and math.prod(indices[1:]) == 1280
  light = model.clone(upsample_kernel_size=(1, 1, 1))
  _, light_indices, light_params = _abstract_outputs(light, (1, 17, 128, 128, 3))
  assert light_indices == indices and light_params < num_params
  print(f"\nMAGVIT-v2 paper-size tokenizer: {num_params:,} parameters ({light_params:,} with 1x1x1 upsample convs)")
  assert 10_000_000 < num_params < 1_000_000_000


def test_gradient_reaches_every_encoder_param_through_quantizer(small):
  """The reconstruction loss reaches the encoder only through the LFQ straight-through estimator."""
  model, variables, videos = small
  loss = lambda params: jnp.mean(jnp.abs(model.apply({"params": params}, videos)[0] - videos))
  grads = jax.jit(jax.grad(loss))(variables["params"])
  norms = {jax.tree_util.keystr(path): float(jnp.linalg.norm(g))
           for path, g in jax.tree_util.tree_leaves_with_path(grads["encoder"])}
  assert len(norms) > 10 and min(norms.values()) > 0.0, {k: v for k, v in norms.items() if v == 0.0}


@pytest.mark.slow
def test_kl_bottleneck_gives_continuous_latents_for_diffusion():
  """W.A.L.T.-style: the same model with the `kl` bottleneck; eval latents are the posterior mean (deterministic)."""
  from tokgen_jax.quantizers import KLBottleneck
  model = small_model(quantizer=KLBottleneck(dim=4))
  videos = jax.random.uniform(jax.random.key(0), (1, 5, 16, 16, 3), minval=-1, maxval=1)
  variables = model.init({"params": jax.random.key(1), "noise": jax.random.key(2)}, videos)
  encode = jax.jit(lambda v, rng, train: model.apply(variables, v, train=train, rngs={"noise": rng},
                                                     method="quantize"), static_argnums=2)
  latent, out = encode(videos, jax.random.key(3), False)
  chex.assert_shape(latent, (1, 3, 4, 4, 4))
  np.testing.assert_array_equal(latent, encode(videos, jax.random.key(4), False)[0])
  sampled, _ = encode(videos, jax.random.key(3), True)
  assert not np.allclose(sampled, latent) and out.loss > 0.0
  named = jax.jit(lambda v: model.apply(variables, v, method="encode"))(videos)  # the protocol: `latents`, no ids
  assert list(named) == ["latents"]
  np.testing.assert_array_equal(named["latents"], latent)
  assert model.latent_specs(videos.shape[1:]) == {"latents": LatentSpec((3, 4, 4, 4), "float32", 0)}


@pytest.mark.parametrize("adaptive_norm", ("style", "spatial"))
def test_adaptive_norm_forms_place_their_layers_and_stay_causal(adaptive_norm):
  """style: one AdaptiveGroupNorm per decoder level (Open-MAGVIT2), plain GroupNorm in the blocks; spatial: every
  decoder block norm is adaptive. Both keep output frame 0 independent of later latent frames."""
  model = small_model(adaptive_norm=adaptive_norm)
  z = jax.random.normal(jax.random.key(0), (1, 3, 4, 4, BITS))
  params = jax.jit(lambda z: model.init(jax.random.key(1), z, method="decode_codes"))(z)["params"]["decoder"]
  levels = [name for name in params if name.startswith("adaptive_norm_")]
  block_norms = [params[name]["norm1"] for name in params if name.startswith("ResBlock3D")]
  if adaptive_norm == "style":
    assert levels == ["adaptive_norm_0", "adaptive_norm_1", "adaptive_norm_2"]
    assert all(set(norm) == {"scale", "bias"} for norm in block_norms)
  else:
    assert not levels and all(set(norm) == {"gamma", "beta"} for norm in block_norms)
  decode = jax.jit(lambda z: model.apply({"params": {"decoder": params}}, z, method="decode_codes"))
  out, changed = decode(z), decode(z.at[:, 1:].multiply(-2.0))
  np.testing.assert_array_equal(out[:, 0], changed[:, 0])
  with pytest.raises(ConfigError, match="config.model.adaptive_norm"):
    small_model(adaptive_norm="spade").init(jax.random.key(0), z, method="decode_codes")


def test_paper_presets_follow_the_seed():
  """Blur pooling on, style normalization; 'paper_58m' (2 blocks) is the 56.4M nearest the seed's 58M row and
  'paper' (4 blocks, the ablations' final 'deeper' model) is 92.7M."""
  from tokgen_jax import tasks  # pylint: disable=import-outside-toplevel
  from tokgen_jax.configs import magvit2  # pylint: disable=import-outside-toplevel
  counts = {}
  for size in ("paper", "paper_58m"):
    config = magvit2.magvit2(size)
    assert config.blur_pool and config.adaptive_norm == "style" and config.quantizer.bits == 18
    counts[size] = _abstract_outputs(tasks.build_tokenizer(config), (1, 17, 128, 128, 3))[2]
  assert 56.0e6 < counts["paper_58m"] < 57.0e6 and 92.0e6 < counts["paper"] < 93.5e6
