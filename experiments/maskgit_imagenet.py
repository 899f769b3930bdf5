r"""MaskGIT class-conditional ImageNet 256 (Chang et al. 2022): a VQGAN f16 with 1024 codes, then MaskGIT's 24-layer,
768-wide post-LN BERT transformer (16 heads, MLP 3072, tied head) over its 16x16 tokens, decoded in 8 steps.

  tokgen --config=experiments/maskgit_imagenet.py:tokenizer --workdir=gs://bucket/maskgit/vq
  tokgen --config=experiments/maskgit_imagenet.py --workdir=gs://bucket/maskgit/mlm --mode=encode
  tokgen --config=experiments/maskgit_imagenet.py --workdir=gs://bucket/maskgit/mlm

ImageNet is read from the user's TFDS build. MaskGIT's recipe (NUMERICS.md): AdamW β (0.9, 0.96), weight
decay 0.045, lr 1e-4 with 5000 warmup steps, batch 256, label smoothing 0.1, dropout 0.1; decoding with the
cosine schedule, choice temperature 4.5 and 8 steps (`maskgit_fid`; `protocol=fid512` is the 12-step ImageNet
512 one). The tokenizer's codebook (1024 × 256, not normalized) is MaskGIT's; its VQGAN widths are taming's. The
transformer has 172.5M parameters. Seed 004 lists MaskGIT at ImageNet 512 as 227M; the stated widths give 172.5M
(plus 0.6M positions at 512), so that figure must count more than the transformer. We follow the widths. `--mode=compile` for v5e:4x4 at batch 256: the train step takes 3.49 of 16 GiB per
chip and 5.93 TFLOP per chip per call; the 8-step sampler takes 0.99 GiB.

Arguments: `tokenizer` or the transformer (default), then `steps=N`, `batch=N`, `tokenizer_workdir=PATH`,
`protocol=fid|fid512`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, evaluation, gan, guard, losses, masked, mesh, optimizer, quantizers, vqgan
from tokgen_jax.errors import ConfigError

IMAGE_SIZE = 256
PROTOCOLS = {"fid": "maskgit_fid", "fid512": "maskgit_512_fid"}


def _common(config: ml_collections.ConfigDict) -> None:
  config.seed = 0
  config.log_every_steps = 100
  config.eval_every_steps = 50_000
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3
  config.init_from = ""
  config.guard = guard.guard()
  config.mesh = mesh.mesh()


def tokenizer_config(steps: int = 0, batch: int = 0) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  _common(config)
  config.total_steps = steps or 1_000_000
  config.batch_size = batch or 256
  config.model = vqgan.vqgan("B", quantizer=quantizers.vq(codebook_size=1024, dim=256, l2_normalize=False,
                                                          restart_after_steps=0))
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(enabled=True, start_step=20_000)
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=0, weight_decay=0.0, ema_decay=0.999)
  config.data = data.imagenet(image_size=IMAGE_SIZE)
  config.topology = "v5e:8x8"
  config.eval = evaluation.evaluation(batch_size=64, num_grid_images=8)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def masked_config(steps: int = 0, batch: int = 0, tokenizer_workdir: str = "",
                  protocol: str = "fid") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "masked"
  _common(config)
  config.batch_size = batch or 256
  config.total_steps = steps or 300 * 1_281_167 // config.batch_size
  config.tokenizer = ml_collections.ConfigDict(dict(experiment=tokenizer_config(), workdir=tokenizer_workdir,
                                                    checkpoint_step=0))
  config.tokenize = ml_collections.ConfigDict(dict(data=data.imagenet(image_size=IMAGE_SIZE), batch_size=256,
                                                   shard_size=50_000, text_encoder=False))
  config.model = masked.masked("maskgit", conditioning="class", num_classes=1000, block="bert", dtype="bfloat16",
                               remat_policy="full")
  config.loss = masked.masked_loss("cosine", label_smoothing=0.1)
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=5000, weight_decay=0.045, b1=0.9, b2=0.96)
  config.data = data.tokens()
  config.topology = "v5e:4x4"  # the pod --mode=compile checks
  if protocol not in PROTOCOLS:
    raise ConfigError(f"maskgit_imagenet: protocol={protocol!r} is not one of {sorted(PROTOCOLS)}.")
  eval_protocol = evaluation.masked_protocol(PROTOCOLS[protocol])
  config.eval = evaluation.evaluation(batch_size=256, num_grid_images=16, protocol=eval_protocol)
  config.sample = masked.sampling(eval_protocol)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, local=False, tokenizer=False, steps=0, batch=0, tokenizer_workdir="", protocol="fid")
  if arg.tokenizer:
    return tokenizer_config(arg.steps, arg.batch)
  return masked_config(arg.steps, arg.batch, arg.tokenizer_workdir, arg.protocol)
