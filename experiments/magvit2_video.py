r"""MAGVIT-v2 video tokenizer: causal 3D CNN + LFQ, trained with L1/L2 (+ LPIPS with weights) and a StyleGAN
discriminator with LeCAM.

Variants (first argument):
  local     (default) 9x32x32 clips of the offline lavfi renders on a 2-core CPU, 2^10 LFQ, ~10 minutes:
              tokgen --config=experiments/magvit2_video.py:local --workdir=/tmp/magvit2_video
  ucf101    the paper setup: 17x128x128 clips → 5x16x16 = 1280 tokens, 2^18 LFQ, 3D discriminator; UCF-101
            prepared for TFDS by the user (`tfds build ucf101`), on an accelerator pod:
              tokgen --config=experiments/magvit2_video.py:ucf101 --workdir=gs://bucket/magvit2_ucf
  kinetics600  the same model on Kinetics-600 (`tfds build kinetics600` with the videos downloaded by the user).
Then any of `steps=N`, `batch=N`, `gan=0|1` (discriminator off/on), `lpips=/path/lpips_vgg.safetensors`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, evaluation, gan, guard, losses, magvit2, mesh, optimizer, quantizers

PAPER_DATASETS = {"ucf101": "ucf101", "kinetics600": "kinetics600"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, local=False, ucf101=False, kinetics600=False, steps=0, batch=0, gan=-1, lpips="")
  dataset = next((name for name in PAPER_DATASETS if arg[name]), "")
  local = not dataset
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  config.seed = 0
  config.total_steps = arg.steps or (500 if local else 300_000)
  config.batch_size = arg.batch or (4 if local else 256)
  config.log_every_steps = 50 if local else 100
  config.eval_every_steps = 250 if local else 10_000
  config.checkpoint_every_steps = 250 if local else 5_000
  config.keep_checkpoints = 2
  config.init_from = ""
  config.guard = guard.guard()

  if local:
    config.model = magvit2.magvit2("local", quantizer=quantizers.lfq(bits=10))
    config.data = data.videos("lavfi", num_frames=9, image_size=32, eval_image_size=32)
    disc = gan.discriminator("stylegan2d", channels=16, channel_multipliers=(2, 4, 4))  # per frame: 3D convs are slow on CPU
  else:
    config.model = magvit2.magvit2("paper", quantizer=quantizers.lfq(bits=18))
    config.data = data.videos("tfds_video", num_frames=17, image_size=128, eval_image_size=128,
                              name=PAPER_DATASETS[dataset], eval_split="test", resize=128)
    disc = gan.discriminator("stylegan3d", channels=64, channel_multipliers=(2, 4, 4, 4, 4))
  use_gan = bool(arg.gan) if arg.gan >= 0 else True
  config.adversarial = gan.adversarial(enabled=use_gan, disc=disc,
                                       start_step=300 if local else 50_000,
                                       learning_rate=1e-4)
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0, perceptual_weight=1.0 if arg.lpips else 0.0,
                                        lpips_weights=arg.lpips)
  config.optimizer = optimizer.adamw(learning_rate=1e-3 if local else 1e-4, warmup_steps=100 if local else 5_000,
                                     weight_decay=0.0, ema_decay=0.99 if local else 0.999)
  config.mesh = mesh.mesh()
  config.topology = "" if local else "v5e:16x16"  # the pod --mode=compile checks (256 chips, batch 1 per chip)
  config.eval = evaluation.evaluation(batch_size=8 if local else 256, num_grid_images=4)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config
