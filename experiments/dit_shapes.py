r"""Latent diffusion on the shapes world: a KL autoencoder, then a class- or text-conditional DiT on its latents.

The shapes world draws named shapes whose color, shape, size and position are read back from pixels, so samples
are scored against their prompts instead of with FID. Four commands on a 2-core CPU:

  tokgen --config=experiments/dit_shapes.py:tokenizer --workdir=/tmp/dit_shapes/tokenizer
  tokgen --config=experiments/dit_shapes.py:local --workdir=/tmp/dit_shapes/dit --mode=encode
  tokgen --config=experiments/dit_shapes.py:local --workdir=/tmp/dit_shapes/dit
  tokgen --config=experiments/dit_shapes.py:local --workdir=/tmp/dit_shapes/dit --mode=sample \
      --config.sample.prompts="a large red circle in the center;a small blue square in the top left"

1. `:tokenizer` trains the 'local' VQGAN with LDM's KL bottleneck instead of a codebook (32x32 scenes → 8x8x4
   continuous latents, KL weight 1e-6).
2. `--mode=encode` writes the posterior means of the train and eval scenes as float latent shards under
   WORKDIR/tokens, with the captions' all-MiniLM-L6-v2 token states and the moments from which the latent scale
   (LDM's 1 / std) is read when training starts.
3. Training fits a DiT ('local' size: 4 blocks of width 128, patch 1 → 64 tokens) with ε-prediction, learned
   variance, min-SNR loss weights and 10% condition dropout on the linear 1000-step schedule, each latent channel
   standardized (about 40 minutes). Each eval reports the held-out loss at
   four timesteps and decodes samples of the first `num_samples` eval captions with and without CFG (250 DDPM
   steps), scored by `metrics.shapes.match`; `reference_color_shape` scores the tokenizer's reconstruction of the
   real scenes, the ceiling through this tokenizer.
4. `--mode=sample` draws `num_per_prompt` samples per prompt into WORKDIR/samples/prompts_step_N.png and prints
   the sampler's time; `--config.sample.method=ddim --config.sample.num_steps=50` samples with DDIM-50 instead.

Arguments: `tokenizer` | `local` (default), then `condition=text` (default) or `class` (prompts are class names
such as 'red circle' or ids 0-39), `steps=N`, `batch=N`, `tokenizer_workdir=PATH` (where `:tokenizer` was
trained).
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, diffusion, evaluation, gan, guard, losses, mesh, optimizer, quantizers, vqgan
from tokgen_jax.data import shapes

DEFAULT_TOKENIZER_WORKDIR = "/tmp/dit_shapes/tokenizer"
IMAGE_SIZE = 32
LATENT_CHANNELS = 4  # LDM's f4/f8 KL autoencoders keep 3-4 channels
TEXT_LENGTH = 24  # MiniLM word pieces of a one-shape caption, [CLS] and [SEP] included, fit
TRAIN_EXAMPLES, EVAL_EXAMPLES = 20_000, 500


def _shapes_data() -> ml_collections.ConfigDict:
  # One shape a scene: its class (color x shape, 40 classes) names the scene for class conditioning.
  return data.shapes(IMAGE_SIZE, num_shapes=1, train_examples=TRAIN_EXAMPLES, eval_examples=EVAL_EXAMPLES)


def _common(config: ml_collections.ConfigDict, steps: int, batch: int) -> None:
  config.seed = 0
  config.total_steps = steps
  config.batch_size = batch
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.init_from = ""
  config.guard = guard.guard()
  config.mesh = mesh.mesh()
  config.topology = ""  # CPU-only experiment


def tokenizer_config(steps: int = 0, batch: int = 0) -> ml_collections.ConfigDict:
  """VQGAN 'local' (downsampling 4) with a 4-channel KL bottleneck, L1 + L2, EMA weights."""
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  _common(config, steps or 2400, batch or 16)
  config.eval_every_steps = 1200
  config.model = vqgan.vqgan("local", quantizer=quantizers.kl(dim=LATENT_CHANNELS))
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(enabled=False)
  config.optimizer = optimizer.adamw(learning_rate=1e-3, warmup_steps=100, weight_decay=0.0, ema_decay=0.995)
  config.data = _shapes_data()
  config.eval = evaluation.evaluation(batch_size=50, num_grid_images=8)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def dit_config(condition: str = "text", steps: int = 0, batch: int = 0,
               tokenizer_workdir: str = DEFAULT_TOKENIZER_WORKDIR) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "diffusion"
  _common(config, steps or 12000, batch or 32)
  config.eval_every_steps = 4000
  config.tokenizer = ml_collections.ConfigDict(dict(
      experiment=tokenizer_config(), workdir=tokenizer_workdir, checkpoint_step=0))
  config.tokenize = ml_collections.ConfigDict(dict(
      data=_shapes_data(), batch_size=250, shard_size=10_000, text_encoder=condition == "text"))
  config.model = diffusion.dit("local", patch_size=1, conditioning=condition, num_classes=shapes.NUM_CLASSES,
                               text_length=TEXT_LENGTH, text_dim=384)
  # Each latent channel standardized: this KL autoencoder's channels differ 9x in std (0.16 to 1.39), and with
  # LDM's single scale the small ones drown in the sampler's error (held-out samples 0.02 color+shape at 2000
  # steps).
  # Min-SNR-γ weights (Hang et al. 2023, γ 5; DiT itself trains unweighted): held-out samples drawn with CFG keep
  # their prompted color and shape 0.74 of the time at step 4000 (0.41 unweighted) and 0.95 at step 8000.
  config.diffusion = diffusion.process("linear", 1000, "eps", latent_normalization="channel",
                                       loss_weighting="min_snr")
  # DiT trains at lr 1e-4 with batch 256; this batch of 32 on a CPU budget takes a larger step.
  config.optimizer = optimizer.adamw(learning_rate=5e-4, warmup_steps=200, weight_decay=0.0, ema_decay=0.999)
  config.data = data.tokens(source="latents")
  # This world's protocol: 100 eval prompts, 250 DDPM steps at cfg 3.0 (and without guidance).
  shapes_protocol = evaluation.diffusion_protocol("shapes", method="ddpm", num_steps=250, cfg_scale=3.0,
                                                  num_samples=100)
  config.eval = evaluation.evaluation(batch_size=100, num_grid_images=16, protocol=shapes_protocol)
  config.sample = diffusion.sampling(shapes_protocol)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, local=False, tokenizer=False, condition="text", steps=0, batch=0,
                  tokenizer_workdir=DEFAULT_TOKENIZER_WORKDIR)
  if arg.tokenizer:
    return tokenizer_config(arg.steps, arg.batch)
  return dit_config(arg.condition, arg.steps, arg.batch, arg.tokenizer_workdir)
