r"""MarkovGen on the shapes world: an MRF over the token labels trained on the frozen masked model of
`maskgit_shapes.py`; at sampling it replaces the decoder's last steps.

After the three `maskgit_shapes.py` commands (tokenizer, encode, masked model):

  tokgen --config=experiments/markovgen_shapes.py:local --workdir=/tmp/markovgen_shapes
  tokgen --config=experiments/markovgen_shapes.py:local --workdir=/tmp/markovgen_shapes --mode=sample \
      --config.sample.prompts="red circle;blue square" --config.sample.final_fill=mrf

Training starts from the masked run's weights (`config.init_from`) and its token shards. It trains only the
MRF (`config.markovgen`: rank-32 label compatibility, 3x3 spatial kernel, 5 mean-field iterations) on real tokens
masked as the 12-step decoder leaves them after its first 12 − k steps (k = `exit_steps`). Its eval decodes the
first 100 eval classes four ways and scores each (`metrics.shapes.match`): `cfg_*` all 12 steps,
`early_exit_*` the first 12 − k steps with the last draws kept, `early_exit_argmax_*` the same with each
remaining position's most likely token, and `markovgen_*` the same steps with one MRF pass filling the rest.

Measured on the 2-core CPU (`maskgit_shapes.py:local` trained 3000 steps, this MRF 1000 steps, then
`python -m tokgen_jax.bench.masked_decoding --config=experiments/markovgen_shapes.py:local --workdir=...` over 200
class-conditional samples at cfg 3.0):

| decoding | model calls | ms / image | speed-up | color_shape |
|---|---|---|---|---|
| full | 12 | 40.81 | 1.00x | 0.675 |
| early exit, last draws kept | 7 | 22.35 | 1.83x | 0.630 |
| early exit, argmax of the last logits | 7 | 21.77 | 1.87x | 0.675 |
| MarkovGen (early exit + one MRF pass) | 7 | 24.16 | 1.69x | 0.695 |

One MRF pass took 217 ms against 631 ms for one decoder step (batch 200), so on this small transformer it costs
a third of a step. The seed's MRF cost 3% of a Muse step. With `exit_steps=4` (8 calls) the four rows were
0.675 / 0.535 / 0.730 / 0.710 at 1.00x / 1.49x / 1.50x / 1.44x. The argmax row is the MRF's fill without its
pairwise terms, and it scores within sampling noise (±0.033 at 200 samples) of MarkovGen here.

Arguments: `local` (default), then `exit_steps=K` (default 5), `condition=class|text` and `block=llama|bert` (as
the masked run), `steps=N`, `batch=N`, `masked_workdir=PATH` (the trained masked run; default
/tmp/maskgit_shapes/masked), `tokenizer_workdir=PATH`.
"""

import pathlib

import ml_collections

from tokgen_jax.config import load_experiment, parse_arg
from tokgen_jax.configs import masked

DEFAULT_MASKED_WORKDIR = "/tmp/maskgit_shapes/masked"
DEFAULT_TOKENIZER_WORKDIR = "/tmp/maskgit_shapes/tokenizer"
MASKED_EXPERIMENT = pathlib.Path(__file__).with_name("maskgit_shapes.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, local=False, exit_steps=5, condition="class", block="llama", steps=0, batch=0,
                  masked_workdir=DEFAULT_MASKED_WORKDIR, tokenizer_workdir=DEFAULT_TOKENIZER_WORKDIR)
  config = load_experiment(f"{MASKED_EXPERIMENT}:local,condition={arg.condition},block={arg.block},"
                           f"tokenizer_workdir={arg.tokenizer_workdir}")
  steps = int(config.sample.num_steps)
  with config.unlocked():
    config.total_steps = arg.steps or 1000
    config.batch_size = arg.batch or config.batch_size
    config.eval_every_steps = config.total_steps
    config.init_from = arg.masked_workdir
    config.data.path = f"{arg.masked_workdir}/tokens"
    config.markovgen = masked.markovgen(num_steps=steps, exit_steps=arg.exit_steps,
                                        cfg_scale=float(config.sample.cfg_scale))
    config.eval.protocol.exit_steps = arg.exit_steps
    config.sample.exit_steps = arg.exit_steps
  return config
