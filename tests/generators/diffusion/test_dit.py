"""DiT: adaLN-Zero makes blocks the identity and the model output zero at init (and perturbed params do not),
closed forms of the sin-cos position embedding and the timestep features, patchify round trips and output
channels, how class / text / null conditions and self-conditioning reach the output, CrossAttention against a
hand einsum, the paper's DiT-XL/2 parameter count, logical names on every parameter, and validation errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import perturb_params
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import dit
from tokgen_jax.generators.diffusion.dit import DIT_SIZES, DiT, DiTBlock, count_parameters
from tokgen_jax.nn.attention import CrossAttention

LATENT = (8, 8, 4)
BATCH, TEXT_LENGTH, TEXT_DIM, CLASSES = 2, 5, 12, 10
TINY = dict(input_shape=LATENT, patch_size=2, hidden_size=32, depth=2, num_heads=2)


def _inputs(seed=0):
  x = jax.random.normal(jax.random.key(seed), (BATCH,) + LATENT)
  return x, jnp.array([3, 917], jnp.int32)


def _text(seed=1):
  text = jax.random.normal(jax.random.key(seed), (BATCH, TEXT_LENGTH, TEXT_DIM))
  mask = jnp.array([[True] * 3 + [False] * 2, [True] * 5])
  return {"text": text, "text_mask": mask}


class _Model:
  """A tiny DiT, its params at init and perturbed, and a jitted apply."""

  def __init__(self, **fields):
    self.model = DiT(**TINY, **fields)
    x, t = _inputs()
    self.cond = dit.example_arguments(self.model, BATCH)[2]
    self.params = nn.unbox(jax.jit(self.model.init)(jax.random.key(0), x, t, self.cond)["params"])
    self.perturbed = perturb_params(self.params)
    self.apply = jax.jit(lambda p, x, t, cond, unconditional=None, self_cond=None: self.model.apply(
        {"params": p}, x, t, cond, unconditional=unconditional, self_cond=self_cond))


@pytest.fixture(scope="module")
def class_model():
  return _Model(conditioning="class", num_classes=CLASSES)


@pytest.fixture(scope="module")
def text_model():
  return _Model(conditioning="text", num_classes=0, text_length=TEXT_LENGTH, text_dim=TEXT_DIM)


# ------------------------------------------------------------------------------------------------ adaLN-Zero


def test_the_model_outputs_zeros_at_init_and_not_once_perturbed(class_model):
  x, t = _inputs()
  cond = {"label": jnp.array([1, 7])}
  out = class_model.apply(class_model.params, x, t, cond)
  assert out.shape == (BATCH,) + LATENT[:2] + (2 * LATENT[2],) and out.dtype == jnp.float32
  assert np.all(np.asarray(out) == 0)
  perturbed = np.asarray(class_model.apply(class_model.perturbed, x, t, cond))
  assert np.all(np.isfinite(perturbed)) and np.abs(perturbed).mean() > 1e-3


@pytest.mark.parametrize("with_text", (False, True))
def test_a_block_is_the_identity_at_init_and_not_once_perturbed(with_text):
  rng = np.random.default_rng(0)
  x, c = jnp.asarray(rng.normal(size=(BATCH, 16, 32)), jnp.float32), jnp.asarray(rng.normal(size=(BATCH, 32)))
  extra = (jnp.asarray(rng.normal(size=(BATCH, 3, 32)), jnp.float32), jnp.array([[1, 1, 0], [1, 0, 0]], bool))
  args = (x, c) + (extra if with_text else ())
  block = DiTBlock(num_heads=2)
  params = nn.unbox(block.init(jax.random.key(0), *args)["params"])
  assert ("cross_attention" in params) == with_text
  np.testing.assert_array_equal(block.apply({"params": params}, *args), x)
  moved = block.apply({"params": perturb_params(params)}, *args)
  assert np.abs(np.asarray(moved - x)).max() > 1e-3


# -------------------------------------------------------------------------------------------- closed forms


def test_position_embedding_is_mae_sincos_and_not_a_parameter(class_model):
  dim, grid_h, grid_w = 8, 2, 3
  table = dit.sincos_2d_position_embedding(dim, grid_h, grid_w)
  omega = np.array([1.0, 1.0 / 100.0])  # 1/10000^(2i/d') for d' = dim / 2 = 4, i = 0, 1
  for i in range(grid_h):
    for j in range(grid_w):
      # DiT/MAE order: the column's sin, cos, then the row's sin, cos.
      expected = np.concatenate([np.sin(j * omega), np.cos(j * omega), np.sin(i * omega), np.cos(i * omega)])
      np.testing.assert_allclose(table[i * grid_w + j], expected, rtol=1e-6, atol=1e-7)
  names = {"/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(class_model.params)[0]}
  assert not any("pos" in name for name in names)
  assert all(a.shape != (class_model.model.num_patches, 32) for a in jax.tree.leaves(class_model.params))


def test_timestep_features_are_cos_then_sin_of_geometric_frequencies():
  features = np.asarray(dit.timestep_features(jnp.array([0, 3.0]), dim=4, max_period=10000.0))
  freqs = np.array([1.0, 0.01])  # 10000^(-i/half), half = 2
  np.testing.assert_allclose(features[0], [1, 1, 0, 0], atol=1e-7)
  np.testing.assert_allclose(features[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]), rtol=1e-6)
  assert dit.timestep_features(jnp.arange(2), dim=256).shape == (2, 256)


def test_patchify_round_trips_in_dit_order():
  x = jax.random.normal(jax.random.key(0), (BATCH,) + LATENT)
  tokens = dit.patchify(x, 2)
  assert tokens.shape == (BATCH, 16, 16)
  np.testing.assert_array_equal(tokens[:, 5], x[:, 2:4, 2:4, :].reshape(BATCH, -1))  # patch (1, 1), (p, q, c) order
  np.testing.assert_array_equal(dit.unpatchify(tokens, 2, *LATENT[:2]), x)


def test_output_channels_follow_learn_sigma():
  for learn_sigma, channels in ((True, 8), (False, 4)):
    model = DiT(**TINY, conditioning="none", learn_sigma=learn_sigma)
    assert model.out_channels == channels and model.num_patches == 16
    x, t = _inputs()
    out = jax.eval_shape(lambda x, t, m=model: m.init_with_output(jax.random.key(0), x, t, {})[0], x, t)
    assert out.shape == (BATCH,) + LATENT[:2] + (channels,)


# ------------------------------------------------------------------------------------------------ conditions


def test_unconditional_rows_equal_the_null_class(class_model):
  x, t = _inputs()
  labels = jnp.array([1, 7])
  dropped = class_model.apply(class_model.perturbed, x, t, {"label": labels}, jnp.array([True, False]))
  null = class_model.apply(class_model.perturbed, x, t, {"label": jnp.array([CLASSES, 7])})
  kept = class_model.apply(class_model.perturbed, x, t, {"label": labels})
  np.testing.assert_allclose(dropped, null, atol=1e-6)
  assert np.abs(np.asarray(dropped[0] - kept[0])).max() > 1e-4
  np.testing.assert_allclose(dropped[1], kept[1], atol=1e-6)


def test_text_mask_hides_padding_and_unconditional_reads_the_null_text(text_model):
  x, t = _inputs()
  cond = _text()
  run = lambda cond, unconditional=None: np.asarray(text_model.apply(text_model.perturbed, x, t, cond,
                                                                       unconditional))
  base = run(cond)
  padding_changed = dict(cond, text=cond["text"].at[0, 3:].add(5.0))  # row 0's positions 3, 4 are masked out
  np.testing.assert_allclose(run(padding_changed), base, atol=1e-5)
  visible_changed = dict(cond, text=cond["text"].at[0, 1].add(5.0))
  assert np.abs(run(visible_changed)[0] - base[0]).max() > 1e-4
  # Unconditional rows read the null text whatever the text and mask say.
  dropped = run(cond, jnp.array([True, True]))
  other = run({"text": -cond["text"], "text_mask": jnp.zeros_like(cond["text_mask"])}, jnp.array([True, True]))
  np.testing.assert_allclose(dropped, other, atol=1e-5)
  assert np.abs(dropped - base).max() > 1e-4


def test_self_condition_doubles_the_input_channels_and_reaches_the_output():
  model = _Model(conditioning="none", self_condition=True)
  assert model.params["patch_embed"]["kernel"].shape == (2, 2, 2 * LATENT[2], 32)
  x, t = _inputs()
  without = model.apply(model.perturbed, x, t, {})
  zeros = model.apply(model.perturbed, x, t, {}, None, jnp.zeros_like(x))
  estimate = model.apply(model.perturbed, x, t, {}, None, x)
  np.testing.assert_allclose(without, zeros, atol=1e-6)
  assert np.abs(np.asarray(estimate - zeros)).max() > 1e-4


# ---------------------------------------------------------------------------------------------- cross-attention


def test_cross_attention_ignores_masked_keys_and_matches_a_hand_einsum():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(BATCH, 4, 8)), jnp.float32)
  context = jnp.asarray(rng.normal(size=(BATCH, 3, 6)), jnp.float32)
  mask = jnp.array([[True, True, False], [True, False, False]])
  layer = CrossAttention(num_heads=1, use_bias=True)
  params = perturb_params(nn.unbox(layer.init(jax.random.key(0), x, context, mask)["params"]), scale=0.1)
  out = np.asarray(layer.apply({"params": params}, x, context, mask))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  dense = lambda name, h: np.einsum("bld,dhk->blhk", h, p[name]["kernel"])[:, :, 0] + p[name]["bias"][0]
  q, k, v = dense("query", np.asarray(x)), dense("key", np.asarray(context)), dense("value", np.asarray(context))
  logits = np.where(np.asarray(mask)[:, None], np.einsum("bqd,bsd->bqs", q, k) / np.sqrt(8), -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  attended = np.einsum("bqs,bsd->bqd", weights / weights.sum(-1, keepdims=True), v)
  expected = np.einsum("bqd,de->bqe", attended, p["out"]["kernel"][0]) + p["out"]["bias"]
  np.testing.assert_allclose(out, expected, atol=1e-5)
  changed = context.at[0, 2].add(3.0).at[1, 1:].add(3.0)  # only masked-out keys change
  np.testing.assert_allclose(layer.apply({"params": params}, x, changed, mask), out, atol=1e-6)
  assert np.abs(np.asarray(layer.apply({"params": params}, x, changed)) - out).max() > 1e-4


# ---------------------------------------------------------------------------------------------- size and names


def test_dit_xl2_has_the_papers_675m_parameters():
  depth, hidden, heads = DIT_SIZES["XL"]
  count = count_parameters(DiT((32, 32, 4), 2, hidden, depth, heads, num_classes=1000, learn_sigma=True))
  assert abs(count - 675e6) / 675e6 < 0.01
  # The reference's 675,129,632 also counts its frozen 256 x 1152 position embedding.
  assert count + 256 * hidden == 675_129_632


def test_every_parameter_has_one_logical_name_per_dimension(text_model):
  x, t = _inputs()
  boxed = jax.eval_shape(text_model.model.init, jax.random.key(0), x, t, text_model.cond)["params"]
  boxes = jax.tree.leaves(boxed, is_leaf=lambda a: isinstance(a, nn.Partitioned))
  assert boxes and all(isinstance(b, nn.Partitioned) and len(b.names) == len(b.value.shape) for b in boxes)


def test_remat_and_bf16_keep_the_interface(class_model):
  x, t = _inputs()
  cond = {"label": jnp.array([1, 7])}
  remat = dataclasses.replace(class_model.model, remat=True)
  out = remat.apply({"params": class_model.perturbed}, x, t, cond)
  np.testing.assert_allclose(out, class_model.apply(class_model.perturbed, x, t, cond), atol=1e-5)
  bf16 = dataclasses.replace(class_model.model, dtype=jnp.bfloat16)
  assert bf16.apply({"params": class_model.perturbed}, x, t, cond).dtype == jnp.float32


@pytest.mark.parametrize("fields, match", [
    (dict(patch_size=3), "config.model.patch_size=3"),
    (dict(num_heads=3), "config.model.num_heads=3"),
    (dict(hidden_size=30, num_heads=2), "config.model.hidden_size=30"),
    (dict(conditioning="audio"), "config.model.conditioning='audio'"),
    (dict(conditioning="class", num_classes=0), "config.model.num_classes"),
    (dict(conditioning="text", text_length=0, text_dim=8), "config.model.text_length"),
])
def test_validate_names_the_field(fields, match):
  with pytest.raises(ConfigError, match=match.replace("(", r"\(")):
    DiT(**dict(TINY, **fields)).validate()


def test_bad_inputs_are_named(class_model):
  x, t = _inputs()
  with pytest.raises(ConfigError, match="cond\\['label'\\]"):
    class_model.model.apply({"params": class_model.params}, x, t, {})
  with pytest.raises(ConfigError, match="x \\(2, 4, 4, 4\\)"):
    class_model.model.apply({"params": class_model.params}, x[:, :4, :4], t, {"label": t})
