"""Next-scale prediction task: train a `VARTransformer` on the token maps a frozen multi-scale tokenizer wrote.

Batches: the tokenizer's per-scale maps `tokens_0` `[B, 1, 1]` .. `tokens_{S-1}` `[B, s, s]` (its latent shards,
`--mode=encode`) and `label` `[B]`. The train step concatenates them coarse first into `[B, L]`, rebuilds the
teacher-forced inputs with the tokenizer's own quantizer (`next_scale_inputs`: its f̂ of the coarser scales,
area-downsampled to each scale) and scores every token: the loss is `Σ_i w_i·CE_i` with `w_i = 1/L` (VAR's
`loss_weight`), the mean cross entropy over the L tokens. Eval reports per example the NLL (nats per token, with
`nll_scale_k` and `token_accuracy_scale_k` per scale) and the shared sample pass of the second stages.

The quantizer's variables (codebook and φ, plus the restart offsets of its "quantizer_stats" when it restarts
codes) live in `state.model_state["quantizer"]`: `init` gives them the right shapes, `prepare` copies in the
tokenizer's own on a fresh start, and checkpoints keep them, so train steps, eval and sampling
(`var_sampling.sample_scales`, which also rebuilds f̂) read them from the state alone.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokgen_jax import tokenizers
from tokgen_jax.data import latents as latent_data
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators import sampling
from tokgen_jax.generators.var import VARTransformer
from tokgen_jax.generators.var_sampling import sample_scales
from tokgen_jax.quantizers.multiscale import MultiScaleResidualQuantizer
from tokgen_jax.tasks import autoencoder, second_stage
from tokgen_jax.tasks.base import RunContext, Task, TrainState, evaluation_params, single_group_step
from tokgen_jax.tasks.generator import GeneratorPass, settings_from_config
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer

GROUP = "generator"
QUANTIZER = "quantizer"  # the frozen quantizer's parameters in model_state


@dataclasses.dataclass(frozen=True)
class NextScaleTask(second_stage.SecondStage, Task):
  """`quantizer`: the tokenizer's (unbound) multi-scale quantizer; `tokenizer`: `config.tokenizer`."""

  model: VARTransformer
  quantizer: MultiScaleResidualQuantizer
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  ema_decay: float = 0.0
  eval_ema: bool = True
  tokenizer: Any = dataclasses.field(default=None, hash=False, compare=False)
  _loaded: dict = dataclasses.field(default_factory=dict, hash=False, compare=False, repr=False)

  latent_key = tokenizers.TOKENS  # what the sampler draws: all scales as one `[B, L]` sequence

  # ----------------------------------------------------------------------------------------------- layout

  @property
  def scale_names(self) -> tuple[str, ...]:
    return self.quantizer.scale_names

  def sequence(self, arrays: dict[str, Any]) -> jax.Array:
    """The per-scale maps of a batch as the model's `[B, L]` sequence (coarse first, each row-major)."""
    return self.quantizer.indices_from_named({name: jnp.asarray(arrays[name]) for name in self.scale_names})

  def latent_arrays(self, drawn: Any) -> dict[str, Any]:
    return {name: np.asarray(a) for name, a in self.quantizer.named_indices(jnp.asarray(drawn)).items()}

  def example_latents(self, examples) -> np.ndarray:
    return np.asarray(self.sequence({name: np.stack([e[name] for e in examples]) for name in self.scale_names}))

  def token_weights(self) -> np.ndarray:
    """`[L]` VAR's per-token loss weights: 1/L each, so an example's weights sum to one."""
    return np.full(self.model.num_tokens, 1.0 / self.model.num_tokens, np.float32)

  def condition(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return second_stage.condition_of(batch, self.model.conditioning, 0)

  def example_batch(self) -> dict[str, jax.Array]:
    maps = {name: jnp.zeros((1, s, s), jnp.int32) for name, s in zip(self.scale_names, self.model.scales)}
    return maps | self.example_conditions()

  def example_conditions(self) -> dict[str, jax.Array]:
    return second_stage.example_conditions(self.model.conditioning, 0, 0)

  # ------------------------------------------------------------------------------------------------ train

  def _quantizer_init(self, rng: jax.Array) -> Any:
    size = self.model.scales[-1]
    return dict(self.quantizer.init(rng, jnp.zeros((1, size, size, self.quantizer.dim))))

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    model_rng, quantizer_rng, state_rng = jax.random.split(rng, 3)
    quantizer_variables = self._quantizer_init(quantizer_rng)
    inputs = self.teacher_inputs(quantizer_variables, self.sequence(batch))
    params = {GROUP: self.model.init({"params": model_rng, "dropout": model_rng}, inputs,
                                     self.condition(batch))["params"]}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={GROUP: self.optimizer.init(params[GROUP])},
                      ema_params={GROUP: params[GROUP]} if self.ema_decay else {},
                      model_state={QUANTIZER: quantizer_variables}, rng=state_rng)

  def prepare(self, run: RunContext, state: TrainState) -> TrainState:
    """The tokenizer's quantizer (the weights it decodes with) in place of the initial one."""
    tokenizer = self.frozen_tokenizer(run)
    source = tokenizer_quantizer_variables(tokenizer.task, tokenizer.state)
    current = state.model_state[QUANTIZER]
    if jax.tree.structure(source) != jax.tree.structure(current) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(current))):
      raise ConfigError(f"config.tokenizer.workdir={self.tokenizer.workdir!r}: its quantizer's variables do not "
                        f"match config.tokenizer.experiment's model.quantizer ({self.quantizer.codebook_size} codes "
                        f"of {self.quantizer.dim}, scales {tuple(self.quantizer.scales)}); point both at one run.")
    # Copies: the train step donates the state, and the frozen tokenizer keeps decoding with its own buffers.
    placed = jax.tree.map(lambda a, c: jax.device_put(jnp.array(a, copy=True), c.sharding), source, current)
    return state.replace(model_state=state.model_state | {QUANTIZER: placed})

  def teacher_inputs(self, quantizer_variables: Any, sequence: jax.Array) -> jax.Array:
    """The model's inputs of scales 1..S-1 for token sequences `[B, L]` (no gradient: the quantizer is frozen)."""
    return jax.lax.stop_gradient(self.quantizer.apply(quantizer_variables, sequence, method="next_scale_inputs"))

  def _token_losses(self, params: Any, quantizer_variables: Any, batch: dict[str, jax.Array], train: bool,
                    rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Per-token NLL `[B, L]` and correctness (argmax == target) `[B, L]`."""
    sequence = self.sequence(batch)
    logits = self.model.apply({"params": params}, self.teacher_inputs(quantizer_variables, sequence),
                              self.condition(batch), train=train, rngs={"dropout": rng} if train else None)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, sequence)
    return nll, (jnp.argmax(logits, axis=-1) == sequence).astype(jnp.float32)

  def _loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, quantizer_variables: Any):
    nll, correct = self._token_losses(params, quantizer_variables, batch, True, rng)
    loss = jnp.mean(nll @ jnp.asarray(self.token_weights()))
    return loss, {"loss": loss, "token_accuracy": correct.mean()}

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 phase: str = "train") -> tuple[TrainState, dict[str, jax.Array]]:
    del phase  # one phase
    loss_fn = functools.partial(self._loss, quantizer_variables=state.model_state[QUANTIZER])
    return single_group_step(loss_fn, self.optimizer, self.learning_rate, self.ema_decay, GROUP, state, batch)

  # ------------------------------------------------------------------------------------------ eval, sample

  def eval_params(self, state: TrainState) -> Any:
    return evaluation_params(state, GROUP, self.eval_ema)

  def _per_scale(self, values: jax.Array) -> list[jax.Array]:
    bounds = self.model.scale_bounds()
    return [values[:, start:end].mean(-1) for start, end in zip(bounds[:-1], bounds[1:])]

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per example: `nll` (VAR-weighted nats per token), `token_accuracy`, and both per scale."""
    nll, correct = self._token_losses(self.eval_params(state), state.model_state[QUANTIZER], batch, False)
    outputs = {"nll": nll @ jnp.asarray(self.token_weights()), "token_accuracy": correct.mean(-1)}
    for k, (scale_nll, scale_correct) in enumerate(zip(self._per_scale(nll), self._per_scale(correct))):
      outputs |= {f"nll_scale_{k}": scale_nll, f"token_accuracy_scale_{k}": scale_correct}
    return outputs

  def sample(self, state: TrainState, cond_batch: dict[str, jax.Array], rng: jax.Array,
             settings: sampling.SamplingSettings, batch_size: int | None = None) -> jax.Array:
    """Token sequences `[B, L]` drawn scale by scale (jit the caller)."""
    del batch_size  # class-conditional: the labels give it
    cond = self.condition(cond_batch)
    return sample_scales(self.model, self.eval_params(state), cond, rng, self.feedback(state),
                         self.quantizer.empty_reconstruction(cond["label"].shape[0]), settings)

  def feedback(self, state: TrainState):
    """The sampler's feedback: the frozen quantizer's `advance` (f̂ and the next scale's inputs)."""
    variables = state.model_state[QUANTIZER]
    return lambda f_hat, k, code_map: self.quantizer.apply(variables, f_hat, code_map, k, method="advance")

  # ------------------------------------------------------------------------------------------- protocol

  def sample_settings(self, sample_config: Any, guided: bool = True) -> sampling.SamplingSettings:
    return settings_from_config(sample_config, guided)

  def evaluator(self, run: RunContext, state: TrainState) -> GeneratorPass:
    return GeneratorPass(self, run, state)

  def describe(self) -> dict[str, Any]:
    return {"latents": {name: {"shape": [s, s], "dtype": "int32"} for name, s in zip(self.scale_names,
                                                                                     self.model.scales)},
            "sequence_length": int(self.model.num_tokens), "scales": list(self.model.scales),
            "steps_per_sample": self.model.num_scales, "vocab_size": int(self.model.codebook_size),
            "condition": str(self.model.conditioning)}


# ------------------------------------------------------------------------------------------------------- build


def tokenizer_quantizer_variables(task: autoencoder.AutoencoderTask, state: TrainState) -> dict[str, Any]:
  """The quantizer's variables in a tokenizer's state: its eval params and its part of every other collection."""
  variables = {"params": task.eval_params(state)[QUANTIZER]}
  for collection, tree in state.model_state.get(autoencoder.GROUP, {}).items():
    if QUANTIZER in tree:
      variables[collection] = tree[QUANTIZER]
  return variables


def tokenizer_quantizer(tokenizer_config: Any) -> MultiScaleResidualQuantizer:
  """The multi-scale quantizer of the tokenizer experiment `tokenizer_config` (unbound), checked against its
  latent grid."""
  model = autoencoder.build_tokenizer(tokenizer_config.model)
  quantizer = model.quantizer
  if not isinstance(quantizer, MultiScaleResidualQuantizer):
    raise ConfigError(f"config.tokenizer: the tokenizer's quantizer {tokenizer_config.model.quantizer.name!r} is not "
                      "multi-scale; next-scale prediction needs model.quantizer.name='msrq' (VAR's quantizer).")
  grid = model.latent_grid(autoencoder.input_shape(tokenizer_config.data))
  if tuple(grid) != (quantizer.scales[-1],) * 2:
    raise ConfigError(f"config.tokenizer: the tokenizer's latent grid {tuple(grid)} is not its finest scale "
                      f"{quantizer.scales[-1]}²; make model.quantizer.scales end at the latent size.")
  return quantizer


def build(config: Any) -> NextScaleTask:
  """`config.task='var'`: a VAR transformer over the token maps of the frozen tokenizer `config.tokenizer`."""
  quantizer = tokenizer_quantizer(config.tokenizer.experiment)
  kwargs = config.model.to_dict()
  if kwargs.pop("name") != "var":
    raise ConfigError(f"config.model.name={config.model.name!r}: the var task trains 'var' models.")
  kwargs["dtype"] = jnp.dtype(kwargs.pop("dtype"))
  model = VARTransformer(scales=tuple(quantizer.scales), codebook_size=int(quantizer.codebook_size),
                         vae_dim=int(quantizer.dim), **kwargs)
  model.validate()
  if str(config.data.source) in latent_data.SOURCE_NAMES and str(config.data.path):  # written ones must fit
    specs = {name: tokenizers.LatentSpec((s, s), "int32", quantizer.codebook_size)
             for name, s in zip(quantizer.scale_names, quantizer.scales)}
    for split in (config.data.train_split, config.data.eval_split):
      latent_data.check_split_fits(str(config.data.path), str(split), specs)
  return NextScaleTask(model=model, quantizer=quantizer, optimizer=make_optimizer(config.optimizer, config.total_steps),
                       learning_rate=learning_rate_schedule(config.optimizer, config.total_steps),
                       ema_decay=config.optimizer.ema_decay, eval_ema=bool(config.eval.protocol.use_ema),
                       tokenizer=config.tokenizer)
