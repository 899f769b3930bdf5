"""ARTransformer: shapes, causality, cached decode == full forward, conditioning, layers, axes, errors."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.ar import INVALID_LOGIT, ARTransformer

BATCH = 2
SMALL = dict(embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48)
# Two token layers with different grids and vocabularies (a coarse 2x2 layer of 16 codes, a fine 3x3 of 8).
LAYERED = dict(vocab_sizes=(16, 8), layer_grids=((2, 2), (3, 3)), ordering="spiral_in")


def _model(conditioning: str, **overrides) -> ARTransformer:
  kwargs = dict(SMALL, **LAYERED, conditioning=conditioning, num_classes=5, text_length=3, text_dim=6)
  kwargs.update(overrides)
  return ARTransformer(**kwargs)


def _cond(conditioning: str, rng: np.random.Generator) -> dict:
  if conditioning == "class":
    return {"label": jnp.asarray([1, 3])}
  if conditioning == "text":
    return {"text": jnp.asarray(rng.normal(size=(BATCH, 3, 6)), jnp.float32),
            "text_mask": jnp.asarray([[1, 1, 0], [1, 0, 0]], bool)}
  return {}


def _tokens(model: ARTransformer, rng: np.random.Generator) -> jnp.ndarray:
  columns = [rng.integers(0, v, size=(BATCH, n)) for v, n in zip(model.vocab_sizes, model.layer_lengths)]
  return jnp.asarray(np.concatenate(columns, axis=1), jnp.int32)


@pytest.fixture(scope="module", params=["class", "text", "none"])
def setup(request):
  rng = np.random.default_rng(0)
  model = _model(request.param)
  cond, tokens = _cond(request.param, rng), _tokens(model, rng)
  variables = jax.jit(lambda key: model.init({"params": key, "dropout": key}, tokens, cond))(jax.random.key(0))
  params = nn.unbox(variables["params"])
  forward = jax.jit(lambda p, t, c, u=None: model.apply({"params": p}, t, c, u))
  return model, params, cond, tokens, forward


def test_logits_shape_and_padding_of_the_smaller_vocabulary(setup):
  model, params, cond, tokens, forward = setup
  logits = forward(params, tokens, cond)
  assert logits.shape == (BATCH, model.num_tokens, 16) and logits.dtype == jnp.float32
  fine = logits[:, model.layer_lengths[0]:]
  np.testing.assert_array_equal(fine[..., 8:], INVALID_LOGIT)
  assert np.all(np.asarray(fine[..., :8]) > INVALID_LOGIT / 2)


def test_logits_are_causal_in_the_tokens(setup):
  """The logits of x_i (read before x_i is fed) change only when an earlier token changes."""
  model, params, cond, tokens, forward = setup
  base = np.asarray(forward(params, tokens, cond))
  for j in (0, 4, model.num_tokens - 2):
    changed = tokens.at[:, j].set((tokens[:, j] + 1) % 8)
    out = np.asarray(forward(params, changed, cond))
    np.testing.assert_array_equal(out[:, :j + 1], base[:, :j + 1])
    assert np.abs(out[:, j + 1:] - base[:, j + 1:]).max() > 1e-6


def test_cached_prefill_and_decode_equal_the_full_forward(setup):
  model, params, cond, tokens, forward = setup
  full = np.asarray(forward(params, tokens, cond))

  @jax.jit
  def cached(params, tokens, cond):
    logits, cache = model.apply({"params": params}, cond, None, model.init_cache(BATCH), method="prefill")
    steps = [logits]
    for index in range(model.num_tokens - 1):
      logits, cache = model.apply({"params": params}, tokens[:, index], index, cache, method="decode")
      steps.append(logits)
    return jnp.stack(steps, axis=1)

  np.testing.assert_allclose(np.asarray(cached(params, tokens, cond)), full, atol=2e-5, rtol=1e-5)


def test_decoding_layout_gives_the_same_logits_with_out_in_kernels(setup):
  """`for_decoding`: unrolled layers and out_in kernels (every projection, the text projection too) compute the
  same forward as the trained layout (the sampler's greedy tests cover the cached decode)."""
  model, params, cond, tokens, forward = setup
  decoding, converted = model.for_decoding(params, cond, kernel_layout="out_in")
  assert not decoding.scan_layers and decoding.kernel_layout == "out_in"
  kernels = {jax.tree_util.keystr(path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(converted)
             if jax.tree_util.keystr(path).endswith("['kernel']")}
  assert kernels["['stack']['layers_0']['attention']['query']['kernel']"] == (4, 8, 32)  # [heads, head_dim, E]
  assert kernels["['stack']['layers_1']['attention']['out']['kernel']"] == (32, 4, 8)
  assert kernels["['head_0']['kernel']"] == (16, 32)
  if model.conditioning == "text":
    assert kernels["['text_projection']['kernel']"] == (32, 6)
  full = decoding.apply({"params": converted}, tokens, cond)
  np.testing.assert_allclose(np.asarray(full), np.asarray(forward(params, tokens, cond)), atol=1e-5, rtol=1e-5)
  assert decoding.for_decoding(converted, cond, kernel_layout="out_in")[1] is converted  # already in that layout
  back_model, back = decoding.for_decoding(converted, cond)  # the default, in_out: the trained kernels again
  assert back_model.kernel_layout == "in_out"
  chex.assert_trees_all_equal(back, model.unrolled(params)[1])


def test_default_decoding_layout_keeps_the_trained_kernels(setup):
  model, params, cond, _, _ = setup
  decoding, unrolled = model.for_decoding(params, cond)
  assert not decoding.scan_layers and decoding.kernel_layout == "in_out"
  chex.assert_trees_all_equal(unrolled, model.unrolled(params)[1])


def test_unconditional_rows_ignore_the_condition(setup):
  model, params, cond, tokens, forward = setup
  if model.conditioning == "none":
    pytest.skip("no condition to ignore")
  other = {"label": jnp.asarray([4, 0])} if model.conditioning == "class" else {
      "text": -cond["text"], "text_mask": jnp.ones_like(cond["text_mask"])}
  uncond = jnp.ones((BATCH,), bool)
  np.testing.assert_array_equal(np.asarray(forward(params, tokens, cond, uncond)),
                                np.asarray(forward(params, tokens, other, uncond)))
  assert np.abs(np.asarray(forward(params, tokens, cond)) - np.asarray(forward(params, tokens, other))).max() > 1e-5


def test_text_at_padded_positions_is_ignored():
  rng = np.random.default_rng(1)
  model = _model("text")
  cond, tokens = _cond("text", rng), _tokens(model, rng)
  params = model.init({"params": jax.random.key(0)}, tokens, cond)["params"]
  moved = dict(cond, text=jnp.where(cond["text_mask"][..., None], cond["text"], 100.0))
  np.testing.assert_array_equal(np.asarray(model.apply({"params": params}, tokens, cond)),
                                np.asarray(model.apply({"params": params}, tokens, moved)))


def test_condition_dropout_only_in_training():
  rng = np.random.default_rng(2)
  model = _model("class", cond_dropout_rate=0.5)
  cond, tokens = {"label": jnp.arange(64) % 5}, jnp.zeros((64, model.num_tokens), jnp.int32)
  params = model.init({"params": jax.random.key(0)}, tokens, cond)["params"]
  null = model.apply({"params": params}, tokens, cond, jnp.ones((64,), bool))[:, 0]
  train = model.apply({"params": params}, tokens, cond, train=True, rngs={"dropout": jax.random.key(3)})[:, 0]
  dropped = np.all(np.isclose(np.asarray(train), np.asarray(null), atol=1e-6), axis=-1)
  assert 16 <= dropped.sum() <= 48  # ~Binomial(64, 0.5)
  del rng
  evaluation = model.apply({"params": params}, tokens, cond)[:, 0]
  assert not np.any(np.all(np.isclose(np.asarray(evaluation), np.asarray(null), atol=1e-6), axis=-1))


def test_rope_positions_follow_the_ordering_with_the_prefix_at_zero():
  model = _model("text")
  positions = model.rope_positions()
  assert positions.shape == (model.cache_length, 2)
  np.testing.assert_array_equal(positions[:3], 0)
  # spiral_in on 2x2 visits (0,0) (1,0) (1,1) (0,1); then the 3x3 layer starts at (0,0).
  np.testing.assert_array_equal(positions[3:8], [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]])
  np.testing.assert_array_equal(model.token_layer_ids(), [0] * 4 + [1] * 9)


def test_parameters_carry_logical_axes():
  model = _model("class")
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, model.num_tokens), jnp.int32),
                                            {"label": jnp.zeros((1,), jnp.int32)}))["params"]
  specs = nn.get_partition_spec(boxed)
  leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert leaves and all(isinstance(s, jax.sharding.PartitionSpec) for s in leaves)
  assert specs["token_embedding_0"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  assert specs["head_1"]["kernel"] == jax.sharding.PartitionSpec("embed", "vocab")


def test_bfloat16_compute_stays_close_to_float32():
  rng = np.random.default_rng(4)
  f32, bf16 = _model("class"), _model("class", dtype=jnp.bfloat16)
  cond, tokens = _cond("class", rng), _tokens(f32, rng)
  params = f32.init({"params": jax.random.key(0)}, tokens, cond)["params"]
  reference = np.asarray(f32.apply({"params": params}, tokens, cond))[..., :8]
  low = np.asarray(bf16.apply({"params": params}, tokens, cond))[..., :8]
  assert low.dtype == np.float32
  assert np.abs(low - reference).max() < 0.1 * np.abs(reference).max()


@pytest.mark.parametrize("overrides, match", [
    (dict(vocab_sizes=(16,)), "one entry per token layer"),
    (dict(layer_grids=((2, 2), (2, 2, 2))), "mix grid ranks"),
    (dict(conditioning="sound"), "not one of"),
    (dict(conditioning="class", num_classes=0), "num_classes"),
    (dict(conditioning="text", text_length=0), "text_length"),
    (dict(rope="alibi"), "rope="),
    (dict(attention_implementation="flash"), "attention_implementation=.flash. is not one of"),
])
def test_bad_configs_are_named(overrides, match):
  model = _model(overrides.pop("conditioning", "class"), **overrides)
  with pytest.raises(ConfigError, match=match):
    model.validate()


def test_wrong_sequence_length_is_named():
  model = _model("none")
  with pytest.raises(ConfigError, match=r"must be \[B, 13\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32), {})
