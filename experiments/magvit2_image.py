r"""MAGVIT-v2 as an image tokenizer: the same causal 3D CNN (an image is a one-frame video) with LFQ, trained
with L1/L2 (+ LPIPS with weights) and a StyleGAN discriminator with LeCAM.

Variants (first argument):
  local        (default) 32x32 crops of the offline photos on a 2-core CPU, 2^10 LFQ:
                 tokgen --config=experiments/magvit2_image.py:local --workdir=/tmp/magvit2_image
  imagenet128  ImageNet 128x128 → 16x16 tokens (f = 8), 2^18 LFQ; ImageNet prepared by the user for TFDS:
                 tokgen --config=experiments/magvit2_image.py:imagenet128 --workdir=gs://bucket/magvit2_in128
  imagenet256  ImageNet 256x256 → 16x16 tokens (f = 16), 2^18 LFQ, Open-MAGVIT2's widths (128 channels,
               multipliers 1,1,2,2,4, 4 residual blocks per level).
Then any of `steps=N`, `batch=N`, `gan=0|1`, `lpips=/path/lpips_vgg.safetensors`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, evaluation, gan, guard, losses, magvit2, mesh, optimizer, quantizers

IMAGENET_MODELS = {
    # variant: (image size, magvit2 preset overrides)
    "imagenet128": (128, dict(channels=128, channel_multipliers=(1, 2, 2, 4), num_res_blocks=4,
                              temporal_downsample=(False, False, False))),
    "imagenet256": (256, dict(channels=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=4,
                              temporal_downsample=(False, False, False, False))),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, local=False, imagenet128=False, imagenet256=False, steps=0, batch=0, gan=-1, lpips="")
  variant = next((name for name in IMAGENET_MODELS if arg[name]), "")
  local = not variant
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  config.seed = 0
  config.total_steps = arg.steps or (1500 if local else 500_000)
  config.batch_size = arg.batch or (16 if local else 256)
  config.log_every_steps = 100
  config.eval_every_steps = 500 if local else 10_000
  config.checkpoint_every_steps = 500 if local else 5_000
  config.keep_checkpoints = 2
  config.init_from = ""
  config.guard = guard.guard()

  if local:
    config.model = magvit2.magvit2("local", quantizer=quantizers.lfq(bits=10), temporal_downsample=(False, False))
    config.data = data.images("photos", image_size=32, eval_image_size=128)
    disc = gan.discriminator("stylegan2d", channels=16, channel_multipliers=(2, 4, 4))
  else:
    size, model = IMAGENET_MODELS[variant]
    config.model = magvit2.magvit2("paper", quantizer=quantizers.lfq(bits=18), **model)
    config.data = data.imagenet(image_size=size)
    disc = gan.discriminator("stylegan2d", channels=64 if size == 128 else 32, channel_multipliers=(2, 4, 4, 4, 4))
  config.adversarial = gan.adversarial(enabled=bool(arg.gan) if arg.gan >= 0 else True, disc=disc,
                                       start_step=1000 if local else 50_000)
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0, perceptual_weight=1.0 if arg.lpips else 0.0,
                                        lpips_weights=arg.lpips)
  config.optimizer = optimizer.adamw(learning_rate=1e-3 if local else 1e-4, warmup_steps=100 if local else 5_000,
                                     weight_decay=0.0, ema_decay=0.995 if local else 0.999)
  config.mesh = mesh.mesh()
  config.topology = "" if local else "v5e:16x16"  # the pod --mode=compile checks
  config.eval = evaluation.evaluation(batch_size=8 if local else 256, num_grid_images=8)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config
