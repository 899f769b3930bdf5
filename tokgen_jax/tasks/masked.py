"""Masked token task: train a `MaskedTransformer` on the token ids a frozen tokenizer wrote (`--mode=encode`) and
sample it with MaskGIT's parallel decoder.

Batches are the generator task's: `tokens` int `[B, *grid]` plus the condition (`label`, or `text` and `text_mask`).
The model sees the grid in row-major order as `[B, N, F]`. F = 1, or with `factorized_bits` (MAGVIT-v2's MLM:
2^18 LFQ codes as 2 × 2^9) the F sub-tokens of `quantizers.factorize_indices`.

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
from tokgen_jax.generators.masked import MaskedTransformer
from tokgen_jax.quantizers import factorize_indices, merge_indices
from tokgen_jax.tasks import second_stage
from tokgen_jax.tasks.base import RunContext, Task, TrainState, evaluation_params, single_group_step
from tokgen_jax.tasks.generator import GeneratorPass, tokenizer_token_shape
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer

GROUP = "generator"
EVAL_MASK_SEED = 0


@dataclasses.dataclass(frozen=True)
class MaskedTask(second_stage.SecondStage, Task):
  """`token_shape`: one example's token grid. `codebook_bits`: the tokenizer's index bits when its tokens are
  factorized (0: they are not). `tasks`/`given_frames`: the conditional tasks trained (see module doc)."""

  model: MaskedTransformer
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  token_shape: tuple[int, ...]
  codebook_bits: int = 0
  schedule: str = "cosine"
  label_smoothing: float = 0.1
  tasks: tuple[str, ...] = ("generation",)
  given_frames: int = 1
  ema_decay: float = 0.0
  eval_ema: bool = True
  tokenizer: Any = dataclasses.field(default=None, hash=False, compare=False)
  _loaded: dict = dataclasses.field(default_factory=dict, hash=False, compare=False, repr=False)

  input_key = latent_key = tokenizers.TOKENS

  def __post_init__(self):
    if tuple(self.model.grid) != tuple(self.token_shape):
      raise ConfigError(f"MaskedTask: token_shape={self.token_shape} but the model's grid is {self.model.grid}; "
                        "derive both from the tokenizer (see tasks.masked.build).")
    mask_schedules.check_schedule(self.schedule, "config.loss.schedule")
    task_masks.check_tasks(self.tasks, self.token_shape, self.given_frames)
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ConfigError(f"config.loss.label_smoothing={self.label_smoothing} must be in [0, 1).")

  @property
  def conditioning(self) -> str:
    return self.model.conditioning

  @property
  def text_length(self) -> int:
    return self.model.text_length

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  # ----------------------------------------------------------------------------------------------- layout

  def to_model_tokens(self, tokens: jax.Array) -> jax.Array:
    """Grid tokens `[B, *grid]` → `[B, N, F]` (row-major; sub-tokens under factorization)."""
    flat = tokens.reshape(tokens.shape[0], -1).astype(jnp.int32)
    if not self.codebook_bits:
      return flat[..., None]
    return factorize_indices(flat, self.codebook_bits, self.model.num_factors)

  def to_grid(self, model_tokens: jax.Array) -> jax.Array:
    """The inverse of `to_model_tokens`."""
    flat = merge_indices(model_tokens, self.codebook_bits, self.model.num_factors) if self.codebook_bits else \
        model_tokens[..., 0]
    return flat.reshape((flat.shape[0],) + tuple(self.token_shape))

  def condition(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return second_stage.condition_of(batch, self.model.conditioning, self.model.text_length)

  def example_batch(self) -> dict[str, jax.Array]:
    return {"tokens": jnp.zeros((1,) + tuple(self.token_shape), jnp.int32), **second_stage.example_conditions(
        self.model.conditioning, self.model.text_length, self.model.text_dim)}

  def example_conditions(self) -> dict[str, jax.Array]:
    return {key: value for key, value in self.example_batch().items() if key != "tokens"}

  # ------------------------------------------------------------------------------------------------ train

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    model_rng, state_rng = jax.random.split(rng)
    tokens = self.to_model_tokens(batch["tokens"])
    variables = self.model.init({"params": model_rng, "dropout": model_rng}, tokens,
                                jnp.zeros(tokens.shape[:2], bool), self.condition(batch))
    params = {GROUP: variables["params"]}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={GROUP: self.optimizer.init(params[GROUP])},
                      ema_params={GROUP: params[GROUP]} if self.ema_decay else {}, model_state={}, rng=state_rng)

  def draw_mask(self, rng: jax.Array, batch: int) -> jax.Array:
    """A training mask `[batch, N]`: a task's given positions stay visible, the schedule masks the rest."""
    task_rng, mask_rng = jax.random.split(rng)
    table = task_masks.task_table(self.tasks, self.token_shape, self.given_frames)
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
    return loss, {"loss": loss, "masked_nll": jnp.sum(nll * weights) / count,
                  "masked_accuracy": jnp.sum(correct * weights) / count, "mask_ratio": jnp.mean(weights)}

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 phase: str = "train") -> tuple[TrainState, dict[str, jax.Array]]:
    del phase  # one phase
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
                                               settings, start, known, batch_size, self.fill(state))
    return self.to_grid(tokens)

  def fill(self, state: TrainState) -> parallel_decoding.Fill:
    """How the decoder's last step completes the tokens (MarkovGen overrides it with its MRF pass)."""
    del state
    return parallel_decoding.keep_draws

  def sample_settings(self, sample_config: Any, guided: bool = True) -> parallel_decoding.MaskedSamplingSettings:
    return settings_from_config(sample_config, guided)

  def sample_sets(self, run: RunContext, protocol: Any, conditions: dict[str, np.ndarray],
                  latents: np.ndarray) -> dict[str, second_stage.SampleSet]:
    """`cfg` / `nocfg`, and with `protocol.given_frames` k > 0 also `pred`: the clips decoded from their first k
    real latent frames (frame prediction), guided as the protocol says."""
    sets = super().sample_sets(run, protocol, conditions, latents)
    given_frames = int(protocol.get("given_frames", 0))
    if not given_frames:
      return sets
    given = task_masks.given_positions("frame_prediction", self.token_shape, given_frames)
    guided = self.sample_settings(protocol).guided
    pixel_frames = 1 + (given_frames - 1) * self.frozen_tokenizer(run).task.temporal_factor
    pred = conditions | {"given_tokens": latents, "given": np.broadcast_to(given, (len(latents), given.size))}
    return sets | {"pred": second_stage.SampleSet(pred, guided, pixel_frames)}

  def evaluator(self, run: RunContext, state: TrainState) -> GeneratorPass:
    return GeneratorPass(self, run, state)

  def describe(self) -> dict[str, Any]:
    return {"latents": {"tokens": {"shape": list(self.token_shape), "dtype": "int32"}},
            "sequence_length": int(self.model.num_tokens), "sub_token_vocab_sizes": list(self.model.vocab_sizes),
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
      cfg_ramp=bool(sample_config.cfg_ramp), exit_steps=int(sample_config.get("exit_steps", 0)))


# ------------------------------------------------------------------------------------------------------- build


def masked_model(config: Any, token_shape: tuple[int, ...], codebook_size: int) -> tuple[MaskedTransformer, int]:
  """The model of `config.model` over `token_shape`, and the factorized codebook bits (0 without factorization)."""
  kwargs = config.model.to_dict()
  name, factorized = kwargs.pop("name"), tuple(kwargs.pop("factorized_bits"))
  if name != "masked":
    raise ConfigError(f"config.model.name={name!r}: the masked task trains 'masked' models.")
  kwargs["dtype"] = jnp.dtype(kwargs.pop("dtype"))
  bits = 0
  if factorized:
    bits = sum(factorized)
    if 2 ** bits != codebook_size or len(set(factorized)) != 1:
      raise ConfigError(f"config.model.factorized_bits={factorized}: the sub-tokens must split the tokenizer's "
                        f"{codebook_size}-code vocabulary into equal parts ({math.log2(codebook_size):g} bits in "
                        "total, e.g. (9, 9) for 2^18).")
  vocab_sizes = tuple(2 ** b for b in factorized) if factorized else (codebook_size,)
  model = MaskedTransformer(vocab_sizes=vocab_sizes, grid=tuple(token_shape), **kwargs)
  model.validate()
  return model, bits


def build(config: Any) -> MaskedTask:
  """`config.task='masked'`: a masked transformer over the tokens of the frozen tokenizer `config.tokenizer`."""
  token_shape, grid_ndim, codebook_size = tokenizer_token_shape(config.tokenizer.experiment)
  if len(token_shape) != grid_ndim:
    raise ConfigError(f"config.tokenizer: its tokens have shape {token_shape}, a grid with {token_shape[-1]} levels "
                      "per position (residual or multi-codebook); the masked task models one token per position.")
  model, bits = masked_model(config, token_shape, codebook_size)
  if str(config.data.source) in latent_data.SOURCE_NAMES and str(config.data.path):  # written ones must fit
    spec = tokenizers.LatentSpec(tuple(token_shape), "int32", codebook_size)
    for split in (config.data.train_split, config.data.eval_split):
      latent_data.check_split_fits(str(config.data.path), str(split), {tokenizers.TOKENS: spec})
  loss = config.loss
  return MaskedTask(model=model, optimizer=make_optimizer(config.optimizer, config.total_steps),
                    learning_rate=learning_rate_schedule(config.optimizer, config.total_steps),
                    token_shape=tuple(token_shape), codebook_bits=bits, schedule=str(loss.schedule),
                    label_smoothing=float(loss.label_smoothing), tasks=tuple(loss.tasks),
                    given_frames=int(loss.given_frames), ema_decay=config.optimizer.ema_decay,
                    eval_ema=bool(config.eval.protocol.use_ema), tokenizer=config.tokenizer)
