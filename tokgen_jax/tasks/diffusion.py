"""Diffusion task: a denoiser (DiT, or W.A.L.T. for video) learns the continuous latents a frozen KL tokenizer wrote (`--mode=encode`).

Batches: `latents` float `[B, *latent_shape]` (the tokenizer's units) or, for a plane model (`plane_walt`) over
a factorized tokenizer, its named planes (`latents_xy0`, `latents_tw`, ...) which the task packs into one token
sequence `[B, N, c]` (`LatentLayout`) and unpacks before the tokenizer decodes them; plus the condition: `label` `[B]` (class),
or `text` `[B, L, D]` and `text_mask` `[B, L]` (padded or cut to the model's `text_length`), or nothing.

Training (source 001 algorithm 1; NUMERICS "Diffusion"): x0 = (latents − `latent_shift`) · `latent_scale` (LDM:
no shift and 1 / std, read from the train split's metadata unless configured; or each channel standardized), t uniform over 0..T-1, ε ~ N(0, I), x_t = q_sample(x0, t, ε); the
model predicts ε, v or x0 (`config.diffusion.prediction`) and the loss is the mean squared error to that target,
optionally weighted by min-SNR-γ (Hang et al. 2023). The condition of a `cond_dropout_rate` share of examples is
replaced by the null one, so one model gives both terms of classifier-free guidance. With `learn_sigma` the model
also outputs the variance interpolation and the loss adds improved DDPM's VLB term on a stop-gradient mean
(`vlb_weight` · T/1000 as DiT). A self-conditioning model (Chen et al. 2022) first estimates x0 with a zero
self-condition for a `self_condition_rate` share of examples and is trained on that (stop-gradient) estimate.
A frame-conditioned model (W.A.L.T.'s frame prediction) sees the first k ~ U{0..max_given_frames} latent frames
of each clip as given (`frames`, `frame_mask`) and learns only the others; at sampling the given frames come back
unchanged, which poses frame prediction and image-to-video (k = 1) as one problem. Over planes the given frames
fix the tokens that read only given frames (`given_token_mask` of the tokenizer's `latent_frame_spans`): with the
first frame given, four-plane's first spatial plane and the first row of each spatiotemporal plane; tri-plane's
spatial plane reads every frame, so a given frame fixes only those rows (seed 000: frame prediction is what
four-plane supports and tri-plane does not).

Eval: the held-out loss at `eval_buckets` evenly spaced timesteps (`loss_t<t>`, fixed noise, real conditions) and
their mean; then the shared sample pass (`second_stage.SampleEvaluation`): samples of the first eval conditions
with and without CFG under `config.eval.protocol`, decoded by the tokenizer, scored in the shapes world.
Sampling (`generators/diffusion/samplers.py`): DDPM or DDIM over respaced steps as one jitted lax loop; samples
are mapped back to the tokenizer's units (`denormalize`) before it decodes them.

State layout as every task: params/opt_state/ema_params keyed by the group 'diffusion'.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from tokgen_jax import tokenizers
from tokgen_jax.data import files
from tokgen_jax.data import latents as latent_data
from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import gaussian, samplers
from tokgen_jax.generators.diffusion.dit import DiT
from tokgen_jax.generators.diffusion.latent_layout import LatentLayout, given_token_mask
from tokgen_jax.generators.diffusion.plane_walt import PlaneWALT
from tokgen_jax.generators.diffusion.walt import WALT
from tokgen_jax.generators.diffusion.schedule import NoiseSchedule, make_schedule
from tokgen_jax.tasks import autoencoder, second_stage
from tokgen_jax.tasks.base import RunContext, Task, TrainState, evaluation_params, single_group_step
from tokgen_jax.tasks.optimizers import learning_rate_schedule, make_optimizer

GROUP = "diffusion"
FRAME_KEYS = ("frames", "frame_mask")  # given latents (scaled, zero elsewhere) and the model's mask of them
LOSS_WEIGHTINGS = ("none", "min_snr")
MODELS = {"dit": DiT, "walt": WALT, "plane_walt": PlaneWALT}


@dataclasses.dataclass(frozen=True)
class DiffusionTask(second_stage.SecondStage, Task):
  """`latent_shape`: one example's latents without batch (packed `(N, c)` with a `layout`). `layout`: the named
  arrays a plane model reads as one sequence, with `frame_spans` `[N, 2]` the latent frames each token reads.
  `schedule_name`, `num_train_steps`, `zero_terminal_snr` make the `NoiseSchedule`; the other fields are
  `config.diffusion`'s (see the module doc)."""

  model: Any
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  latent_shape: tuple[int, ...]
  schedule_name: str = "linear"
  num_train_steps: int = 1000
  zero_terminal_snr: bool = False
  prediction: str = "eps"
  latent_scale: float | tuple[float, ...] = 1.0
  latent_shift: tuple[float, ...] = ()
  cond_dropout_rate: float = 0.1
  self_condition_rate: float = 0.5
  max_given_frames: int = 0
  loss_weighting: str = "none"
  min_snr_gamma: float = 5.0
  vlb_weight: float = 1.0
  eval_buckets: int = 4
  ema_decay: float = 0.0
  eval_ema: bool = True
  layout: LatentLayout | None = None
  frame_spans: np.ndarray | None = dataclasses.field(default=None, hash=False, compare=False)
  tokenizer: Any = dataclasses.field(default=None, hash=False, compare=False)
  _loaded: dict = dataclasses.field(default_factory=dict, hash=False, compare=False, repr=False)

  input_key = latent_key = tokenizers.LATENTS

  def __post_init__(self):
    if self.prediction not in gaussian.PREDICTIONS:
      raise ConfigError(f"config.diffusion.prediction={self.prediction!r}; choose one of {gaussian.PREDICTIONS}.")
    if self.loss_weighting not in LOSS_WEIGHTINGS:
      raise ConfigError(f"config.diffusion.loss_weighting={self.loss_weighting!r}; choose one of {LOSS_WEIGHTINGS}.")
    if not 0.0 <= self.cond_dropout_rate < 1.0 or not 0.0 <= self.self_condition_rate <= 1.0:
      raise ConfigError(f"config.diffusion.cond_dropout_rate={self.cond_dropout_rate} must lie in [0, 1) and "
                        f"self_condition_rate={self.self_condition_rate} in [0, 1].")
    if self.frame_conditioned and self.layout is not None and self.frame_spans is None:
      raise ConfigError("config.model.frame_condition=True over latent planes needs a video tokenizer (the planes' "
                        "latent frame spans); set frame_condition=False for images.")
    if self.frame_conditioned and not 0 <= self.max_given_frames < self.latent_frames:
      raise ConfigError(f"config.diffusion.max_given_frames={self.max_given_frames} must lie in [0, "
                        f"{self.latent_frames}) (fewer than the {self.latent_frames} latent frames; W.A.L.T. "
                        "gives up to 2).")
    if self.eval_buckets < 1:
      raise ConfigError(f"config.diffusion.eval_buckets={self.eval_buckets} must be at least 1.")
    if not np.all(np.asarray(self.latent_scale) > 0):
      raise ConfigError(f"config.diffusion.latent_scale={self.latent_scale} must be positive (0 in the config reads "
                        "it from the train split's metadata).")
    # Built here, outside any trace: arrays made while jit traces a step would leak out of it if cached.
    object.__setattr__(self, "_schedule", make_schedule(self.schedule_name, self.num_train_steps,
                                                        self.zero_terminal_snr))

  @property
  def schedule(self) -> NoiseSchedule:
    return self._schedule

  @property
  def frame_conditioned(self) -> bool:
    return bool(getattr(self.model, "frame_condition", False))

  @property
  def latent_frames(self) -> int:
    """Latent frames of a video tokenizer (what `frame_mask` `[B, T]` counts); 0 for image planes."""
    if self.layout is None:
      return self.latent_shape[0]
    return 0 if self.frame_spans is None else int(np.max(self.frame_spans[:, 1]))

  def latent_arrays(self, drawn: Any) -> dict[str, Any]:
    return self.layout.unpack(drawn) if self.layout is not None else {self.latent_key: drawn}

  def pack_latents(self, arrays: dict[str, Any]) -> Any:
    """The tokenizer's named latents (a batch or the stored arrays) as the one array the model reads."""
    if self.layout is None:
      return arrays[self.latent_key]
    return self.layout.pack({name: arrays[name] for name in self.layout.names})

  def example_latents(self, examples) -> np.ndarray:
    names = self.layout.names if self.layout is not None else (self.latent_key,)
    return self.pack_latents({name: np.stack([e[name] for e in examples]) for name in names})

  def model_frame_mask(self, frame_mask: jax.Array) -> jax.Array:
    """Given latent frames `[B, T]` as the model sees them: per frame for a volume, per token `[B, N]` over planes
    (a token is given when every frame it reads is)."""
    frame_mask = jnp.asarray(frame_mask, jnp.float32)
    return frame_mask if self.layout is None else given_token_mask(self.frame_spans, frame_mask)

  def given_frames(self, x0: jax.Array, frame_mask: jax.Array) -> dict[str, jax.Array]:
    """The model's frame condition for given latent frames `frame_mask` `[B, T]`: `frames` (x0 where given, zero
    elsewhere) and the model's `frame_mask`."""
    mask = self.model_frame_mask(frame_mask)
    return {"frames": x0 * _broadcast_mask(mask, x0.ndim), "frame_mask": mask}

  @property
  def eval_timesteps(self) -> np.ndarray:
    """The centres of `eval_buckets` equal slices of 0..T-1."""
    return ((np.arange(self.eval_buckets) + 0.5) * self.num_train_steps / self.eval_buckets).astype(np.int32)

  def normalize(self, latents: jax.Array) -> jax.Array:
    """The tokenizer's latents as the diffusion process sees them: `(latents - latent_shift) · latent_scale`, per
    channel of the last axis when those are tuples."""
    shift = jnp.asarray(self.latent_shift or 0.0, jnp.float32)
    return (latents.astype(jnp.float32) - shift) * jnp.asarray(self.latent_scale, jnp.float32)

  def denormalize(self, x: jax.Array) -> jax.Array:
    return x / jnp.asarray(self.latent_scale, jnp.float32) + jnp.asarray(self.latent_shift or 0.0, jnp.float32)

  def condition(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return second_stage.condition_of(batch, self.model.conditioning, self.model.text_length)

  def example_batch(self) -> dict[str, jax.Array]:
    arrays = self.layout.arrays if self.layout is not None else ((self.latent_key, self.latent_shape),)
    return {**{name: jnp.zeros((1,) + tuple(shape), jnp.float32) for name, shape in arrays},
            **second_stage.example_conditions(self.model.conditioning, self.model.text_length, self.model.text_dim)}

  # ------------------------------------------------------------------------------------------------ model

  def _apply(self, params: Any, x_t: jax.Array, t: jax.Array, cond: dict[str, jax.Array], unconditional: jax.Array,
             self_cond: jax.Array, train: bool = False, rng: jax.Array | None = None
             ) -> tuple[jax.Array, jax.Array | None]:
    """The model's prediction and, with `learn_sigma`, its variance interpolation `frac` in [-1, 1]."""
    cond = dict(cond)
    given = {key: cond.pop(key) for key in FRAME_KEYS if key in cond}  # frame conditioning (W.A.L.T.)
    out = self.model.apply({"params": params}, x_t, t, cond, unconditional=unconditional, self_cond=self_cond,
                           train=train, rngs={"dropout": rng} if rng is not None else None, **given)
    if not self.model.learn_sigma:
      return out, None
    prediction, frac = jnp.split(out, 2, axis=-1)
    return prediction, frac

  def _x0_estimate(self, prediction: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    return gaussian.to_eps_and_x0(self.prediction, self.schedule, x_t, t, prediction)[1]

  # ------------------------------------------------------------------------------------------------ train

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    model_rng, state_rng = jax.random.split(rng)
    x = self.pack_latents(batch)
    t = jnp.zeros((x.shape[0],), jnp.int32)
    variables = self.model.init({"params": model_rng, "dropout": model_rng}, x, t, self.condition(batch),
                                unconditional=jnp.zeros((x.shape[0],), bool), self_cond=jnp.zeros_like(x))
    params = {GROUP: variables["params"]}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={GROUP: self.optimizer.init(params[GROUP])},
                      ema_params={GROUP: params[GROUP]} if self.ema_decay else {}, model_state={}, rng=state_rng)

  def _loss_weight(self, t: jax.Array) -> jax.Array:
    """Per example: 1, or min-SNR-γ (Hang et al. 2023, eq. 6) expressed for the predicted quantity."""
    if self.loss_weighting == "none":
      return jnp.ones(t.shape, jnp.float32)
    alpha_bar = gaussian.alpha_bar(self.schedule, t)
    snr = alpha_bar / jnp.maximum(1.0 - alpha_bar, 1e-12)
    clipped = jnp.minimum(snr, self.min_snr_gamma)
    return {"eps": clipped / jnp.maximum(snr, 1e-12), "v": clipped / (snr + 1.0), "x0": clipped}[self.prediction]

  def _vlb(self, prediction: jax.Array, frac: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """Improved DDPM's L_vlb term per example (bits/dim), its mean through a stop-gradient prediction so only the
    variance learns from it (DiT's `learn_sigma`), scaled by T/1000 as DiT."""
    x0_hat = self._x0_estimate(jax.lax.stop_gradient(prediction), x_t, t)
    mean, _, _ = gaussian.posterior_mean_variance(self.schedule, x0_hat, x_t, t)
    log_variance = gaussian.learned_log_variance(self.schedule, t, frac)
    return gaussian.vlb_terms(self.schedule, x0, x_t, t, mean, log_variance) * (self.num_train_steps / 1000.0)

  def _loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    x0 = self.normalize(self.pack_latents(batch))
    size = x0.shape[0]
    t_rng, noise_rng, drop_rng, self_rng, use_rng, dropout_rng, frames_rng = jax.random.split(rng, 7)
    t = jax.random.randint(t_rng, (size,), 0, self.num_train_steps)
    noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
    x_t = gaussian.q_sample(self.schedule, x0, t, noise)
    cond = self.condition(batch)
    unconditional = (jax.random.bernoulli(drop_rng, self.cond_dropout_rate, (size,)) if self.conditioning != "none"
                     else jnp.zeros((size,), bool))
    weights = jnp.ones(x0.shape, jnp.float32)
    if self.frame_conditioned:  # W.A.L.T.: the first k ~ U{0..max} latent frames given; only the rest are learned
      count = jax.random.randint(frames_rng, (size,), 0, self.max_given_frames + 1)
      cond |= self.given_frames(x0, jnp.arange(self.latent_frames)[None] < count[:, None])
      weights = jnp.broadcast_to(1.0 - _broadcast_mask(cond["frame_mask"], x0.ndim), x0.shape)
    self_cond = jnp.zeros_like(x0)
    if self.model.self_condition:
      first, _ = self._apply(params, x_t, t, cond, unconditional, self_cond, train=True, rng=self_rng)
      estimate = jax.lax.stop_gradient(self._x0_estimate(first, x_t, t))
      use = jax.random.bernoulli(use_rng, self.self_condition_rate, (size,))
      self_cond = jnp.where(use.reshape((size,) + (1,) * (x0.ndim - 1)), estimate, 0.0)
    prediction, frac = self._apply(params, x_t, t, cond, unconditional, self_cond, train=True, rng=dropout_rng)
    target = gaussian.training_target(self.prediction, self.schedule, x0, t, noise)
    squared = (jnp.square(prediction - target) * weights).reshape(size, -1)
    mse = jnp.sum(squared, axis=-1) / jnp.maximum(jnp.sum(weights.reshape(size, -1), axis=-1), 1.0)
    per_example = self._loss_weight(t) * mse
    metrics = {"mse": jnp.mean(mse)}
    if frac is not None:
      vlb = self._vlb(prediction, frac, x0, x_t, t)
      per_example = per_example + self.vlb_weight * vlb
      metrics["vlb"] = jnp.mean(vlb)
    loss = jnp.mean(per_example)
    return loss, metrics | {"loss": loss}

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 phase: str = "train") -> tuple[TrainState, dict[str, jax.Array]]:
    del phase  # one phase
    return single_group_step(self._loss, self.optimizer, self.learning_rate, self.ema_decay, GROUP, state, batch)

  # ------------------------------------------------------------------------------------------ eval, sample

  def eval_params(self, state: TrainState) -> Any:
    return evaluation_params(state, GROUP, self.eval_ema)

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per example: the unweighted MSE to the target at each eval timestep (`loss_t<t>`, noise fixed per row of
    the batch so every evaluation draws the same), with the real condition, and their mean `loss`."""
    x0 = self.normalize(self.pack_latents(batch))
    size, cond, params = x0.shape[0], self.condition(batch), self.eval_params(state)
    outputs = {}
    for bucket, timestep in enumerate(self.eval_timesteps):
      t = jnp.full((size,), timestep, jnp.int32)
      noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), bucket), x0.shape, jnp.float32)
      x_t = gaussian.q_sample(self.schedule, x0, t, noise)
      prediction, _ = self._apply(params, x_t, t, cond, jnp.zeros((size,), bool), jnp.zeros_like(x0))
      target = gaussian.training_target(self.prediction, self.schedule, x0, t, noise)
      outputs[f"loss_t{int(timestep)}"] = jnp.mean(jnp.square(prediction - target).reshape(size, -1), axis=-1)
    outputs["loss"] = jnp.mean(jnp.stack(list(outputs.values())), axis=0)
    return outputs

  def sample(self, state: TrainState, conditions: dict[str, jax.Array], rng: jax.Array,
             settings: samplers.DiffusionSampling, batch_size: int | None = None) -> jax.Array:
    """Latents `[B, *latent_shape]` in the tokenizer's units, drawn from N(0, I) noise (jit the caller)."""
    cond = self.condition(conditions) if conditions else {}
    if self.frame_conditioned and "frames" in conditions:  # given in the tokenizer's units
      cond |= self.given_frames(self.normalize(conditions["frames"]), conditions["frame_mask"])
    size = batch_size or (next(iter(cond.values())).shape[0] if cond else 1)
    params = self.eval_params(state)

    def model_fn(x_t, t, unconditional, self_cond):
      rows = jax.tree.map(lambda a: jnp.concatenate([a, a]), cond) if x_t.shape[0] != size else cond
      return self._apply(params, x_t, t, rows, unconditional, self_cond)

    noise_rng, loop_rng = jax.random.split(rng)
    x_T = jax.random.normal(noise_rng, (size,) + tuple(self.latent_shape), jnp.float32)
    x0 = samplers.sample(model_fn, self.schedule, x_T, loop_rng, settings)
    if "frame_mask" in cond:  # the given frames are returned as given
      x0 = jnp.where(_broadcast_mask(cond["frame_mask"], x0.ndim) > 0, cond["frames"], x0)
    return self.denormalize(x0)

  # ------------------------------------------------------------------------------------------- protocol

  def example_conditions(self) -> dict[str, jax.Array]:
    conditions = {key: value for key, value in self.example_batch().items() if key != self.latent_key}
    if self.frame_conditioned:
      conditions |= {"frames": jnp.zeros((1,) + tuple(self.latent_shape), jnp.float32),
                     "frame_mask": jnp.zeros((1, self.latent_frames), jnp.float32)}
    return conditions

  def sample_settings(self, sample_config: Any, guided: bool = True) -> samplers.DiffusionSampling:
    """`config.sample` or a diffusion protocol as `DiffusionSampling` (the prediction kind and self-conditioning
    are the model's); `guided=False` draws the same settings without guidance."""
    settings = samplers.DiffusionSampling(
        method=str(sample_config.method), num_steps=int(sample_config.num_steps), eta=float(sample_config.eta),
        variance=str(sample_config.variance), prediction=self.prediction,
        cfg_scale=float(sample_config.cfg_scale) if guided else 1.0, cfg_channels=int(sample_config.cfg_channels),
        cfg_ramp=str(sample_config.cfg_ramp), clip_x0=float(sample_config.clip_x0),
        self_condition=bool(self.model.self_condition))
    settings.validate()
    if settings.variance == "learned" and not self.model.learn_sigma:
      raise ConfigError("config.sample.variance='learned' needs a model trained with learn_sigma=True; use "
                        "'fixed_small' or 'fixed_large'.")
    return settings

  def sample_sets(self, run: RunContext, protocol: Any, conditions: dict[str, np.ndarray],
                  latents: np.ndarray) -> dict[str, second_stage.SampleSet]:
    """`cfg` / `nocfg`, and for a frame-conditioned model with `protocol.given_frames` k > 0 also `pred`: the
    clips continued from their first k real latent frames (frame prediction; k = 1 is image-to-video), guided as
    the protocol says."""
    sets = super().sample_sets(run, protocol, conditions, latents)
    given = int(protocol.get("given_frames", 0))
    if not given:
      return sets
    if not self.frame_conditioned:
      raise ConfigError(f"config.eval.protocol.given_frames={given}: frame prediction needs a frame-conditioned "
                        "model (config.model.frame_condition=True); set given_frames=0.")
    self.check_given_frames(given, "config.eval.protocol.given_frames")
    mask = self.first_frames_mask(len(latents), given)
    guided = self.sample_settings(protocol).cfg_scale != 1.0
    return sets | {"pred": second_stage.SampleSet(conditions | {"frames": latents, "frame_mask": mask}, guided,
                                                  self.given_pixel_frames(run, given))}

  def first_frames_mask(self, rows: int, given: int) -> np.ndarray:
    """`frame_mask` `[rows, T]` with the first `given` latent frames given."""
    return (np.arange(self.latent_frames)[None] < np.full((rows, 1), given)).astype(np.float32)

  def check_given_frames(self, given: int, where: str) -> None:
    if not 1 <= given < self.latent_frames:
      raise ConfigError(f"{where}={given}: give between 1 and {self.latent_frames - 1} of the "
                        f"{self.latent_frames} latent frames.")

  def given_pixel_frames(self, run: RunContext, given: int) -> int:
    """Pixel frames behind the first `given` latent frames of the causal tokenizer (the first frame alone, then
    `temporal_factor` each)."""
    return 1 + (given - 1) * self.frozen_tokenizer(run).task.temporal_factor

  def input_conditions(self, run: RunContext, num_prompts: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """`config.sample.inputs` (comma-separated images or videos: one for every prompt, or one per prompt) as
    given frames: the first `config.sample.given_frames` latent frames of each, encoded by the tokenizer; the
    input column of the grid shows the pixel frames given."""
    paths = [p.strip() for p in str(run.config.sample.get("inputs", "")).split(",") if p.strip()]
    if not paths:
      return {}, None
    if not self.frame_conditioned:
      raise ConfigError(f"config.sample.inputs={run.config.sample.inputs!r}: sampling from given frames needs a "
                        "frame-conditioned model (config.model.frame_condition=True); leave inputs empty.")
    if len(paths) not in (1, num_prompts):
      raise ConfigError(f"config.sample.inputs names {len(paths)} files for {num_prompts} prompts; give one file "
                        "for all prompts or one per prompt.")
    given = int(run.config.sample.get("given_frames", 1))
    self.check_given_frames(given, "config.sample.given_frames")
    tokenizer, pixel_frames = self.frozen_tokenizer(run), self.given_pixel_frames(run, given)
    pixels = []
    for path in paths:
      clip = tokenizer.task.load_sample_input(run.config.tokenizer.experiment.data, path)
      if clip.ndim == 4:  # an image: a one-frame clip
        clip = clip[:, None]
      if clip.shape[1] < pixel_frames or tuple(clip.shape[2:4]) != tuple(tokenizer.task.input_shape[1:3]):
        raise ConfigError(f"config.sample.inputs file {path!r} gives {clip.shape[1]} frames of "
                          f"{list(clip.shape[2:4])}; {given} latent frames need {pixel_frames} frames of "
                          f"{list(tokenizer.task.input_shape[1:3])} (config.sample.given_frames).")
      pixels.append(clip[:, :pixel_frames])
    pixels = np.concatenate(pixels * (num_prompts if len(paths) == 1 else 1))
    shown = np.full((num_prompts,) + tuple(tokenizer.task.input_shape), -1.0, np.float32)  # black after them
    shown[:, :pixel_frames] = pixels
    # The causal encoder's latents of the given frames read only those frames, so encoding the whole clip with
    # black after them poses them (volume or planes alike); `sample` keeps only the given positions.
    frames = np.asarray(self.pack_latents(tokenizer.encode(shown)), np.float32)
    return {"frames": frames, "frame_mask": self.first_frames_mask(num_prompts, given)}, shown

  def evaluator(self, run: RunContext, state: TrainState) -> "DiffusionPass":
    return DiffusionPass(self, run, state)

  def describe(self) -> dict[str, Any]:
    arrays = self.layout.arrays if self.layout is not None else ((self.latent_key, self.latent_shape),)
    return {"latents": {name: {"shape": list(shape), "dtype": "float32"} for name, shape in arrays},
            "sequence_length": int(self.model.num_patches),
            "condition": str(self.model.conditioning), "prediction": self.prediction,
            "schedule": self.schedule_name, "num_train_steps": self.num_train_steps,
            "latent_scale": np.asarray(self.latent_scale).tolist(), "latent_shift": list(self.latent_shift)}


class DiffusionPass:
  """The diffusion `Evaluator`: held-out loss per timestep bucket, then the shared sample pass."""

  def __init__(self, task: DiffusionTask, run: RunContext, state: TrainState):
    self._samples = second_stage.SampleEvaluation(task, run, state)
    self._sums: dict[str, float] = {}
    self._count = 0

  def update(self, outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray], mask: np.ndarray) -> None:
    del batch
    for name, values in outputs.items():
      self._sums[name] = self._sums.get(name, 0.0) + float(np.sum(values[mask], dtype=np.float64))
    self._count += int(mask.sum())

  def results(self) -> dict[str, float]:
    return {name: total / max(self._count, 1) for name, total in self._sums.items()} | self._samples.results()

  def write_samples(self, directory: epath.Path, step: int) -> None:
    self._samples.write_samples(directory, step)


def _broadcast_mask(mask: jax.Array, ndim: int) -> jax.Array:
  """A model's frame mask (`[B, T]` of a volume, `[B, N]` of packed planes) with trailing axes to broadcast
  against latents of rank `ndim`."""
  return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


# ------------------------------------------------------------------------------------------------------- build


def tokenizer_latents(tokenizer_config: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, np.ndarray] | None]:
  """The continuous latents of the tokenizer experiment, name → one example's shape (`latents` `(h, w, c)` or
  `(t, h, w, c)`, or a factorized tokenizer's planes), and for video their latent frame spans (else None)."""
  model = autoencoder.build_tokenizer(tokenizer_config.model)
  input_shape = autoencoder.input_shape(tokenizer_config.data)
  specs = model.latent_specs(input_shape)
  shapes = {name: tuple(spec.shape) for name, spec in specs.items() if not spec.vocab_size}
  if not shapes:
    raise ConfigError(f"config.tokenizer: the tokenizer's quantizer {tokenizer_config.model.quantizer.name!r} is "
                      f"discrete (it encodes {sorted(specs)}); a diffusion model needs continuous latents: train "
                      "the tokenizer with config.model.quantizer.name='kl'.")
  return shapes, (model.latent_frame_spans(input_shape) if len(input_shape) == 4 else None)


NORMALIZATIONS = ("scale", "channel")


def _latent_normalization(config: Any, shapes: dict[str, tuple[int, ...]]) -> tuple[Any, tuple[float, ...]]:
  """(latent_scale, latent_shift) from `config.diffusion.latent_normalization`: "scale" multiplies by
  `latent_scale`, or (0) by LDM's 1 / std of the written train latents; "channel" standardizes each channel by
  the train split's own mean and std. Planes share one normalization, pooled over all of them. Before
  `--mode=encode` has written the shards: (1, ())."""
  process = config.diffusion
  kind = str(process.latent_normalization)
  if kind not in NORMALIZATIONS:
    raise ConfigError(f"config.diffusion.latent_normalization={kind!r}; choose one of {NORMALIZATIONS}.")
  if kind == "scale" and float(process.latent_scale) > 0:
    return float(process.latent_scale), ()
  path = str(config.data.path)
  if not path or not (files.as_path(path) / str(config.data.train_split)).exists():
    return 1.0, ()  # nothing encoded yet (--mode=encode runs with this same config)
  specs = {name: tokenizers.LatentSpec(tuple(shape), "float32", 0) for name, shape in shapes.items()}
  for split in (config.data.train_split, config.data.eval_split):
    latent_data.check_split_fits(path, str(split), specs)
  source = latent_data.LatentSource(path, str(config.data.train_split))
  names = sorted(shapes)
  if kind == "scale":
    return source.scale_factor(names), ()
  mean, std = source.channel_moments(names)
  if not np.all(std > 0):
    raise ConfigError(f"{source.split_dir}: a latent channel has zero variance (std {std.tolist()}); use "
                      "config.diffusion.latent_normalization='scale'.")
  return tuple(float(v) for v in 1.0 / std), tuple(float(v) for v in mean)


def reads_planes(model_class: type) -> bool:
  """Whether a denoiser reads named latent arrays as one token sequence (a `planes` field) rather than one
  latent array of `input_shape`."""
  return "planes" in {field.name for field in dataclasses.fields(model_class)}


def _model_class(model_config: Any) -> type:
  if model_config.name not in MODELS:
    raise ConfigError(f"config.model.name={model_config.name!r}: the diffusion task trains {sorted(MODELS)}.")
  return MODELS[model_config.name]


def latent_geometry(model_config: Any, shapes: dict[str, tuple[int, ...]], spans: dict[str, np.ndarray] | None
                    ) -> tuple[tuple[int, ...], LatentLayout | None, np.ndarray | None]:
  """(latent_shape, layout, packed frame spans) the model of `config.model` reads from the tokenizer's latents."""
  if reads_planes(_model_class(model_config)):
    layout = LatentLayout.from_shapes(shapes)
    return layout.packed_shape, layout, (layout.pack_per_position(spans) if spans is not None else None)
  if set(shapes) != {tokenizers.LATENTS}:
    raise ConfigError(f"config.model.name={model_config.name!r} denoises one latent array, but the tokenizer "
                      f"encodes the planes {sorted(shapes)}; use config.model.name='plane_walt' for factorized "
                      "latents.")
  return shapes[tokenizers.LATENTS], None, None


def build_model(model_config: Any, latent_shape: tuple[int, ...], layout: LatentLayout | None = None):
  kwargs = model_config.to_dict()
  model_class = _model_class(model_config)
  del kwargs["name"]
  kwargs["dtype"] = jnp.dtype(kwargs.pop("dtype"))
  kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in kwargs.items()}
  if reads_planes(model_class):
    model = model_class(planes=layout.arrays, **kwargs)
  else:
    model = model_class(input_shape=tuple(latent_shape), **kwargs)
  model.validate()
  return model


def build(config: Any) -> DiffusionTask:
  """`config.task='diffusion'`: a denoiser over the continuous latents of the frozen tokenizer `config.tokenizer`."""
  shapes, spans = tokenizer_latents(config.tokenizer.experiment)
  latent_shape, layout, frame_spans = latent_geometry(config.model, shapes, spans)
  process = config.diffusion
  scale, shift = _latent_normalization(config, shapes)
  return DiffusionTask(
      model=build_model(config.model, latent_shape, layout),
      optimizer=make_optimizer(config.optimizer, config.total_steps),
      learning_rate=learning_rate_schedule(config.optimizer, config.total_steps), latent_shape=latent_shape,
      schedule_name=str(process.schedule), num_train_steps=int(process.num_steps),
      zero_terminal_snr=bool(process.zero_terminal_snr), prediction=str(process.prediction),
      latent_scale=scale, latent_shift=shift, cond_dropout_rate=float(process.cond_dropout_rate),
      self_condition_rate=float(process.self_condition_rate),
      max_given_frames=int(process.max_given_frames), loss_weighting=str(process.loss_weighting),
      min_snr_gamma=float(process.min_snr_gamma), vlb_weight=float(process.vlb_weight),
      eval_buckets=int(process.eval_buckets), ema_decay=config.optimizer.ema_decay,
      eval_ema=bool(config.eval.protocol.use_ema), layout=layout, frame_spans=frame_spans, tokenizer=config.tokenizer)
