"""The masked transformer: bidirectional, [MASK] hides token values, summed sub-token embeddings, MaskGIT's tied head,
class and text conditions with a null condition for CFG."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.masked import MaskedTransformer

SMALL = dict(grid=(4, 4), embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64, dropout_rate=0.0)
LABELS = jnp.array([0, 2])


def _model(block="llama", vocab_sizes=(16,), **kwargs):
  return MaskedTransformer(vocab_sizes=vocab_sizes, block=block, conditioning="class", num_classes=3,
                           **(SMALL | kwargs))


def _tokens(model, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.stack([rng.integers(0, v, (2, 16)) for v in model.vocab_sizes], -1), jnp.int32)


@pytest.fixture(scope="module", params=["llama", "bert"])
def built(request):
  model = _model(request.param, vocab_sizes=(16, 8))
  tokens = _tokens(model)
  params = nn.unbox(model.init(jax.random.key(0), tokens, jnp.zeros((2, 16), bool), {"label": LABELS}))["params"]
  apply = jax.jit(lambda p, t, m, labels, uncond=None: model.apply({"params": p}, t, m, {"label": labels}, uncond))
  return model, params, tokens, apply


def test_logits_cover_each_sub_token_and_pad_the_smaller_vocabulary(built):
  model, params, tokens, apply = built
  logits = apply(params, tokens, jnp.zeros((2, 16), bool), LABELS)
  assert logits.shape == (2, 16, 2, 16) and logits.dtype == jnp.float32
  assert np.all(np.asarray(logits[..., 1, 8:]) <= -1e8)  # past the second sub-token's 8 codes


def test_masked_positions_ignore_their_tokens_and_attention_is_bidirectional(built):
  model, params, tokens, apply = built
  masked = jnp.zeros((2, 16), bool).at[:, 5].set(True)
  base = apply(params, tokens, masked, LABELS)
  np.testing.assert_array_equal(apply(params, tokens.at[:, 5].set(3), masked, LABELS), base)
  changed = apply(params, tokens.at[:, 15, 0].set((tokens[:, 15, 0] + 1) % 16), masked, LABELS)
  assert not np.allclose(changed[:, 0], base[:, 0])  # the last position reaches the first: no causal mask
  assert not np.allclose(apply(params, tokens, masked.at[:, 0].set(True), LABELS)[:, 1], base[:, 1])


def test_input_embedding_sums_the_sub_token_tables_and_mask_is_each_tables_last_row(built):
  model, params, tokens, _ = built
  masked = jnp.zeros((2, 16), bool).at[:, 3].set(True)
  embedded = model.apply({"params": params}, tokens, masked, method="token_embedding")
  tables = [params[f"token_embedding_{f}"]["embedding"] for f in range(2)]
  expected = tables[0][tokens[..., 0]] + tables[1][tokens[..., 1]]
  expected = expected.at[:, 3].set(tables[0][16] + tables[1][8])
  np.testing.assert_allclose(embedded, expected, rtol=1e-6)


def test_bert_head_is_tied_to_the_token_table_and_sliced_to_the_codebook():
  model = _model("bert")
  tokens = _tokens(model)
  masked = jnp.ones((2, 16), bool)  # every input is [MASK]: code rows reach the logits only through the head
  params = nn.unbox(model.init(jax.random.key(0), tokens, masked, {"label": LABELS}))["params"]
  assert not any(name.startswith("head_") and name != "head_transform" and not name.startswith("head_bias")
                 and name != "head_norm" for name in params)
  apply = lambda p: model.apply({"params": p}, tokens, masked, {"label": LABELS})
  base = apply(params)
  assert base.shape == (2, 16, 1, 16)  # 16 codes, not the 17 rows with [MASK]
  table = params["token_embedding_0"]["embedding"]
  moved = apply(jax.tree.map(lambda x: x, params) | {"token_embedding_0": {"embedding": table.at[7].add(1.0)}})
  differs = np.any(~np.isclose(moved, base, atol=1e-6), axis=(0, 1, 2))
  np.testing.assert_array_equal(differs, np.arange(16) == 7)  # only code 7's logit moved


def test_class_condition_and_null_class(built):
  model, params, tokens, apply = built
  masked = jnp.ones((2, 16), bool)
  first, second = apply(params, tokens, masked, jnp.array([0, 0])), apply(params, tokens, masked, jnp.array([1, 1]))
  assert not np.allclose(first, second)
  null = apply(params, tokens, masked, jnp.array([3, 3]))  # row num_classes is the null class
  np.testing.assert_allclose(apply(params, tokens, masked, LABELS, jnp.array([True, True])), null, rtol=1e-6)


def test_text_prefix_reaches_the_logits_and_padding_is_replaced():
  model = MaskedTransformer(vocab_sizes=(16,), conditioning="text", text_length=5, text_dim=6, **SMALL)
  tokens = jnp.zeros((2, 16, 1), jnp.int32)
  text = jax.random.normal(jax.random.key(1), (2, 5, 6))
  mask = jnp.array([[True] * 3 + [False] * 2] * 2)
  masked = jnp.ones((2, 16), bool)
  params = nn.unbox(model.init(jax.random.key(0), tokens, masked, {"text": text, "text_mask": mask}))
  apply = lambda t, m: model.apply(params, tokens, masked, {"text": t, "text_mask": m})
  base = apply(text, mask)
  np.testing.assert_allclose(apply(text.at[:, 4].set(9.0), mask), base, rtol=1e-6)  # padding is not read
  assert not np.allclose(apply(text.at[:, 0].set(9.0), mask), base)


def test_bad_configs_and_shapes_name_the_fix():
  with pytest.raises(ConfigError, match="block='gpt'"):
    _model("gpt").validate()
  with pytest.raises(ConfigError, match="num_classes"):
    MaskedTransformer(vocab_sizes=(16,), conditioning="class", **SMALL).validate()
  model = _model()
  with pytest.raises(ConfigError, match=r"must be \[B, 16, 1\]"):
    model.init(jax.random.key(0), jnp.zeros((2, 16), jnp.int32), jnp.zeros((2, 16), bool), {"label": LABELS})


@pytest.mark.slow  # two more compiles of each block kind
@pytest.mark.parametrize("block", ["llama", "bert"])
def test_remat_changes_neither_logits_nor_gradients(block):
  model = _model(block)
  tokens = _tokens(model)
  masked = jnp.zeros((2, 16), bool).at[:, ::3].set(True)
  params = nn.unbox(model.init(jax.random.key(0), tokens, masked, {"label": LABELS}))["params"]
  loss = lambda m, p: jnp.mean(m.apply({"params": p}, tokens, masked, {"label": LABELS}) ** 2)
  rematted = model.clone(remat_policy="full")
  np.testing.assert_allclose(loss(rematted, params), loss(model, params), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.grad(lambda p: loss(rematted, p))(params), jax.grad(lambda p: loss(model, p))(params))
