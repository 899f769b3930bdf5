"""AR generator presets (`config.model` of the generator task) and sampling settings.

Sizes follow LlamaGen's GPT family (Sun et al. 2024, Table 1): B 111M, L 343M, XL 775M, XXL 1.4B, 3B 3.1B (at
a 16384-entry vocabulary); "hitvideo" is HiTVideo's 3.1B text-to-video Llama (24 layers, width 3200, 32 heads).
"""

import ml_collections

from tokgen_jax.configs import evaluation
from tokgen_jax.errors import ConfigError

SIZES = {
    # name: (embed_dim, num_layers, num_heads, num_kv_heads)
    "local": (128, 4, 4, 2),
    "B": (768, 12, 12, 12),
    "L": (1024, 24, 16, 16),
    "XL": (1280, 36, 20, 20),
    "XXL": (1536, 48, 24, 24),
    "3B": (3200, 24, 32, 32),
    "hitvideo": (3200, 24, 32, 32),
}


def ar(size: str = "local", conditioning: str = "class", num_classes: int = 1000, text_length: int = 120,
       text_dim: int = 2048, ordering: str = "row_major", dropout: float = 0.1, **overrides) -> ml_collections.ConfigDict:
  """An `ARTransformer` config. Residual/FFN dropout, token dropout and condition dropout default to 0.1
  (LlamaGen). `text_length`/`text_dim` are the padded text prefix (HiTVideo: 120 Flan-T5-XL tokens of 2048;
  the offline MiniLM encoder gives 384). `dtype` 'bfloat16' computes in bf16 with float32 parameters;
  `attention_implementation='cudnn'` then selects the fused GPU attention kernel."""
  if size not in SIZES:
    raise ConfigError(f"AR size {size!r} is not a preset; choose one of {sorted(SIZES)}.")
  embed_dim, num_layers, num_heads, num_kv_heads = SIZES[size]
  config = ml_collections.ConfigDict(dict(
      name="ar", embed_dim=embed_dim, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
      mlp_dim=0, conditioning=conditioning, num_classes=num_classes if conditioning == "class" else 0,
      text_length=text_length if conditioning == "text" else 0, text_dim=text_dim if conditioning == "text" else 0,
      cond_dropout_rate=0.1, ordering=ordering, rope="grid", rope_theta=10000.0, dropout_rate=dropout,
      token_dropout_rate=dropout, attention_dropout_rate=0.0, attention_implementation="xla", remat_policy="none",
      scan_layers=True, dtype="float32"))
  config.update(overrides)
  return config


def sampling(protocol: ml_collections.ConfigDict | None = None, **overrides) -> ml_collections.ConfigDict:
  """--mode=sample settings (`generators.SamplingSettings`): the sampling fields of `protocol` (an
  `evaluation.protocol`, default LlamaGen's demo: cfg 4.0, top-k 2000), then `overrides`. `protocol` names it;
  `prompts`: `;`-separated captions (or class ids) for --mode=sample; `prompts_file`: one per line;
  `num_per_prompt` samples each."""
  protocol = protocol if protocol is not None else evaluation.protocol("llamagen_demo")
  config = ml_collections.ConfigDict(dict(
      protocol=protocol.name, cfg_scale=protocol.cfg_scale, cfg_convention=protocol.cfg_convention,
      cfg_ramp=protocol.cfg_ramp, temperature=protocol.temperature, top_k=protocol.top_k, top_p=protocol.top_p,
      seed=protocol.seed, prompts="", prompts_file="", num_per_prompt=4, inputs=""))
  config.update(overrides)
  return config
