"""Diffusion presets: the DiT, W.A.L.T. and plane W.A.L.T. models (`config.model` of the diffusion task), the training process
(`config.diffusion`), and the sampling settings of `--mode=sample` and of the eval protocols.

DiT sizes (Peebles & Xie 2023, Table 1): S/B/L/XL are depth 12/12/24/28, width 384/768/1024/1152, heads
6/12/16/16; "local" is this project's CPU size. The patch size is its own argument (DiT-XL/2: XL with patch 2).
"""

import ml_collections

from tokgen_jax.configs import evaluation
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import dit as dit_model
from tokgen_jax.generators.diffusion import walt as walt_model

DIT_SIZES = {"local": (4, 128, 4)} | dit_model.DIT_SIZES  # name: (depth, hidden_size, num_heads)


def dit(size: str = "B", patch_size: int = 2, conditioning: str = "class", num_classes: int = 1000,
        text_length: int = 0, text_dim: int = 0, learn_sigma: bool = True, **overrides) -> ml_collections.ConfigDict:
  """A `DiT` config. `learn_sigma` (DiT's default) outputs the variance interpolation too and adds the VLB term;
  `dtype` 'bfloat16' computes in bf16 with float32 parameters."""
  if size not in DIT_SIZES:
    raise ConfigError(f"DiT size {size!r} is not a preset; choose one of {sorted(DIT_SIZES)}.")
  depth, hidden_size, num_heads = DIT_SIZES[size]
  config = ml_collections.ConfigDict(dict(
      name="dit", patch_size=patch_size, hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=4.0,
      conditioning=conditioning, num_classes=num_classes if conditioning == "class" else 0,
      text_length=text_length if conditioning == "text" else 0, text_dim=text_dim if conditioning == "text" else 0,
      learn_sigma=learn_sigma, self_condition=False, remat=False, dtype="float32"))
  config.update(overrides)
  return config


WALT_SIZES = {"local": dict(hidden_size=128, depth=4, num_heads=4), "214M": walt_model.WALT_214M}


def walt(size: str = "local", patch_size: int = 2, window: tuple[int, int] = (4, 4), conditioning: str = "text",
         num_classes: int = 0, text_length: int = 0, text_dim: int = 0, frame_condition: bool = False,
         **overrides) -> ml_collections.ConfigDict:
  """A `WALT` config: blocks alternate spatial (one latent frame) and spatiotemporal (`window` patches over all
  frames) window attention, AdaLN-LoRA of rank 256 (NVIDIA Cosmos' rank), v-prediction with self-conditioning
  (`learn_sigma` off), and optionally frame conditioning. "214M" is our depth/width for seed 000's 214M UCF-101
  generator (the paper gives none)."""
  if size not in WALT_SIZES:
    raise ConfigError(f"W.A.L.T. size {size!r} is not a preset; choose one of {sorted(WALT_SIZES)}.")
  config = ml_collections.ConfigDict(dict(
      name="walt", patch_size=patch_size, mlp_ratio=4.0, window=tuple(window), adaln_rank=256, qk_norm=False,
      conditioning=conditioning, num_classes=num_classes if conditioning == "class" else 0,
      text_length=text_length if conditioning == "text" else 0, text_dim=text_dim if conditioning == "text" else 0,
      learn_sigma=False, self_condition=True, frame_condition=frame_condition, remat=False, dtype="float32",
      **WALT_SIZES[size]))
  config.update(overrides)
  return config


def plane_walt(size: str = "local", conditioning: str = "text", num_classes: int = 0, text_length: int = 0,
               text_dim: int = 0, frame_condition: bool = False, **overrides) -> ml_collections.ConfigDict:
  """A `PlaneWALT` config: W.A.L.T.'s blocks and sizes over the packed tokens of factorized latent planes (seed
  000), alternating attention within each plane and across all of them; patch 1, so one token per plane
  position. The planes come from the tokenizer, not the config."""
  if size not in WALT_SIZES:
    raise ConfigError(f"W.A.L.T. size {size!r} is not a preset; choose one of {sorted(WALT_SIZES)}.")
  config = ml_collections.ConfigDict(dict(
      name="plane_walt", mlp_ratio=4.0, adaln_rank=256, qk_norm=False, conditioning=conditioning,
      num_classes=num_classes if conditioning == "class" else 0,
      text_length=text_length if conditioning == "text" else 0, text_dim=text_dim if conditioning == "text" else 0,
      learn_sigma=False, self_condition=True, frame_condition=frame_condition, remat=False, dtype="float32",
      **WALT_SIZES[size]))
  config.update(overrides)
  return config


def process(schedule: str = "linear", num_steps: int = 1000, prediction: str = "eps", **overrides
            ) -> ml_collections.ConfigDict:
  """The diffusion process and its training loss (NUMERICS "Diffusion").

  schedule: 'linear' (DDPM / DiT: β 1e-4 → 0.02 over 1000 steps), 'cosine' or 'scaled_linear' (LDM), with
  `zero_terminal_snr` rescaling as an option. prediction: what the model outputs, 'eps' (DDPM, DiT), 'v'
  (W.A.L.T.) or 'x0'. cond_dropout_rate: the share of training examples whose condition is replaced by the null
  one (0.1, for classifier-free guidance). self_condition_rate: with a self-conditioning model, the share of
  examples that first estimate x0 and feed it back (0.5, Chen et al. 2022). loss_weighting: 'none' (plain MSE
  on the target) or 'min_snr' (Hang et al. 2023, min(SNR, γ) with `min_snr_gamma` 5, as a weight on the ε loss).
  vlb_weight: the weight of the learned-variance VLB term (DiT: 1, scaled by T/1000). latent_normalization:
  'scale' (LDM) multiplies the latents by `latent_scale` (0: LDM's 1 / std, read from the train split's shard
  metadata); 'channel' standardizes each latent channel by its train-split mean and std instead.
  eval_buckets: the held-out loss is reported at this many evenly spaced timesteps. max_given_frames: a
  frame-conditioned model (W.A.L.T.) trains with the first k ~ U{0..max} latent frames given (W.A.L.T.: 2)."""
  config = ml_collections.ConfigDict(dict(
      schedule=schedule, num_steps=num_steps, zero_terminal_snr=False, prediction=prediction,
      cond_dropout_rate=0.1, self_condition_rate=0.5, loss_weighting="none", min_snr_gamma=5.0, vlb_weight=1.0,
      latent_normalization="scale", latent_scale=0.0, eval_buckets=4, max_given_frames=0))
  config.update(overrides)
  return config


def sampling(protocol: ml_collections.ConfigDict | None = None, **overrides) -> ml_collections.ConfigDict:
  """--mode=sample settings (`generators.diffusion.samplers.DiffusionSampling`): the sampling fields of
  `protocol` (an `evaluation.diffusion_protocol`, default DiT's demo: 250 DDPM steps at cfg 4.0), then
  `overrides`; `prompts` (`;`-separated captions, class ids or names), `prompts_file`, `num_per_prompt`, and for a
  frame-conditioned model `inputs` (comma-separated videos or images) whose first `given_frames` latent frames
  are given."""
  protocol = protocol if protocol is not None else evaluation.diffusion_protocol("dit_demo")
  config = ml_collections.ConfigDict({"protocol": protocol.name, **{
      key: protocol[key] for key in evaluation.DIFFUSION_SAMPLING_FIELDS}})
  config.update(dict(prompts="", prompts_file="", num_per_prompt=4, inputs="", given_frames=1))
  config.update(overrides)
  return config
