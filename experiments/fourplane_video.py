r"""Four-plane vs tri-plane vs volumetric latents of MAGVIT-v2's causal 3D VAE (seed 000, Part I): the tokenizer.

`factorization=four_plane` (default) | `tri_plane` | `volumetric` picks the latent; everything else is shared, so
runs at equal budget compare the three. On a 2-core CPU, 9-frame 32x32 clips of one moving shape (9 frames → 5
latent frames of 8x8, 8 KL channels; four-plane 2·64 + 2·40 = 208 positions, tri-plane 144, volumetric 320):

  tokgen --config=experiments/fourplane_video.py:tokenizer,factorization=four_plane --workdir=/tmp/fourplane/four
  tokgen --config=experiments/fourplane_video.py:tokenizer,factorization=volumetric --workdir=/tmp/fourplane/volume

Each eval reports PSNR / SSIM of the held-out clips. At paper size (`:ucf101` or `:k600`, 17x128² clips prepared
for TFDS by the user → 5x16x16 latents: four-plane 672 positions, volumetric 1280) the model is the 'paper'
MAGVIT-v2 with the same bottleneck, on a v5e-16x16 pod:

  tokgen --config=experiments/fourplane_video.py:k600 --workdir=gs://BUCKET/fourplane_k600 --mode=summary

Arguments: `tokenizer` (default) | `ucf101` | `k600`, then `factorization=...`, `time_split=N` (latent frames in the
first spatial plane, default 1: the causal first frame alone), `pooling=mean|linear|attention`, `steps=N`,
`batch=N`.
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, evaluation, gan, guard, losses, magvit2, mesh, optimizer, quantizers
from tokgen_jax.errors import ConfigError

FACTORIZATIONS = ("four_plane", "tri_plane", "volumetric")
PAPER_DATASETS = {"ucf101": "ucf101", "k600": "kinetics600"}
LATENT_CHANNELS = 8  # W.A.L.T.'s and the seed's


def _model(size: str, factorization: str, time_split: int, pooling: str) -> ml_collections.ConfigDict:
  quantizer = quantizers.kl(dim=LATENT_CHANNELS)
  if factorization == "volumetric":
    return magvit2.magvit2(size, quantizer=quantizer)
  return magvit2.factorized(size, factorization, time_split, pooling, quantizer=quantizer)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tokenizer=False, ucf101=False, k600=False, factorization="four_plane", time_split=1,
                  pooling="mean", steps=0, batch=0)
  if arg.factorization not in FACTORIZATIONS:
    raise ConfigError(f"fourplane_video.py: factorization={arg.factorization!r}; choose one of {FACTORIZATIONS}.")
  dataset = next((name for name in PAPER_DATASETS if arg[name]), "")
  local = not dataset
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  config.seed = 0
  config.total_steps = arg.steps or (2000 if local else 300_000)
  config.batch_size = arg.batch or (8 if local else 256)
  config.log_every_steps = 100
  config.eval_every_steps = 1000 if local else 10_000
  config.checkpoint_every_steps = 500 if local else 5_000
  config.keep_checkpoints = 2
  config.init_from = ""
  config.guard = guard.guard()
  config.model = _model("local" if local else "paper", arg.factorization, arg.time_split, arg.pooling)
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  if local:
    config.data = data.shapes(32, num_frames=9, num_shapes=1, train_examples=10_000, eval_examples=200)
    config.adversarial = gan.adversarial(enabled=False)
  else:
    config.data = data.videos("tfds_video", num_frames=17, image_size=128, eval_image_size=128,
                              name=PAPER_DATASETS[dataset], eval_split="test", resize=128)
    config.adversarial = gan.adversarial(
        enabled=True, disc=gan.discriminator("stylegan3d", channels=64, channel_multipliers=(2, 4, 4, 4, 4)),
        start_step=50_000, learning_rate=1e-4)
  config.optimizer = optimizer.adamw(learning_rate=1e-3 if local else 1e-4, warmup_steps=100 if local else 5_000,
                                     weight_decay=0.0, ema_decay=0.995 if local else 0.999)
  config.mesh = mesh.mesh()
  config.topology = "" if local else "v5e:16x16"
  config.eval = evaluation.evaluation(batch_size=8 if local else 256, num_grid_images=4)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config
