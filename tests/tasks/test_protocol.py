"""The Task protocol is the whole contract: a task defined here, in the test file, registered with one line, runs
through the trainer's train, eval, summary and sample modes with nothing above `tasks/` edited for it.

The task learns the mean color of the training crops (one parameter per channel) with a warm-up phase that
trains at a tenth of the step, evaluates the per-example squared error, and samples images of its mean plus
noise; `prepare` starts a fresh run from a color it would read from another run. Its figures have closed forms,
which the test checks.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import set_fields, tiny_config
from tokgen_jax import tasks, trainer
from tokgen_jax.data import grids
from tokgen_jax.tasks.base import Phase, Task, TrainState, apply_gradients

GROUP = "mean"
PREPARED_COLOR = (0.5, -0.25, 0.0)  # what `prepare` puts in a fresh state


class _MeanError:
  """Evaluator: the mean per-example squared error, and a grid of the first batch."""

  def __init__(self):
    self.total, self.count, self.first = 0.0, 0, None

  def update(self, outputs, batch, mask):
    self.total += float(np.sum(outputs["squared_error"][mask]))
    self.count += int(mask.sum())
    self.first = batch["image"][mask] if self.first is None else self.first

  def results(self):
    return {"squared_error": self.total / max(self.count, 1)}

  def write_samples(self, directory, step):
    grids.save_examples(directory, f"eval_step_{step}", [self.first], max_rows=2, fps=8.0)


@dataclasses.dataclass(frozen=True)
class MeanColorTask(Task):
  image_size: int
  learning_rate: float = 0.1
  warmup_steps: int = 2

  def example_batch(self):
    return {"image": jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)}

  @property
  def optimizer(self):
    return optax.sgd(self.learning_rate)

  def init(self, rng, batch):
    params = {GROUP: {"color": jnp.zeros((3,), jnp.float32)}}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={GROUP: self.optimizer.init(params[GROUP])}, ema_params={}, model_state={}, rng=rng)

  def prepare(self, run, state):
    del run
    color = jax.device_put(jnp.asarray(PREPARED_COLOR, jnp.float32), state.params[GROUP]["color"].sharding)
    return state.replace(params={GROUP: {"color": color}})

  def phases(self):
    return (Phase("warmup", 0), Phase("main", self.warmup_steps))

  def train_step(self, state, batch, phase="main"):
    loss_fn = lambda p: jnp.mean(jnp.square(batch["image"] - p["color"]))
    loss, grads = jax.value_and_grad(loss_fn)(state.params[GROUP])
    scale = 0.1 if phase == "warmup" else 1.0
    grads = jax.tree.map(lambda g: scale * g, grads)
    update = apply_gradients(self.optimizer, state.params[GROUP], state.opt_state[GROUP], grads)
    metrics = {"loss": loss, "lr": jnp.float32(self.learning_rate * scale), **update.metrics}
    return state.replace(step=state.step + 1, params={GROUP: update.params},
                         opt_state={GROUP: update.opt_state}), metrics

  def eval_step(self, state, batch):
    error = jnp.square(batch["image"] - state.params[GROUP]["color"])
    return {"squared_error": jnp.mean(error, axis=(1, 2, 3))}

  def evaluator(self, run, state):
    return _MeanError()

  def example_conditions(self):
    return {}

  def sample_settings(self, sample_config):
    return float(sample_config.get("noise", 0.1))

  def sample(self, state, conditions, rng, settings, batch_size=None):
    shape = (batch_size, self.image_size, self.image_size, 3)
    return state.params[GROUP]["color"] + settings * jax.random.normal(rng, shape)

  def modes(self):
    return {"sample": self._sample_mode}

  def _sample_mode(self, run):
    state, step = run.restore()
    pixels = np.asarray(jax.jit(self.sample, static_argnums=(3, 4))(state, {}, jax.random.PRNGKey(0),
                                                                     self.sample_settings(run.config.sample), 4))
    path = run.workdir / "samples" / f"mean_step_{step}.png"
    grids.save_examples(path.parent, path.stem, [np.clip(pixels, -1, 1)], max_rows=4, fps=8.0)
    return {"path": str(path), "mean": pixels.mean(axis=(0, 1, 2)).tolist()}

  def describe(self):
    return {"latents": {"color": {"shape": [3], "dtype": "float32"}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tasks.register("mean_color", lambda config: MeanColorTask(image_size=int(config.data.image_size)))
  config = set_fields(tiny_config(), {"task": "mean_color", "eval_every_steps": 6, "total_steps": 6})
  workdir = tmp_path_factory.mktemp("mean_color")
  return config, workdir, trainer.run(config, str(workdir), "train")


def _training_batches(config) -> list[np.ndarray]:
  from tokgen_jax import data  # pylint: disable=import-outside-toplevel
  stream = data.make_pipeline(config.data, "train", global_batch_size=config.batch_size)
  return [next(stream)["image"] for _ in range(config.total_steps)]


def test_train_runs_both_phases_and_reaches_the_closed_form(trained):
  config, workdir, summary = trained
  color = np.asarray(PREPARED_COLOR)  # the fresh state went through `prepare`
  # SGD on the mean over 3 channels: c += lr·scale·2/3·(x̄ - c)
  for step, images in enumerate(_training_batches(config)):
    scale = 0.1 if step < 2 else 1.0
    color = color + 0.1 * scale * 2 / 3 * (images.mean(axis=(0, 1, 2)) - color)
  from tokgen_jax import run as run_lib  # pylint: disable=import-outside-toplevel
  state, _ = run_lib.setup(config, str(workdir)).restore()
  np.testing.assert_allclose(state.params[GROUP]["color"], color, rtol=1e-4, atol=1e-6)
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [line["lr"] for line in lines if "lr" in line][:1] == [pytest.approx(0.01)]  # the warm-up phase
  assert summary["step"] == 6


def test_eval_mode_writes_the_evaluators_results_and_samples(trained):
  config, workdir, _ = trained
  results = trainer.run(config, str(workdir), "eval")
  record = json.loads((workdir / "eval" / "step_6.json").read_text())
  assert record["squared_error"] == pytest.approx(results["eval_squared_error"]) and record["num_examples"] > 0
  assert (workdir / "samples" / "eval_step_6.png").exists()


def test_sample_mode_is_the_tasks_own(trained):
  config, workdir, _ = trained
  written = trainer.run(config, str(workdir), "sample")
  assert pathlib.Path(written["path"]).exists() and len(written["mean"]) == 3


def test_summary_mode_reports_parameters_phases_and_flops(trained):
  config, workdir, _ = trained
  summary = trainer.run(config, str(workdir), "summary")
  assert summary["parameters"] == 3 and summary["phases"] == {"warmup": 0, "main": 2}
  assert summary["latents"] == {"color": {"shape": [3], "dtype": "float32"}}
  assert set(summary["train_flops_per_example"]) == {"warmup", "main"}
  assert json.loads((workdir / "summary.json").read_text())["parameters"] == 3


def test_a_mode_the_task_lacks_names_the_ones_it_has(trained):
  from tokgen_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  config, workdir, _ = trained
  with pytest.raises(ConfigError, match="'stats'.*choose one of.*sample"):
    trainer.run(config, str(workdir), "stats")
