"""W.A.L.T.: windowed attention equals full attention under `masks.Windowed` (spatial and spatiotemporal), the
block is the identity and the model outputs zero at init, spatial blocks keep frames apart, images (T = 1), output
channels, frame conditioning, AdaLN-LoRA shapes, text / class / null conditions, self-conditioning, the 214M
configuration, logical names on every parameter, and validation errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import perturb_params
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import walt
from tokgen_jax.generators.diffusion.dit import DiTBlock
from tokgen_jax.generators.diffusion.walt import WALT, WALT_214M, WALTBlock, WindowSelfAttention, count_parameters
from tokgen_jax.nn import masks

LATENT = (3, 4, 4, 2)  # (t, h, w, c); patch 1 gives the token grid (3, 4, 4) and four 2 x 2 window tiles
GRID = (3, 4, 4)
BATCH, TEXT_LENGTH, TEXT_DIM, CLASSES, WIDTH = 2, 5, 12, 10, 32
TINY = dict(input_shape=LATENT, patch_size=1, hidden_size=WIDTH, depth=2, num_heads=2, window=(2, 2), adaln_rank=8)


def _inputs(seed=0, frames=LATENT[0]):
  x = jax.random.normal(jax.random.key(seed), (BATCH, frames) + LATENT[1:])
  return x, jnp.array([3, 917], jnp.int32)


def _text(seed=1):
  text = jax.random.normal(jax.random.key(seed), (BATCH, TEXT_LENGTH, TEXT_DIM))
  mask = jnp.array([[True] * 3 + [False] * 2, [True] * 5])
  return {"text": text, "text_mask": mask}


class _Model:
  """A tiny W.A.L.T., its params at init and perturbed, and a jitted apply."""

  def __init__(self, **fields):
    self.model = WALT(**dict(TINY, **fields))
    x, t = _inputs()
    self.cond = walt.example_arguments(self.model, BATCH)[2]
    self.params = nn.unbox(jax.jit(self.model.init)(jax.random.key(0), x, t, self.cond)["params"])
    self.perturbed = perturb_params(self.params)
    self._apply = jax.jit(lambda p, x, t, cond, unconditional, self_cond=None, frames=None, frame_mask=None:
                          self.model.apply({"params": p}, x, t, cond, unconditional=unconditional,
                                           self_cond=self_cond, frames=frames, frame_mask=frame_mask))

  def apply(self, p, x, t, cond, unconditional=None, self_cond=None, frames=None, frame_mask=None):
    """None `unconditional` is all-False, given here so both calls share one compilation."""
    unconditional = jnp.zeros((x.shape[0],), bool) if unconditional is None else unconditional
    return self._apply(p, x, t, cond, unconditional, self_cond, frames, frame_mask)


@pytest.fixture(scope="module")
def class_model():
  return _Model(conditioning="class", num_classes=CLASSES, learn_sigma=True)


@pytest.fixture(scope="module")
def text_model():
  return _Model(conditioning="text", text_length=TEXT_LENGTH, text_dim=TEXT_DIM)


# ------------------------------------------------------------------------------------------------- windows


def test_window_partition_round_trips_and_groups_one_tile():
  x = jax.random.normal(jax.random.key(0), (BATCH,) + GRID + (3,))
  windows = walt.window_partition(x, (3, 2, 2))
  assert windows.shape == (BATCH * 4, 12, 3)
  np.testing.assert_array_equal(windows[1].reshape(3, 2, 2, 3), x[0, :, 0:2, 2:4])  # batch 0, tile (0, 1)
  np.testing.assert_array_equal(walt.window_merge(windows, (3, 2, 2), GRID), x)


def _masked_reference(params, x, mask, heads, qk_norm):
  """Full attention over the flattened (t, h, w) sequence under a boolean mask, by hand in float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  qkv = np.einsum("bnd,dshk->bnshk", x, p["qkv"]["kernel"]) + p["qkv"]["bias"]
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  if qk_norm:
    rms = lambda a, s: a / np.sqrt(np.mean(a ** 2, -1, keepdims=True) + 1e-6) * s
    q, k = rms(q, p["query_norm"]), rms(k, p["key_norm"])
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.asarray(mask)[None, None], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  out = np.einsum("bhqs,bshk->bqhk", weights / weights.sum(-1, keepdims=True), v)
  return np.einsum("bqhk,hkd->bqd", out, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("kind, qk_norm", [("spatial", False), ("spatiotemporal", False), ("spatiotemporal", True)])
def test_windowed_attention_equals_full_attention_under_the_windowed_mask(kind, qk_norm):
  builder = masks.Windowed.spatial(GRID) if kind == "spatial" else masks.Windowed.spatiotemporal(GRID, (2, 2))
  x = jax.random.normal(jax.random.key(1), (BATCH, np.prod(GRID), WIDTH))
  layer = WindowSelfAttention(num_heads=2, grid=GRID, window=builder.window, qk_norm=qk_norm)
  params = perturb_params(nn.unbox(layer.init(jax.random.key(0), x)["params"]), scale=0.1)
  assert ("query_norm" in params) == qk_norm
  length = np.prod(GRID)
  mask = builder(jnp.arange(length), jnp.arange(length))
  expected = _masked_reference(params, x, mask, 2, qk_norm)
  np.testing.assert_allclose(layer.apply({"params": params}, x), expected, atol=2e-5)


def test_even_blocks_are_spatial_and_odd_blocks_spatiotemporal_clipped_to_the_grid():
  model = WALT(**dict(TINY, window=(8, 2)))
  assert model.window_of(0, 3) == (1, 4, 4) and model.window_of(1, 3) == (3, 4, 2) and model.window_of(3, 1) == (
      1, 4, 2)
  assert model.grid == GRID and model.num_patches == 48


# ------------------------------------------------------------------------------------------------ adaLN-Zero


def test_the_model_outputs_zeros_at_init_and_not_once_perturbed(class_model):
  x, t = _inputs()
  cond = {"label": jnp.array([1, 7])}
  out = class_model.apply(class_model.params, x, t, cond)
  assert out.shape == (BATCH,) + LATENT[:3] + (2 * LATENT[3],) and out.dtype == jnp.float32
  assert np.all(np.asarray(out) == 0)
  perturbed = np.asarray(class_model.apply(class_model.perturbed, x, t, cond))
  assert np.all(np.isfinite(perturbed)) and np.abs(perturbed).mean() > 1e-3


@pytest.mark.parametrize("with_text", (False, True))
def test_a_block_is_the_identity_at_init_and_not_once_perturbed(with_text):
  rng = np.random.default_rng(0)
  x, c = jnp.asarray(rng.normal(size=(BATCH, 48, WIDTH)), jnp.float32), jnp.asarray(rng.normal(size=(BATCH, WIDTH)))
  extra = (jnp.asarray(rng.normal(size=(BATCH, 3, WIDTH)), jnp.float32), jnp.array([[1, 1, 0], [1, 0, 0]], bool))
  args = (x, c) + (extra if with_text else ())
  block = WALTBlock(num_heads=2, grid=GRID, window=(3, 2, 2), adaln_rank=8)
  params = nn.unbox(jax.jit(block.init)(jax.random.key(0), *args)["params"])
  assert ("cross_attention" in params) == with_text
  apply = jax.jit(lambda p: block.apply({"params": p}, *args))
  np.testing.assert_array_equal(apply(params), x)
  moved = apply(perturb_params(params))
  assert np.abs(np.asarray(moved - x)).max() > 1e-3


# ------------------------------------------------------------------------------------------------ locality


@pytest.fixture(scope="module")
def plain_model():
  return _Model(conditioning="none")


def test_spatial_blocks_keep_frames_apart_and_spatiotemporal_blocks_do_not(plain_model):
  x, t = _inputs()
  changed = x.at[:, 2].add(3.0)
  one_block = dataclasses.replace(plain_model.model, depth=1)  # its params: the two-block model's less blocks_1
  one_params = {k: v for k, v in plain_model.perturbed.items() if k != "blocks_1"}
  runs = ((jax.jit(lambda p, x: one_block.apply({"params": p}, x, t, {})), one_params, False),
          (lambda p, x: plain_model.apply(p, x, t, {}), plain_model.perturbed, True))
  for run, params, frame0_moves in runs:
    base, moved = np.asarray(run(params, x)), np.asarray(run(params, changed))
    assert np.abs(moved[:, 2] - base[:, 2]).max() > 1e-4
    frame0 = np.abs(moved[:, 0] - base[:, 0]).max()
    assert frame0 > 1e-4 if frame0_moves else frame0 == 0.0


def test_an_image_runs_through_a_video_model_and_an_image_model(class_model):
  x, t = _inputs(frames=1)
  cond = {"label": jnp.array([1, 7])}
  out = class_model.apply(class_model.perturbed, x, t, cond)
  assert out.shape == (BATCH, 1) + LATENT[1:3] + (4,) and np.all(np.isfinite(np.asarray(out)))
  video = class_model.apply(class_model.perturbed, jnp.concatenate([x, x, x], axis=1), t, cond)
  assert np.abs(np.asarray(video[:, :1] - out)).max() > 1e-5  # frames mix in spatiotemporal windows
  image = WALT(**dict(TINY, input_shape=(1,) + LATENT[1:], conditioning="none"))
  out, variables = jax.eval_shape(lambda x, t: image.init_with_output(jax.random.key(0), x, t, {}), x, t)
  assert nn.unbox(variables["params"])["temporal_position"].shape == (1, WIDTH)
  assert out.shape == (BATCH, 1) + LATENT[1:]


def test_output_channels_follow_learn_sigma():
  for learn_sigma, channels in ((True, 4), (False, 2)):
    model = WALT(**dict(TINY, conditioning="none", learn_sigma=learn_sigma, patch_size=2))
    assert model.out_channels == channels and model.grid == (3, 2, 2)
    x, t = _inputs()
    out = jax.eval_shape(lambda x, t, m=model: m.init_with_output(jax.random.key(0), x, t, {})[0], x, t)
    assert out.shape == (BATCH,) + LATENT[:3] + (channels,)


# ------------------------------------------------------------------------------------------- frame condition


def test_frame_condition_adds_channels_and_the_given_frames_reach_the_output():
  model = _Model(conditioning="none", frame_condition=True)
  assert model.model.in_channels == 3 * LATENT[3] + 1
  assert model.params["patch_embed"]["kernel"].shape == (1, 1, 3 * LATENT[3] + 1, WIDTH)
  x, t = _inputs()
  given = jax.random.normal(jax.random.key(5), x.shape)
  mask = jnp.array([[1, 0, 0], [1, 1, 0]], bool)
  run = lambda frames=None, frame_mask=None: np.asarray(model.apply(model.perturbed, x, t, {}, frames=frames,
                                                                    frame_mask=frame_mask))
  none = run()
  np.testing.assert_allclose(run(jnp.zeros_like(x), jnp.zeros((BATCH, 3))), none, atol=1e-6)
  conditioned = run(given, mask)
  assert np.abs(conditioned - none).max() > 1e-4
  hidden = given.at[:, 2].add(4.0).at[0, 1].add(4.0)  # only frames the mask does not give
  np.testing.assert_allclose(run(hidden, mask), conditioned, atol=1e-6)
  # Even frames of zeros change the output once marked as given: the mask channel says so.
  assert np.abs(run(jnp.zeros_like(x), mask) - none).max() > 1e-4


def test_self_condition_reaches_the_output(plain_model):
  model = plain_model
  assert model.model.self_condition
  x, t = _inputs()
  without = model.apply(model.perturbed, x, t, {})
  zeros = model.apply(model.perturbed, x, t, {}, None, jnp.zeros_like(x))
  estimate = model.apply(model.perturbed, x, t, {}, None, x)
  np.testing.assert_allclose(without, zeros, atol=1e-6)
  assert np.abs(np.asarray(estimate - zeros)).max() > 1e-4
  assert WALT(**dict(TINY, self_condition=False)).in_channels == LATENT[3]


# ----------------------------------------------------------------------------------------------- AdaLN-LoRA


def test_adaln_lora_has_low_rank_shapes_and_rank_zero_is_dits_modulation(class_model):
  modulation = class_model.params["blocks_0"]["modulation"]
  assert modulation["down"]["kernel"].shape == (WIDTH, 8) and "bias" not in modulation["down"]
  assert modulation["up"]["kernel"].shape == (8, 6, WIDTH) and modulation["up"]["bias"].shape == (6, WIDTH)
  full = dataclasses.replace(class_model.model, adaln_rank=0, learn_sigma=False)
  shapes = lambda init, *args: jax.tree.map(jnp.shape, nn.unbox(jax.eval_shape(init, jax.random.key(0), *args)))
  x, t = _inputs()
  full_shapes = shapes(full.init, x, t, class_model.cond)["params"]["blocks_1"]
  reference = shapes(DiTBlock(num_heads=2).init, jnp.zeros((BATCH, 48, WIDTH)), jnp.zeros((BATCH, WIDTH)))["params"]
  assert full_shapes["modulation"] == reference["modulation"]
  assert full_shapes == reference  # the rest of the block is DiT's too
  saved = count_parameters(full) - count_parameters(dataclasses.replace(class_model.model, learn_sigma=False))
  assert saved == 2 * (WIDTH * 6 * WIDTH - (WIDTH * 8 + 8 * 6 * WIDTH))


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
  dropped = run(cond, jnp.array([True, True]))
  other = run({"text": -cond["text"], "text_mask": jnp.zeros_like(cond["text_mask"])}, jnp.array([True, True]))
  np.testing.assert_allclose(dropped, other, atol=1e-5)
  assert np.abs(dropped - base).max() > 1e-4


# ---------------------------------------------------------------------------------------------- size and names


def test_the_214m_configuration_counts_214m_parameters():
  model = WALT((5, 16, 16, 8), 2, **WALT_214M, conditioning="class", num_classes=101)
  count = count_parameters(model)
  assert count == 213_079_712 and abs(count - 214e6) / 214e6 < 0.02


def test_every_parameter_has_one_logical_name_per_dimension(text_model):
  x, t = _inputs()
  model = dataclasses.replace(text_model.model, qk_norm=True, frame_condition=True)
  boxed = jax.eval_shape(model.init, jax.random.key(0), x, t, text_model.cond)["params"]
  boxes = jax.tree.leaves(boxed, is_leaf=lambda a: isinstance(a, nn.Partitioned))
  assert len(boxes) == len(jax.tree.leaves(nn.unbox(boxed)))
  assert boxes and all(isinstance(b, nn.Partitioned) and len(b.names) == len(b.value.shape) for b in boxes)


def test_remat_and_bf16_keep_the_interface(class_model):
  x, t = _inputs()
  cond = {"label": jnp.array([1, 7])}
  remat = dataclasses.replace(class_model.model, remat=True)
  out = jax.jit(lambda p: remat.apply({"params": p}, x, t, cond))(class_model.perturbed)
  np.testing.assert_allclose(out, class_model.apply(class_model.perturbed, x, t, cond), atol=1e-5)
  bf16 = dataclasses.replace(class_model.model, dtype=jnp.bfloat16)
  assert jax.eval_shape(lambda p: bf16.apply({"params": p}, x, t, cond), class_model.perturbed).dtype == jnp.float32


@pytest.mark.parametrize("fields, match", [
    (dict(input_shape=(4, 4, 2)), "config.model.input_shape"),
    (dict(patch_size=3), "config.model.patch_size=3"),
    (dict(num_heads=3), "config.model.num_heads=3"),
    (dict(depth=0), "config.model.depth=0"),
    (dict(window=(3, 2)), "config.model.window=(3, 2)"),
    (dict(window=(0, 2)), "config.model.window=(0, 2)"),
    (dict(adaln_rank=-1), "config.model.adaln_rank=-1"),
    (dict(conditioning="audio"), "config.model.conditioning='audio'"),
    (dict(conditioning="class", num_classes=0), "config.model.num_classes"),
    (dict(conditioning="text", text_length=0, text_dim=8), "config.model.text_length"),
])
def test_validate_names_the_field(fields, match):
  with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
    WALT(**{**TINY, "conditioning": "none", **fields}).validate()


def test_a_window_larger_than_the_grid_is_clipped_and_valid():
  WALT(**dict(TINY, conditioning="none", window=(16, 16))).validate()
  assert WALT(**dict(TINY, window=(16, 16))).spatial_window() == (4, 4)


def test_bad_inputs_are_named(class_model):
  x, t = _inputs()
  with pytest.raises(ConfigError, match="cond\\['label'\\]"):
    class_model.model.apply({"params": class_model.params}, x, t, {})
  with pytest.raises(ConfigError, match="1 <= T' <= 3"):
    class_model.model.apply({"params": class_model.params}, jnp.concatenate([x, x], 1), t, {"label": t})
  framed = dataclasses.replace(class_model.model, frame_condition=True)
  with pytest.raises(ConfigError, match="frame_mask"):
    framed.init(jax.random.key(0), x, t, {"label": t}, frame_mask=jnp.ones((BATCH, 2)))
