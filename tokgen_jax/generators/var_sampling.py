"""Sampling a `VARTransformer` scale by scale (VAR's `autoregressive_infer_cfg`): S model calls for L tokens.

For each scale k (a Python loop: every scale has its own shape, so the jitted program unrolls S steps):

1. the model runs scale k's inputs against the KV cache of scales < k (`VARTransformer.step`), giving the
   logits of all s_k² tokens at once;
2. classifier-free guidance `u + s_k·(c − u)`, with `cfg_ramp` the ramp `s_k = 1 + (s − 1)·k/(S − 1)` over the
   scales: VAR's `t = cfg·k/(S − 1)`, `(1 + t)·c − t·u` with s = 1 + cfg (`sampling.guidance_scale_from(cfg,
   "var")`: VAR's FID setting cfg 1.5 is s = 2.5 with the ramp); then temperature, top-k, top-p and a draw per
   token (`sampling.choose`, the AR sampler's);
3. the drawn map enters the quantizer's reconstruction, `f̂ += φ(bicubic(e(r_k)))` (`add_scale`), and
   `area(f̂, s_{k+1})` is scale k+1's input, exactly what training fed (`next_scale_inputs`).

Returns the token ids `[B, L]`, scales concatenated coarse first; the tokenizer decodes them through the same
f̂ (`MultiScaleResidualQuantizer.codes_from_indices`).
"""

from typing import Any

import jax
import jax.numpy as jnp

from tokgen_jax.generators.sampling import SamplingSettings, choose, guided_inputs
from tokgen_jax.generators.var import VARTransformer
from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer, downsample


def sample_scales(model: VARTransformer, params: Any, quantizer: MultiScaleResidualQuantizer,
                  quantizer_variables: Any, cond: dict[str, jax.Array], rng: jax.Array,
                  settings: SamplingSettings = SamplingSettings()) -> jax.Array:
  """`[B, L]` tokens drawn in `len(model.scales)` cached steps (jit the caller); `quantizer_variables` are the
  tokenizer's quantizer's (`params`, and `quantizer_stats` when it restarts codes)."""
  batch = cond["label"].shape[0]
  model_cond, unconditional = guided_inputs(cond, batch, settings)
  model_vars = {"params": params}
  caches = model.init_cache(unconditional.shape[0])
  size = model.scales[-1]
  f_hat = jnp.zeros((batch, size, size, model.vae_dim), jnp.float32)
  inputs, drawn = None, []
  for k, side in enumerate(model.scales):
    logits, caches = model.apply(model_vars, k, inputs, model_cond, unconditional, caches, method="step")
    tokens = choose(logits, rng, jnp.int32(k), settings, model.num_scales)  # [B, s_k²]
    drawn.append(tokens)
    if k + 1 < model.num_scales:
      f_hat = quantizer.apply(quantizer_variables, f_hat, tokens.reshape(batch, side, side), method="add_scale")
      inputs = downsample(f_hat, model.scales[k + 1], quantizer.resize).reshape(batch, -1, model.vae_dim)
      inputs = jnp.concatenate([inputs, inputs]) if settings.guided else inputs
  return jnp.concatenate(drawn, axis=1)
