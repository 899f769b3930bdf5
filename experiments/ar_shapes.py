r"""Text-to-image AR on the shapes world: a VQ tokenizer, then a Llama-style generator conditioned on captions.

The shapes world (`tokgen_jax.data.shapes`) draws named shapes whose color, shape, size and position are read back
from pixels, so on a CPU the samples are scored against their prompts instead of with FID. Four commands (total
under 30 minutes on a 2-core CPU):

  tokgen --config=experiments/ar_shapes.py:tokenizer --workdir=/tmp/ar_shapes/tokenizer
  tokgen --config=experiments/ar_shapes.py:local --workdir=/tmp/ar_shapes/generator --mode=encode
  tokgen --config=experiments/ar_shapes.py:local --workdir=/tmp/ar_shapes/generator
  tokgen --config=experiments/ar_shapes.py:local --workdir=/tmp/ar_shapes/generator --mode=sample \
      --config.sample.prompts="a large red circle in the center;a small blue square in the top left"

1. `:tokenizer` trains a VQGAN (32x32 scenes → 8x8 tokens of a 512-entry codebook), about 5 minutes.
2. `--mode=encode` encodes the train and eval scenes once into latent shards under WORKDIR/tokens, with each
   caption's all-MiniLM-L6-v2 token embeddings (the offline text encoder).
3. Training fits an ARTransformer (4 layers, width 128) on 64 tokens after a 24-position text prefix. Each eval
   reports teacher-forced NLL / token accuracy and decodes samples of the first `num_samples` eval captions with
   and without classifier-free guidance, scored by `metrics.shapes.match`: `cfg_color_shape` /
   `nocfg_color_shape` is the share whose shape was drawn in the prompted color and form;
   `reference_color_shape` scores the tokenizer's reconstruction of the real scenes (the ceiling through this
   tokenizer).
4. `--mode=sample` draws `num_per_prompt` samples per caption into WORKDIR/samples/prompts_step_N.png.

Arguments: `tokenizer` | `local` (default), then `steps=N`, `batch=N`, `shapes=1` (shapes per scene, 1 or 2),
`tokenizer_workdir=PATH` (where `:tokenizer` was trained; the generator reads its checkpoint).
"""

import ml_collections

from tokgen_jax.config import parse_arg
from tokgen_jax.configs import ar, data, evaluation, gan, guard, losses, mesh, optimizer, quantizers, vqgan

DEFAULT_TOKENIZER_WORKDIR = "/tmp/ar_shapes/tokenizer"
IMAGE_SIZE = 32
TEXT_LENGTH = 24  # MiniLM word pieces of a two-shape caption, [CLS] and [SEP] included, fit
TRAIN_EXAMPLES, EVAL_EXAMPLES = 20_000, 500


def _shapes_data(num_shapes: int) -> ml_collections.ConfigDict:
  return data.shapes(IMAGE_SIZE, num_shapes=num_shapes, train_examples=TRAIN_EXAMPLES, eval_examples=EVAL_EXAMPLES)


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


def tokenizer_config(steps: int = 0, batch: int = 0, num_shapes: int = 1) -> ml_collections.ConfigDict:
  """VQGAN 'local' (downsampling 4) with a 512 x 8 l2-normalized codebook, L1 + L2, EMA weights."""
  config = ml_collections.ConfigDict()
  config.task = "autoencoder"
  # 2400 steps: the decoded eval scenes keep their shape 91% of the time (81% at 1200 steps, where small crosses
  # still come back as diamonds); that share is the ceiling of every generator trained on these tokens.
  _common(config, steps or 2400, batch or 16)
  config.eval_every_steps = 1200
  # Restarts off: the README's ar_shapes figures (shape ceiling, sample scores) were measured without them.
  config.model = vqgan.vqgan("local", quantizer=quantizers.vq(codebook_size=512, restart_after_steps=0))
  config.loss = losses.autoencoder_loss(l1_weight=1.0, l2_weight=1.0)
  config.adversarial = gan.adversarial(enabled=False)
  config.optimizer = optimizer.adamw(learning_rate=1e-3, warmup_steps=100, weight_decay=0.0, ema_decay=0.995)
  config.data = _shapes_data(num_shapes)
  config.eval = evaluation.evaluation(batch_size=50, num_grid_images=8)
  config.sample = ml_collections.ConfigDict(dict(inputs=""))
  return config


def generator_config(steps: int = 0, batch: int = 0, num_shapes: int = 1,
                     tokenizer_workdir: str = DEFAULT_TOKENIZER_WORKDIR) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "generator"
  _common(config, steps or 2000, batch or 32)
  config.eval_every_steps = 1000
  config.tokenizer = ml_collections.ConfigDict(dict(
      experiment=tokenizer_config(num_shapes=num_shapes), workdir=tokenizer_workdir, checkpoint_step=0))
  config.tokenize = ml_collections.ConfigDict(dict(
      data=_shapes_data(num_shapes), batch_size=250, shard_size=10_000, text_encoder=True))
  # Unrolled layers: 358 ms per step on the 2-core CPU against 498 ms scanned (XLA's CPU backend does not
  # optimize across the scan loop boundary); accelerators keep the scan.
  config.model = ar.ar("local", conditioning="text", text_length=TEXT_LENGTH, text_dim=384, dropout=0.1,
                       scan_layers=False)
  config.loss = ml_collections.ConfigDict(dict(layer_weights=()))
  config.optimizer = optimizer.adamw(learning_rate=1e-3, warmup_steps=200, weight_decay=0.05, b2=0.95,
                                     ema_decay=0.0)
  config.data = data.tokens()
  # The shapes world's own protocol: 100 eval captions at cfg 3.0 (and without guidance), no top-k.
  shapes_protocol = evaluation.protocol("shapes", cfg_scale=3.0, num_samples=100)
  config.eval = evaluation.evaluation(batch_size=100, num_grid_images=16, protocol=shapes_protocol)
  config.sample = ar.sampling(shapes_protocol)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, local=False, tokenizer=False, steps=0, batch=0, shapes=1,
                  tokenizer_workdir=DEFAULT_TOKENIZER_WORKDIR)
  if arg.tokenizer:
    return tokenizer_config(arg.steps, arg.batch, arg.shapes)
  return generator_config(arg.steps, arg.batch, arg.shapes, arg.tokenizer_workdir)
