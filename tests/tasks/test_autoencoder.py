"""The autoencoder task: loss falls on real photos, and sharding does not change the numbers."""

import jax
import numpy as np
import pytest

from tests.helpers import tiny_config
from tokgen_jax import data, sharding
from tokgen_jax import run as run_lib
from tokgen_jax.configs import mesh as mesh_presets


@pytest.fixture(scope="module")
def photo_batch():
  config = tiny_config()
  return next(data.make_pipeline(config.data, "train", global_batch_size=8, process_index=0, process_count=1))


def _train_losses(config, devices, batch, steps):
  run = run_lib.setup(config, "/unused", devices=devices)
  state = run.init_state()
  global_batch = sharding.global_batch(batch, run.mesh)
  step, _ = run_lib.compile_step(run, state, global_batch)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, global_batch)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


def test_training_lowers_the_loss_on_one_batch(photo_batch):
  losses, _ = _train_losses(tiny_config(**{"optimizer.learning_rate": 3e-3}), jax.devices()[:1], photo_batch, 12)
  assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_sharded_step_equals_unsharded(photo_batch):
  single, params_single = _train_losses(tiny_config(), jax.devices()[:1], photo_batch, 2)
  config = tiny_config()
  with config.unlocked():
    config.mesh = mesh_presets.mesh(data=2, fsdp=4)
  sharded, params_sharded = _train_losses(config, jax.devices(), photo_batch, 2)
  np.testing.assert_allclose(sharded, single, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3), params_sharded, params_single)


QUANTIZER_OVERRIDES = {
    "vq": {"model.quantizer.codebook_size": 64, "model.quantizer.dim": 4},
    "lfq": {"model.quantizer.bits": 6},
    "fsq": {"model.quantizer.levels": (5, 5, 5)},
    "rvq": {"model.quantizer.depth": 2, "model.quantizer.codebook_size": 64, "model.quantizer.dim": 4},
    "msrq": {"model.quantizer.codebook_size": 64, "model.quantizer.dim": 4, "model.quantizer.scales": (1, 2, 4, 8),
             "data.eval_image_size": 16},
}


@pytest.mark.parametrize("name", sorted(QUANTIZER_OVERRIDES))
@pytest.mark.slow
def test_quickstart_trains_with_every_registered_quantizer(name, photo_batch):
  config = tiny_config(f"experiments/quickstart.py:quantizer={name}", QUANTIZER_OVERRIDES[name],
                       **{"optimizer.learning_rate": 3e-3})
  losses, _ = _train_losses(config, jax.devices()[:1], photo_batch, 8)
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
  """Random LPIPS weights (non-negative heads, like the released ones) in the converted-file format."""
  from tokgen_jax.convert import lpips as lpips_convert, state_dict
  rng = np.random.default_rng(0)
  flat = {key: np.abs(rng.normal(size=shape)).astype(np.float32) / np.sqrt(np.prod(shape[:-1]))
          for key, shape in lpips_convert.expected_shapes().items()}
  path = tmp_path_factory.mktemp("lpips") / "lpips.safetensors"
  return str(lpips_convert.save_lpips(path, state_dict.unflatten(flat)))


def test_perceptual_loss_enters_the_objective_when_weights_are_given(photo_batch, lpips_file):
  from tokgen_jax import tasks
  config = tiny_config(**{"loss.perceptual_weight": 0.5, "loss.lpips_weights": lpips_file})
  task = tasks.build(config)
  state = jax.jit(task.init)(jax.random.key(0), task.example_batch())
  # The forward pass of the objective is enough (and half the compile of a train step): gradients are JAX's job.
  loss_fn = jax.jit(lambda s, x: task._generator_loss(s.params["autoencoder"], s, x, jax.random.key(1))[1][0])
  metrics = loss_fn(state, photo_batch["image"])
  assert metrics["perceptual_loss"] > 0.0
  np.testing.assert_allclose(metrics["loss"], metrics["reconstruction_loss"] + metrics["quantizer_loss"]
                             + metrics["perceptual_loss"], rtol=1e-5)


def test_perceptual_loss_is_off_with_a_logged_reason_without_weights(caplog):
  from tokgen_jax import tasks
  task = tasks.build(tiny_config(**{"loss.perceptual_weight": 1.0}))
  assert task.perceptual_params is None
  assert "LPIPS perceptual loss is off" in caplog.text


@pytest.mark.slow  # compiles a tokenizer's eval step (one decode per prefix of scales)
def test_multi_scale_eval_scores_each_prefix_of_scales_and_encodes_one_array_per_scale(photo_batch):
  """`psnr_prefix_k` is the PSNR of decoding scales 0..k alone; the full decode is `psnr`."""
  from tokgen_jax import tasks
  from tokgen_jax.metrics import psnr
  config = tiny_config("experiments/quickstart.py:quantizer=msrq", QUANTIZER_OVERRIDES["msrq"])
  task = tasks.build(config)
  state = jax.jit(task.init)(jax.random.key(0), task.example_batch())
  x = photo_batch["image"][:2]
  outputs = jax.jit(task.eval_step)(state, {"image": x})
  assert {"psnr_prefix_0", "psnr_prefix_1", "psnr_prefix_2"} <= set(outputs) and "psnr_prefix_3" not in outputs
  latents = jax.jit(task.encode)(state, x)
  assert {name: a.shape for name, a in latents.items()} == {
      "tokens_0": (2, 1, 1), "tokens_1": (2, 2, 2), "tokens_2": (2, 4, 4), "tokens_3": (2, 8, 8)}
  prefix = {name: latents[name] for name in ("tokens_0", "tokens_1")}
  np.testing.assert_allclose(outputs["psnr_prefix_1"], psnr(task.decode(state, prefix), x, data_range=2.0),
                             rtol=1e-4)
  np.testing.assert_allclose(outputs["psnr"], psnr(task.decode(state, latents), x, data_range=2.0), rtol=1e-4)
