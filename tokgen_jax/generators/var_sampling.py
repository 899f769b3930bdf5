"""Sampling a `VARTransformer` scale by scale (VAR's `autoregressive_infer_cfg`): S model calls for L tokens.

For each scale k (a Python loop: every scale has its own shape, so the jitted program unrolls S steps):

1. the model runs scale k's inputs against the KV cache of scales < k (`VARTransformer.step`), giving the
   logits of all s_k² tokens at once;
2. classifier-free guidance `u + s_k·(c − u)`, with `cfg_ramp` the ramp `s_k = 1 + (s − 1)·k/(S − 1)` over the
   scales: VAR's `t = cfg·k/(S − 1)`, `(1 + t)·c − t·u` with s = 1 + cfg (`sampling.guidance_scale_from(cfg,
   "var")`: VAR's FID setting cfg 1.5 is s = 2.5 with the ramp); then temperature, top-k, top-p and a draw per
   token (`sampling.choose`, the AR sampler's);
3. `feedback(state, k, token_map)` turns the drawn map into scale k+1's inputs. For VAR it is the tokenizer's
   quantizer (`MultiScaleResidualQuantizer.advance`, bound by the task): `f̂ += φ(bicubic(e(r_k)))` and
   `area(f̂, s_{k+1})`, exactly what training fed (`next_scale_inputs`); the state is f̂.

The S steps are unrolled, so under fsdp the TPU scheduler is free to start every scale's all-gather of the
weights at once: d30's sampler then held about ten gathered copies (18.17 GiB of temporaries per v5e chip at
256 rows). An optimization barrier ties the parameters to each scale's inputs, so a scale's gathers wait for the
previous scale; the d30 sampler needs 4.63 GiB (`--mode=compile`, v5e:8x8). The draw is unchanged.

Returns the token ids `[B, L]`, scales concatenated coarse first; the tokenizer decodes them through the same
f̂ (`MultiScaleResidualQuantizer.codes_from_indices`).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from tokgen_jax.generators.sampling import SamplingSettings, choose, guided_inputs
from tokgen_jax.generators.var import VARTransformer

# (state, scale k, drawn map [B, s_k, s_k]) -> (state, scale k+1's inputs [B, s_{k+1}², D_vae])
Feedback = Callable[[Any, int, jax.Array], tuple[Any, jax.Array]]


def sample_scales(model: VARTransformer, params: Any, cond: dict[str, jax.Array], rng: jax.Array,
                  feedback: Feedback, feedback_state: Any,
                  settings: SamplingSettings = SamplingSettings()) -> jax.Array:
  """`[B, L]` tokens drawn in `len(model.scales)` cached steps (jit the caller); `feedback` and its first state
  (the tokenizer's empty f̂) make each scale's inputs from the maps drawn so far."""
  batch = cond["label"].shape[0]
  model_cond, unconditional = guided_inputs(cond, batch, settings)
  caches = model.init_cache(unconditional.shape[0])
  state, inputs, drawn = feedback_state, None, []
  for k, side in enumerate(model.scales):
    if k:  # no scale's weight all-gathers before the previous scale's inputs exist: see the module docstring
      params, inputs = jax.lax.optimization_barrier((params, inputs))
    logits, caches = model.apply({"params": params}, k, inputs, model_cond, unconditional, caches, method="step")
    tokens = choose(logits, rng, jnp.int32(k), settings, model.num_scales)  # [B, s_k²]
    drawn.append(tokens)
    if k + 1 < model.num_scales:
      state, inputs = feedback(state, k, tokens.reshape(batch, side, side))
      inputs = jnp.concatenate([inputs, inputs]) if settings.guided else inputs
  return jnp.concatenate(drawn, axis=1)
