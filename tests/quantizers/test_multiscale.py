import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.quantizers import multiscale
from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer, area_downsample, area_weights

SCALES = (1, 2, 3, 4, 6, 8)  # 8→3 and 8→6 are non-integer ratios
PREFIX = np.cumsum([s * s for s in SCALES])
K, DIM = 512, 4
QUANTIZER = MultiScaleResidualQuantizer(K, DIM, scales=SCALES)


def _variables(codebook, kernel, bias):
  return {"params": {"vq": {"codebook": jnp.asarray(codebook, jnp.float32)},
                     "phi": {"conv": {"kernel": jnp.asarray(kernel, jnp.float32),
                                      "bias": jnp.asarray(bias, jnp.float32)}}}}


@jax.jit
def _run(variables, z, cotangent):
  """One compiled program for every test: outputs, f̂ from each prefix of scales, and d<z_q, cotangent>/dz."""
  z_q, vjp, out = jax.vjp(lambda z: QUANTIZER.apply(variables, z), z, has_aux=True)
  prefixes = [QUANTIZER.apply(variables, out.indices[:, :n], method=QUANTIZER.codes_from_indices) for n in PREFIX]
  (grad,) = vjp(cotangent)
  return z_q, out, jnp.stack(prefixes), grad


@pytest.fixture(scope="module")
def random_run():
  keys = jax.random.split(jax.random.key(0), 5)
  variables = _variables(jax.random.normal(keys[0], (K, DIM)), 0.3 * jax.random.normal(keys[1], (3, 3, DIM, DIM)),
                         0.1 * jax.random.normal(keys[2], (DIM,)))
  z = jax.random.normal(keys[3], (2, 8, 8, DIM))
  cotangent = jax.random.normal(keys[4], z.shape)
  return (z, cotangent) + _run(variables, z, cotangent)


def test_default_scales_give_680_tokens_split_row_major():
  quantizer = MultiScaleResidualQuantizer(16, DIM)
  assert quantizer.num_tokens == 680
  np.testing.assert_allclose(quantizer.bits_per_token, 4.0)
  z = jnp.zeros((1, 16, 16, DIM))
  (_, out), variables = jax.eval_shape(lambda: quantizer.init_with_output(jax.random.key(0), z))
  assert out.indices.shape == (1, 680) and out.indices.dtype == jnp.int32
  shapes = jax.tree.map(jnp.shape, nn.meta.unbox(variables))  # one codebook, one φ conv shared by all scales
  assert shapes == {"params": {"vq": {"codebook": (16, DIM)},
                               "phi": {"conv": {"kernel": (3, 3, DIM, DIM), "bias": (DIM,)}}}}
  indices = jnp.arange(680)[None]
  maps = quantizer.split_scales(indices)
  assert [m.shape for m in maps] == [(1, s, s) for s in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
  np.testing.assert_array_equal(maps[2], np.arange(5, 14).reshape(1, 3, 3))  # after 1 + 4 tokens, row-major
  assert len(quantizer.split_scales(indices[:, :30])) == 4  # a prefix of whole scales: 1 + 4 + 9 + 16
  with pytest.raises(ValueError, match="whole number of scales"):
    quantizer.split_scales(indices[:, :6])


def test_area_downsample_is_block_mean_for_integer_ratios():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  expected = x.reshape(2, 4, 4, 4, 4, 3).mean(axis=(2, 4))
  chex.assert_trees_all_close(area_downsample(x, 4), expected, atol=1e-6)
  np.testing.assert_array_equal(area_weights(16, 16), np.eye(16))


@pytest.mark.parametrize("size", [13, 10, 3])
def test_area_downsample_is_exact_area_average_for_any_ratio(size):
  """Reference: split every pixel into size×size equal sub-pixels; each output cell is then a 16×16 block mean."""
  x = np.random.default_rng(size).normal(size=(2, 16, 16, 3))
  fine = np.repeat(np.repeat(x, size, axis=1), size, axis=2)  # [2, 16·size, 16·size, 3], same area measure
  expected = fine.reshape(2, size, 16, size, 16, 3).mean(axis=(2, 4))
  down = area_downsample(jnp.asarray(x, jnp.float32), size)
  np.testing.assert_allclose(down, expected, atol=1e-5)
  np.testing.assert_allclose(down.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-6)
  np.testing.assert_allclose(area_weights(16, size).sum(axis=1), 1.0, rtol=1e-6)


def test_codes_from_indices_rebuilds_the_quantized_output(random_run):
  _, _, z_q, out, prefixes, _ = random_run
  chex.assert_shape(out.indices, (2, int(PREFIX[-1])))
  chex.assert_type(out.indices, jnp.int32)
  chex.assert_trees_all_close(prefixes[-1], z_q, atol=1e-5)


def test_loss_is_vars_mean_over_scales_of_prefix_errors(random_run):
  """codebook term = commitment term = mean_k ‖f̂_k - f‖², so loss = (1 + β)·mean_k mse(f̂_k, f)."""
  z, _, _, out, prefixes, _ = random_run
  mse = np.mean(np.square(np.asarray(prefixes) - np.asarray(z)[None]), axis=(1, 2, 3, 4))
  np.testing.assert_allclose(out.metrics["commitment"], np.mean(mse), rtol=1e-5)
  np.testing.assert_allclose(out.metrics["codebook_loss"], np.mean(mse), rtol=1e-5)
  np.testing.assert_allclose(out.loss, 1.25 * np.mean(mse), rtol=1e-5)
  counts = np.bincount(np.asarray(out.indices).ravel(), minlength=K)
  np.testing.assert_allclose(out.metrics["codebook_usage"], np.mean(counts > 0), rtol=1e-6)


def test_straight_through_gradient_is_identity(random_run):
  _, cotangent, _, _, _, grad = random_run
  chex.assert_trees_all_close(grad, cotangent, atol=1e-6)


def test_error_falls_as_scales_are_added():
  # φ = identity (its conv kernel is the identity tap) and a codebook spanning radii 0.01…3, so every scale's
  # residual finds a near code.
  rng = np.random.default_rng(0)
  directions = rng.normal(size=(K, DIM))
  radii = np.exp(rng.uniform(np.log(0.01), np.log(3.0), size=(K, 1)))
  kernel = np.zeros((3, 3, DIM, DIM))
  kernel[1, 1] = np.eye(DIM)
  variables = _variables(directions / np.linalg.norm(directions, axis=1, keepdims=True) * radii, kernel,
                         np.zeros(DIM))
  # A smooth field plus detail, so the coarse scales carry signal.
  z = jax.image.resize(jax.random.normal(jax.random.key(5), (2, 3, 3, DIM)), (2, 8, 8, DIM), "bicubic")
  z = z + 0.3 * jax.random.normal(jax.random.key(6), z.shape)
  z_q, _, prefixes, _ = _run(variables, z, jnp.zeros_like(z))
  errors = np.mean(np.square(np.asarray(prefixes) - np.asarray(z)[None]), axis=(1, 2, 3, 4))
  assert np.all(np.diff(errors) < 0), errors
  assert errors[-1] < 0.1 * float(jnp.mean(jnp.square(z))), errors
  np.testing.assert_allclose(errors[-1], jnp.mean(jnp.square(z_q - z)), rtol=1e-4)


def test_rejects_latent_size_other_than_last_scale():
  variables = _variables(np.zeros((K, DIM)), np.zeros((3, 3, DIM, DIM)), np.zeros(DIM))
  with pytest.raises(ValueError, match=r"H = W = scales\[-1\]"):
    QUANTIZER.apply(variables, jnp.zeros((2, 16, 16, DIM)))


def test_torch_resize_weights_are_rows_of_unit_mass_and_agree_with_exact_area_on_integer_ratios():
  for n, s in ((16, 13), (16, 5), (8, 3)):
    np.testing.assert_allclose(multiscale.torch_area_weights(n, s).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(multiscale.torch_bicubic_weights(s, n).sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(multiscale.torch_area_weights(16, 4), area_weights(16, 4), atol=1e-7)
  # 16 → 13: cell 1 averages pixels 1 and 2 equally (floor(16/13) = 1 .. ceil(32/13) = 3), exact area does not.
  np.testing.assert_allclose(multiscale.torch_area_weights(16, 13)[1, :4], [0, 0.5, 0.5, 0])
  with pytest.raises(ValueError, match="resize"):
    MultiScaleResidualQuantizer(K, DIM, scales=SCALES, resize="nearest").init(jax.random.key(0),
                                                                               jnp.zeros((1, 8, 8, DIM)))


@pytest.mark.slow
@pytest.mark.parametrize("scale", (1, 2, 3, 4, 5, 6, 8, 10, 13))
def test_torch_resize_equals_torch_interpolate(scale):
  """VAR's resampling: `F.interpolate(mode="area")` down to each scale of 16, `mode="bicubic"` back up."""
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(scale).normal(size=(2, 16, 16, 3)).astype(np.float32)
  small = np.random.default_rng(100 + scale).normal(size=(2, scale, scale, 3)).astype(np.float32)
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  down = torch.nn.functional.interpolate(nchw(x), size=(scale, scale), mode="area").numpy().transpose(0, 2, 3, 1)
  up = torch.nn.functional.interpolate(nchw(small), size=(16, 16), mode="bicubic",
                                       align_corners=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(multiscale.downsample(jnp.asarray(x), scale, "torch"), down, atol=1e-5)
  np.testing.assert_allclose(multiscale.upsample(jnp.asarray(small), 16, "torch"), up, atol=1e-5)
  if 16 % scale:  # the exact default really differs there: the option is needed to reproduce VAR
    assert np.abs(np.asarray(multiscale.upsample(jnp.asarray(small), 16)) - up).max() > 1e-2


STANDARDIZED = MultiScaleResidualQuantizer(K, DIM, scales=SCALES, standardize_scales=True)


@jax.jit
def _standardized_step(variables, z):
  """One training forward from unmeasured scale statistics: outputs and the measured statistics."""
  out, state = STANDARDIZED.apply(variables, z, train=True, mutable=["quantizer_stats"])
  return out, state["quantizer_stats"]


@pytest.fixture(scope="module")
def standardized_variables():
  keys = jax.random.split(jax.random.key(1), 2)
  variables = _variables(jax.random.normal(keys[0], (K, DIM)), 0.3 * jax.random.normal(keys[1], (3, 3, DIM, DIM)),
                         np.zeros(DIM))
  return variables | {"quantizer_stats": {"scale_mean": jnp.zeros((len(SCALES), DIM)),
                                          "scale_std": jnp.zeros(len(SCALES))}}


def test_standardized_first_step_measures_each_scale_and_eval_reuses_it(standardized_variables):
  z = 3.0 + 2.0 * jax.random.normal(jax.random.key(2), (4, 8, 8, DIM))
  (z_q, out), stats = _standardized_step(standardized_variables, z)
  image_means = np.asarray(z).mean(axis=(1, 2))  # the 1×1 scale looks up each image's mean
  np.testing.assert_allclose(stats["scale_mean"][0], image_means.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["scale_std"][0], np.sqrt(np.mean((image_means - image_means.mean(0)) ** 2)),
                             rtol=1e-5)
  assert np.all(np.asarray(stats["scale_std"]) > 0)
  measured = standardized_variables | {"quantizer_stats": stats}
  _, eval_out = STANDARDIZED.apply(measured, z)  # eval looks up with the stored statistics: the same codes
  np.testing.assert_array_equal(eval_out.indices, out.indices)
  rebuilt = STANDARDIZED.apply(measured, out.indices, method=STANDARDIZED.codes_from_indices)
  np.testing.assert_allclose(rebuilt, z_q, atol=1e-4)  # add_scale applies the same μ + σ·e


def test_standardized_codes_do_not_depend_on_the_latent_scale(standardized_variables):
  """With φ bias-free, scaling z by a scales every scale's residual, mean and spread alike: the same codes. The
  plain lookup has no such invariance (its codes sit at one fixed spread)."""
  z = jax.random.normal(jax.random.key(3), (4, 8, 8, DIM))
  indices = [_standardized_step(standardized_variables, a * z)[0][1].indices for a in (1.0, 7.0)]
  np.testing.assert_array_equal(indices[0], indices[1])
  plain = {k: v for k, v in standardized_variables.items() if k != "quantizer_stats"}
  plain_indices = [QUANTIZER.apply(plain, a * z)[1].indices for a in (1.0, 7.0)]
  assert np.mean(np.asarray(plain_indices[0]) != np.asarray(plain_indices[1])) > 0.1


PER_SCALE = MultiScaleResidualQuantizer(K, DIM, scales=SCALES, codebook_per_scale=True)


def _per_scale_variables(codebooks, variables):
  params = {k: v for k, v in variables["params"].items() if k != "vq"}
  return {"params": params | {f"scale_vqs_{k}": {"codebook": jnp.asarray(c)} for k, c in enumerate(codebooks)}}


def test_per_scale_codebooks_holding_the_shared_codes_reduce_to_the_shared_quantizer(random_run):
  z, _, z_q, out, _, _ = random_run
  keys = jax.random.split(jax.random.key(0), 5)  # random_run's draws
  shared = _variables(jax.random.normal(keys[0], (K, DIM)), 0.3 * jax.random.normal(keys[1], (3, 3, DIM, DIM)),
                      0.1 * jax.random.normal(keys[2], (DIM,)))
  variables = _per_scale_variables([shared["params"]["vq"]["codebook"]] * len(SCALES), shared)
  per_scale_z_q, per_scale_out = PER_SCALE.apply(variables, z)
  np.testing.assert_array_equal(per_scale_out.indices, out.indices)
  np.testing.assert_allclose(per_scale_z_q, z_q, atol=1e-5)


def test_each_scale_looks_its_codes_up_in_its_own_codebook():
  keys = jax.random.split(jax.random.key(5), len(SCALES) + 2)
  codebooks = [jax.random.normal(key, (K, DIM)) for key in keys[:len(SCALES)]]
  variables = _per_scale_variables(codebooks, _variables(codebooks[0], np.zeros((3, 3, DIM, DIM)), np.zeros(DIM)))
  z = jax.random.normal(keys[-1], (3, 8, 8, DIM))
  z_q, out = PER_SCALE.apply(variables, z)
  means = np.asarray(z).mean(axis=(1, 2))  # the 1×1 scale's vectors: each image's mean
  distances = ((means[:, None] - np.asarray(codebooks[0])[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(out.indices[:, 0], distances.argmin(1))
  # φ is zero here, so f̂ = Σ_k (1 - phi_mix)·bicubic(codebook_k[r_k]): rebuilt from the ids scale by scale
  expected = sum(0.5 * multiscale.upsample(jnp.asarray(codebooks[k])[m], 8) if m.shape[1] != 8
                 else 0.5 * jnp.asarray(codebooks[k])[m] for k, m in enumerate(PER_SCALE.split_scales(out.indices)))
  np.testing.assert_allclose(z_q, expected, atol=1e-5)
  np.testing.assert_allclose(PER_SCALE.apply(variables, out.indices, method=PER_SCALE.codes_from_indices), expected,
                             atol=1e-5)


def test_per_scale_restarts_move_each_scales_codes_to_that_scales_vectors():
  """Codes idle after one step restart, each on its own lookup vector: the 1×1 codebook's on the batch's image
  means (its only vectors, one code each), not on the fine scales' residuals as a shared codebook's may."""
  quantizer = MultiScaleResidualQuantizer(K, DIM, scales=SCALES, codebook_per_scale=True, restart_after_steps=1)
  z = 5.0 + jax.random.normal(jax.random.key(6), (4, 8, 8, DIM))
  variables = quantizer.init(jax.random.key(7), z)
  (_, out), state = quantizer.apply(variables, z, train=True, mutable=["quantizer_stats"])
  restarted = {**variables, **state}
  codes_of = lambda v: np.asarray(quantizer.apply(v, method=lambda m: m._codebook(0).codes()))
  moved = np.flatnonzero(np.abs(codes_of(restarted) - codes_of(variables)).max(-1) > 0)
  assert len(moved) == 4  # one per image
  distance = np.abs(codes_of(restarted)[moved][:, None] - np.asarray(z).mean(axis=(1, 2))[None]).max(-1)
  np.testing.assert_allclose(distance.min(1), 0.0, atol=1e-4)
  assert len(set(distance.argmin(1))) == 4
  assert out.metrics["dead_codes"] >= len(SCALES) * (K - 4 * 64)  # every scale's idle codes counted
