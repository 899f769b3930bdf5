"""PlaneWALT: zero output at init, within-plane blocks keep planes apart and cross-plane blocks join them,
segment attention equals block-diagonal masked attention, distinct plane positions, frame conditioning and text
reaching the output, learned-sigma channels, the token count of paper-size four-plane latents, and validation
errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import perturb_params
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import walt
from tokgen_jax.generators.diffusion.latent_layout import LatentLayout
from tokgen_jax.generators.diffusion.plane_walt import PlaneWALT
from tokgen_jax.generators.diffusion.walt import WindowSelfAttention
from tokgen_jax.tokenizers.factorized import plane_shapes

CHANNELS, WIDTH, BATCH, TEXT_LENGTH, TEXT_DIM = 2, 32, 2, 5, 12


def _planes(grid=(3, 4, 4), factorization="four_plane"):
  shapes = plane_shapes(factorization, grid, time_split=1)
  return LatentLayout.from_shapes({f"latents_{n}": rc + (CHANNELS,) for n, rc in shapes.items()}).arrays


PLANES = _planes()  # xy0, xy1: 4x4; th, tw: 3x4 → 16 + 16 + 12 + 12 = 56 tokens
TINY = dict(planes=PLANES, hidden_size=WIDTH, depth=2, num_heads=2, adaln_rank=8, conditioning="text",
            text_length=TEXT_LENGTH, text_dim=TEXT_DIM)


def _cond(seed=1):
  return {"text": jax.random.normal(jax.random.key(seed), (BATCH, TEXT_LENGTH, TEXT_DIM)),
          "text_mask": jnp.ones((BATCH, TEXT_LENGTH), bool)}


@pytest.fixture(scope="module")
def tiny():
  model = PlaneWALT(**TINY, frame_condition=True)
  x = jax.random.normal(jax.random.key(0), (BATCH,) + model.input_shape)
  t = jnp.array([3, 917], jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), x, t, _cond())["params"])
  apply = jax.jit(lambda p, x, cond, frames, mask: model.apply({"params": p}, x, t, cond, frames=frames,
                                                               frame_mask=mask))
  return model, x, params, perturb_params(params), apply


def _no_frames(x):
  return jnp.zeros_like(x), jnp.zeros(x.shape[:2])


def test_output_is_zero_at_init_and_not_after_training(tiny):
  model, x, params, perturbed, apply = tiny
  assert model.input_shape == (56, CHANNELS)
  np.testing.assert_array_equal(apply(params, x, _cond(), *_no_frames(x)), 0.0)
  out = apply(perturbed, x, _cond(), *_no_frames(x))
  assert out.shape == x.shape and float(jnp.abs(out).max()) > 1e-3


def test_cross_plane_blocks_carry_one_plane_into_the_others(tiny):
  model, x, _, perturbed, apply = tiny
  sizes = model.layout.sizes
  changed = x.at[:, :sizes[0]].add(1.0)  # only the first plane
  delta = jnp.abs(apply(perturbed, changed, _cond(), *_no_frames(x)) - apply(perturbed, x, _cond(), *_no_frames(x)))
  assert float(delta[:, sizes[0]:].max()) > 1e-4  # depth 2: block 1 attends across planes


def test_within_plane_block_keeps_planes_apart():
  model = PlaneWALT(**dict(TINY, depth=1))  # block 0 only: attention inside each plane
  x = jax.random.normal(jax.random.key(0), (BATCH,) + model.input_shape)
  t = jnp.array([3, 917], jnp.int32)
  params = perturb_params(nn.unbox(model.init(jax.random.key(0), x, t, _cond())["params"]))
  first = model.layout.sizes[0]
  out = model.apply({"params": params}, x, t, _cond())
  changed = model.apply({"params": params}, x.at[:, :first].add(1.0), t, _cond())
  np.testing.assert_allclose(changed[:, first:], out[:, first:], atol=1e-6)
  assert float(jnp.abs(changed[:, :first] - out[:, :first]).max()) > 1e-4


def test_segment_attention_equals_block_diagonal_masked_attention():
  segments = (3, 5, 2)
  x = jax.random.normal(jax.random.key(0), (2, sum(segments), 16))
  module = WindowSelfAttention(2, segments=segments, qk_norm=True)
  params = perturb_params(nn.unbox(module.init(jax.random.key(1), x)["params"]))
  ids = np.repeat(np.arange(len(segments)), segments)
  mask = jnp.asarray(ids[:, None] == ids[None, :])

  def masked(x):
    qkv = jnp.einsum("bnd,dshk->bnshk", x, params["qkv"]["kernel"]) + params["qkv"]["bias"]
    q, k, v = (qkv[:, :, i] for i in range(3))
    q, k = walt.rms_norm(q, params["query_norm"]), walt.rms_norm(k, params["key_norm"])
    logits = jnp.einsum("bqhk,bphk->bhqp", q, k) / np.sqrt(q.shape[-1])
    weights = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    out = jnp.einsum("bhqp,bphk->bqhk", weights, v)
    return jnp.einsum("bnhk,hkd->bnd", out, params["out"]["kernel"]) + params["out"]["bias"]

  np.testing.assert_allclose(module.apply({"params": params}, x), masked(x), atol=1e-5)


def test_plane_positions_are_distinct(tiny):
  model, _, params, _, _ = tiny
  layout = model.layout
  table = np.concatenate([params[f"position_{name}"] for name in layout.names])
  table = table + np.asarray(params["plane_type"])[layout.array_ids()]
  assert table.shape == (layout.num_tokens, WIDTH)
  rounded = {tuple(np.round(np.asarray(row), 6)) for row in table}
  assert len(rounded) == model.layout.num_tokens


def test_frame_conditioning_and_text_reach_the_output(tiny):
  _, x, _, perturbed, apply = tiny
  base = apply(perturbed, x, _cond(), *_no_frames(x))
  mask = jnp.zeros(x.shape[:2]).at[:, :16].set(1.0)  # the first spatial plane given
  given = apply(perturbed, x, _cond(), x, mask)
  other_text = apply(perturbed, x, _cond(seed=7), *_no_frames(x))
  assert float(jnp.abs(given - base).max()) > 1e-4
  assert float(jnp.abs(other_text - base).max()) > 1e-4


def test_learned_sigma_doubles_channels_and_paper_size_token_count():
  model = PlaneWALT(**dict(TINY, learn_sigma=True))
  assert model.out_channels == 2 * CHANNELS
  assert PlaneWALT(**dict(TINY, planes=_planes((5, 16, 16)))).input_shape == (672, CHANNELS)
  assert PlaneWALT(**dict(TINY, planes=_planes((5, 16, 16), "tri_plane"))).input_shape == (416, CHANNELS)


def test_validation_errors():
  with pytest.raises(ConfigError, match="divisible"):
    PlaneWALT(**dict(TINY, num_heads=3)).validate()
  with pytest.raises(ConfigError, match="text conditioning"):
    PlaneWALT(**dict(TINY, text_length=0)).validate()
  with pytest.raises(ConfigError, match="same channel count"):
    PlaneWALT(**dict(TINY, planes=(("a", (4, 4, 2)), ("b", (4, 4, 3))))).validate()
  model = PlaneWALT(**TINY)
  with pytest.raises(ConfigError, match="packed planes"):
    model.init(jax.random.key(0), jnp.zeros((BATCH, 55, CHANNELS)), jnp.zeros((BATCH,), jnp.int32), _cond())
