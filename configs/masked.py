"""Masked token model presets (`config.model` / `config.loss` of the masked task) and its `--mode=sample` settings.

Sizes (NUMERICS.md "Masked generative transformers"): "maskgit" is MaskGIT's 24 layers × 768 with 16 heads and MLP
3072; "magvit" is MAGVIT's MLM, 24 layers × 1024 with 16 heads and MLP 4096 (306M at a 2^10 vocabulary; MAGVIT-v2's
307M with 2^18 codes factorized as 2 × 2^9); "local" is this project's CPU size.
"""

import ml_collections

from tokgen_jax.configs import evaluation
from tokgen_jax.errors import ConfigError

SIZES = {
    # name: (embed_dim, num_layers, num_heads, mlp_dim)
    "local": (128, 4, 4, 512),
    "maskgit": (768, 24, 16, 3072),
    "magvit": (1024, 24, 16, 4096),
}


def masked(size: str = "local", conditioning: str = "class", num_classes: int = 1000, text_length: int = 0,
           text_dim: int = 0, block: str = "llama", factorized_bits: tuple[int, ...] = (), dropout: float = 0.1,
           **overrides) -> ml_collections.ConfigDict:
  """A `MaskedTransformer` config. `block='bert'` is MaskGIT's post-LN blocks with the tied head; `factorized_bits`
  splits an LFQ vocabulary into sub-tokens ((9, 9) for 2^18). Dropout 0.1 is MaskGIT's; condition dropout 0.1
  gives the null condition CFG needs."""
  if size not in SIZES:
    raise ConfigError(f"masked size {size!r} is not a preset; choose one of {sorted(SIZES)}.")
  embed_dim, num_layers, num_heads, mlp_dim = SIZES[size]
  config = ml_collections.ConfigDict(dict(
      name="masked", embed_dim=embed_dim, num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim, block=block,
      conditioning=conditioning, num_classes=num_classes if conditioning == "class" else 0,
      text_length=text_length if conditioning == "text" else 0, text_dim=text_dim if conditioning == "text" else 0,
      cond_dropout_rate=0.1, dropout_rate=dropout, attention_dropout_rate=0.0, scan_layers=True, remat_policy="none",
      factorized_bits=tuple(factorized_bits), dtype="float32"))
  config.update(overrides)
  return config


def masked_loss(schedule: str = "cosine", label_smoothing: float = 0.1, tasks: tuple[str, ...] = ("generation",),
                given_frames: int = 1) -> ml_collections.ConfigDict:
  """Training masks and targets: the mask schedule, label smoothing (MaskGIT 0.1, MAGVIT 1e-4), and the
  conditional tasks trained together (`generators/task_masks.py`; MAGVIT's multi-task video set is
  `("generation", "frame_prediction", "interpolation", "inpainting", "outpainting")`)."""
  return ml_collections.ConfigDict(dict(schedule=schedule, label_smoothing=label_smoothing, tasks=tuple(tasks),
                                        given_frames=given_frames))


def markovgen(enabled: bool = True, num_steps: int = 12, exit_steps: int = 4, rank: int = 32, kernel_size: int = 3,
              iterations: int = 5, start_step: int = 0, cfg_scale: float = 1.0) -> ml_collections.ConfigDict:
  """MarkovGen's MRF (`config.markovgen`): it replaces the last `exit_steps` of a `num_steps` decoder. The label
  compatibility has rank `rank`, the spatial kernel is `kernel_size`^2, and mean field runs `iterations` updates
  (the seed leaves all three open; ours). Its phase starts at `start_step` (0: the run trains only the MRF, on a
  masked model loaded with `config.init_from`). The frozen model's unary logits are guided at `cfg_scale`, as
  when sampling."""
  return ml_collections.ConfigDict(dict(enabled=enabled, num_steps=num_steps, exit_steps=exit_steps, rank=rank,
                                        kernel_size=kernel_size, iterations=iterations, start_step=start_step,
                                        cfg_scale=cfg_scale))


SAMPLING_FIELDS = ("num_steps", "schedule", "choice_temperature", "exit_steps", "final_fill", "cfg_scale", "cfg_convention",
                   "cfg_ramp", "temperature", "top_k", "seed")


def sampling(protocol: ml_collections.ConfigDict | None = None, **overrides) -> ml_collections.ConfigDict:
  """--mode=sample settings: the decoder fields of `protocol` (an `evaluation.masked_protocol`, default MaskGIT's
  8-step FID protocol), then `overrides`; `prompts`, `prompts_file`, `num_per_prompt` as for every generator."""
  protocol = protocol if protocol is not None else evaluation.masked_protocol("maskgit_fid")
  config = ml_collections.ConfigDict({"protocol": protocol.name, **{key: protocol[key] for key in SAMPLING_FIELDS}})
  config.update(dict(prompts="", prompts_file="", num_per_prompt=4, inputs=""))
  config.update(overrides)
  return config
