r"""DiT class-conditional ImageNet 256 (Peebles & Xie 2023): a KL autoencoder (256² → 32x32x4 latents, the
SD-VAE's shape) and a DiT-S/B/L/XL over its latents.

  tokgen --config=experiments/dit_imagenet.py:tokenizer --workdir=gs://bucket/dit/kl
  tokgen --config=experiments/dit_imagenet.py:size=XL --workdir=gs://bucket/dit/xl2 --mode=encode
  tokgen --config=experiments/dit_imagenet.py:size=XL --workdir=gs://bucket/dit/xl2
  tokgen --config=experiments/dit_imagenet.py:size=XL --mode=summary       # 675M parameters for XL/2
  tokgen --config=experiments/dit_imagenet.py:size=XL --mode=compile       # fits config.topology's chips?

ImageNet is read from the user's TFDS ArrayRecord build (`tfds build imagenet2012 --file_format=array_record`).
The generator follows DiT's recipe: linear β schedule over 1000 steps, ε-prediction with learned variance
(`learn_sigma`, the VLB term), 10% label dropout, AdamW lr 1e-4 with no weight decay and no warmup, EMA 0.9999,
batch 256; DiT trains XL/2 for 7M steps (its table's 400k steps for the size comparison is the default here).
DiT's autoencoder is Stable Diffusion's f8 KL VAE with latents × 0.18215; this experiment trains its own KL
autoencoder (the VQGAN trunk with LDM's KL bottleneck, downsampling 8) and reads its scale (1 / std) from the
encoded shards instead.

Evaluation protocols (recorded in every eval JSON): `protocol=demo` (default) samples 16 eval classes with 250
DDPM steps at cfg 4.0; `protocol=fid` is DiT's FID setting, cfg 1.5, 50,000 samples. DiT guides only the first 3
of 4 latent channels; `--config.eval.protocol.cfg_channels=3` reproduces that.

Arguments: `tokenizer` or `size=S|B|L|XL` (default XL), `patch=2|4|8` (default 2), then `steps=N`, `batch=N`,
`tokenizer_workdir=PATH`, `protocol=demo|fid`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, diffusion, evaluation, gan, guard, losses, mesh, optimizer, quantizers
from tokgen_jax.errors import ConfigError

IMAGE_SIZE = 256
IMAGENET_TRAIN = 1_281_167
LATENT_CHANNELS = 4


def tokenizer_config(steps: int = 0, batch: int = 0) -> ml_collections.ConfigDict:
  """A downsampling-8 VQGAN trunk (widths 128-256-512-512, two res blocks a level, attention at the bottom) with
  LDM's 4-channel KL bottleneck (weight 1e-6), L1 + L2 + GAN."""
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  config.seed = 0
  config.total_steps = steps or 400_000
  config.batch_size = batch or 128
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3
  config.init_from = ""
  config.guard = guard.guard()
  config.model = ml_collections.ConfigDict(dict(
      name="vqgan", channels=128, channel_multipliers=(1, 2, 4, 4), num_res_blocks=2, use_attention=True,
      num_groups=32, dropout=0.0, quantizer=quantizers.kl(dim=LATENT_CHANNELS)))
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(enabled=True, start_step=50_000)
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=0, weight_decay=0.0, ema_decay=0.999)
  config.data = data.imagenet(image_size=IMAGE_SIZE)
  config.mesh = mesh.mesh()
  config.topology = "v5e:8x8"
  config.eval = evaluation.evaluation(batch_size=64, num_grid_images=8)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def dit_config(size: str = "XL", patch: int = 2, steps: int = 0, batch: int = 0, protocol: str = "demo",
               tokenizer_workdir: str = "") -> ml_collections.ConfigDict:
  if f"dit_{protocol}" not in evaluation.DIFFUSION_PROTOCOLS:
    raise ConfigError(f"dit_imagenet: protocol={protocol!r} is not DiT's; choose demo or fid.")
  config = ml_collections.ConfigDict()
  config.task = "diffusion"
  config.seed = 0
  config.batch_size = batch or 256
  config.total_steps = steps or 400_000
  config.log_every_steps = 100
  config.eval_every_steps = 50_000
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3
  config.init_from = ""
  config.guard = guard.guard()
  config.tokenizer = ml_collections.ConfigDict(dict(experiment=tokenizer_config(), workdir=tokenizer_workdir,
                                                    checkpoint_step=0))
  config.tokenize = ml_collections.ConfigDict(dict(data=data.imagenet(image_size=IMAGE_SIZE), batch_size=256,
                                                   shard_size=50_000, text_encoder=False))
  config.model = diffusion.dit(size, patch_size=patch, conditioning="class", num_classes=1000, learn_sigma=True)
  config.diffusion = diffusion.process("linear", 1000, "eps")
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=0, weight_decay=0.0, ema_decay=0.9999,
                                     end_learning_rate_factor=1.0)
  config.data = data.tokens(source="latents")
  config.mesh = mesh.mesh()
  config.topology = "v5e:4x4"  # the pod --mode=compile checks (batch 256: 16 per chip)
  config.eval = evaluation.evaluation(batch_size=256, num_grid_images=16,
                                      protocol=evaluation.diffusion_protocol(f"dit_{protocol}"))
  config.sample = diffusion.sampling(evaluation.diffusion_protocol("dit_demo"))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tokenizer=False, size="XL", patch=2, steps=0, batch=0, tokenizer_workdir="",
                  protocol="demo")
  if arg.tokenizer:
    return tokenizer_config(arg.steps, arg.batch)
  return dit_config(arg.size, arg.patch, arg.steps, arg.batch, arg.protocol, arg.tokenizer_workdir)
