r"""Four-plane vs tri-plane vs volumetric latents of MAGVIT-v2's causal 3D VAE (seed 000, Part I): the tokenizer and
the W.A.L.T. generator over its latents.

`factorization=four_plane` (default) | `tri_plane` | `volumetric` picks the latent; everything else is shared, so
runs at equal budget compare the three. On a 2-core CPU, 9-frame 32x32 clips of one moving shape (9 frames → 5
latent frames of 8x8, 8 KL channels; four-plane 2·64 + 2·40 = 208 positions, tri-plane 144, volumetric 320):

  tokgen --config=experiments/fourplane_video.py:tokenizer,factorization=four_plane --workdir=/tmp/fourplane/four_plane
  tokgen --config=experiments/fourplane_video.py:local,factorization=four_plane --workdir=/tmp/fourplane/four_plane_gen --mode=encode
  tokgen --config=experiments/fourplane_video.py:local,factorization=four_plane --workdir=/tmp/fourplane/four_plane_gen

1. `:tokenizer` trains the 'local' MAGVIT-v2 with the factorization after its encoder (mean pooling by default)
   and the recomposition before its decoder; each eval reports PSNR / SSIM of the held-out clips.
2. `:local` (`--mode=encode` first) trains the generator on the planes the tokenizer wrote: a 'local' plane
   W.A.L.T. (`plane_walt`: 4 blocks of width 128, attention within each plane alternating with attention across
   all planes) for four- and tri-plane, the same size W.A.L.T. (`walt`, patch 1) for volumetric latents, its
   spatiotemporal windows spanning the whole latent so that both alternate local attention (a frame, a plane)
   with global attention (our choice: the seed leaves the windows open). Both are text-conditioned on the shapes captions with v-prediction, self-conditioning and
   the first latent frame given for half the clips (frame prediction, `max_given_frames` 1); each eval scores
   samples with and without CFG and the clips continued from their real first frame (`pred_*`, `pred_psnr`) as
   `experiments/walt_shapes_video.py` does. With four planes the given frame fixes the first spatial plane and
   the first row of each spatiotemporal plane; tri-plane's one spatial plane reads every frame, so it is drawn.

At paper size (`:ucf101` or `:k600`, 17x128² clips prepared for TFDS by the user → 5x16x16 latents: four-plane
672 positions, tri-plane 416, volumetric 1280) the tokenizer is the 'paper' MAGVIT-v2 with the same bottleneck on
a v5e-16x16 pod and the generator the 214M W.A.L.T. depth/width with patch 1, so the generator reads the seed's
672 (or 1280) tokens; UCF-101 is class-conditional, Kinetics-600 frame prediction (2 latent frames given):

  tokgen --config=experiments/fourplane_video.py:k600,tokenizer --workdir=gs://BUCKET/fourplane_k600 --mode=summary
  tokgen --config=experiments/fourplane_video.py:k600 --workdir=gs://BUCKET/fourplane_k600_gen --mode=compile

`lavfi` swaps the moving shapes for 9-frame 32x32 clips of the offline ffmpeg renders (no captions, so that
generator is unconditional and its eval reports `pred_psnr` of the continued clips, not shape scores).

Arguments: `tokenizer` (the first stage; otherwise the generator), `local` (default) | `ucf101` | `k600`, `lavfi`,
then
`factorization=...`, `time_split=N` (latent frames in the first spatial plane, default 1: the causal first frame
alone), `pooling=mean|linear|attention`, `steps=N`, `batch=N`, `tokenizer_workdir=PATH` (default
/tmp/fourplane/<factorization> locally).
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import data, diffusion, evaluation, gan, guard, losses, magvit2, mesh, optimizer, quantizers
from tokgen_jax.errors import ConfigError

FACTORIZATIONS = ("four_plane", "tri_plane", "volumetric")
PAPER_DATASETS = {"ucf101": "ucf101", "k600": "kinetics600"}
LATENT_CHANNELS = 8  # W.A.L.T.'s and the seed's
TEXT_LENGTH = 24
UCF101_CLASSES = 101


def _model(size: str, factorization: str, time_split: int, pooling: str) -> ml_collections.ConfigDict:
  quantizer = quantizers.kl(dim=LATENT_CHANNELS)
  if factorization == "volumetric":
    return magvit2.magvit2(size, quantizer=quantizer)
  return magvit2.factorized(size, factorization, time_split, pooling, quantizer=quantizer)


def _clips(dataset: str, lavfi: bool = False) -> ml_collections.ConfigDict:
  if lavfi:  # the offline ffmpeg renders: real-looking texture and motion, no captions
    return data.videos("lavfi", num_frames=9, image_size=32, eval_image_size=32)
  if not dataset:
    return data.shapes(32, num_frames=9, num_shapes=1, train_examples=10_000, eval_examples=200)
  return data.videos("tfds_video", num_frames=17, image_size=128, eval_image_size=128, name=PAPER_DATASETS[dataset],
                     eval_split="test", resize=128)


def _common(config: ml_collections.ConfigDict, local: bool, steps: int, batch: int) -> None:
  config.seed = 0
  config.total_steps = steps
  config.batch_size = batch
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500 if local else 5_000
  config.keep_checkpoints = 2
  config.init_from = ""
  config.guard = guard.guard()
  config.mesh = mesh.mesh()


def tokenizer_config(dataset: str, factorization: str, time_split: int = 1, pooling: str = "mean", steps: int = 0,
                     batch: int = 0, lavfi: bool = False) -> ml_collections.ConfigDict:
  """MAGVIT-v2 with an 8-channel KL bottleneck and the factorization; L1 + L2, EMA, a 3D GAN at paper size."""
  local = not dataset
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  _common(config, local, steps or (2000 if local else 300_000), batch or (8 if local else 256))
  config.eval_every_steps = 1000 if local else 10_000
  config.model = _model("local" if local else "paper", factorization, time_split, pooling)
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.data = _clips(dataset, lavfi)
  if local:
    config.adversarial = gan.adversarial(enabled=False)
  else:
    config.adversarial = gan.adversarial(
        enabled=True, disc=gan.discriminator("stylegan3d", channels=64, channel_multipliers=(2, 4, 4, 4, 4)),
        start_step=50_000, learning_rate=1e-4)
  config.optimizer = optimizer.adamw(learning_rate=1e-3 if local else 1e-4, warmup_steps=100 if local else 5_000,
                                     weight_decay=0.0, ema_decay=0.995 if local else 0.999)
  config.topology = "" if local else "v5e:16x16"
  config.eval = evaluation.evaluation(batch_size=8 if local else 256, num_grid_images=4)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def _denoiser(size: str, factorization: str, window: tuple[int, int], **conditioning) -> ml_collections.ConfigDict:
  """The same transformer for every latent: the plane W.A.L.T. over planes, W.A.L.T. (patch 1) over a volume with
  `window` the whole latent grid (global spatiotemporal blocks, as the plane model's cross-plane blocks)."""
  if factorization == "volumetric":
    return diffusion.walt(size, patch_size=1, window=window, frame_condition=True, **conditioning)
  return diffusion.plane_walt(size, frame_condition=True, **conditioning)


def generator_config(dataset: str, factorization: str, time_split: int = 1, pooling: str = "mean", steps: int = 0,
                     batch: int = 0, tokenizer_workdir: str = "", lavfi: bool = False) -> ml_collections.ConfigDict:
  local = not dataset
  config = ml_collections.ConfigDict()
  config.task = "diffusion"
  _common(config, local, steps or (4000 if local else 200_000), batch or (16 if local else 256))
  config.eval_every_steps = 2000 if local else 10_000
  config.tokenizer = ml_collections.ConfigDict(dict(
      experiment=tokenizer_config(dataset, factorization, time_split, pooling, lavfi=lavfi),
      workdir=tokenizer_workdir or (f"/tmp/fourplane/{factorization}" if local else ""), checkpoint_step=0))
  captioned = local and not lavfi
  config.tokenize = ml_collections.ConfigDict(dict(data=_clips(dataset, lavfi), batch_size=50 if local else 256,
                                                   shard_size=5_000 if local else 10_000, text_encoder=captioned))
  if local:
    conditioning = (dict(conditioning="text", text_length=TEXT_LENGTH, text_dim=384) if captioned
                    else dict(conditioning="none"))
    config.model = _denoiser("local", factorization, (8, 8), **conditioning)
    config.diffusion = diffusion.process("linear", 1000, "v", latent_normalization="channel", max_given_frames=1)
    config.optimizer = optimizer.adamw(learning_rate=5e-4, warmup_steps=200, weight_decay=0.0, ema_decay=0.999)
    protocol = evaluation.diffusion_protocol("shapes_video" if captioned else "lavfi_video", method="ddim",
                                             num_steps=50, cfg_scale=3.0 if captioned else 1.0, num_samples=50,
                                             given_frames=1)
    config.eval = evaluation.evaluation(batch_size=50, num_grid_images=8, protocol=protocol)
    config.topology = ""
  else:
    conditioning = (dict(conditioning="class", num_classes=UCF101_CLASSES) if dataset == "ucf101"
                    else dict(conditioning="none"))
    config.model = _denoiser("214M", factorization, (16, 16), **conditioning)
    config.diffusion = diffusion.process("linear", 1000, "v", latent_normalization="channel", max_given_frames=2)
    config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=5_000, weight_decay=0.0, ema_decay=0.9999)
    protocol = evaluation.diffusion_protocol(f"walt_{dataset}", method="ddim", num_steps=50,
                                             cfg_scale=1.25 if dataset == "ucf101" else 1.0, num_samples=16,
                                             given_frames=0 if dataset == "ucf101" else 2)
    config.eval = evaluation.evaluation(batch_size=256, num_grid_images=8, protocol=protocol)
    config.topology = "v5e:4x4"  # the pod --mode=compile checks (batch 256: 16 clips per chip)
  config.data = data.tokens(source="latents")
  config.sample = diffusion.sampling(protocol)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tokenizer=False, local=False, lavfi=False, ucf101=False, k600=False,
                  factorization="four_plane", time_split=1, pooling="mean", steps=0, batch=0, tokenizer_workdir="")
  if arg.factorization not in FACTORIZATIONS:
    raise ConfigError(f"fourplane_video.py: factorization={arg.factorization!r}; choose one of {FACTORIZATIONS}.")
  dataset = next((name for name in PAPER_DATASETS if arg[name]), "")
  if dataset and arg.lavfi:
    raise ConfigError(f"fourplane_video.py: lavfi clips are the local data; drop lavfi or {dataset}.")
  if arg.tokenizer:
    return tokenizer_config(dataset, arg.factorization, arg.time_split, arg.pooling, arg.steps, arg.batch, arg.lavfi)
  return generator_config(dataset, arg.factorization, arg.time_split, arg.pooling, arg.steps, arg.batch,
                          arg.tokenizer_workdir, arg.lavfi)
