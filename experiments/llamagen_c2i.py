r"""LlamaGen class-conditional ImageNet 256 (Sun et al. 2024): a VQ tokenizer (16x16 tokens of a 16384 x 8
l2-normalized codebook) and a GPT-B/L/XL class-conditional Llama over its tokens.

  tokgen --config=experiments/llamagen_c2i.py:tokenizer --workdir=gs://bucket/llamagen/vq
  tokgen --config=experiments/llamagen_c2i.py:size=B --workdir=gs://bucket/llamagen/gpt_b --mode=tokenize
  tokgen --config=experiments/llamagen_c2i.py:size=B --workdir=gs://bucket/llamagen/gpt_b

ImageNet is read from the user's TFDS ArrayRecord build (`tfds build imagenet2012 --file_format=array_record`).
Settings follow LlamaGen's c2i recipe: AdamW lr 1e-4, betas (0.9, 0.95), weight decay 0.05, gradient clip 1.0,
batch 256, 300 epochs; class, token and residual dropout 0.1.

Evaluation protocols (`configs/evaluation.py`, recorded in every eval JSON): `protocol=demo` (default) samples
16 eval classes at LlamaGen's demo setting, cfg 4.0 and top-k 2000; `protocol=fid` is its FID setting, cfg 1.5,
no top-k, 50,000 samples:

  tokgen --config=experiments/llamagen_c2i.py:size=B,protocol=fid --workdir=gs://bucket/llamagen/gpt_b --mode=eval

--mode=sample always draws at the demo setting (`config.sample`).

Arguments: `tokenizer` (train the VQ tokenizer) or `size=B|L|XL|XXL|3B` (the generator, default B), then
`steps=N`, `batch=N`, `tokenizer_workdir=PATH`, `protocol=demo|fid`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import ar, data, evaluation, gan, guard, losses, mesh, optimizer, quantizers, vqgan

IMAGE_SIZE = 256
IMAGENET_TRAIN = 1_281_167


def tokenizer_config(steps: int = 0, batch: int = 0) -> ml_collections.ConfigDict:
  """VQGAN f16 (taming widths, size B) with LlamaGen's 16384 x 8 l2-normalized codebook, L1 + L2 + GAN."""
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
  # LlamaGen's recipe has no dead-code restarts (its l2-normalized 8-dim codes reach ~97% usage on ImageNet).
  config.model = vqgan.vqgan("B", quantizer=quantizers.vq(codebook_size=16384, dim=8, restart_after_steps=0))
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(enabled=True, start_step=20_000)
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=0, weight_decay=0.0, ema_decay=0.999)
  config.data = data.imagenet(image_size=IMAGE_SIZE)
  config.mesh = mesh.mesh()
  config.topology = "v5e:8x8"
  config.eval = evaluation.evaluation(batch_size=64, num_grid_images=8)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def generator_config(size: str = "B", steps: int = 0, batch: int = 0, protocol: str = "demo",
                     tokenizer_workdir: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "generator"
  config.seed = 0
  config.batch_size = batch or 256
  config.total_steps = steps or 300 * IMAGENET_TRAIN // config.batch_size
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
  config.model = ar.ar(size, conditioning="class", num_classes=1000, dropout=0.1)
  config.loss = ml_collections.ConfigDict(dict(layer_weights=()))
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=0, weight_decay=0.05, b1=0.9, b2=0.95,
                                     grad_clip_norm=1.0, end_learning_rate_factor=1.0)
  config.data = data.tokens()
  config.mesh = mesh.mesh()
  config.topology = "v5e:16x16"  # the pod --mode=compile checks (batch 256: one sequence per chip)
  config.eval = evaluation.evaluation(batch_size=256, num_grid_images=16,
                                      protocol=evaluation.named_protocol(f"llamagen_{protocol}"))
  config.sample = ar.sampling(evaluation.named_protocol("llamagen_demo"))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tokenizer=False, size="B", steps=0, batch=0, tokenizer_workdir="", protocol="demo")
  if arg.tokenizer:
    return tokenizer_config(arg.steps, arg.batch)
  return generator_config(arg.size, arg.steps, arg.batch, arg.protocol, arg.tokenizer_workdir)
