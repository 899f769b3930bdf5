"""The tokenizer protocol: pixels ↔ a dict of named latent arrays, with per-example shapes known without running.

A tokenizer is a Flax module over `[B, H, W, 3]` images or `[B, T, H, W, 3]` videos in [-1, 1]:

- `encode(x) -> {name: [B, ...]}`: what a second stage trains on. Discrete bottlenecks give `tokens` (int32 ids,
  a trailing levels dim for multi-codebook quantizers); continuous ones give `latents` (float). Hierarchical,
  multi-scale and factorized tokenizers name one array per layer, scale or plane (`tokens_0` .. `tokens_9` for
  VAR's ten scales, coarse first; `latents_xy`, ...).
- `decode(latents) -> pixels` from the same dict (the inverse of `encode` up to reconstruction error).
- `latent_specs(input_shape) -> {name: LatentSpec}`: each array's per-example shape, dtype and vocabulary, from an
  abstract forward (`jax.eval_shape`: free, no parameters).
- `factors`: how many frames and pixels one latent position spans (`Factors(temporal, spatial)`);
  `num_latent_positions(input_shape)`: how many latent positions (tokens) one example becomes.
- `__call__(x, train) -> (reconstruction, {"quantizer": QuantizerOutput})`: the training forward.

Subclasses supply `factors`, `quantize(x, train) -> (z_q, QuantizerOutput)` and `decode_codes(z_q, train)`; the
named-array methods are written once here on top of them.
"""

import abc
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError
from tokgen_jax.quantizers.base import QuantizerOutput
from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer
from tokgen_jax.quantizers.bits import tokens_per_image

TOKENS = "tokens"
LATENTS = "latents"


@dataclasses.dataclass(frozen=True)
class Factors:
  """Frames (after the first) and pixels per side that one latent position covers."""

  temporal: int
  spatial: int


@dataclasses.dataclass(frozen=True)
class LatentSpec:
  """One named latent array of one example: shape, dtype, and ids in [0, vocab_size) (0: continuous)."""

  shape: tuple[int, ...]
  dtype: str
  vocab_size: int = 0

  @property
  def is_discrete(self) -> bool:
    return self.vocab_size > 0

  def as_dict(self) -> dict[str, Any]:
    return {"shape": list(self.shape), "dtype": self.dtype, "vocab_size": self.vocab_size}


class Tokenizer(nn.Module, abc.ABC):
  """Base of the tokenizers in `tokenizers.REGISTRY` (see the module docstring for the protocol)."""

  quantizer: nn.Module

  @property
  @abc.abstractmethod
  def factors(self) -> Factors:
    """Frames and pixels per latent position."""

  @abc.abstractmethod
  def quantize(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    """The bottleneck's codes `z_q` (straight-through gradient) and its `QuantizerOutput` for inputs x."""

  @abc.abstractmethod
  def decode_codes(self, z_q: jax.Array, train: bool = False) -> jax.Array:
    """Pixels from codes shaped like `quantize`'s `z_q`."""

  @property
  def is_discrete(self) -> bool:
    return self.quantizer.codebook_size > 0

  def encode(self, x: jax.Array) -> dict[str, jax.Array]:
    z_q, quantized = self.quantize(x, train=False)
    if not self.is_discrete:
      return {LATENTS: z_q}
    if isinstance(self.quantizer, MultiScaleResidualQuantizer):  # one array per scale, coarse first
      return self.quantizer.named_indices(quantized.indices)
    return {TOKENS: quantized.indices}

  def decode(self, latents: dict[str, jax.Array]) -> jax.Array:
    """Pixels of named latents; a multi-scale tokenizer also decodes a coarse-to-fine prefix of its scales."""
    if isinstance(self.quantizer, MultiScaleResidualQuantizer):
      return self.decode_codes(self.quantizer.codes_from_indices(self.quantizer.indices_from_named(latents)))
    if self.is_discrete:
      return self.decode_codes(self.quantizer.codes_from_indices(latents[TOKENS]))
    return self.decode_codes(latents[LATENTS])

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    z_q, quantized = self.quantize(x, train)
    return self.decode_codes(z_q, train), {"quantizer": quantized}

  def latent_grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The latent grid of one example of `input_shape`: `(h, w)` for `[H, W, C]`, `(t, h, w)` for `[T, H, W, C]`."""
    height, width = input_shape[-3:-1]
    grid = (height // self.factors.spatial, width // self.factors.spatial)
    if len(input_shape) == 4:
      grid = (1 + (input_shape[0] - 1) // self.factors.temporal,) + grid
    return grid

  def num_latent_positions(self, input_shape: tuple[int, ...]) -> int:
    """Latent positions (tokens) of one example: the latent grid, a multi-scale quantizer's own count over its
    scales, or a factorized tokenizer's planes."""
    return tokens_per_image(self.quantizer, self.latent_grid(input_shape))

  def latent_frame_spans(self, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """`{name: int32 [*grid, 2]}`: the latent frames `[start, stop)` each latent position is read from, so a
    generator conditioned on given frames knows which positions they fix. A video latent's position at frame t
    reads frame t alone; factorized planes pool several (`factorized.py`). Only videos have frames."""
    grid = self.latent_grid(input_shape)
    if len(grid) != 3:
      raise ConfigError(f"{type(self).__name__}: latent frame spans need a video input [T, H, W, C]; got "
                        f"{list(input_shape)}.")
    start = np.broadcast_to(np.arange(grid[0]).reshape(-1, 1, 1), grid)
    spans = np.stack([start, start + 1], axis=-1).astype(np.int32)
    return {TOKENS if self.is_discrete else LATENTS: spans}

  def latent_specs(self, input_shape: tuple[int, ...]) -> dict[str, LatentSpec]:
    """`{name: LatentSpec}` of `encode` on one example of `input_shape`, from an abstract forward."""
    rng = jax.random.PRNGKey(0)
    rngs = {"params": rng, "dropout": rng, "noise": rng}
    unbound = self.clone(parent=None)
    example = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
    encoded = jax.eval_shape(lambda x: unbound.init_with_output(rngs, x, method="encode")[0], example)
    vocab = int(self.quantizer.codebook_size)
    return {name: LatentSpec(tuple(array.shape[1:]), np.dtype(array.dtype).name,
                             vocab if np.issubdtype(array.dtype, np.integer) else 0)
            for name, array in encoded.items()}
