r"""Quickstart: a VQGAN-style image tokenizer trained on the photographs that scikit-image and scikit-learn ship.

Runs offline on a 2-core CPU in about ten minutes (variant `local`, the default):

  tokgen --config=experiments/quickstart.py:local --workdir=/tmp/quickstart

Arguments (comma-separated): `local` (default: CPU size) or `full` (accelerator size: model B, 256px crops,
batch 64, 50k steps), then any of `steps=N`, `batch=N`, `size=local|S|B` (model preset), `quantizer=vq|lfq|fsq|rvq|msrq`. For example

  tokgen --config=experiments/quickstart.py:full,batch=256 --workdir=/tmp/quickstart_full
The held-out photos (skimage `chelsea`, sklearn `flower.jpg`) are cut into 176x176 tiles (the smallest size
MS-SSIM's five scales take) for PSNR/SSIM/MS-SSIM.

Codebook (measured at step 1500 on the held-out tiles, data seed 0, 2-core CPU): the plain l2-normalized VQ used
0.19 of its 1024 codes (perplexity 59, PSNR 22.13 dB); dead-code restarts after 20 idle steps: 0.75 / 238 /
22.61 dB; plus MaskGIT's entropy penalty at 0.003 (the default here): 0.78 / 216 / 23.57 dB in 325 s. Worse here:
restarts with an EMA codebook (0.71 / 174 / 21.28 dB) or a k-means initialisation (0.73 / 195 / 21.90 dB),
entropy weight 0.1 (0.95 / 331 / 20.69 dB) or 0.01 (0.81 / 234 / 22.71 dB). Held-out PSNR moves by about ±1 dB
with the data seed alone (plain VQ: 22.13 / 23.44 / 24.01 dB for seeds 0 / 1 / 2). Usage-share restarts
(`restart_below_usage` 0.3: 0.79 / 224 / 23.79 dB; with entropy 0.01: 0.80 / 236 / 23.01 dB) and a softer entropy
temperature (0.1: 0.76 / 215 / 23.83 dB), SimVQ's linear codebook (`linear_codebook`: 0.77 / 212 / 22.75 dB) and
evaluating the live instead of the EMA weights (`optimizer.ema_decay=0`: 0.77 / 218 / 23.65 dB) did not lift
perplexity either. The same checkpoint scored on 176x176
tiles of the nine training photos uses every code at perplexity 282: whole-photo tiles are dominated by smooth
regions, so their code histogram stays skewed even where the codebook was fit.

`python -m tokgen_jax.bench.codebook_coverage --config=experiments/quickstart.py:local --workdir=...` on the
default run (step 1500) shows where the held-out figure comes from. On 64 batches of training crops the codebook
has usage 1.000, perplexity 923.6 of 1024 and distortion 0.0465. On the held-out tiles it has 0.781 / 215.6 /
0.0456. A k-means codebook fit to the held-out vectors themselves reaches 0.999 / 907.4 / 0.0167. So the codebook
is not dead: the two held-out photos fill about a fifth of what the nine training photos use. Training on 64x64
crops (batch 4, the same pixels per step) raised held-out usage to 0.81 and perplexity to 257, and lowered PSNR to
23.08 dB.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, evaluation, gan, guard, losses, mesh, optimizer, quantizers, vqgan


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, local=False, full=False, steps=0, batch=0, size="", quantizer="vq")
  local = not arg.full
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  config.seed = 0
  config.total_steps = arg.steps or (1500 if local else 50_000)
  config.batch_size = arg.batch or (16 if local else 64)
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.init_from = ""
  config.guard = guard.guard()

  quantizer = quantizers.by_name(arg.quantizer)
  if arg.quantizer == "vq":  # codes idle for 20 steps restart (the preset's default), plus a light entropy penalty
    quantizer.entropy_weight = 0.003
  image_size = 32 if local else 256
  if arg.quantizer == "msrq":  # multi-scale needs one fixed latent size: evaluate on training-size tiles
    quantizer.scales = (1, 2, 3, 4, 6, 8) if local else quantizer.scales
  config.model = vqgan.vqgan(arg.size or ("local" if local else "B"), quantizer=quantizer)
  # L1 + L2 (PSNR measures L2), EMA weights for eval.
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(enabled=False)
  config.optimizer = optimizer.adamw(learning_rate=1e-3 if local else 1e-4,
                                     warmup_steps=100 if local else 2000,
                                     weight_decay=0.0, ema_decay=0.995 if local else 0.999)
  config.data = data.images("photos", image_size=image_size,
                            eval_image_size=image_size if arg.quantizer == "msrq" else 176)
  config.mesh = mesh.mesh()
  config.topology = "" if local else "v5e:4x4"  # the pod --mode=compile checks
  config.eval = evaluation.evaluation(batch_size=8 if local else 64, num_grid_images=8)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config
