r"""W.A.L.T. class-conditional UCF-101 (seed 000's 214M generator): MAGVIT-v2's causal 3D CNN with an 8-channel KL
bottleneck (17x128x128 clips → 5x16x16x8 latents), then a 214M W.A.L.T. over the latents, on an accelerator pod.

  tokgen --config=experiments/walt_ucf101.py:tokenizer --workdir=gs://bucket/walt/vae
  tokgen --config=experiments/walt_ucf101.py --workdir=gs://bucket/walt/gen --mode=encode
  tokgen --config=experiments/walt_ucf101.py --workdir=gs://bucket/walt/gen
  tokgen --config=experiments/walt_ucf101.py --mode=summary    # 213.1M parameters, 5x16x16x8 latents
  tokgen --config=experiments/walt_ucf101.py --mode=compile    # fits config.topology's chips?

UCF-101 is read from the user's TFDS ArrayRecord build (`tfds build ucf101 --file_format=array_record`). The
generator: patch 2 (640 tokens), spatial windows alternating with 4x4-patch spatiotemporal windows, AdaLN-LoRA of
rank 256, v-prediction with self-conditioning, the first 1-2 latent frames given for frame prediction, label
dropout 0.1, 50 DDIM steps at sampling (seed 000 reports 50 steps). Ours, since the paper gives none of them: the
depth/width of the 214M model, the window size, the guidance scale 1.25, the schedule (linear, 1000 steps) and
the optimizer (AdamW lr 1e-4, batch 256).

Arguments: `tokenizer`, then `steps=N`, `batch=N`, `tokenizer_workdir=PATH`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, diffusion, evaluation, gan, guard, losses, magvit2, mesh, optimizer, quantizers

NUM_CLASSES = 101
LATENT_CHANNELS = 8


def _common(config: ml_collections.ConfigDict, steps: int, batch: int) -> None:
  config.seed = 0
  config.total_steps = steps
  config.batch_size = batch
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3
  config.init_from = ""
  config.guard = guard.guard()
  config.mesh = mesh.mesh()


def _ucf101() -> ml_collections.ConfigDict:
  return data.videos("tfds_video", num_frames=17, image_size=128, eval_image_size=128, name="ucf101",
                     eval_split="test", resize=128)


def tokenizer_config(steps: int = 0, batch: int = 0) -> ml_collections.ConfigDict:
  """MAGVIT-v2 at the paper's size with an 8-channel KL bottleneck (weight 1e-6), L1 + L2 + 3D GAN."""
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  _common(config, steps or 300_000, batch or 256)
  config.model = magvit2.magvit2("paper", quantizer=quantizers.kl(dim=LATENT_CHANNELS))
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(
      enabled=True, disc=gan.discriminator("stylegan3d", channels=64, channel_multipliers=(2, 4, 4, 4, 4)),
      start_step=50_000, learning_rate=1e-4)
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=5_000, weight_decay=0.0, ema_decay=0.999)
  config.data = _ucf101()
  config.topology = "v5e:16x16"
  config.eval = evaluation.evaluation(batch_size=256, num_grid_images=4)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def walt_config(steps: int = 0, batch: int = 0, tokenizer_workdir: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "diffusion"
  _common(config, steps or 200_000, batch or 256)
  config.tokenizer = ml_collections.ConfigDict(dict(experiment=tokenizer_config(), workdir=tokenizer_workdir,
                                                    checkpoint_step=0))
  config.tokenize = ml_collections.ConfigDict(dict(data=_ucf101(), batch_size=256, shard_size=10_000,
                                                   text_encoder=False))
  config.model = diffusion.walt("214M", patch_size=2, window=(4, 4), conditioning="class",
                                num_classes=NUM_CLASSES, frame_condition=True)
  config.diffusion = diffusion.process("linear", 1000, "v", max_given_frames=2)
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=5_000, weight_decay=0.0, ema_decay=0.9999)
  config.data = data.tokens(source="latents")
  config.topology = "v5e:4x4"  # the pod --mode=compile checks (batch 256: 16 clips per chip)
  protocol = evaluation.diffusion_protocol("walt_ucf101", method="ddim", num_steps=50, cfg_scale=1.25,
                                           num_samples=16)
  config.eval = evaluation.evaluation(batch_size=256, num_grid_images=8, protocol=protocol)
  config.sample = diffusion.sampling(protocol)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tokenizer=False, steps=0, batch=0, tokenizer_workdir="")
  if arg.tokenizer:
    return tokenizer_config(arg.steps, arg.batch)
  return walt_config(arg.steps, arg.batch, arg.tokenizer_workdir)
