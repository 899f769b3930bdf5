"""Four-plane and tri-plane latents: mean pooling equals numpy's means over the stated axes and segments,
recomposition's layout, a time-constant volume round-trips through the spatial planes, the first frame stays
causal, encode/decode agree with the training forward, learned poolings, token counts at paper size, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion.latent_layout import LatentLayout, given_token_mask
from tokgen_jax.quantizers import KLBottleneck
from tokgen_jax.tokenizers import REGISTRY, FactorizedMagvit
from tokgen_jax.tokenizers.factorized import PlanePooling, plane_frame_spans, plane_shapes, recompose

DIM = 4


def _volume(shape=(2, 5, 4, 6, 3), seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _pool(z, factorization, time_split=1, pooling="mean"):
  module = PlanePooling(factorization, time_split, pooling)
  variables = module.init(jax.random.key(0), z)
  return module.apply(variables, z), variables


@pytest.mark.parametrize("time_split", [1, 2, 4])
def test_four_plane_mean_pooling_is_numpy_means_over_axes_and_segments(time_split):
  z = _volume()
  planes, variables = _pool(jnp.asarray(z), "four_plane", time_split)
  assert not variables  # mean pooling has no parameters
  np.testing.assert_allclose(planes["xy0"], z[:, :time_split].mean(axis=1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(planes["xy1"], z[:, time_split:].mean(axis=1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(planes["tw"], z.mean(axis=2), rtol=1e-6, atol=1e-6)  # over H: [B, t, w, c]
  np.testing.assert_allclose(planes["th"], z.mean(axis=3), rtol=1e-6, atol=1e-6)  # over W: [B, t, h, c]


def test_tri_plane_pools_one_spatial_plane_over_all_frames():
  z = _volume()
  planes, _ = _pool(jnp.asarray(z), "tri_plane")
  assert sorted(planes) == ["th", "tw", "xy"]
  np.testing.assert_allclose(planes["xy"], z.mean(axis=1), rtol=1e-6, atol=1e-6)


def test_recomposition_broadcasts_each_plane_over_its_axis_and_segment():
  z = _volume()
  planes, _ = _pool(jnp.asarray(z), "four_plane", 2)
  volume = np.asarray(recompose(planes, "four_plane", 2, 5))
  chex.assert_shape(volume, (2, 5, 4, 6, 4 * 3))
  xy0, xy1, tw, th = np.split(volume, 4, axis=-1)
  np.testing.assert_array_equal(xy0[:, :2], np.broadcast_to(planes["xy0"][:, None], (2, 2, 4, 6, 3)))
  np.testing.assert_array_equal(xy0[:, 2:], 0.0)
  np.testing.assert_array_equal(xy1[:, :2], 0.0)
  np.testing.assert_array_equal(xy1[:, 2:], np.broadcast_to(planes["xy1"][:, None], (2, 3, 4, 6, 3)))
  np.testing.assert_array_equal(tw, np.broadcast_to(planes["tw"][:, :, None], tw.shape))
  np.testing.assert_array_equal(th, np.broadcast_to(planes["th"][:, :, :, None], th.shape))


def test_a_volume_constant_in_time_round_trips_through_the_spatial_planes():
  frame = np.random.default_rng(1).integers(-8, 8, size=(2, 1, 4, 6, 3)).astype(np.float32) / 8  # exact sums
  z = np.repeat(frame, 5, axis=1)
  for factorization, names in (("four_plane", ("xy0", "xy1")), ("tri_plane", ("xy",))):
    planes, _ = _pool(jnp.asarray(z), factorization)
    volume = np.asarray(recompose(planes, factorization, 1, 5))
    spatial = sum(np.split(volume, volume.shape[-1] // 3, axis=-1)[:len(names)])
    np.testing.assert_array_equal(spatial, z)


def test_plane_counts_at_paper_size():
  """17×128² through f 8, s_t 4 → a 5×16×16 latent: volumetric 1280, four-plane 672, tri-plane 416."""
  assert sum(r * c for r, c in plane_shapes("four_plane", (5, 16, 16), 1).values()) == 672
  assert sum(r * c for r, c in plane_shapes("tri_plane", (5, 16, 16), 1).values()) == 256 + 80 + 80
  model = _model(channel_multipliers=(1, 1, 1, 1), temporal_downsample=(False, True, True))
  specs = model.latent_specs((17, 128, 128, 3))
  assert {name: spec.shape for name, spec in specs.items()} == {
      "latents_xy0": (16, 16, DIM), "latents_xy1": (16, 16, DIM), "latents_tw": (5, 16, DIM),
      "latents_th": (5, 16, DIM)}
  assert model.num_latent_positions((17, 128, 128, 3)) == 672


def _model(**overrides):
  config = dict(quantizer=KLBottleneck(dim=DIM), channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                temporal_downsample=(False, True), num_groups=4)
  return FactorizedMagvit(**(config | overrides))


@pytest.fixture(scope="module")
def four_plane():
  """The small four-plane model (s_t 2, f 4) on 5x16x16 clips (3x4x4 latent frames), jitted once."""
  model = _model()
  videos = jax.random.uniform(jax.random.key(0), (2, 5, 16, 16, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(1), videos)

  @jax.jit
  def run(videos):
    reconstruction, aux = model.apply(variables, videos)
    latents = model.apply(variables, videos, method="encode")
    return reconstruction, aux["quantizer"], latents, model.apply(variables, latents, method="decode")

  return model, videos, run


def test_registered_and_encoded_as_named_planes(four_plane):
  model, videos, run = four_plane
  assert REGISTRY["factorized_magvit2"] is FactorizedMagvit
  reconstruction, quantized, latents, decoded = run(videos)
  assert {name: value.shape for name, value in latents.items()} == {
      "latents_xy0": (2, 4, 4, DIM), "latents_xy1": (2, 4, 4, DIM), "latents_tw": (2, 3, 4, DIM),
      "latents_th": (2, 3, 4, DIM)}
  chex.assert_shape(reconstruction, videos.shape)
  np.testing.assert_allclose(decoded, reconstruction, rtol=1e-5, atol=1e-5)  # eval forward == decode(encode)
  assert quantized.indices.shape == (2, 16 + 16 + 12 + 12)
  assert quantized.loss > 0 and set(quantized.metrics) >= {"kl"}
  assert model.num_latent_positions((5, 16, 16, 3)) == 56


def test_the_first_frame_stays_causal(four_plane):
  """With the first latent frame alone in xy0, frame 0's latents and reconstruction ignore later frames."""
  _, videos, run = four_plane
  changed = videos.at[:, 1:].set(-videos[:, 1:])
  first, second = run(videos), run(changed)
  np.testing.assert_allclose(second[0][:, 0], first[0][:, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(second[2]["latents_xy0"], first[2]["latents_xy0"], rtol=1e-5, atol=1e-5)
  assert np.abs(second[0][:, 1:] - first[0][:, 1:]).max() > 1e-3


def test_frame_spans_name_the_latent_frames_each_plane_position_reads():
  spans = plane_frame_spans("four_plane", (3, 4, 4), time_split=1)
  np.testing.assert_array_equal(spans["xy0"].reshape(-1, 2), [[0, 1]] * 16)
  np.testing.assert_array_equal(spans["xy1"].reshape(-1, 2), [[1, 3]] * 16)
  for name in ("tw", "th"):
    np.testing.assert_array_equal(spans[name][:, 0], [[0, 1], [1, 2], [2, 3]])
  np.testing.assert_array_equal(plane_frame_spans("tri_plane", (3, 4, 4), 1)["xy"].reshape(-1, 2), [[0, 3]] * 16)


def test_tokens_fixed_by_the_given_first_frame_ignore_later_frames(four_plane):
  """Frame-prediction conditioning reads exactly the plane positions the given frames determine: with latent
  frame 0 (pixel frame 0) given, those keep their values whatever the later frames are, and the rest change."""
  model, videos, run = four_plane
  spans = model.latent_frame_spans(videos.shape[1:])
  layout = LatentLayout.from_shapes({name: value.shape[:-1] + (DIM,) for name, value in spans.items()})
  given = np.asarray(given_token_mask(layout.pack_per_position(spans), np.array([[1.0, 0.0, 0.0]])))[0] > 0
  assert given.sum() == 16 + 4 + 4  # xy0 and row 0 of tw and th
  before = layout.pack(run(videos)[2])
  after = layout.pack(run(videos.at[:, 1:].set(-videos[:, 1:]))[2])
  np.testing.assert_allclose(after[:, given], before[:, given], rtol=1e-5, atol=1e-5)
  assert np.abs(after[:, ~given] - before[:, ~given]).min(axis=-1).max() > 1e-4


@pytest.mark.slow
def test_tri_plane_is_not_causal():
  model = _model(factorization="tri_plane")
  videos = jax.random.uniform(jax.random.key(0), (1, 5, 16, 16, 3), minval=-1, maxval=1)
  variables = model.init(jax.random.key(1), videos)
  first = model.apply(variables, videos)[0]
  second = model.apply(variables, videos.at[:, 1:].set(-videos[:, 1:]))[0]
  assert np.abs(second[:, 0] - first[:, 0]).max() > 1e-4


@pytest.mark.parametrize("pooling", ["linear", pytest.param("attention", marks=pytest.mark.slow)])
def test_learned_poolings_train(pooling):
  z = jnp.asarray(_volume())
  planes, variables = _pool(z, "four_plane", 1, pooling)
  assert {name: p.shape for name, p in planes.items()} == {
      "xy0": (2, 4, 6, 3), "xy1": (2, 4, 6, 3), "tw": (2, 5, 6, 3), "th": (2, 5, 4, 3)}
  if pooling == "linear":  # initialised to the mean
    mean, _ = _pool(z, "four_plane", 1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), planes, mean)
  # Every parameter learns (split 2: attention over xy0's one frame alone would have nothing to choose).
  module = PlanePooling("four_plane", 2, pooling)
  variables = module.init(jax.random.key(0), z)
  grads = jax.grad(lambda v: sum(jnp.sum(p ** 2) for p in module.apply(v, z).values()))(variables)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("overrides, match", [
    (dict(factorization="six_plane"), "factorization='six_plane' is not known"),
    (dict(time_split=3), r"time_split=3 must lie in \[1, 3\)"),
    (dict(pooling="max"), "pooling='max' is not known"),
])
def test_bad_settings_are_named(overrides, match):
  videos = jnp.zeros((1, 5, 16, 16, 3))
  with pytest.raises(ConfigError, match=match):
    _model(**overrides).init(jax.random.key(0), videos)


def test_images_are_refused():
  with pytest.raises(ConfigError, match="factorized latents are for videos"):
    _model().init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
