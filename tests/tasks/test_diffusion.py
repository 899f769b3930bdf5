"""The diffusion task: training lowers the loss, the loss is the closed-form MSE at init (zero output), eval buckets,
condition dropout, self-conditioning, min-SNR weights, the sampler through the task, and config errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.generators.diffusion import gaussian
from tokgen_jax.generators.diffusion.dit import DiT
from tokgen_jax.tasks.diffusion import DiffusionTask

LATENT = (4, 4, 2)
SMALL = dict(patch_size=1, hidden_size=32, depth=2, num_heads=4, conditioning="class", num_classes=4)


def _task(lr=3e-3, learn_sigma=True, **overrides) -> DiffusionTask:
  model_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in DiT.__dataclass_fields__}
  model = DiT(input_shape=LATENT, learn_sigma=learn_sigma, **(SMALL | model_kwargs))
  return DiffusionTask(model=model, optimizer=optax.adam(lr), learning_rate=optax.constant_schedule(lr),
                       latent_shape=LATENT, **overrides)


def _batch(size: int = 16) -> dict:
  """Latents that are a function of the label: a learnable conditional distribution."""
  rng = np.random.default_rng(0)
  labels = np.arange(size) % 4
  patterns = rng.normal(size=(4,) + LATENT).astype(np.float32)
  return {"latents": jnp.asarray(patterns[labels]), "label": jnp.asarray(labels, jnp.int32)}


@pytest.fixture(scope="module")
def trained():
  task = _task()
  batch = _batch()
  state = nn.unbox(task.init(jax.random.key(0), batch))
  initial = state
  step = jax.jit(task.train_step)
  losses = []
  for _ in range(60):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return task, batch, initial, state, losses


def test_training_lowers_the_loss(trained):
  _, _, _, _, losses = trained
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), losses


def test_at_init_the_eval_loss_is_the_target_energy(trained):
  """DiT's zero-initialised output predicts ε = 0, so each bucket's MSE is E‖ε‖² over the fixed noise."""
  task, batch, initial, _, _ = trained
  outputs = jax.jit(task.eval_step)(initial, batch)
  assert set(outputs) == {"loss", "loss_t125", "loss_t375", "loss_t625", "loss_t875"}
  for bucket, timestep in enumerate(task.eval_timesteps):
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), bucket), batch["latents"].shape)
    np.testing.assert_allclose(outputs[f"loss_t{timestep}"], np.mean(np.square(noise).reshape(16, -1), -1),
                               rtol=1e-5)
  np.testing.assert_allclose(outputs["loss"], np.mean([outputs[k] for k in outputs if k != "loss"], 0), rtol=1e-6)


def test_eval_loss_falls_with_training(trained):
  task, batch, initial, state, _ = trained
  before, after = (float(jax.jit(task.eval_step)(s, batch)["loss"].mean()) for s in (initial, state))
  assert after < 0.7 * before


def test_min_snr_weights_follow_the_prediction_kind():
  t = jnp.asarray([0, 500, 999])
  for prediction in gaussian.PREDICTIONS:
    task = _task(loss_weighting="min_snr", prediction=prediction, min_snr_gamma=5.0)
    alpha_bar = np.asarray(task.schedule.alphas_cumprod, np.float64)[np.asarray(t)]
    snr = alpha_bar / (1 - alpha_bar)
    expected = {"eps": np.minimum(snr, 5) / snr, "v": np.minimum(snr, 5) / (snr + 1), "x0": np.minimum(snr, 5)}
    np.testing.assert_allclose(task._loss_weight(t), expected[prediction], rtol=1e-4)


def test_self_conditioning_and_v_prediction_train():
  task = _task(self_condition=True, prediction="v", learn_sigma=False)
  batch = _batch(8)
  state = nn.unbox(task.init(jax.random.key(0), batch))
  step = jax.jit(task.train_step)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert "vlb" not in metrics and np.mean(losses[-5:]) < np.mean(losses[:5])


def test_sampling_is_deterministic_per_seed_and_guidance_changes_it(trained):
  task, _, _, state, _ = trained
  conditions = {"label": np.asarray([0, 1, 2], np.int32)}
  settings = task.sample_settings(_sample_config(method="ddim", num_steps=8, cfg_scale=3.0))
  first, again = (task.draw(state, conditions, settings, 0, 3) for _ in range(2))
  assert first.shape == (3,) + LATENT and np.all(np.isfinite(first))
  np.testing.assert_array_equal(first, again)
  unguided = task.draw(state, conditions, task.sample_settings(_sample_config(method="ddim", num_steps=8,
                                                                             cfg_scale=3.0), guided=False), 0, 3)
  assert np.abs(first - unguided).max() > 1e-3


def test_samples_come_back_in_the_tokenizers_units(trained):
  """A per-channel normalization (x - shift)·scale is undone on the samples: the same draw through a model whose
  process is the same in normalized units comes back shifted and scaled."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  task, _, _, state, _ = trained
  normalized = dataclasses.replace(task, latent_scale=(2.0, 0.5), latent_shift=(1.0, -3.0))
  conditions = {"label": np.asarray([3], np.int32)}
  settings = task.sample_settings(_sample_config(method="ddim", num_steps=4))
  plain = task.draw(state, conditions, settings, 1, 1)
  np.testing.assert_allclose(normalized.draw(state, conditions, settings, 1, 1),
                             plain / np.asarray([2.0, 0.5]) + np.asarray([1.0, -3.0]), rtol=1e-5, atol=1e-5)
  latents = np.random.default_rng(0).normal(size=(2,) + LATENT)
  np.testing.assert_allclose(normalized.normalize(latents), (latents - [1.0, -3.0]) * [2.0, 0.5], rtol=1e-6)
  np.testing.assert_allclose(normalized.denormalize(normalized.normalize(latents)), latents, rtol=1e-5, atol=1e-6)


def _sample_config(**overrides):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from tokgen_jax.configs import diffusion as presets  # pylint: disable=g-import-not-at-top
  config = presets.sampling()
  config.update(overrides)
  return ml_collections.ConfigDict(config)


@pytest.mark.parametrize("overrides, match", [
    ({"prediction": "score"}, r"config.diffusion.prediction='score'"),
    ({"loss_weighting": "p2"}, r"config.diffusion.loss_weighting='p2'"),
    ({"cond_dropout_rate": 1.0}, r"cond_dropout_rate=1.0 must lie in \[0, 1\)"),
    ({"latent_scale": 0.0}, r"config.diffusion.latent_scale=0.0 must be positive"),
    ({"latent_scale": (1.0, -1.0)}, r"config.diffusion.latent_scale=\(1.0, -1.0\) must be positive"),
])
def test_bad_process_settings_name_the_key(overrides, match):
  with pytest.raises(ConfigError, match=match):
    _task(**overrides)


def test_learned_variance_sampling_needs_a_model_that_learned_it():
  with pytest.raises(ConfigError, match="variance='learned' needs a model trained with learn_sigma=True"):
    _task(learn_sigma=False).sample_settings(_sample_config(variance="learned"))


VIDEO = (3, 4, 4, 2)


def _walt_task(max_given_frames=1) -> DiffusionTask:
  from tokgen_jax.generators.diffusion.walt import WALT  # pylint: disable=g-import-not-at-top
  model = WALT(input_shape=VIDEO, patch_size=1, hidden_size=32, depth=2, num_heads=4, window=(2, 2), adaln_rank=8,
               conditioning="class", num_classes=4, frame_condition=True)
  return DiffusionTask(model=model, optimizer=optax.adam(3e-3), learning_rate=optax.constant_schedule(3e-3),
                       latent_shape=VIDEO, prediction="v", max_given_frames=max_given_frames)


@pytest.mark.slow
def test_a_frame_conditioned_video_model_trains_and_keeps_the_given_frames():
  task = _walt_task()
  rng = np.random.default_rng(1)
  labels = np.arange(8) % 4
  batch = {"latents": jnp.asarray(rng.normal(size=(4,) + VIDEO)[labels], jnp.float32),
           "label": jnp.asarray(labels, jnp.int32)}
  state = nn.unbox(task.init(jax.random.key(0), batch))
  step, evaluate = jax.jit(task.train_step), jax.jit(task.eval_step)
  before = float(evaluate(state, batch)["loss"].mean())
  for _ in range(120):
    state, _ = step(state, batch)
  assert float(evaluate(state, batch)["loss"].mean()) < 0.8 * before  # v-prediction: 0.88 → 0.64 in 100 steps
  given = np.asarray(batch["latents"][:2])
  conditions = {"label": np.asarray(labels[:2], np.int32), "frames": given,
                "frame_mask": np.asarray([[1, 0, 0], [1, 0, 0]], np.float32)}
  drawn = task.draw(state, conditions, task.sample_settings(_sample_config(method="ddim", num_steps=4)), 0, 2)
  np.testing.assert_allclose(drawn[:, 0], given[:, 0], rtol=1e-5, atol=1e-5)  # the given frame comes back
  assert np.abs(drawn[:, 1:] - given[:, 1:]).max() > 1e-3
  assert set(task.example_conditions()) == {"label", "frames", "frame_mask"}
  # Only the given frames reach the model (zeros past them, as in training), whatever the caller passes there.
  garbage = given.copy()
  garbage[:, 1:] = rng.normal(size=garbage[:, 1:].shape) * 5
  again = task.draw(state, conditions | {"frames": garbage},
                    task.sample_settings(_sample_config(method="ddim", num_steps=4)), 0, 2)
  np.testing.assert_array_equal(again, drawn)


class _StandInTokenizer:
  """What `given_pixel_frames` reads of a frozen causal video tokenizer: 2 frames a latent frame after the first."""

  class task:  # pylint: disable=invalid-name
    temporal_factor = 2


def test_frame_prediction_is_an_eval_sample_set_of_frame_conditioned_models():
  task = _walt_task()
  task._loaded["tokenizer"] = _StandInTokenizer()  # pylint: disable=protected-access
  latents = np.ones((2,) + VIDEO, np.float32)
  conditions = {"label": np.zeros((2,), np.int32)}
  from tokgen_jax.configs import evaluation  # pylint: disable=g-import-not-at-top
  protocol = evaluation.diffusion_protocol
  sets = task.sample_sets(None, protocol(cfg_scale=3.0, given_frames=2), conditions, latents)
  assert list(sets) == ["cfg", "nocfg", "pred"]
  pred = sets["pred"]
  assert pred.guided and pred.given_pixel_frames == 1 + 1 * 2  # the first frame alone, then 2 a latent frame
  np.testing.assert_array_equal(pred.conditions["frame_mask"], [[1, 1, 0], [1, 1, 0]])
  assert pred.conditions["frames"] is latents and pred.conditions["label"] is conditions["label"]
  assert list(task.sample_sets(None, protocol(cfg_scale=3.0), conditions, latents)) == ["cfg", "nocfg"]
  assert list(task.sample_sets(None, protocol(given_frames=1), conditions, latents)) == ["nocfg", "pred"]
  with pytest.raises(ConfigError, match=r"config.eval.protocol.given_frames=3: give between 1 and 2"):
    task.sample_sets(None, protocol(given_frames=3), conditions, latents)
  with pytest.raises(ConfigError, match="frame prediction needs a frame-conditioned model"):
    _task().sample_sets(None, protocol(given_frames=1), conditions, latents)


def test_prediction_psnr_scores_only_the_predicted_frames():
  from tokgen_jax.tasks.second_stage import prediction_psnr  # pylint: disable=g-import-not-at-top
  reference = np.zeros((2, 5, 2, 2, 3), np.float32)
  predicted = reference.copy()
  predicted[:, :3] = 1.0  # wrong only in the given frames: not counted
  predicted[0, 3:] = 0.2  # MSE 0.04 → 10·log10(4 / 0.04) = 20 dB
  predicted[1, 3:] = 0.02  # MSE 4e-4 → 40 dB
  assert prediction_psnr(predicted, reference, 3) == pytest.approx(30.0)


def test_given_frames_cannot_be_all_frames():
  with pytest.raises(ConfigError, match=r"config.diffusion.max_given_frames=3 must lie in \[0, 3\)"):
    _walt_task(max_given_frames=3)


# ------------------------------------------------------------------------------------ factorized latent planes

PLANE_GRID = (3, 4, 4)  # latent frames, rows, cols of a four-plane tokenizer with the causal first frame alone


def _plane_task(max_given_frames=1) -> DiffusionTask:
  from tokgen_jax.generators.diffusion.latent_layout import LatentLayout  # pylint: disable=g-import-not-at-top
  from tokgen_jax.generators.diffusion.plane_walt import PlaneWALT  # pylint: disable=g-import-not-at-top
  from tokgen_jax.tokenizers import factorized  # pylint: disable=g-import-not-at-top
  shapes = {f"latents_{name}": shape + (2,)
            for name, shape in factorized.plane_shapes("four_plane", PLANE_GRID, 1).items()}
  spans = {f"latents_{name}": value
           for name, value in factorized.plane_frame_spans("four_plane", PLANE_GRID, 1).items()}
  layout = LatentLayout.from_shapes(shapes)
  model = PlaneWALT(planes=layout.arrays, hidden_size=32, depth=2, num_heads=4, adaln_rank=8, conditioning="class",
                    num_classes=4, frame_condition=True)
  return DiffusionTask(model=model, optimizer=optax.adam(3e-3), learning_rate=optax.constant_schedule(3e-3),
                       latent_shape=layout.packed_shape, prediction="v", max_given_frames=max_given_frames,
                       layout=layout, frame_spans=layout.pack_per_position(spans))


def _plane_batch(task: DiffusionTask, size: int = 8) -> dict:
  rng = np.random.default_rng(3)
  labels = np.arange(size) % 4
  patterns = {name: rng.normal(size=(4,) + shape).astype(np.float32) for name, shape in task.layout.arrays}
  return {**{name: jnp.asarray(value[labels]) for name, value in patterns.items()},
          "label": jnp.asarray(labels, jnp.int32)}


@pytest.fixture(scope="module")
def plane_model():
  task = _plane_task()
  batch = _plane_batch(task)
  return task, batch, nn.unbox(task.init(jax.random.key(0), batch))


@pytest.mark.slow  # a plane model's init and sampler compile; the quick loop stays under 8 minutes
def test_a_plane_task_reads_the_tokenizers_planes_as_one_sequence(plane_model):
  task, batch, _ = plane_model
  assert task.latent_shape == (16 + 16 + 12 + 12, 2) and task.latent_frames == 3
  assert set(task.example_batch()) == set(task.layout.names) | {"label"}
  host = {name: np.asarray(value) for name, value in batch.items()}
  packed = task.example_latents([{name: value[i] for name, value in host.items()} for i in range(8)])
  assert packed.shape == (8,) + task.latent_shape
  for name, value in task.latent_arrays(packed).items():  # what the tokenizer decodes: its own planes back
    np.testing.assert_array_equal(value, host[name])
  assert set(task.describe()["latents"]) == set(task.layout.names)


@pytest.mark.slow  # a plane model's init and sampler compile; the quick loop stays under 8 minutes
def test_frame_prediction_over_planes_keeps_the_tokens_of_the_given_frame(plane_model):
  """With the first latent frame given: all of xy0 and row 0 of tw and th come back as given; xy1 and the other
  rows are drawn, and what the caller passes there never reaches the model."""
  task, batch, state = plane_model
  given = task.example_latents([{name: np.asarray(batch[name][i]) for name in task.layout.names}
                                for i in range(2)])
  conditions = {"label": np.asarray([0, 1], np.int32), "frames": given,
                "frame_mask": np.asarray([[1, 0, 0], [1, 0, 0]], np.float32)}
  settings = task.sample_settings(_sample_config(method="ddim", num_steps=3))
  drawn = task.latent_arrays(task.draw(state, conditions, settings, 0, 2))
  planes = task.latent_arrays(given)
  np.testing.assert_allclose(drawn["latents_xy0"], planes["latents_xy0"], rtol=1e-5, atol=1e-5)
  for name in ("latents_tw", "latents_th"):
    np.testing.assert_allclose(drawn[name][:, 0], planes[name][:, 0], rtol=1e-5, atol=1e-5)
    assert np.abs(drawn[name][:, 1:] - planes[name][:, 1:]).max() > 1e-3
  assert np.abs(drawn["latents_xy1"] - planes["latents_xy1"]).max() > 1e-3
  token_mask = np.asarray(task.model_frame_mask(conditions["frame_mask"]))
  garbage = np.where(token_mask[..., None] > 0, given, 5 * np.random.default_rng(4).normal(size=given.shape))
  again = task.draw(state, conditions | {"frames": garbage.astype(np.float32)}, settings, 0, 2)
  np.testing.assert_array_equal(again, task.pack_latents(drawn))


@pytest.mark.slow
def test_a_plane_model_trains_with_given_frames(plane_model):
  task, batch, state = plane_model
  step, evaluate = jax.jit(task.train_step), jax.jit(task.eval_step)
  before = float(evaluate(state, batch)["loss"].mean())
  for _ in range(100):
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  assert float(evaluate(state, batch)["loss"].mean()) < 0.8 * before


def test_plane_latents_need_a_plane_model_and_a_plane_model_needs_frames_to_predict():
  from tokgen_jax.configs import diffusion as diffusion_configs  # pylint: disable=g-import-not-at-top
  from tokgen_jax.tasks.diffusion import latent_geometry  # pylint: disable=g-import-not-at-top
  planes = {"latents_xy": (4, 4, 2), "latents_tw": (3, 4, 2), "latents_th": (3, 4, 2)}
  with pytest.raises(ConfigError, match="denoises one latent array.*use config.model.name='plane_walt'"):
    latent_geometry(diffusion_configs.walt("local"), planes, None)
  shape, layout, spans = latent_geometry(diffusion_configs.plane_walt("local"), planes, None)
  assert shape == (40, 2) and layout.names == ("latents_th", "latents_tw", "latents_xy") and spans is None
  with pytest.raises(ConfigError, match="frame_condition=True over latent planes needs a video tokenizer"):
    dataclasses.replace(_plane_task(), frame_spans=None)
