"""Generator task: train an `ARTransformer` on the token ids a frozen tokenizer wrote (`--mode=encode`).

Batches: `tokens` int `[B, *grid]` (one token layer) or `[B, *grid, levels]` (residual/multi-codebook levels,
each its own layer, coarse first), plus the condition: `label` `[B]` (class), or `text` `[B, L, D]` and
`text_mask` `[B, L]` (text; padded or cut to the model's `text_length`).

Loss (per token layer l, weights `layer_weights`): `Σ_l w_l · CE_l / Σ_l w_l`, CE_l the mean next-token cross
entropy over layer l's tokens (LlamaGen's CE; HiTVideo's per-layer weights). Eval reports per example the
weighted NLL (nats/token), perplexity is `exp` of its mean, and teacher-forced top-1 token accuracy.

State layout as every task: params/opt_state/ema_params keyed by the group 'generator'.

Modes (`second_stage`, shared by every generator over a frozen tokenizer): `encode` (alias `tokenize`) writes the
latent shards of `config.tokenize.data` with the frozen tokenizer of `config.tokenizer`; `sample` draws samples of
`config.sample.prompts` and decodes them with it. Eval adds samples of the first eval conditions with and without
CFG (`config.eval.protocol`), decoded, and in the shapes world scored against their prompts (`metrics.shapes`):
`color_shape` is the share of samples whose every prompted shape was drawn with the right color and shape, next to
`match`'s per-attribute shares. The tokenizer's own reconstruction of the real examples is scored the same way
(`reference_*`): the ceiling a generator can reach through it.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from tokgen_jax import generators, tokenizers
from tokgen_jax.data import latents as latent_data
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import orderings, sampling
from tokgen_jax.generators.ar import ARTransformer
from tokgen_jax.tasks import autoencoder, second_stage
from tokgen_jax.tasks.base import RunContext, Task, TrainState, evaluation_params, single_group_step
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer

GROUP = "generator"


@dataclasses.dataclass(frozen=True)
class GeneratorTask(second_stage.SecondStage, Task):
  """`token_shape`: one example's tokens without batch, `grid` or `grid + (levels,)` (see module doc).
  `tokenizer`: `config.tokenizer` (experiment, workdir, checkpoint_step), loaded once on first use.
  `latent_key`: the tokenizer's token array (`tokens`; a one-scale multi-scale tokenizer names it `tokens_0`)."""

  model: ARTransformer
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  token_shape: tuple[int, ...]
  layer_weights: tuple[float, ...] = ()
  ema_decay: float = 0.0
  eval_ema: bool = True  # eval and sampling read the EMA weights (when kept): the protocol's use_ema
  latent_key: str = tokenizers.TOKENS
  tokenizer: Any = dataclasses.field(default=None, hash=False, compare=False)
  _loaded: dict = dataclasses.field(default_factory=dict, hash=False, compare=False, repr=False)

  @property
  def input_key(self) -> str:
    return self.latent_key

  def __post_init__(self):
    grid, levels = self.grid_and_levels
    expected = tuple((tuple(grid),) * levels)
    if tuple(map(tuple, self.model.layer_grids)) != expected:
      raise ConfigError(f"GeneratorTask: token_shape={self.token_shape} gives {levels} layer(s) of grid {grid}, "
                        f"but the model was built for layer_grids={self.model.layer_grids}; derive both from the "
                        f"tokenizer (see tasks.build).")
    if self.layer_weights and len(self.layer_weights) != levels:
      raise ConfigError(f"GeneratorTask: layer_weights={self.layer_weights} needs one weight per token layer "
                        f"({levels}).")

  @property
  def grid_and_levels(self) -> tuple[tuple[int, ...], int]:
    """The token grid and the number of levels (token layers) in `token_shape`."""
    grid_ndim = len(self.model.layer_grids[0])
    grid = tuple(self.token_shape[:grid_ndim])
    levels = self.token_shape[grid_ndim] if len(self.token_shape) > grid_ndim else 1
    return grid, levels

  @property
  def weights(self) -> np.ndarray:
    return np.asarray(self.layer_weights or (1.0,) * len(self.model.vocab_sizes), np.float32)

  # ----------------------------------------------------------------------------------------------- layout

  def to_sequence(self, tokens: jax.Array) -> jax.Array:
    """Grid tokens `[B, *token_shape]` to the model's sequence `[B, N]` (layers concatenated, each ordered)."""
    grid, levels = self.grid_and_levels
    layers = [tokens] if len(self.token_shape) == len(grid) else [tokens[..., l] for l in range(levels)]
    perms = self.model.permutations()
    return jnp.concatenate([orderings.apply(layer, perm) for layer, perm in zip(layers, perms)], axis=1)

  def to_grid(self, sequence: jax.Array) -> jax.Array:
    """The inverse of `to_sequence`."""
    grid, levels = self.grid_and_levels
    size = math.prod(grid)
    layers = [orderings.undo(sequence[:, l * size:(l + 1) * size], perm, grid)
              for l, perm in enumerate(self.model.permutations())]
    return layers[0] if len(self.token_shape) == len(grid) else jnp.stack(layers, axis=-1)

  def condition(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return second_stage.condition_of(batch, self.model.conditioning, self.model.text_length)

  def example_batch(self) -> dict[str, jax.Array]:
    return {self.latent_key: jnp.zeros((1,) + tuple(self.token_shape), jnp.int32), **second_stage.example_conditions(
        self.model.conditioning, self.model.text_length, self.model.text_dim)}

  # ------------------------------------------------------------------------------------------------ train

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    model_rng, state_rng = jax.random.split(rng)
    variables = self.model.init({"params": model_rng, "dropout": model_rng}, self.to_sequence(batch[self.latent_key]),
                                self.condition(batch))
    params = {GROUP: variables["params"]}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={GROUP: self.optimizer.init(params[GROUP])},
                      ema_params={GROUP: params[GROUP]} if self.ema_decay else {}, model_state={}, rng=state_rng)

  def _token_losses(self, logits: jax.Array, sequence: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token NLL `[B, N]` and correctness `[B, N]` (argmax == target)."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, sequence)
    correct = (jnp.argmax(logits, axis=-1) == sequence).astype(jnp.float32)
    return nll, correct

  def _per_layer_mean(self, values: jax.Array) -> jax.Array:
    """`[B, N]` → `[B, num_layers]` mean over each layer's tokens."""
    lengths = self.model.layer_lengths
    return values.reshape(values.shape[0], len(lengths), lengths[0]).mean(-1) if len(set(lengths)) == 1 else \
        jnp.stack([part.mean(-1) for part in jnp.split(values, np.cumsum(lengths)[:-1], axis=1)], axis=-1)

  def _weighted(self, per_layer: jax.Array) -> jax.Array:
    weights = jnp.asarray(self.weights)
    return per_layer @ weights / weights.sum()

  def _loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    sequence = self.to_sequence(batch[self.latent_key]).astype(jnp.int32)
    logits = self.model.apply({"params": params}, sequence, self.condition(batch), train=True,
                              rngs={"dropout": rng})
    nll, correct = self._token_losses(logits, sequence)
    per_layer = self._per_layer_mean(nll).mean(0)
    loss = self._weighted(per_layer)
    metrics = {"loss": loss, "token_accuracy": correct.mean()}
    if len(self.model.vocab_sizes) > 1:
      metrics |= {f"loss_layer_{l}": per_layer[l] for l in range(len(self.model.vocab_sizes))}
    return loss, metrics

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 phase: str = "train") -> tuple[TrainState, dict[str, jax.Array]]:
    del phase  # one phase
    return single_group_step(self._loss, self.optimizer, self.learning_rate, self.ema_decay, GROUP, state, batch)

  # ------------------------------------------------------------------------------------------ eval, sample

  def eval_params(self, state: TrainState) -> Any:
    return evaluation_params(state, GROUP, self.eval_ema)

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per example: `nll` (weighted nats per token, conditional) and teacher-forced `token_accuracy`."""
    sequence = self.to_sequence(batch[self.latent_key]).astype(jnp.int32)
    logits = self.model.apply({"params": self.eval_params(state)}, sequence, self.condition(batch))
    nll, correct = self._token_losses(logits, sequence)
    return {"nll": self._weighted(self._per_layer_mean(nll)), "token_accuracy": correct.mean(-1)}

  def sample(self, state: TrainState, cond_batch: dict[str, jax.Array], rng: jax.Array,
             settings: sampling.SamplingSettings, batch_size: int | None = None) -> jax.Array:
    """Token grids `[B, *token_shape]` drawn with the KV-cache sampler (jit the caller)."""
    cond = self.condition(cond_batch)
    sequence = sampling.sample_with_cache(self.model, self.eval_params(state), cond, rng, settings, batch_size)
    return self.to_grid(sequence)

  # ------------------------------------------------------------------------------------------- protocol

  def sample_settings(self, sample_config: Any, guided: bool = True) -> sampling.SamplingSettings:
    return settings_from_config(sample_config, guided)

  def evaluator(self, run: RunContext, state: TrainState) -> "GeneratorPass":
    return GeneratorPass(self, run, state)

  def describe(self) -> dict[str, Any]:
    """The token layout the model sees: shape per example, layers, sequence lengths, vocabularies, prefix."""
    return {"latents": {self.latent_key: {"shape": list(self.token_shape), "dtype": "int32"}},
            "sequence_length": int(self.model.num_tokens), "layer_lengths": list(self.model.layer_lengths),
            "vocab_sizes": list(self.model.vocab_sizes), "condition": str(self.model.conditioning),
            "prefix_length": int(self.model.prefix_length)}


def settings_from_config(sample_config: Any, guided: bool = True) -> sampling.SamplingSettings:
  """`config.sample` or an evaluation protocol as `SamplingSettings`: the quoted cfg_scale converted from its
  cfg_convention to the sampler's `u + s·(c − u)`; `guided=False` draws the same settings without guidance."""
  scale = generators.guidance_scale_from(float(sample_config.cfg_scale),
                                         str(sample_config.get("cfg_convention", "standard")))
  return sampling.SamplingSettings(temperature=float(sample_config.temperature), top_k=int(sample_config.top_k),
                                   top_p=float(sample_config.top_p), cfg_ramp=bool(sample_config.cfg_ramp),
                                   cfg_scale=scale if guided else 1.0)


class GeneratorPass:
  """The generator's `Evaluator`: teacher-forced NLL / perplexity / token accuracy over the eval tokens, then the
  shared sample pass (`second_stage.SampleEvaluation`)."""

  def __init__(self, task: second_stage.SecondStage, run: RunContext, state: TrainState):
    self._samples = second_stage.SampleEvaluation(task, run, state)
    self._sums, self._count = {}, 0

  def update(self, outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray], mask: np.ndarray) -> None:
    """Sums every per-example output of `eval_step` (`nll`, `token_accuracy` and any the task adds)."""
    del batch
    for name, values in outputs.items():
      self._sums[name] = self._sums.get(name, 0.0) + float(np.sum(values[mask], dtype=np.float64))
    self._count += int(mask.sum())

  def results(self) -> dict[str, float]:
    results = {name: total / max(self._count, 1) for name, total in self._sums.items()}
    if "nll" in results:
      results["perplexity"] = float(np.exp(results["nll"]))
    return results | self._samples.results()

  def write_samples(self, directory: epath.Path, step: int) -> None:
    self._samples.write_samples(directory, step)


# ------------------------------------------------------------------------------------------------------- build


def tokenizer_token_shape(tokenizer_config: Any) -> tuple[tuple[int, ...], int, int]:
  """`(token_shape, grid_ndim, codebook_size)` of one example of the tokenizer experiment `tokenizer_config`:
  the grid `(h, w)` or `(t, h, w)` (its rank is `grid_ndim`), plus a trailing levels dim for multi-codebook
  quantizers; from the tokenizer's abstract `latent_specs`."""
  name, spec, grid_ndim = tokenizer_token_array(tokenizer_config)
  del name
  return tuple(spec.shape), grid_ndim, spec.vocab_size


def tokenizer_token_array(tokenizer_config: Any) -> tuple[str, Any, int]:
  """`(name, LatentSpec, grid_ndim)` of the one token array an AR generator models: `tokens`, or the only
  discrete array of the tokenizer (a one-scale multi-scale tokenizer's `tokens_0`)."""
  model = autoencoder.build_tokenizer(tokenizer_config.model)
  shape = autoencoder.input_shape(tokenizer_config.data)
  specs = model.latent_specs(shape)
  discrete = {name: spec for name, spec in specs.items() if spec.is_discrete}
  if not discrete:
    raise ConfigError(f"config.tokenizer: the tokenizer's quantizer {tokenizer_config.model.quantizer.name!r} is "
                      f"continuous (it encodes {sorted(specs)}); an AR generator needs discrete tokens (vq, lfq, "
                      "fsq, rvq).")
  if tokenizers.TOKENS not in discrete and len(discrete) > 1:
    raise ConfigError(f"config.tokenizer: the tokenizer writes {len(discrete)} token arrays {sorted(discrete)} (one "
                      "per scale); the AR generator models one. Train next-scale prediction on them "
                      "(config.task='var'), or give the tokenizer a single scale.")
  name = tokenizers.TOKENS if tokenizers.TOKENS in discrete else next(iter(discrete))
  return name, discrete[name], len(shape) - 1


def build(config: Any) -> GeneratorTask:
  """`config.task='generator'`: an AR transformer over the tokens of the frozen tokenizer `config.tokenizer`."""
  token_key, spec, grid_ndim = tokenizer_token_array(config.tokenizer.experiment)
  token_shape, codebook_size = tuple(spec.shape), spec.vocab_size
  kwargs = config.model.to_dict()
  if kwargs.pop("name") != "ar":
    raise ConfigError(f"config.model.name={config.model.name!r}: the generator task trains 'ar' models.")
  kwargs["dtype"] = jnp.dtype(kwargs.pop("dtype"))
  grid, levels = token_shape[:grid_ndim], (token_shape[grid_ndim] if len(token_shape) > grid_ndim else 1)
  model = ARTransformer(vocab_sizes=(codebook_size,) * levels, layer_grids=(tuple(grid),) * levels, **kwargs)
  model.validate()
  if str(config.data.source) in latent_data.SOURCE_NAMES and str(config.data.path):  # written ones must fit
    for split in (config.data.train_split, config.data.eval_split):
      latent_data.check_split_fits(str(config.data.path), str(split), {token_key: spec})
  return GeneratorTask(model=model, optimizer=make_optimizer(config.optimizer, config.total_steps),
                       learning_rate=learning_rate_schedule(config.optimizer, config.total_steps),
                       token_shape=token_shape, layer_weights=tuple(config.loss.layer_weights),
                       ema_decay=config.optimizer.ema_decay, eval_ema=bool(config.eval.protocol.use_ema),
                       latent_key=token_key, tokenizer=config.tokenizer)
