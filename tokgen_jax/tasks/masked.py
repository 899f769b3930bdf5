"""Masked token task: train a `MaskedTransformer` on the token ids a frozen tokenizer wrote (`--mode=encode`) and
sample it with MaskGIT's parallel decoder.

Batches are the generator task's: `tokens` int `[B, *grid]` plus the condition (`label`, or `text` and `text_mask`).
The model sees the grid in row-major order as `[B, N, F]`. F = 1, or with `factorized_bits` (MAGVIT-v2's MLM:
2^18 LFQ codes as 2 × 2^9) the F sub-tokens of `quantizers.factorize_indices`, or for a tokenizer with several
token layers per position (residual depths, `[B, *grid, L]`) F = L, each layer a sub-token with its own table and
head. A position is masked or given whole, all its sub-tokens together.

Training step (MaskGIT §3.2; MAGVIT §3.2):
1. per example one of `tasks` (`generators/task_masks.py`) gives part of the grid (`generation` gives nothing);
2. of the remaining positions, `ceil(γ(r)·n)` with r ~ U(0, 1) are masked (`mask_schedules.random_mask`);
3. the loss is the cross entropy at the masked positions, summed over sub-tokens and averaged over the masked
   positions of the batch. Targets are smoothed by `label_smoothing` over each sub-token's own vocabulary
   (MaskGIT 0.1, MAGVIT 1e-4).

Eval reports per example the NLL (nats per masked position, summed over sub-tokens; its `perplexity` is `exp`
of the mean) and the share of masked positions predicted exactly. The masks come from a fixed key, so every
eval draws the same ones. It then runs the shared sample pass (`second_stage.SampleEvaluation`):
`cfg` / `nocfg`, plus `pred` (clips continued from their first `given_frames` real latent frames) when the
protocol asks for frame prediction.

MarkovGen (`generators/markovgen.py`): with `config.markovgen.enabled` the state gains the group "markovgen", an
MRF over the token labels. Phase "markovgen" (from `markovgen.start_step`) trains only the MRF. The masked model
is frozen (a run started with `config.init_from` at a trained masked run loads it and keeps its fresh MRF). Each
step masks real tokens as the decoder leaves them at its last kept step (progress drawn around
(T − k − 1)/T for T = `num_steps`, k = `exit_steps`). The frozen model's guided logits are the unary terms, and
the loss is the cross entropy of the MRF marginals against the real tokens at the masked positions. Decoding
with `exit_steps=k, final_fill='mrf'` runs the first T − k steps, and one MRF pass fills what is left
(argmax of the marginals). An eval whose protocol has `exit_steps` > 0 then scores `cfg` (all T steps),
`early_exit` (T − k steps, last draws kept), `early_exit_argmax` (the same with each unknown position's most
likely token: the MRF's fill without its pairwise terms) and `markovgen` (T − k steps + the MRF).
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokgen_jax import generators, tokenizers
from tokgen_jax.data import latents as latent_data
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import mask_schedules, parallel_decoding, task_masks
from tokgen_jax.generators.markovgen import MarkovRandomField
from tokgen_jax.generators.masked import MaskedTransformer
from tokgen_jax.quantizers import factorize_indices, merge_indices
from tokgen_jax.tasks import second_stage
from tokgen_jax.tasks.base import Phase, RunContext, Task, TrainState, evaluation_params, single_group_step
from tokgen_jax.tasks.generator import GeneratorPass, tokenizer_token_shape
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer

GROUP = "generator"
MRF_GROUP = "markovgen"
EVAL_MASK_SEED = 0


@dataclasses.dataclass(frozen=True)
class MaskedTask(second_stage.SecondStage, Task):
  """`token_shape`: one example's tokens, the grid or the grid plus a trailing axis of `levels` token layers per
  position (residual or multi-codebook depths: each layer is a sub-token with its own table and head, coarse
  first). `codebook_bits`: the tokenizer's index bits when its tokens are factorized (0: they are not). `tasks`/`given_frames`: the conditional tasks trained (see module doc)."""

  model: MaskedTransformer
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  token_shape: tuple[int, ...]
  codebook_bits: int = 0
  levels: int = 1
  schedule: str = "cosine"
  label_smoothing: float = 0.1
  tasks: tuple[str, ...] = ("generation",)
  given_frames: int = 1
  ema_decay: float = 0.0
  eval_ema: bool = True
  markovgen: MarkovRandomField | None = None
  markovgen_start_step: int = 0
  markovgen_progress: tuple[float, float] = (0.0, 1.0)
  markovgen_cfg_scale: float = 1.0
  tokenizer: Any = dataclasses.field(default=None, hash=False, compare=False)
  _loaded: dict = dataclasses.field(default_factory=dict, hash=False, compare=False, repr=False)

  input_key = latent_key = tokenizers.TOKENS

  def __post_init__(self):
    if self.markovgen is not None and (self.model.num_factors > 1 or self.markovgen.vocab_size !=
                                       self.model.vocab_sizes[0] or tuple(self.markovgen.grid) !=
                                       tuple(self.grid)):
      raise ConfigError(f"config.markovgen: the MRF labels one codebook of {self.model.vocab_sizes} on the grid "
                        f"{self.grid}; it needs one unfactorized vocabulary (factorized_bits=()) and the "
                        "model's grid.")
    expected = tuple(self.model.grid) + ((self.levels,) if self.levels > 1 else ())
    if tuple(self.token_shape) != expected or (self.levels > 1 and self.model.num_factors != self.levels):
      raise ConfigError(f"MaskedTask: token_shape={self.token_shape} with {self.levels} level(s) does not fit the "
                        f"model's grid {self.model.grid} and {self.model.num_factors} sub-token(s); derive both "
                        "from the tokenizer (see tasks.masked.build).")
    mask_schedules.check_schedule(self.schedule, "config.loss.schedule")
    task_masks.check_tasks(self.tasks, self.grid, self.given_frames)
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ConfigError(f"config.loss.label_smoothing={self.label_smoothing} must be in [0, 1).")

  @property
  def grid(self) -> tuple[int, ...]:
    return tuple(self.model.grid)

  # ----------------------------------------------------------------------------------------------- layout

  def to_model_tokens(self, tokens: jax.Array) -> jax.Array:
    """Grid tokens `[B, *grid]` → `[B, N, F]` (row-major; sub-tokens under factorization)."""
    if self.levels > 1:
      return tokens.reshape(tokens.shape[0], -1, self.levels).astype(jnp.int32)
    flat = tokens.reshape(tokens.shape[0], -1).astype(jnp.int32)
    if not self.codebook_bits:
      return flat[..., None]
    return factorize_indices(flat, self.codebook_bits, self.model.num_factors)

  def to_grid(self, model_tokens: jax.Array) -> jax.Array:
    """The inverse of `to_model_tokens`."""
    if self.levels > 1:
      return model_tokens.reshape((model_tokens.shape[0],) + tuple(self.token_shape))
    flat = merge_indices(model_tokens, self.codebook_bits, self.model.num_factors) if self.codebook_bits else \
        model_tokens[..., 0]
    return flat.reshape((flat.shape[0],) + tuple(self.token_shape))

  def condition(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return second_stage.condition_of(batch, self.model.conditioning, self.model.text_length)

  def example_batch(self) -> dict[str, jax.Array]:
    return {"tokens": jnp.zeros((1,) + tuple(self.token_shape), jnp.int32), **second_stage.example_conditions(
        self.model.conditioning, self.model.text_length, self.model.text_dim)}

  # ------------------------------------------------------------------------------------------------ train

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    model_rng, state_rng = jax.random.split(rng)
    tokens = self.to_model_tokens(batch["tokens"])
    variables = self.model.init({"params": model_rng, "dropout": model_rng}, tokens,
                                jnp.zeros(tokens.shape[:2], bool), self.condition(batch))
    params = {GROUP: variables["params"]}
    if self.markovgen is not None:
      unary = jnp.zeros(tokens.shape[:2] + (self.markovgen.vocab_size,), jnp.float32)
      params[MRF_GROUP] = self.markovgen.init(model_rng, unary)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={group: self.optimizer.init(value) for group, value in params.items()},
                      ema_params={GROUP: params[GROUP]} if self.ema_decay else {}, model_state={}, rng=state_rng)

  def phases(self) -> tuple[Phase, ...]:
    """'train' (the masked model), then 'markovgen' (the MRF on the frozen model) from its start step."""
    if self.markovgen is None:
      return (Phase("train", 0),)
    if self.markovgen_start_step <= 0:
      return (Phase(MRF_GROUP, 0),)
    return (Phase("train", 0), Phase(MRF_GROUP, self.markovgen_start_step))

  def draw_mask(self, rng: jax.Array, batch: int) -> jax.Array:
    """A training mask `[batch, N]`: a task's given positions stay visible, the schedule masks the rest."""
    task_rng, mask_rng = jax.random.split(rng)
    table = task_masks.task_table(self.tasks, self.grid, self.given_frames)
    given = task_masks.random_given(task_rng, table, batch)
    return mask_schedules.random_mask(mask_rng, self.schedule, ~given)

  def position_losses(self, logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per position: the label-smoothed CE summed over sub-tokens (training loss), the unsmoothed NLL summed over
    sub-tokens, and whether every sub-token's argmax is right; each `[B, N]`."""
    smoothed, nll = 0.0, 0.0
    for f, vocab in enumerate(self.model.vocab_sizes):
      factor_logits = logits[..., f, :vocab]
      target = jax.nn.one_hot(tokens[..., f], vocab)
      smoothed = smoothed + optax.softmax_cross_entropy(factor_logits, optax.smooth_labels(target,
                                                                                           self.label_smoothing))
      nll = nll + optax.softmax_cross_entropy_with_integer_labels(factor_logits, tokens[..., f])
    correct = jnp.all(jnp.argmax(logits, axis=-1) == tokens, axis=-1)
    return smoothed, nll, correct

  def _loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    mask_rng, dropout_rng = jax.random.split(rng)
    tokens = self.to_model_tokens(batch["tokens"])
    masked = self.draw_mask(mask_rng, tokens.shape[0])
    logits = self.model.apply({"params": params}, tokens, masked, self.condition(batch), train=True,
                              rngs={"dropout": dropout_rng})
    smoothed, nll, correct = self.position_losses(logits, tokens)
    weights = masked.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(smoothed * weights) / count
    masked_nll = jnp.sum(nll * weights) / count
    return loss, {"loss": loss, "masked_nll": masked_nll, "unary_nll": masked_nll,
                  "masked_accuracy": jnp.sum(correct * weights) / count, "mask_ratio": jnp.mean(weights)}

  def _mrf_loss(self, mrf_params: Any, masked_params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    """MarkovGen's loss: CE of the MRF marginals over the frozen model's late-step logits (the unary terms)."""
    tokens = self.to_model_tokens(batch["tokens"])
    maskable = jnp.ones(tokens.shape[:2], bool)
    masked = mask_schedules.random_mask(rng, self.schedule, maskable, self.markovgen_progress)
    settings = parallel_decoding.MaskedSamplingSettings(cfg_scale=self.markovgen_cfg_scale)
    unary = jax.lax.stop_gradient(parallel_decoding.guided_logits(
        self.model, masked_params, tokens, masked, self.condition(batch), settings, jnp.int32(0)))
    unary = unary[..., 0, :self.markovgen.vocab_size]
    q = self.markovgen.apply({"params": mrf_params}, unary, ~masked, tokens[..., 0])
    labels = tokens[..., 0]
    weights = masked.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    picked = lambda probs: jnp.take_along_axis(probs, labels[..., None], axis=-1)[..., 0]
    nll = -jnp.log(jnp.maximum(picked(q), 1e-30))
    unary_nll = -picked(jax.nn.log_softmax(unary, axis=-1))
    loss = jnp.sum(nll * weights) / count
    correct = (jnp.argmax(q, axis=-1) == labels).astype(jnp.float32)
    return loss, {"loss": loss, "masked_nll": loss, "unary_nll": jnp.sum(unary_nll * weights) / count,
                  "masked_accuracy": jnp.sum(correct * weights) / count, "mask_ratio": jnp.mean(weights)}

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 phase: str = "train") -> tuple[TrainState, dict[str, jax.Array]]:
    if phase == MRF_GROUP:
      masked_params = self.eval_params(state)
      loss = lambda params, batch_, rng: self._mrf_loss(params, masked_params, batch_, rng)
      return single_group_step(loss, self.optimizer, self.learning_rate, 0.0, MRF_GROUP, state, batch)
    return single_group_step(self._loss, self.optimizer, self.learning_rate, self.ema_decay, GROUP, state, batch)

  # ------------------------------------------------------------------------------------------ eval, sample

  def eval_params(self, state: TrainState) -> Any:
    return evaluation_params(state, GROUP, self.eval_ema)

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per example: `nll` (nats per masked position) and `token_accuracy` at the masked positions."""
    tokens = self.to_model_tokens(batch["tokens"])
    masked = self.draw_mask(jax.random.PRNGKey(EVAL_MASK_SEED), tokens.shape[0])
    logits = self.model.apply({"params": self.eval_params(state)}, tokens, masked, self.condition(batch))
    _, nll, correct = self.position_losses(logits, tokens)
    weights = masked.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    return {"nll": jnp.sum(nll * weights, axis=-1) / count, "token_accuracy": jnp.sum(correct * weights, -1) / count}

  def sample(self, state: TrainState, cond_batch: dict[str, jax.Array], rng: jax.Array,
             settings: parallel_decoding.MaskedSamplingSettings, batch_size: int | None = None) -> jax.Array:
    """Token grids `[B, *grid]` from the parallel decoder (jit the caller). `cond_batch` may carry `given_tokens`
    `[B, *grid]` and `given` bool `[B, N]`: decoding starts from those tokens."""
    start = known = None
    if "given" in cond_batch:
      start, known = self.to_model_tokens(cond_batch["given_tokens"]), cond_batch["given"]
    tokens = parallel_decoding.parallel_decode(self.model, self.eval_params(state), self.condition(cond_batch), rng,
                                               settings, start, known, batch_size, self.fill(state, settings))
    return self.to_grid(tokens)

  def fill(self, state: TrainState, settings: parallel_decoding.MaskedSamplingSettings) -> parallel_decoding.Fill:
    """How the decoder's last step completes the tokens: its draws, the argmax of its logits, or MarkovGen's MRF
    pass over its logits (the label of highest marginal at every position still unknown)."""
    if settings.final_fill == "draw":
      return parallel_decoding.keep_draws
    if settings.final_fill == "argmax":
      return parallel_decoding.argmax_fill
    if self.markovgen is None:
      raise ConfigError("sampling final_fill='mrf' needs a MarkovGen MRF (config.markovgen.enabled=True, trained "
                        "with experiments/markovgen_shapes.py); use final_fill='draw'.")
    mrf_params = state.params[MRF_GROUP]

    def mrf_fill(logits, drawn, tokens, unknown, rng):
      del drawn, rng
      unary = logits[..., 0, :self.markovgen.vocab_size]
      q = self.markovgen.apply({"params": mrf_params}, unary, ~unknown, tokens[..., 0])
      return jnp.where(unknown[..., None], jnp.argmax(q, axis=-1)[..., None].astype(jnp.int32), tokens)

    return mrf_fill

  def sample_settings(self, sample_config: Any, guided: bool = True) -> parallel_decoding.MaskedSamplingSettings:
    return settings_from_config(sample_config, guided)

  def sample_sets(self, run: RunContext, protocol: Any, conditions: dict[str, np.ndarray],
                  latents: np.ndarray) -> dict[str, second_stage.SampleSet]:
    """`cfg` / `nocfg`, and with `protocol.given_frames` k > 0 also `pred`: the clips decoded from their first k
    real latent frames (frame prediction), guided as the protocol says."""
    exit_steps = int(protocol.get("exit_steps", 0))
    if exit_steps and self.markovgen is not None:  # the full decoder against its early exit with and without the MRF
      guided = self.sample_settings(protocol).guided
      sets = {"cfg": second_stage.SampleSet(conditions, guided, overrides=(("exit_steps", 0), ("final_fill", "draw"))),
              "early_exit": second_stage.SampleSet(conditions, guided, overrides=(("final_fill", "draw"),)),
              "early_exit_argmax": second_stage.SampleSet(conditions, guided, overrides=(("final_fill", "argmax"),)),
              "markovgen": second_stage.SampleSet(conditions, guided, overrides=(("final_fill", "mrf"),))}
    else:
      sets = super().sample_sets(run, protocol, conditions, latents)
    given_frames = int(protocol.get("given_frames", 0))
    if not given_frames:
      return sets
    given = task_masks.given_positions("frame_prediction", self.grid, given_frames)
    guided = self.sample_settings(protocol).guided
    pixel_frames = 1 + (given_frames - 1) * self.frozen_tokenizer(run).task.temporal_factor
    pred = conditions | {"given_tokens": latents, "given": np.broadcast_to(given, (len(latents), given.size))}
    return sets | {"pred": second_stage.SampleSet(pred, guided, pixel_frames)}

  def evaluator(self, run: RunContext, state: TrainState) -> GeneratorPass:
    return GeneratorPass(self, run, state)

  def describe(self) -> dict[str, Any]:
    return {"latents": {"tokens": {"shape": list(self.token_shape), "dtype": "int32"}},
            "sequence_length": int(self.model.num_tokens), "levels": int(self.levels),
            "sub_token_vocab_sizes": list(self.model.vocab_sizes),
            "condition": str(self.model.conditioning), "prefix_length": int(self.model.prefix_length),
            "tasks": list(self.tasks), **self.embedding_parameters()}

  def embedding_parameters(self) -> dict[str, int]:
    """Parameters of the token tables and output heads as built, and what one unfactorized vocabulary of all
    2^bits codes would take in their place: a (V + 1)-row table ([MASK] included), plus a V·E head when untied
    or V biases when tied."""
    width = self.model.embed_dim
    cost = lambda vocab: (vocab + 1) * width + (vocab if self.model.tied_head else vocab * width)
    unfactorized = 2 ** self.codebook_bits if self.codebook_bits else self.model.vocab_sizes[0]
    return {"embedding_parameters": int(sum(cost(v) for v in self.model.vocab_sizes)),
            "unfactorized_embedding_parameters": int(cost(unfactorized))}


def settings_from_config(sample_config: Any, guided: bool = True) -> parallel_decoding.MaskedSamplingSettings:
  """`config.sample` or a masked evaluation protocol as decoder settings; the cfg_scale is converted from its
  cfg_convention to `u + s·(c − u)`; `guided=False` decodes the same way without guidance."""
  scale = generators.guidance_scale_from(float(sample_config.cfg_scale),
                                         str(sample_config.get("cfg_convention", "standard")))
  return parallel_decoding.MaskedSamplingSettings(
      num_steps=int(sample_config.num_steps), schedule=str(sample_config.schedule),
      temperature=float(sample_config.temperature), top_k=int(sample_config.top_k),
      choice_temperature=float(sample_config.choice_temperature), cfg_scale=scale if guided else 1.0,
      cfg_ramp=bool(sample_config.cfg_ramp), exit_steps=int(sample_config.get("exit_steps", 0)),
      final_fill=str(sample_config.get("final_fill", "draw")))


# ------------------------------------------------------------------------------------------------------- build


def masked_model(config: Any, grid: tuple[int, ...], codebook_size: int,
                 levels: int = 1) -> tuple[MaskedTransformer, int]:
  """The model of `config.model` over `grid` (with `levels` token layers per position), and the factorized
  codebook bits (0 without factorization)."""
  kwargs = config.model.to_dict()
  name, factorized = kwargs.pop("name"), tuple(kwargs.pop("factorized_bits"))
  if name != "masked":
    raise ConfigError(f"config.model.name={name!r}: the masked task trains 'masked' models.")
  kwargs["dtype"] = jnp.dtype(kwargs.pop("dtype"))
  bits = 0
  if factorized:
    bits = sum(factorized)
    if levels > 1 or 2 ** bits != codebook_size or len(set(factorized)) != 1:
      raise ConfigError(f"config.model.factorized_bits={factorized}: the sub-tokens must split the tokenizer's "
                        f"{codebook_size}-code vocabulary into equal parts ({math.log2(codebook_size):g} bits in "
                        f"total, e.g. (9, 9) for 2^18), one token layer a position (this tokenizer has {levels}).")
  vocab_sizes = tuple(2 ** b for b in factorized) if factorized else (codebook_size,) * levels
  model = MaskedTransformer(vocab_sizes=vocab_sizes, grid=tuple(grid), **kwargs)
  model.validate()
  return model, bits


def build(config: Any) -> MaskedTask:
  """`config.task='masked'`: a masked transformer over the tokens of the frozen tokenizer `config.tokenizer`."""
  token_shape, grid_ndim, codebook_size = tokenizer_token_shape(config.tokenizer.experiment)
  grid, levels = token_shape[:grid_ndim], (token_shape[grid_ndim] if len(token_shape) > grid_ndim else 1)
  model, bits = masked_model(config, grid, codebook_size, levels)
  if str(config.data.source) in latent_data.SOURCE_NAMES and str(config.data.path):  # written ones must fit
    spec = tokenizers.LatentSpec(tuple(token_shape), "int32", codebook_size)
    for split in (config.data.train_split, config.data.eval_split):
      latent_data.check_split_fits(str(config.data.path), str(split), {tokenizers.TOKENS: spec})
  loss = config.loss
  return MaskedTask(model=model, optimizer=make_optimizer(config.optimizer, config.total_steps),
                    **markovgen_fields(config, model),
                    learning_rate=learning_rate_schedule(config.optimizer, config.total_steps),
                    token_shape=tuple(token_shape), codebook_bits=bits, levels=levels, schedule=str(loss.schedule),
                    label_smoothing=float(loss.label_smoothing), tasks=tuple(loss.tasks),
                    given_frames=int(loss.given_frames), ema_decay=config.optimizer.ema_decay,
                    eval_ema=bool(config.eval.protocol.use_ema), tokenizer=config.tokenizer)


def markovgen_fields(config: Any, model: MaskedTransformer) -> dict[str, Any]:
  """The MaskedTask fields of `config.markovgen` (none when it is absent or disabled). Training masks follow the
  decoder's state at its last kept step: progress in [(T − k − 2)/T, (T − k)/T] around (T − k − 1)/T."""
  settings = config.get("markovgen")
  if settings is None or not settings.enabled:
    return {}
  steps, exit_steps = int(settings.num_steps), int(settings.exit_steps)
  if not 1 <= exit_steps < steps:
    raise ConfigError(f"config.markovgen: exit_steps={exit_steps} must be in [1, num_steps={steps}) (the decoding "
                      "steps the MRF replaces).")
  mrf = MarkovRandomField(vocab_size=model.vocab_sizes[0], grid=tuple(model.grid), rank=int(settings.rank),
                          kernel_size=int(settings.kernel_size), iterations=int(settings.iterations))
  mrf.validate()
  last = steps - exit_steps - 1
  progress = (max(last - 1, 0) / steps, min(last + 1, steps - 1) / steps)
  return dict(markovgen=mrf, markovgen_start_step=int(settings.start_step), markovgen_progress=progress,
              markovgen_cfg_scale=float(settings.cfg_scale))
