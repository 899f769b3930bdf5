r"""VAR class-conditional ImageNet 256 (Tian et al. 2024): the multi-scale residual VQVAE (16x16 latent, scales
1..16 = 680 tokens of one 4096 x 32 codebook) and VAR-d16/20/24/30 over its token maps.

  tokgen --config=experiments/var_imagenet.py:tokenizer --workdir=gs://bucket/var/vqvae
  tokgen --config=experiments/var_imagenet.py:depth=16 --workdir=gs://bucket/var/d16 --mode=encode
  tokgen --config=experiments/var_imagenet.py:depth=16 --workdir=gs://bucket/var/d16
  tokgen --config=experiments/var_imagenet.py:depth=16 --workdir=gs://bucket/var/d16 --mode=eval

ImageNet is read from the user's TFDS ArrayRecord build (`tfds build imagenet2012 --file_format=array_record`).

- Tokenizer: VAR has not published its VQVAE's training code (its most requested piece, VAR#22/#28). This one is
  VQGAN f16 (taming widths, size B) with VAR's quantizer (`msrq`: area-downsampled residuals, bicubic upsampling,
  φ = ½h + ½conv3x3(h), β = 0.25) trained with L1 + L2 + perceptual + GAN as `llamagen_c2i`'s tokenizer, with
  idle-code restarts and a k-means start drawn from all scales in equal shares (ours: they keep the coarse scales'
  codes alive). Its eval logs usage and perplexity per scale and the PSNR of each prefix of scales. The per-scale
  standardized lookup and the usage restarts of `var_shapes` (`--config.model.quantizer.standardize_scales=True
  --config.model.quantizer.restart_below_usage=0.5`) lifted the coarse scales' usage there; they stay off here
  until measured at this size.
- Generator: VAR's sizes (width 64·d, d heads, MLP 4, drop-path 0.1·d/24; `configs/var.py`), normalized
  attention, 10% class dropout, 1/L token weights, AdamW β (0.9, 0.95), weight decay 0.05, clip 2, lr
  1e-4·batch/256 (VAR's rules); the batch (768) and 200 epochs are our choice of VAR's range. bf16 compute with
  float32 parameters; blocks recompute in the backward pass (`remat`).
- Evaluation: `protocol=fid` (default) is VAR's FID protocol, `var_fid`: cfg 1.5 in VAR's convention ramped over
  the scales (this sampler's s = 2.5 with `cfg_ramp`), top-k 900, top-p 0.96, 50 samples per class (the first
  50,000 validation labels: 50 of each class), drawn 256 rows a call. With `--config.eval.inception_weights` and
  `--config.eval.reference_statistics` (the tokenizer experiment's `--mode=stats`) the eval reports `cfg_fid` and
  `nocfg_fid` (and `_precision`, `_recall`) beside the tokenizer's `reference_fid`; the Inception weights alone give
  `cfg_is` and `nocfg_is`.

Arguments: `tokenizer`, or `depth=16|20|24|30` (default 16), then `steps=N`, `batch=N`, `tokenizer_workdir=PATH`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, evaluation, gan, guard, losses, mesh, optimizer, quantizers, var, vqgan
from tokgen_jax.errors import ConfigError

IMAGE_SIZE = 256
IMAGENET_TRAIN = 1_281_167
# The v5e topology `--mode=compile` checks each depth on (batch 768; see the README's VAR section for its figures).
TOPOLOGIES = {16: "v5e:4x4", 20: "v5e:4x8", 24: "v5e:8x8", 30: "v5e:8x8"}
# d16's replicated state (3.5 GiB per chip) fits data parallelism; from d20 on the state is sharded (ZeRO-3): d30
# replicated needs 27.5 GiB of temporaries per v5e chip.
FSDP_FROM_DEPTH = 20


def tokenizer_config(steps: int = 0, batch: int = 0) -> ml_collections.ConfigDict:
  """VQGAN f16 (size B) with VAR's multi-scale quantizer (4096 x 32, 680 tokens), L1 + L2 + GAN."""
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
  config.model = vqgan.vqgan("B", quantizer=quantizers.msrq(restart_after_steps=20, kmeans_init_iterations=10))
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(enabled=True, start_step=20_000)
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=0, weight_decay=0.0, ema_decay=0.999)
  config.data = data.imagenet(image_size=IMAGE_SIZE)
  config.mesh = mesh.mesh()
  config.topology = "v5e:8x8"
  config.eval = evaluation.evaluation(batch_size=64, num_grid_images=8)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def generator_config(depth: int = 16, steps: int = 0, batch: int = 0,
                     tokenizer_workdir: str = "") -> ml_collections.ConfigDict:
  if depth not in TOPOLOGIES:
    raise ConfigError(f"var_imagenet: depth={depth} is not one of VAR's {sorted(TOPOLOGIES)}.")
  config = ml_collections.ConfigDict()
  config.task = "var"
  config.seed = 0
  config.batch_size = batch or 768
  config.total_steps = steps or 200 * IMAGENET_TRAIN // config.batch_size
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
  # Blocks recompute in the backward pass: without it d16's activations alone take 33.8 GB per v5e chip.
  config.model = var.var(depth, num_classes=1000, dtype="bfloat16", remat_policy="full")
  config.optimizer = var.var_optimizer(config.batch_size)
  config.data = data.tokens()
  config.mesh = mesh.preset("fsdp") if depth >= FSDP_FROM_DEPTH else mesh.mesh()
  config.topology = TOPOLOGIES[depth]
  protocol = evaluation.named_protocol("var_fid")
  config.eval = evaluation.evaluation(batch_size=256, num_grid_images=16, protocol=protocol)
  config.sample = var.sampling(protocol)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tokenizer=False, depth=16, steps=0, batch=0, tokenizer_workdir="")
  if arg.tokenizer:
    return tokenizer_config(arg.steps, arg.batch)
  return generator_config(int(arg.depth), arg.steps, arg.batch, arg.tokenizer_workdir)
