r"""MAGVIT-v2's masked language model (Yu et al. 2024, seed 004): MAGVIT's 24-layer, 1024-wide BERT transformer over
MAGVIT-v2's 2^18 LFQ tokens, each factorized into two 2^9 sub-tokens (summed embeddings in, two heads out; 307M
parameters). Class-conditional, on accelerator pods:

  tokgen --config=experiments/magvit2_mlm.py:ucf101 --workdir=gs://bucket/mlm_ucf --mode=encode
  tokgen --config=experiments/magvit2_mlm.py:ucf101 --workdir=gs://bucket/mlm_ucf

Variants: `ucf101` (17x128² clips → 5x16x16 = 1280 tokens of `magvit2_video.py:ucf101`, 101 classes, MAGVIT's
multi-task masks, decoded in 24 steps) or `imagenet256` (256² images → 16x16 tokens of
`magvit2_image.py:imagenet256`, 1000 classes, 12 steps). Then `steps=N`, `batch=N`, `tokenizer_workdir=PATH`.
The tokenizer is trained first with its own experiment. `--mode=compile` for v5e:8x8 at batch 256 (blocks
recomputed in the backward pass, bf16): the train step takes 7.16 of 16 GiB per chip and 15.06 TFLOP per chip per
call; the 24-step sampler takes 2.11 GiB. MAGVIT's label smoothing is 1e-4; the optimizer follows
MaskGIT (AdamW β (0.9, 0.96), weight decay 0.045, lr 1e-4, warmup 5000; the seed gives no MLM recipe of its own).
"""

import pathlib

import ml_collections

from tokgen_jax.config import load_experiment, parse_arg
from tokgen_jax.configs import data, evaluation, guard, masked, mesh, optimizer
from tokgen_jax.generators import task_masks

HERE = pathlib.Path(__file__).parent
VARIANTS = {
    # name: (tokenizer experiment, TFDS data, classes, protocol, tasks)
    "ucf101": ("magvit2_video.py:ucf101", "ucf101", 101, "magvit2_video", task_masks.TASKS),
    "imagenet256": ("magvit2_image.py:imagenet256", "imagenet", 1000, "magvit2_image", ("generation",)),
}
FACTORIZED_BITS = (9, 9)  # 2^18 = 2 × 2^9 (Open-MAGVIT2's factorized_bits)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, ucf101=False, imagenet256=False, steps=0, batch=0, tokenizer_workdir="")
  variant = "imagenet256" if arg.imagenet256 else "ucf101"
  tokenizer_experiment, dataset, num_classes, protocol, tasks = VARIANTS[variant]
  tokenizer = load_experiment(str(HERE / tokenizer_experiment))
  config = ml_collections.ConfigDict()
  config.task = "masked"
  config.seed = 0
  config.total_steps = arg.steps or 500_000
  config.batch_size = arg.batch or 256
  config.log_every_steps = 100
  config.eval_every_steps = 50_000
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3
  config.init_from = ""
  config.guard = guard.guard()
  config.tokenizer = ml_collections.ConfigDict(dict(experiment=tokenizer, workdir=arg.tokenizer_workdir,
                                                    checkpoint_step=0))
  tokenize_data = tokenizer.data if dataset == "ucf101" else data.imagenet(image_size=256)
  config.tokenize = ml_collections.ConfigDict(dict(data=tokenize_data, batch_size=256, shard_size=20_000,
                                                   text_encoder=False))
  config.model = masked.masked("magvit", conditioning="class", num_classes=num_classes, block="bert",
                               factorized_bits=FACTORIZED_BITS, dtype="bfloat16",
                               remat_policy="full")
  config.loss = masked.masked_loss("cosine", label_smoothing=1e-4, tasks=tasks, given_frames=1)
  config.optimizer = optimizer.adamw(learning_rate=1e-4, warmup_steps=5000, weight_decay=0.045, b1=0.9, b2=0.96)
  config.data = data.tokens()
  config.mesh = mesh.mesh()
  config.topology = "v5e:8x8"  # the pod --mode=compile checks
  eval_protocol = evaluation.masked_protocol(protocol)
  config.eval = evaluation.evaluation(batch_size=256, num_grid_images=16, protocol=eval_protocol)
  config.sample = masked.sampling(eval_protocol)
  return config
