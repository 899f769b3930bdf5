import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.quantizers import VectorQuantizer, build
from tokgen_jax.quantizers.base import codebook_statistics
from tokgen_jax.errors import ConfigError


def _apply(quantizer, z, codebook):
  return quantizer.apply({"params": {"codebook": codebook}}, z)


def test_nearest_code_and_losses_match_hand_computation():
  codebook = jnp.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
  z = jnp.array([[[0.1, -0.2], [0.9, 1.3], [-0.8, 1.5]]])  # [1, 3, 2]
  quantizer = VectorQuantizer(codebook_size=3, dim=2, commitment_weight=0.25)
  z_q, out = _apply(quantizer, z, codebook)
  np.testing.assert_array_equal(out.indices, [[0, 1, 2]])
  chex.assert_trees_all_close(z_q, codebook[None], atol=1e-6)
  squared_error = np.mean((np.asarray(z) - np.asarray(codebook)[None]) ** 2)
  np.testing.assert_allclose(out.metrics["codebook_loss"], squared_error, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["commitment"], squared_error, rtol=1e-6)
  np.testing.assert_allclose(out.loss, 1.25 * squared_error, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["codebook_usage"], 1.0)
  np.testing.assert_allclose(out.metrics["perplexity"], 3.0, rtol=1e-6)


def test_straight_through_gradient_is_identity():
  codebook = jax.random.normal(jax.random.key(0), (16, 4))
  z = jax.random.normal(jax.random.key(1), (2, 5, 4))
  quantizer = VectorQuantizer(codebook_size=16, dim=4)
  cotangent = jax.random.normal(jax.random.key(2), z.shape)
  grad = jax.grad(lambda z: jnp.sum(_apply(quantizer, z, codebook)[0] * cotangent))(z)
  chex.assert_trees_all_close(grad, cotangent, atol=1e-6)


def test_loss_gradients_split_between_encoder_and_codebook():
  """Codebook term trains only the codes, commitment only the encoder: d loss/dz = 2β(z - e)/n."""
  codebook = jnp.array([[0.0, 0.0], [1.0, 1.0]])
  z = jnp.array([[0.2, 0.4]])
  quantizer = VectorQuantizer(codebook_size=2, dim=2, commitment_weight=0.25)
  grad_z = jax.grad(lambda z: _apply(quantizer, z, codebook)[1].loss)(z)
  np.testing.assert_allclose(grad_z, 2 * 0.25 * (z - codebook[0]) / 2, rtol=1e-6)
  grad_codes = jax.grad(lambda c: _apply(quantizer, z, c)[1].loss)(codebook)
  np.testing.assert_allclose(grad_codes[0], 2 * (codebook[0] - z[0]) / 2, rtol=1e-6)
  np.testing.assert_allclose(grad_codes[1], 0.0)


def test_l2_normalized_codes_are_unit_vectors_and_roundtrip():
  quantizer = VectorQuantizer(codebook_size=32, dim=8, l2_normalize=True)
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  variables = quantizer.init(jax.random.key(1), z)
  z_q, out = quantizer.apply(variables, z)
  chex.assert_shape(out.indices, (2, 4, 4))
  chex.assert_type(out.indices, jnp.int32)
  np.testing.assert_allclose(jnp.linalg.norm(z_q, axis=-1), 1.0, rtol=1e-5)
  codes = quantizer.apply(variables, out.indices, method=quantizer.codes_from_indices)
  chex.assert_trees_all_close(codes, z_q, atol=1e-6)


def test_codebook_statistics_closed_form():
  stats = codebook_statistics(jnp.array([0, 0, 1, 1]), codebook_size=8)
  np.testing.assert_allclose(stats["codebook_usage"], 2 / 8)
  np.testing.assert_allclose(stats["perplexity"], 2.0, rtol=1e-6)


def test_registry_builds_by_name_and_rejects_unknown():
  assert isinstance(build("vq", codebook_size=4, dim=2), VectorQuantizer)
  with pytest.raises(ConfigError, match="config.model.quantizer.name"):
    build("nope")


# --- chunked search, low-dimensional lookup, EMA codebook, dead-code restart, sharding -------------------------

from flax import linen as nn  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from tokgen_jax.quantizers.vq import assignment_entropies, kmeans, laplace_smoothed, nearest_code  # noqa: E402


def _brute_force_nearest(z, codebook):
  distances = ((np.asarray(z)[:, None, :] - np.asarray(codebook)[None]) ** 2).sum(-1)
  return distances.argmin(-1)  # numpy argmin: first (lowest) index among ties


def test_default_quantizer_has_only_the_codebook_param():
  quantizer = VectorQuantizer(codebook_size=8, dim=4)
  variables = jax.eval_shape(quantizer.init, jax.random.key(0), jnp.zeros((1, 2, 4)))
  assert set(variables) == {"params"}
  assert set(variables["params"]) == {"codebook"}


@pytest.mark.parametrize("kwargs", [{"chunk_size": 0}, {"lookup_dim": -1}, {"ema_decay": 1.0},
                                    {"restart_after_steps": -2}])
def test_invalid_options_are_rejected_by_name(kwargs):
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    VectorQuantizer(codebook_size=8, dim=4, **kwargs).init(jax.random.key(0), jnp.zeros((1, 4)))


def test_chunked_search_equals_unchunked_on_random_data():
  z = jax.random.normal(jax.random.key(0), (96, 8))
  codebook = jax.random.normal(jax.random.key(1), (50, 8))
  full = nearest_code(z, codebook)
  np.testing.assert_array_equal(full, _brute_force_nearest(z, codebook))
  search = jax.jit(nearest_code, static_argnums=2)
  for chunk_size in (7, 10, 64):  # ragged last chunk, exact multiple of K, one chunk larger than K
    np.testing.assert_array_equal(search(z, codebook, chunk_size), full)


def test_chunked_search_breaks_ties_toward_lowest_index():
  # Integer data: every distance is exact, so ties are real. Code 1 is repeated at 4 and 9 (later chunks);
  # the point (0.5, 0) is equidistant from codes 0 and 6.
  codebook = jnp.array([[0, 0], [2, 2], [5, 5], [-3, 1], [2, 2], [7, -1], [1, 0], [4, 4], [-2, -2], [2, 2]],
                       jnp.float32)
  z = jnp.array([[2, 2], [0.5, 0], [4.5, 4.5], [-2, -2], [7, -1]], jnp.float32)
  expected = [1, 0, 2, 8, 5]  # (4.5, 4.5) ties codes 2 and 7 → 2
  np.testing.assert_array_equal(_brute_force_nearest(z, codebook), expected)
  search = jax.jit(nearest_code, static_argnums=2)
  for chunk_size in (1, 3, 4):
    np.testing.assert_array_equal(search(z, codebook, chunk_size), expected)


def test_chunked_quantizer_module_matches_unchunked():
  z = jax.random.normal(jax.random.key(2), (2, 4, 4, 4))
  codebook = jax.random.normal(jax.random.key(3), (37, 4))
  apply = jax.jit(_apply, static_argnums=0)
  z_full, out_full = apply(VectorQuantizer(codebook_size=37, dim=4), z, codebook)
  z_chunk, out_chunk = apply(VectorQuantizer(codebook_size=37, dim=4, chunk_size=8), z, codebook)
  np.testing.assert_array_equal(out_chunk.indices, out_full.indices)
  np.testing.assert_array_equal(z_chunk, z_full)
  chex.assert_trees_all_equal(out_chunk.metrics, out_full.metrics)


def test_low_dimensional_lookup_shapes_roundtrip_and_gradient():
  quantizer = VectorQuantizer(codebook_size=16, dim=12, lookup_dim=4)
  z = jax.random.normal(jax.random.key(0), (2, 3, 3, 12))
  variables = nn.unbox(jax.jit(quantizer.init)(jax.random.key(1), z))
  params = variables["params"]
  chex.assert_shape(params["codebook"], (16, 4))
  chex.assert_shape(params["project_in"]["kernel"], (12, 4))
  chex.assert_shape(params["project_out"]["kernel"], (4, 12))
  z_q, out = jax.jit(quantizer.apply)(variables, z)
  chex.assert_shape(z_q, z.shape)
  chex.assert_shape(out.indices, (2, 3, 3))
  codes = jax.jit(lambda v, i: quantizer.apply(v, i, method=quantizer.codes_from_indices))(variables, out.indices)
  chex.assert_trees_all_close(codes, z_q, atol=1e-5)
  # Straight-through in the 4-dim space: d z_q / d z = W_in W_out, so the pulled-back cotangent is c W_outᵀ W_inᵀ.
  cotangent = jax.random.normal(jax.random.key(2), z.shape)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(quantizer.apply(variables, z)[0] * cotangent)))(z)
  w_in, w_out = params["project_in"]["kernel"], params["project_out"]["kernel"]
  chex.assert_trees_all_close(grad, cotangent @ w_out.T @ w_in.T, atol=1e-5)


def _ema_variables(codebook):
  return {"quantizer_stats": {"codebook": codebook, "cluster_size": jnp.ones(codebook.shape[:1]),
                              "embed_sum": codebook}}


def test_ema_update_matches_closed_form_and_moves_codes_to_cluster_means():
  decay, epsilon = 0.5, 1e-5
  codebook = jnp.array([[0.0, 0.0], [3.0, 3.0], [-3.0, 3.0], [9.0, -9.0]])
  z = jnp.array([[[0.4, -0.2], [0.6, 0.4], [2.0, 3.5], [3.2, 2.0], [2.9, 2.6], [-2.5, 3.1]]])
  quantizer = VectorQuantizer(codebook_size=4, dim=2, ema_decay=decay, epsilon=epsilon)
  variables = jax.eval_shape(quantizer.init, jax.random.key(0), z)
  assert "params" not in variables and set(variables["quantizer_stats"]) == {"codebook", "cluster_size", "embed_sum"}
  apply = jax.jit(quantizer.apply, static_argnames=("train", "mutable"))
  apply(_ema_variables(codebook), z, train=True)  # read-only state: no update, no error
  _, frozen = apply(_ema_variables(codebook), z, train=False, mutable=("quantizer_stats",))
  chex.assert_trees_all_equal(frozen["quantizer_stats"], _ema_variables(codebook)["quantizer_stats"])
  (z_q, out), state = apply(_ema_variables(codebook), z, train=True, mutable=("quantizer_stats",))
  np.testing.assert_array_equal(out.indices, [[0, 0, 1, 1, 1, 2]])
  # Only β·commitment: the EMA codebook has no loss term.
  assert "codebook_loss" not in out.metrics
  np.testing.assert_allclose(out.loss, 0.25 * np.mean((np.asarray(z) - np.asarray(z_q)) ** 2), rtol=1e-6)
  chex.assert_trees_all_close(z_q, codebook[out.indices], atol=1e-6)  # looked up before the update
  points, codes = np.asarray(z[0]), np.asarray(codebook)
  counts = np.array([2.0, 3.0, 1.0, 0.0])
  sums = np.stack([points[:2].sum(0), points[2:5].sum(0), points[5], np.zeros(2)])
  cluster_size = decay * 1.0 + (1 - decay) * counts
  embed_sum = decay * codes + (1 - decay) * sums
  total = cluster_size.sum()
  smoothed = (cluster_size + epsilon) / (total + 4 * epsilon) * total
  stats = state["quantizer_stats"]
  np.testing.assert_allclose(stats["cluster_size"], cluster_size, rtol=1e-6)
  np.testing.assert_allclose(stats["embed_sum"], embed_sum, rtol=1e-6)
  np.testing.assert_allclose(laplace_smoothed(jnp.asarray(cluster_size), epsilon), smoothed, rtol=1e-6)
  np.testing.assert_allclose(stats["codebook"], embed_sum / smoothed[:, None], rtol=1e-5)
  means = sums[:3] / counts[:3, None]
  assert np.all(np.linalg.norm(stats["codebook"][:3] - means, axis=-1) < np.linalg.norm(codes[:3] - means, axis=-1))
  np.testing.assert_allclose(stats["codebook"][3], codes[3], rtol=1e-4)  # unused: stays (up to smoothing)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_dead_codes_restart_to_batch_vectors_after_window_not_before(ema_decay):
  window = 3
  codebook = jnp.array([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, 50.0]])
  quantizer = VectorQuantizer(codebook_size=4, dim=2, ema_decay=ema_decay, restart_after_steps=window)
  z = jnp.array([[0.1, 0.0], [0.9, 1.2], [0.2, -0.1], [1.1, 0.8], [0.0, 0.3], [0.7, 0.9]])
  if ema_decay:
    variables = _ema_variables(codebook)
  else:
    variables = {"params": {"codebook": codebook}, "quantizer_stats": {"codebook_offset": jnp.zeros((4, 2))}}
  variables["quantizer_stats"] |= {"idle_steps": jnp.zeros(4, jnp.int32), "step": jnp.zeros((), jnp.int32)}
  step = jax.jit(lambda v: quantizer.apply(v, z, train=True, mutable=["quantizer_stats"]))
  codes = lambda v: quantizer.apply(v, method=quantizer.codes)
  for expected_idle in (1, 2):
    (_, out), state = step(variables)
    variables = {**variables, **state}
    assert out.metrics["dead_codes"] == 0
    np.testing.assert_array_equal(variables["quantizer_stats"]["idle_steps"], [0, 0, expected_idle, expected_idle])
    chex.assert_trees_all_close(codes(variables)[2:], codebook[2:], rtol=1e-3)  # still waiting: not restarted
  (_, out), state = step(variables)
  variables = {**variables, **state}
  assert out.metrics["dead_codes"] == 2
  stats = variables["quantizer_stats"]
  np.testing.assert_array_equal(stats["idle_steps"], [0, 0, 0, 0])
  assert int(stats["step"]) == 3
  restarted = np.asarray(codes(variables)[2:])
  distances = np.abs(restarted[:, None, :] - np.asarray(z)[None]).max(-1)
  assert np.all(distances.min(-1) < 1e-5), restarted  # each restarted code is one of the batch vectors
  assert np.argmin(distances[0]) != np.argmin(distances[1])  # 6 vectors ≥ 4 codes: drawn without replacement
  if ema_decay:
    np.testing.assert_allclose(stats["cluster_size"][2:], 1.0)
    np.testing.assert_allclose(stats["embed_sum"][2:], restarted, rtol=1e-6)
  else:
    chex.assert_trees_all_close(codes(variables)[:2], codebook[:2])  # live codes untouched


def test_fewer_vectors_than_dead_codes_restart_as_many_codes_each_on_its_own_vector():
  """2 vectors, 6 dead codes: 2 restart, on distinct vectors (codes sharing one would tie forever); the other 4
  keep their places and their idle counts, and restart in later steps."""
  codebook = jnp.concatenate([jnp.zeros((2, 2)), 100.0 + jnp.arange(12.0).reshape(6, 2)])
  quantizer = VectorQuantizer(codebook_size=8, dim=2, restart_after_steps=1)
  z = jnp.array([[0.1, 0.0], [-0.2, 0.3]])  # both nearest to code 0
  variables = {"params": {"codebook": codebook},
               "quantizer_stats": {"codebook_offset": jnp.zeros((8, 2)), "idle_steps": jnp.zeros(8, jnp.int32),
                                   "step": jnp.zeros((), jnp.int32)}}
  step = jax.jit(lambda v: quantizer.apply(v, z, train=True, mutable=["quantizer_stats"]))
  codes = lambda v: np.asarray(quantizer.apply(v, method=quantizer.codes))
  restarted_so_far = set()
  for _ in range(3):
    (_, out), state = step(variables)
    before, variables = codes(variables), {**variables, **state}
    assert out.metrics["dead_codes"] == 8 - np.unique(np.asarray(out.indices)).size  # every unused code is due
    moved = np.flatnonzero(np.abs(codes(variables) - before).max(-1) > 0)
    assert len(moved) == 2
    on = np.abs(codes(variables)[moved][:, None] - np.asarray(z)[None]).max(-1).argmin(-1)
    np.testing.assert_allclose(codes(variables)[moved], np.asarray(z)[on], atol=1e-4)
    assert on[0] != on[1]
    idle = np.asarray(variables["quantizer_stats"]["idle_steps"])
    used = np.unique(np.asarray(out.indices))
    assert np.all(idle[moved] == 0) and np.all(idle[used] == 0)
    waiting = np.setdiff1d(np.arange(8), np.union1d(moved, used))
    assert len(waiting) == 6 - len(used) and np.all(idle[waiting] >= 1)
    np.testing.assert_array_equal(codes(variables)[waiting], before[waiting])
    restarted_so_far |= set(moved.tolist())
  assert len(restarted_so_far) >= 4  # later steps reach the codes that waited


def test_codes_whose_usage_share_falls_below_the_threshold_restart_and_rarely_used_ones_above_it_stay():
  codebook = jnp.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [-50.0, 50.0]])
  quantizer = VectorQuantizer(codebook_size=4, dim=2, restart_below_usage=0.5, usage_decay=0.5)
  # Shares per step: codes 0 and 1 get 5/12 each, code 2 gets 1/6 (above 0.5/K = 0.125), code 3 none.
  z = jnp.array([[0.1, 0.0], [0.9, 1.2], [0.2, -0.1], [1.1, 0.8], [0.0, 0.3], [0.7, 0.9], [5.1, 4.9],
                 [0.1, 0.1], [0.9, 0.9], [0.2, 0.0], [1.0, 1.1], [4.9, 5.2]])
  variables = {"params": {"codebook": codebook},
               "quantizer_stats": {"codebook_offset": jnp.zeros((4, 2)), "usage": jnp.full(4, 0.25),
                                   "step": jnp.zeros((), jnp.int32)}}
  step = jax.jit(lambda v: quantizer.apply(v, z, train=True, mutable=["quantizer_stats"]))
  codes = lambda v: np.asarray(quantizer.apply(v, method=quantizer.codes))
  (_, out), state = step(variables)  # code 3's share: 0.25 -> 0.125, not below 0.125 yet
  variables = {**variables, **state}
  assert out.metrics["dead_codes"] == 0
  np.testing.assert_allclose(variables["quantizer_stats"]["usage"], [1 / 3, 1 / 3, 5 / 24, 0.125], rtol=1e-6)
  np.testing.assert_array_equal(codes(variables), codebook)
  (_, out), state = step(variables)  # 0.0625 < 0.125: code 3 restarts to a batch vector, its share to 1/K
  variables = {**variables, **state}
  assert out.metrics["dead_codes"] == 1
  np.testing.assert_allclose(variables["quantizer_stats"]["usage"][2:], [3 / 16, 0.25], rtol=1e-6)
  restarted = codes(variables)
  np.testing.assert_array_equal(restarted[:3], codebook[:3])  # code 2, used rarely but above the threshold, stays
  assert np.abs(restarted[3] - np.asarray(z)).max(-1).min() < 1e-5


def test_sharded_batch_gives_same_indices_metrics_and_state_as_one_device():
  devices = np.array(jax.devices())
  assert len(devices) == 8
  batch_sharding = NamedSharding(Mesh(devices, ("data",)), P("data"))
  quantizer = VectorQuantizer(codebook_size=64, dim=8, lookup_dim=4, chunk_size=16, ema_decay=0.9,
                              restart_after_steps=1)
  z = jax.random.normal(jax.random.key(0), (8, 4, 4, 8))
  variables = nn.unbox(jax.jit(quantizer.init)(jax.random.key(1), z))
  step = jax.jit(lambda v, z: quantizer.apply(v, z, train=True, mutable=["quantizer_stats"]))
  (z_q, out), state = step(variables, z)
  (z_q_sharded, out_sharded), state_sharded = step(variables, jax.device_put(z, batch_sharding))
  assert len(out_sharded.indices.sharding.device_set) == 8
  np.testing.assert_array_equal(out_sharded.indices, out.indices)
  chex.assert_trees_all_close(z_q_sharded, z_q, atol=1e-6)
  chex.assert_trees_all_close(out_sharded.metrics, out.metrics, rtol=1e-5)
  chex.assert_trees_all_close(state_sharded, state, rtol=1e-5, atol=1e-6)
  assert out.metrics["dead_codes"] > 0  # restart path exercised


def test_kmeans_finds_well_separated_cluster_means():
  centres = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]], np.float32)
  offsets = np.random.default_rng(0).normal(scale=0.3, size=(3, 20, 2)).astype(np.float32)
  vectors = jnp.asarray((centres[:, None] + offsets).reshape(60, 2))
  found = np.asarray(kmeans(vectors, vectors[jnp.array([0, 20, 40])], 3, spherical=False))
  np.testing.assert_allclose(found, centres + offsets.mean(1), atol=1e-5)
  # A start no vector is nearest to keeps its place instead of becoming NaN.
  starts = jnp.concatenate([vectors[jnp.array([0, 20, 40])], jnp.array([[100.0, 100.0]])])
  np.testing.assert_allclose(kmeans(vectors, starts, 2, spherical=False)[3], [100.0, 100.0])
  spherical = np.asarray(kmeans(vectors, vectors[jnp.array([0, 20, 40])], 3, spherical=True))
  np.testing.assert_allclose(np.linalg.norm(spherical, axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_kmeans_initialisation_replaces_the_codebook_once_from_the_first_batch(ema_decay):
  """Step 1: every code becomes a k-means centroid of the batch (all codes used on those vectors); step 2 onward
  the codebook only changes as training (EMA / restarts) would change it."""
  quantizer = VectorQuantizer(codebook_size=16, dim=4, l2_normalize=True, ema_decay=ema_decay,
                              kmeans_init_iterations=4)
  z = jax.random.normal(jax.random.key(0), (4, 8, 8, 4))
  variables = nn.unbox(quantizer.init(jax.random.key(1), z))
  step = jax.jit(lambda v: quantizer.apply(v, z, train=True, mutable=["quantizer_stats"]))
  codes = lambda v: np.asarray(quantizer.apply(v, method=quantizer.codes))
  before = codes(variables)
  (_, first), state = step(variables)
  variables = {**variables, **state}
  assert bool(variables["quantizer_stats"]["initialized"])
  initialised = codes(variables)
  assert np.abs(initialised - before).max() > 0.1
  vectors = np.asarray(z).reshape(-1, 4) / np.linalg.norm(np.asarray(z).reshape(-1, 4), axis=-1, keepdims=True)
  assignment = np.argmax(vectors @ initialised.T, axis=-1)
  assert len(np.unique(assignment)) == 16  # centroids of the batch: every code is some vectors' nearest
  (_, second), state = step(variables)
  after = codes({**variables, **state})
  if not ema_decay:  # a gradient codebook is not moved by the forward pass at all
    np.testing.assert_array_equal(after, initialised)
  assert second.metrics["codebook_usage"] == 1.0
  assert second.metrics["commitment"] < 0.7 * first.metrics["commitment"]  # k-means codes fit the batch


def test_entropy_penalty_is_maskgits_sample_minus_codebook_entropy_of_soft_assignments():
  rng = np.random.default_rng(0)
  z, codes = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
  logits = -((z[:, None] - codes[None]) ** 2).sum(-1) / 0.5
  q = np.exp(logits - logits.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  per_vector = np.mean(-(q * np.log(q)).sum(-1))
  average = q.mean(0)
  sample, batch = assignment_entropies(jnp.asarray(z), jnp.asarray(codes), 0.5)
  np.testing.assert_allclose([sample, batch], [per_vector, -(average * np.log(average)).sum()], rtol=1e-5)
  quantizer = VectorQuantizer(codebook_size=5, dim=3, entropy_weight=0.1, entropy_temperature=0.5)
  variables = {"params": {"codebook": jnp.asarray(codes)}}
  _, out = quantizer.apply(variables, jnp.asarray(z))
  plain = VectorQuantizer(codebook_size=5, dim=3).apply(variables, jnp.asarray(z))[1]
  np.testing.assert_allclose(out.loss, plain.loss + 0.1 * (sample - batch), rtol=1e-5)
  assert out.metrics["codebook_entropy"] == pytest.approx(float(batch), rel=1e-5)


def test_linear_codebook_is_fixed_basis_times_learned_matrix_and_one_chosen_code_moves_all():
  quantizer = VectorQuantizer(codebook_size=6, dim=3, linear_codebook=True)
  z = jax.random.normal(jax.random.key(0), (4, 3))
  variables = nn.unbox(quantizer.init(jax.random.key(1), z))
  assert set(variables["params"]) == {"codebook_transform"}
  basis = variables["quantizer_stats"]["codebook_basis"]
  chex.assert_shape(basis, (6, 3))
  np.testing.assert_array_equal(variables["params"]["codebook_transform"], np.eye(3))  # step 0: the plain codes
  transform = jax.random.normal(jax.random.key(2), (3, 3))
  variables = {**variables, "params": {"codebook_transform": transform}}
  codes = quantizer.apply(variables, method=quantizer.codes)
  chex.assert_trees_all_close(codes, basis @ transform, atol=1e-6)  # SimVQ eq. 4: C·W

  # One vector chooses one code; the codebook-loss gradient reaches W, which moves the codes nobody chose too.
  one = z[:1]
  loss = lambda w: quantizer.apply({**variables, "params": {"codebook_transform": w}}, one)[1].metrics["codebook_loss"]
  grad = jax.grad(loss)(transform)
  assert float(jnp.abs(grad).max()) > 0
  moved = basis @ (transform - 0.1 * grad) - codes
  chosen = int(quantizer.apply(variables, one)[1].indices[0])
  others = np.delete(np.abs(np.asarray(moved)).max(-1), chosen)
  assert np.all(others > 0), others


def test_linear_codebook_restarts_to_batch_vectors_and_never_changes_its_basis():
  quantizer = VectorQuantizer(codebook_size=4, dim=2, linear_codebook=True, restart_after_steps=1)
  z = jnp.array([[0.1, 0.0], [0.9, 1.2], [0.2, -0.1], [1.1, 0.8], [0.0, 0.3], [0.7, 0.9]])
  variables = nn.unbox(quantizer.init(jax.random.key(0), z))
  basis = variables["quantizer_stats"]["codebook_basis"]
  (_, out), state = quantizer.apply(variables, z, train=True, mutable=["quantizer_stats"])
  variables = {**variables, **state}
  np.testing.assert_array_equal(variables["quantizer_stats"]["codebook_basis"], basis)
  codes = np.asarray(quantizer.apply(variables, method=quantizer.codes))
  restarted = np.unique(np.asarray(out.indices)).size < 4
  assert restarted and out.metrics["dead_codes"] == 4 - np.unique(np.asarray(out.indices)).size
  unused = sorted(set(range(4)) - set(np.asarray(out.indices).tolist()))
  distances = np.abs(codes[unused][:, None, :] - np.asarray(z)[None]).max(-1)
  assert np.all(distances.min(-1) < 1e-5)  # each restarted code sits on a batch vector


def test_linear_codebook_with_an_ema_codebook_is_rejected():
  with pytest.raises(ValueError, match="linear_codebook"):
    VectorQuantizer(codebook_size=8, dim=4, linear_codebook=True, ema_decay=0.9).init(
        jax.random.key(0), jnp.zeros((1, 4)))
