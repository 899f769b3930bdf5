"""What every generator shares about its condition: the kinds (class, text, none), their checks, and the condition
prefix of the token transformers (AR and masked).

The prefix of a token transformer is a class embedding with a null row (index `num_classes`, the unconditional
class of classifier-free guidance), or projected text-encoder states. In the text case padding positions take a
learned pad vector, and the unconditional text is a learned `[text_length, text_dim]` embedding (HiTVideo's
"learned unconditional embedding"). In training the condition drops to the unconditional one with probability
`cond_dropout_rate` (0.1 in LlamaGen and MaskGIT), so one model gives both terms of CFG.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokgen_jax.errors import ConfigError
from tokgen_jax.nn.projection import Projection

CONDITIONINGS = ("class", "text", "none")


def validate_conditioning(module: nn.Module, name: str) -> None:
  """The conditioning fields of a generator (`conditioning`, `num_classes`, `text_length`, `text_dim`) agree."""
  if module.conditioning not in CONDITIONINGS:
    raise ConfigError(f"{name}: config.model.conditioning={module.conditioning!r} is not one of {CONDITIONINGS}.")
  if module.conditioning == "class" and module.num_classes < 1:
    raise ConfigError(f"{name}: class conditioning needs config.model.num_classes >= 1 (got {module.num_classes}); "
                      f"set it to the dataset's class count, or use conditioning='none'.")
  if module.conditioning == "text" and (module.text_length < 1 or module.text_dim < 1):
    raise ConfigError(f"{name}: text conditioning needs config.model.text_length >= 1 and config.model.text_dim "
                      f">= 1 (got {module.text_length}, {module.text_dim}); set them to the text encoder's padded "
                      f"length and width (384 for all-MiniLM-L6-v2).")


def setup_prefix(module: nn.Module, embedding_init: Callable, kernel_layout: str = "in_out") -> None:
  """From `module.setup()`: the parameters of its condition prefix (`class_embedding`, or `text_projection`,
  `uncond_text` and `text_pad`) at width `module.embed_dim`; `kernel_layout` is the text projection's."""
  if module.conditioning == "class":
    module.class_embedding = nn.Embed(  # row num_classes: the null class
        module.num_classes + 1, module.embed_dim, embedding_init=nn.with_logical_partitioning(
            embedding_init, ("vocab", "embed")), dtype=module.dtype, param_dtype=module.param_dtype,
        name="class_embedding")
  elif module.conditioning == "text":
    module.text_projection = Projection((module.embed_dim,), (None, "embed"), kernel_layout=kernel_layout,
                                        dtype=module.dtype, param_dtype=module.param_dtype, name="text_projection")
    module.uncond_text = module.param("uncond_text", nn.with_logical_partitioning(embedding_init, (None, None)),
                                      (module.text_length, module.text_dim), module.param_dtype)
    module.text_pad = module.param("text_pad", nn.with_logical_partitioning(embedding_init, ("embed",)),
                                   (module.embed_dim,), module.param_dtype)


def prefix_embeddings(module: nn.Module, cond: dict[str, Any], batch: int, unconditional: jax.Array | None,
                      train: bool) -> jax.Array | None:
  """`[B, P, E]`: the condition prefix of `module` (set up by `setup_prefix`), dropped to the unconditional one
  where `unconditional` (bool `[B]`) or by condition dropout; None for `conditioning='none'`."""
  drop = jnp.zeros((batch,), bool) if unconditional is None else unconditional.astype(bool)
  if train and module.cond_dropout_rate and module.conditioning != "none":
    drop |= jax.random.bernoulli(module.make_rng("dropout"), module.cond_dropout_rate, (batch,))
  if module.conditioning == "class":
    return module.class_embedding(jnp.where(drop, module.num_classes, cond["label"].astype(jnp.int32)))[:, None]
  if module.conditioning == "text":
    text = jnp.where(drop[:, None, None], module.uncond_text.astype(cond["text"].dtype), cond["text"])
    real = cond["text_mask"].astype(bool) | drop[:, None]  # the learned unconditional text has no padding
    projected = module.text_projection(text)
    return jnp.where(real[..., None], projected, module.text_pad.astype(projected.dtype))
  return None
