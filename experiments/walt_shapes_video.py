r"""Text-to-video latent diffusion on the moving shapes world: MAGVIT-v2's causal 3D CNN with a KL bottleneck (W.A.L.T.'s
continuous first stage), then a W.A.L.T. denoiser on its latents that also predicts frames.

  tokgen --config=experiments/walt_shapes_video.py:tokenizer --workdir=/tmp/walt_shapes/tokenizer
  tokgen --config=experiments/walt_shapes_video.py:local --workdir=/tmp/walt_shapes/walt --mode=encode
  tokgen --config=experiments/walt_shapes_video.py:local --workdir=/tmp/walt_shapes/walt
  tokgen --config=experiments/walt_shapes_video.py:local --workdir=/tmp/walt_shapes/walt --mode=sample \
      --config.sample.prompts="a large red circle in the center moving right"

1. `:tokenizer` trains the 'local' MAGVIT-v2 (9-frame 32x32 clips of one moving shape) with an 8-channel KL
   bottleneck instead of LFQ, as W.A.L.T. uses it: 9 frames → 5 latent frames (the first frame alone, then 2
   frames a latent frame), 8x8 positions, 8 channels.
2. `--mode=encode` writes the clips' posterior means and caption states as float latent shards.
3. Training fits a 'local' W.A.L.T. (4 blocks of width 128, patch 1, spatial windows alternating with 4x4
   spatiotemporal windows, AdaLN-LoRA) with v-prediction and self-conditioning, 10% caption dropout, and the first
   latent frame given for half of the clips (frame prediction / image-to-video, `max_given_frames` 1). Each eval
   reports the held-out loss at four timesteps and scores samples of the first eval captions with and without CFG
   by `metrics.shapes` (color, shape, motion read back from the decoded frames); `pred_*` scores the clips
   continued from their real first frame the same way, and `pred_psnr` the frames it predicted against the
   tokenizer's reconstruction of the real ones.
4. `--mode=sample` with `--config.sample.inputs=first_frame.png` (one file for all prompts, or one per prompt)
   continues that frame under each prompt (`--config.sample.given_frames=k`: the first k latent frames of a video).

Arguments: `tokenizer` | `local` (default), then `steps=N`, `batch=N`, `tokenizer_workdir=PATH`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, diffusion, evaluation, gan, guard, losses, magvit2, mesh, optimizer, quantizers

DEFAULT_TOKENIZER_WORKDIR = "/tmp/walt_shapes/tokenizer"
IMAGE_SIZE, NUM_FRAMES = 32, 9
LATENT_CHANNELS = 8  # W.A.L.T.'s
TEXT_LENGTH = 24
TRAIN_EXAMPLES, EVAL_EXAMPLES = 10_000, 200


def _shapes_video() -> ml_collections.ConfigDict:
  return data.shapes(IMAGE_SIZE, num_frames=NUM_FRAMES, num_shapes=1, train_examples=TRAIN_EXAMPLES,
                     eval_examples=EVAL_EXAMPLES)


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
  """MAGVIT-v2 'local' with an 8-channel KL bottleneck (weight 1e-6), L1 + L2, EMA weights, no GAN."""
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  _common(config, steps or 2000, batch or 8)
  config.eval_every_steps = 1000
  config.model = magvit2.magvit2("local", quantizer=quantizers.kl(dim=LATENT_CHANNELS))
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(enabled=False)
  config.optimizer = optimizer.adamw(learning_rate=1e-3, warmup_steps=100, weight_decay=0.0, ema_decay=0.995)
  config.data = _shapes_video()
  config.eval = evaluation.evaluation(batch_size=8, num_grid_images=4)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def walt_config(steps: int = 0, batch: int = 0,
                tokenizer_workdir: str = DEFAULT_TOKENIZER_WORKDIR) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "diffusion"
  _common(config, steps or 8000, batch or 16)
  config.eval_every_steps = 4000
  config.tokenizer = ml_collections.ConfigDict(dict(
      experiment=tokenizer_config(), workdir=tokenizer_workdir, checkpoint_step=0))
  config.tokenize = ml_collections.ConfigDict(dict(
      data=_shapes_video(), batch_size=50, shard_size=5_000, text_encoder=True))
  config.model = diffusion.walt("local", patch_size=1, window=(4, 4), conditioning="text", text_length=TEXT_LENGTH,
                                text_dim=384, frame_condition=True)
  config.diffusion = diffusion.process("linear", 1000, "v", latent_normalization="channel", max_given_frames=1)
  config.optimizer = optimizer.adamw(learning_rate=5e-4, warmup_steps=200, weight_decay=0.0, ema_decay=0.999)
  config.data = data.tokens(source="latents")
  # 50 DDIM steps, as W.A.L.T. reports sampling with 50 steps; cfg 3.0 as the image experiments.
  # given_frames 1: the eval also continues each clip from its real first frame (frame prediction, `pred_*`).
  protocol = evaluation.diffusion_protocol("shapes_video", method="ddim", num_steps=50, cfg_scale=3.0,
                                           num_samples=50, given_frames=1)
  config.eval = evaluation.evaluation(batch_size=50, num_grid_images=8, protocol=protocol)
  config.sample = diffusion.sampling(protocol)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, local=False, tokenizer=False, steps=0, batch=0, tokenizer_workdir=DEFAULT_TOKENIZER_WORKDIR)
  if arg.tokenizer:
    return tokenizer_config(arg.steps, arg.batch)
  return walt_config(arg.steps, arg.batch, arg.tokenizer_workdir)
