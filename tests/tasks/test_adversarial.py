"""GAN training inside the autoencoder task: one step updates generator and discriminator, the start step gates
the discriminator exactly, and every loss term is logged."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokgen_jax.losses import StyleGANDiscriminator3D
from tokgen_jax.quantizers import LookupFreeQuantizer
from tokgen_jax.tasks import AdversarialTraining, AutoencoderTask, active_phase, phase_step
from tokgen_jax.tasks.adversarial import GROUP as DISC
from tokgen_jax.tasks.autoencoder import GROUP as AE
from tokgen_jax.tokenizers import MagvitV2

VIDEO_SHAPE = (5, 16, 16, 3)  # 1 + 2·2 frames for s_t = 2


def _task(start_step: int) -> AutoencoderTask:
  model = MagvitV2(quantizer=LookupFreeQuantizer(bits=6), channels=8, channel_multipliers=(1, 2, 2),
                   num_res_blocks=1, temporal_downsample=(False, True), num_groups=4)
  gan = AdversarialTraining(discriminator=StyleGANDiscriminator3D(channels=4, channel_multipliers=(2, 2)),
                            optimizer=optax.adam(1e-3), learning_rate=optax.constant_schedule(1e-3),
                            start_step=start_step)
  return AutoencoderTask(model=model, optimizer=optax.adam(3e-3), learning_rate=optax.constant_schedule(3e-3),
                         input_shape=VIDEO_SHAPE, l1_weight=1.0, l2_weight=1.0, ema_decay=0.9, adversarial=gan)


@pytest.fixture(scope="module")
def videos():
  """Smooth moving gradients: learnable in a few steps, unlike noise."""
  t, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in VIDEO_SHAPE[:3]), indexing="ij")
  phases = np.arange(4)[:, None, None, None, None]
  channels = np.stack([np.sin(3 * x + t + phases), np.cos(2 * y - t + phases), np.sin(x + y + phases)], -1)
  return {"video": jnp.asarray(0.8 * channels[:, 0], jnp.float32)}


@pytest.fixture(scope="module")
def gated_run(videos):
  """Three steps with the discriminator starting at step 1, and the states before and after each."""
  task = _task(start_step=1)
  state = jax.jit(task.init)(jax.random.key(0), task.example_batch())
  phase_steps = {phase.name: jax.jit(phase_step(task, phase.name)) for phase in task.phases()}
  step = lambda state, batch: phase_steps[active_phase(task.phases(), int(state.step)).name](state, batch)
  states, metrics = [state], []
  for _ in range(3):
    state, step_metrics = step(state, videos)
    states.append(state)
    metrics.append(jax.device_get(step_metrics))
  return task, step, states, metrics


def _changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_discriminator_is_frozen_exactly_before_its_start_step(gated_run):
  _, _, states, metrics = gated_run
  before, after_first = states[0], states[1]
  assert _changed(before.params[AE], after_first.params[AE])
  for tree in ("params", "opt_state", "model_state"):
    assert not _changed(getattr(before, tree)[DISC], getattr(after_first, tree)[DISC]), tree
  assert metrics[0]["generator_adversarial_loss"] == 0.0 and metrics[0]["discriminator_loss"] == 0.0


def test_one_step_updates_generator_discriminator_and_lecam_anchors(gated_run):
  _, _, states, metrics = gated_run
  before, after = states[1], states[2]
  assert _changed(before.params[AE], after.params[AE])
  assert _changed(before.params[DISC], after.params[DISC])
  assert _changed(before.ema_params[AE], after.ema_params[AE])
  anchors = after.model_state[DISC]
  # One EMA step from 0 with decay 0.999: the anchor is 0.001·mean(logits of that step).
  np.testing.assert_allclose(anchors["lecam_real"], 0.001 * metrics[1]["logits_real"], rtol=1e-5)
  np.testing.assert_allclose(anchors["lecam_fake"], 0.001 * metrics[1]["logits_fake"], rtol=1e-5)
  assert metrics[1]["generator_adversarial_loss"] != 0.0


def test_every_loss_term_is_logged_by_name(gated_run):
  _, _, _, metrics = gated_run
  expected = {"loss", "reconstruction_loss", "quantizer_loss", "generator_adversarial_loss", "discriminator_loss",
              "discriminator_adversarial_loss", "lecam_loss", "r1_penalty", "logits_real", "logits_fake",
              "grad_norm", "discriminator_grad_norm", "lr", "discriminator_lr"}
  assert expected <= set(metrics[-1]), expected - set(metrics[-1])
  assert all(np.isfinite(value) for value in jax.tree.leaves(metrics))


def test_generator_loss_is_the_sum_of_its_terms(gated_run):
  _, _, _, metrics = gated_run
  m = metrics[-1]
  np.testing.assert_allclose(m["loss"], m["reconstruction_loss"] + m["quantizer_loss"]
                             + m["generator_adversarial_loss"], rtol=1e-5)


def test_gan_training_on_video_lowers_the_reconstruction_loss(gated_run, videos):
  _, step, states, metrics = gated_run
  state = states[-1]
  for _ in range(12):
    state, last = step(state, videos)
  assert float(last["reconstruction_loss"]) < 0.7 * float(metrics[0]["reconstruction_loss"])


def test_video_eval_reports_per_frame_metrics_and_video_bits_per_pixel(gated_run, videos):
  task, _, states, _ = gated_run
  outputs = jax.jit(task.eval_step)(states[-1], videos)
  assert outputs["reconstruction"].shape == videos["video"].shape
  assert outputs["psnr"].shape == outputs["ssim"].shape == (4,)
  # 5x16x16 frames → 3x4x4 tokens of 6 bits: 288 bits over 1280 pixels.
  np.testing.assert_allclose(outputs["bpp"], 3 * 4 * 4 * 6 / (5 * 16 * 16))


class _MeanLogit(nn.Module):
  """A one-parameter discriminator, `s·mean(x)` per sample, whose logits a test can compute by hand."""

  @nn.compact
  def __call__(self, x):
    return self.param("scale", nn.initializers.constant(3.0), ()) * jnp.mean(x, axis=tuple(range(1, x.ndim)))


def test_default_discriminator_loss_is_open_magvit2s_half_hinge_plus_lecam():
  """Open-MAGVIT2: `0.5·(E relu(1 - D(x)) + E relu(1 + D(x̂))) + 0.05·LeCAM` (disc_factor 1, LeCAM EMA 0.999)."""
  gan = AdversarialTraining(discriminator=_MeanLogit(), optimizer=optax.sgd(0.0),
                            learning_rate=optax.constant_schedule(0.0))
  assert (gan.generator_weight, gan.discriminator_weight, gan.lecam_weight, gan.lecam_decay) == (0.1, 0.5, 0.05, 0.999)
  real = jnp.asarray(np.linspace(-0.5, 0.5, 4)[:, None, None, None] * np.ones((4, 2, 2, 3)), jnp.float32)
  fake = -0.7 * real + 0.1
  params, _, anchors = gan.init(jax.random.key(0), real)
  anchors = {"lecam_real": jnp.float32(0.4), "lecam_fake": jnp.float32(-0.3)}
  total, (metrics, new_anchors) = gan._loss(params, anchors, real, fake)  # pylint: disable=protected-access
  d_real, d_fake = 3.0 * np.asarray(real).mean((1, 2, 3)), 3.0 * np.asarray(fake).mean((1, 2, 3))
  hinge = 0.5 * (np.mean(np.maximum(0, 1 - d_real)) + np.mean(np.maximum(0, 1 + d_fake)))
  ema_real, ema_fake = 0.999 * 0.4 + 0.001 * d_real.mean(), 0.999 * -0.3 + 0.001 * d_fake.mean()
  lecam = np.mean(np.maximum(0, d_real - ema_fake) ** 2) + np.mean(np.maximum(0, ema_real - d_fake) ** 2)
  np.testing.assert_allclose(total, hinge + 0.05 * lecam, rtol=1e-6)
  np.testing.assert_allclose(new_anchors["lecam_real"], ema_real, rtol=1e-6)
  assert lecam > 0 and metrics["lecam_loss"] == pytest.approx(lecam, rel=1e-6)
