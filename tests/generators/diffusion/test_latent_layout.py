"""LatentLayout: pack and unpack are exact inverses (numpy and jax), the seed's paper-size token counts (672
four-plane, 416 tri-plane, 1280 volumetric), distinct (plane, position) pairs, and errors for layouts and arrays
that do not fit."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion.latent_layout import LatentLayout, given_token_mask
from tokgen_jax.tokenizers.factorized import plane_shapes

CHANNELS = 8
PAPER_GRID = (5, 16, 16)  # 17x128² through MAGVIT-v2's causal 3D VAE


def _layout(factorization: str, grid=PAPER_GRID) -> LatentLayout:
  if factorization == "volumetric":
    return LatentLayout.from_shapes({"latents": grid + (CHANNELS,)})
  shapes = plane_shapes(factorization, grid, time_split=1)
  return LatentLayout.from_shapes({f"latents_{name}": rc + (CHANNELS,) for name, rc in shapes.items()})


def _arrays(layout: LatentLayout, batch: int = 2) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {name: rng.normal(size=(batch,) + shape).astype(np.float32) for name, shape in layout.arrays}


@pytest.mark.parametrize("factorization, tokens", [("four_plane", 672), ("tri_plane", 416), ("volumetric", 1280)])
def test_paper_size_token_counts(factorization, tokens):
  layout = _layout(factorization)
  assert layout.num_tokens == tokens
  assert layout.packed_shape == (tokens, CHANNELS)


@pytest.mark.parametrize("factorization", ["four_plane", "tri_plane", "volumetric"])
def test_pack_unpack_round_trip_numpy_and_jax(factorization):
  layout = _layout(factorization, grid=(3, 4, 5))
  arrays = _arrays(layout)
  packed = layout.pack(arrays)
  assert isinstance(packed, np.ndarray) and packed.shape == (2,) + layout.packed_shape
  for name, value in layout.unpack(packed).items():
    np.testing.assert_array_equal(value, arrays[name])
  packed_jax = layout.pack({name: jnp.asarray(value) for name, value in arrays.items()})
  np.testing.assert_array_equal(np.asarray(packed_jax), packed)


def test_pack_is_row_major_per_array_in_name_order():
  layout = LatentLayout.from_shapes({"b": (2, 1), "a": (1, 3, 1)})
  assert layout.names == ("a", "b")
  packed = layout.pack({"a": np.array([[[[1.0], [2.0], [3.0]]]]), "b": np.array([[[4.0], [5.0]]])})
  np.testing.assert_array_equal(packed[0, :, 0], [1.0, 2.0, 3.0, 4.0, 5.0])


def test_plane_positions_are_distinct_and_within_each_plane():
  layout = _layout("four_plane")
  ids, positions = layout.array_ids(), layout.grid_positions()
  assert ids.shape == (672,) and positions.shape == (672, 2)
  assert len({(i, *p) for i, p in zip(ids.tolist(), positions.tolist())}) == 672
  for index, (_, shape) in enumerate(layout.arrays):
    mine = positions[ids == index]
    assert len(mine) == int(np.prod(shape[:-1]))
    np.testing.assert_array_equal(mine.max(axis=0), np.array(shape[:-1]) - 1)


def test_lower_rank_arrays_pad_positions_with_leading_zeros():
  layout = LatentLayout.from_shapes({"image": (2, 2, 4), "video": (2, 2, 2, 4)})
  positions = layout.grid_positions()
  assert positions.shape == (4 + 8, 3)
  np.testing.assert_array_equal(positions[:4], [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]])


def test_errors_name_the_problem():
  with pytest.raises(ConfigError, match="same channel count"):
    LatentLayout.from_shapes({"a": (4, 4, 8), "b": (4, 4, 4)})
  with pytest.raises(ConfigError, match="no latent arrays"):
    LatentLayout.from_shapes({})
  layout = _layout("tri_plane", grid=(3, 4, 5))
  arrays = _arrays(layout)
  with pytest.raises(ConfigError, match="missing latent arrays"):
    layout.pack({name: value for name, value in arrays.items() if name != "latents_xy"})
  arrays["latents_tw"] = arrays["latents_tw"][:, :2]
  with pytest.raises(ConfigError, match="latents_tw"):
    layout.pack(arrays)
  with pytest.raises(ConfigError, match="unpack"):
    layout.unpack(np.zeros((1, 5, CHANNELS)))


def test_given_token_mask_reads_whole_spans():
  spans = np.array([[0, 1], [1, 3], [0, 3], [2, 3]])
  frame_mask = np.array([[1, 0, 0], [1, 1, 1], [1, 0, 1], [0, 0, 0]], np.float32)
  np.testing.assert_array_equal(given_token_mask(spans, frame_mask),
                                [[1, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]])


def test_pack_per_position_follows_the_token_order():
  layout = LatentLayout.from_shapes({"b": (2, 1), "a": (1, 3, 1)})
  packed = layout.pack_per_position({"a": np.arange(3).reshape(1, 3, 1), "b": np.array([[7], [8]])})
  np.testing.assert_array_equal(packed[:, 0], [0, 1, 2, 7, 8])
  with pytest.raises(ConfigError, match="pack_per_position"):
    layout.pack_per_position({"a": np.zeros((3, 1)), "b": np.zeros((2, 1))})
