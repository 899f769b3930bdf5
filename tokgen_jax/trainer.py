"""The one training loop: every experiment runs through `run(config, workdir, mode)`.

train:  init or resume → jitted, sharded train_step → log / eval / checkpoint on their schedules; SIGTERM saves
        the current step and returns; non-finite steps stop or are skipped (`guard`).
eval:   restore config.eval.checkpoint_step (0: the latest) and evaluate it on the held-out split.
sample: restore the latest checkpoint; a tokenizer reconstructs the files named by `config.sample.inputs`, a
        generator draws samples of `config.sample.prompts` and decodes them with its tokenizer.
stats:  compute the feature statistics (InceptionV3 / I3D) of the eval split once, for generator FID/FVD.
tokenize: (generators) encode `config.tokenize.data` once with the trained tokenizer of `config.tokenizer` into
        token shards at `config.data.path`, which the generator then trains on.
compile: lower and compile the train step (and sampler) for a TPU pod topology, ahead of time (`aot`).
bench:  time N train steps after warm-up (`bench.training`): step time, TFLOP/s and MFU per device, data-wait and
        checkpoint-blocking shares.
"""

import contextlib
import dataclasses
import functools
import pathlib
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokgen_jax import checkpoint, config as config_lib, data, generation, guard, perf, sharding, tasks, writers
from tokgen_jax.data import tokens as token_data
from tokgen_jax.errors import ConfigError

MODES = ("train", "eval", "sample", "stats", "tokenize", "compile", "bench")


@dataclasses.dataclass
class Run:
  """What every mode needs: the mesh, the task and the (abstract) state layout."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  mesh: Mesh
  rules: tuple
  task: tasks.Task
  abstract_state: Any
  state_shardings: Any

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0

  def context(self):
    """Mesh and logical-axis rules in force while functions trace, so activation constraints apply."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  @functools.cached_property
  def eval_fn(self):
    return jax.jit(self.task.eval_step, in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)))

  @functools.cached_property
  def feature_networks(self) -> dict[str, Any]:
    return tasks.feature_networks(self.config.eval, is_video=self.task.input_key == "video")

  @functools.cached_property
  def frozen_tokenizer(self) -> generation.FrozenTokenizer:
    """The generator's tokenizer: `config.tokenizer.experiment` restored from `config.tokenizer.workdir`."""
    tokenizer = self.config.tokenizer
    tokenizer_run = setup(tokenizer.experiment, tokenizer.workdir)
    try:
      state, step = _restore(tokenizer_run, int(tokenizer.checkpoint_step))
    except ConfigError as error:
      raise ConfigError(f"config.tokenizer.workdir={tokenizer.workdir!r}: {error} The generator needs a trained "
                        f"tokenizer there (train it with its experiment, e.g. the ':tokenizer' variant).") from error
    return generation.FrozenTokenizer(tokenizer_run.task, state, step)

  def init_state(self) -> Any:
    example = self.task.example_batch()
    init = jax.jit(lambda rng: nn.unbox(self.task.init(rng, example)), out_shardings=self.state_shardings)
    with self.context():
      return init(jax.random.PRNGKey(self.config.seed))


def setup(config: ml_collections.ConfigDict, workdir: str, devices: list | None = None) -> Run:
  if config.data.source == "tokens" and not config.data.path:
    config.data.path = str(pathlib.Path(workdir).absolute() / "tokens")  # tokenize writes, train reads, here
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
  rules = sharding.logical_rules(config.mesh)
  task = tasks.build(config)
  example = task.example_batch()
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # abstract: nothing may run eagerly on a compile-only mesh
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda rng: task.init(rng, example), key)
  state_shardings = sharding.state_shardings(boxed, mesh, rules)
  abstract_state = checkpoint.abstract_with_shardings(nn.unbox(boxed), state_shardings)
  return Run(config, pathlib.Path(workdir), mesh, rules, task, abstract_state, state_shardings)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str, topology: str = "") -> dict[str, Any]:
  """Run `mode` and return its summary (final metrics for train, eval metrics for eval, paths for sample).
  `topology` (compile mode) overrides `config.topology`."""
  if mode not in MODES:
    raise ConfigError(f"--mode={mode!r} is not known; choose one of {MODES}.")
  if mode == "compile":
    from tokgen_jax import aot  # pylint: disable=g-import-not-at-top  (imports this module)
    return aot.compile_experiment(config, workdir, topology)
  from tokgen_jax.bench import training  # pylint: disable=g-import-not-at-top  (imports this module)
  state_run = setup(config, workdir)
  logging.info("mesh %s; %d parameters", dict(state_run.mesh.shape), count_params(state_run.abstract_state))
  modes = {"train": train, "eval": evaluate_checkpoint, "sample": sample, "stats": compute_statistics,
           "tokenize": tokenize, "bench": training.bench}
  return modes[mode](state_run)


def count_params(abstract_state: Any) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract_state.params))


# ---------------------------------------------------------------------------------------------------- training


class _Preemption:
  """When to save and exit on preemption. One process: SIGTERM sets a flag the loop polls. Several: JAX's
  preemption service (its notifier catches SIGTERM on any host) picks one step at which every process saves,
  `multihost_utils.reached_preemption_sync_point`, as Orbax's `reached_preemption` does."""

  def __init__(self):
    self.requested = False
    self._single = jax.process_count() == 1
    if self._single:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if self._single:
      return self.requested
    return multihost_utils.reached_preemption_sync_point(step)

  def restore_handler(self) -> None:
    if self._single:
      signal.signal(signal.SIGTERM, self._previous)


def _initial_state(run_: Run, manager: checkpoint.Manager, train_iter: Any) -> Any:
  """Resume order: the workdir's latest good checkpoint (damaged newer ones are moved aside) → config.init_from
  (parameters only) → scratch."""
  restored = manager.restore_latest(run_.abstract_state, train_iter)
  if restored is not None:
    logging.info("resuming from %s/%d", manager.directory, restored[1])
    return restored[0]
  state = run_.init_state()
  if run_.config.init_from:
    loaded = checkpoint.restore_params(run_.config.init_from, run_.abstract_state)
    state = state.replace(params=loaded.params, ema_params=loaded.ema_params, model_state=loaded.model_state)
  return state


def compile_step(run_: Run, state: Any, batch: Any, nonfinite: str = "stop"):
  """The compiled train step (guarded per `config.guard.nonfinite`) and its FLOPs per device (`perf.count_flops`:
  scan bodies counted per layer)."""
  train_step = guard.guarded_step(run_.task.train_step, nonfinite)
  step_fn = jax.jit(train_step, in_shardings=(run_.state_shardings, sharding.batch_sharding(run_.mesh)),
                    out_shardings=(run_.state_shardings, None), donate_argnums=0)
  with run_.context():
    compiled = step_fn.lower(state, batch).compile()
    flops = perf.count_flops(run_.task.train_step, state, batch) / run_.mesh.size
  return compiled, flops


def _last_good(manager: checkpoint.Manager) -> str:
  manager.wait()
  step = manager.latest_step()
  if step is None:
    return "there is no checkpoint yet"
  return f"the last good checkpoint is step {step} ({manager.directory / str(step)})"


def train(run_: Run) -> dict[str, Any]:
  config = run_.config
  settings = guard.settings(config)
  train_iter = data.make_pipeline(config.data, "train", global_batch_size=config.batch_size)
  manager = checkpoint.Manager(str(run_.workdir), keep=config.keep_checkpoints)
  state = _initial_state(run_, manager, train_iter)
  step = int(state.step)
  writer = writers.MetricWriter(str(run_.workdir), enabled=run_.is_chief)
  record = guard.BatchRecord(run_.workdir, enabled=settings.record_batches and run_.is_chief)
  monitor = guard.NonFiniteMonitor(settings)
  preemption = _Preemption()
  config_json = config_lib.to_json(config)
  summary: dict[str, Any] = {"step": step}
  last_good = functools.partial(_last_good, manager)
  try:
    timer = Timer()
    pending: list[tuple[int, Any]] = []
    compiled = flops = metrics = None
    while step < config.total_steps:
      with timer.waiting(metrics):
        local_batch = next(train_iter)
        record.write(step + 1, local_batch)
        batch = sharding.global_batch(local_batch, run_.mesh)
      if compiled is None:
        compiled, flops = compile_step(run_, state, batch, settings.nonfinite)
        timer.reset()
      state, metrics = compiled(state, batch)
      step += 1
      pending.append((step, metrics))
      if step % config.log_every_steps == 0 or step == config.total_steps:
        summary = _log(step, config, len(pending), monitor.screen(pending, last_good), monitor, timer, flops, writer)
        pending = []
      if config.eval_every_steps and (step % config.eval_every_steps == 0 or step == config.total_steps):
        with timer.paused():
          summary |= evaluate(run_, state, step, writer)
      preempted = preemption.reached(step)
      if preempted or step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        with timer.paused():
          monitor.screen(pending, last_good)  # never checkpoint a diverged state
          guard.check_state_finite(state, step, last_good())
          manager.save(step, state, train_iter, config_json)
      if preempted:
        logging.warning("preemption: saved step %d, exiting", step)
        print(f"preempted: saved step {step}; rerun the same command to resume", flush=True)
        summary["preempted"] = True
        break
    manager.wait()  # a failed background save is reported here, not lost
  finally:
    _close_quietly(manager, writer, record)
    preemption.restore_handler()
  summary["step"] = step
  return summary


def _close_quietly(manager: checkpoint.Manager, writer: writers.MetricWriter, record: guard.BatchRecord) -> None:
  """Finish writing on any exit; a failed save was already reported by `manager.wait` or is reported now."""
  try:
    manager.wait()
    manager.close()
  finally:
    writer.close()
    record.close()


def _is_ready(tree: Any) -> bool:
  return all(leaf.is_ready() for leaf in jax.tree.leaves(tree) if isinstance(leaf, jax.Array))


class Timer:
  """Wall time between log lines and the part of it spent waiting for input."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.start = time.perf_counter()
    self.data_wait = 0.0

  @contextlib.contextmanager
  def waiting(self, previous_outputs: Any = None):
    """Time an input fetch as waiting when the device has run out of work by its end: the previous step's
    `previous_outputs` are ready (None: no step in flight). Under asynchronous dispatch the loop runs ahead of the
    device, so a fetch that overlaps a running step costs nothing and is not counted; one that outlasts it is
    counted whole (an upper bound on the device's idle time)."""
    begin = time.perf_counter()
    yield
    if _is_ready(previous_outputs):
      self.data_wait += time.perf_counter() - begin

  @contextlib.contextmanager
  def paused(self):
    """Leave out of the throughput figures (evaluation, checkpoint writes)."""
    begin = time.perf_counter()
    yield
    self.start += time.perf_counter() - begin


def _log(step, config, num_steps, applied, monitor, timer, flops, writer) -> dict[str, float]:
  """One log line over the `num_steps` steps since the last: means of those whose update was applied (`applied`:
  host metrics), throughput figures, and under config.guard.nonfinite=skip the number of steps skipped so far."""
  elapsed = max(time.perf_counter() - timer.start, 1e-9)
  steps_per_sec = num_steps / elapsed
  scalars = {}
  if applied:
    means = jax.tree.map(lambda *xs: float(np.mean(xs)), *applied)
    scalars = {"loss": means.pop("loss"), "lr": means.pop("lr"), **means}
  scalars |= {"steps_per_sec": steps_per_sec, "examples_per_sec": steps_per_sec * config.batch_size,
              "tflops_per_device": flops * steps_per_sec / 1e12,
              "mfu": flops * steps_per_sec / perf.peak_flops(jax.devices()[0]),
              "data_wait_frac": timer.data_wait / elapsed}
  if monitor.policy == "skip":
    scalars["skipped_steps"] = monitor.skipped
  writer.write(step, scalars)
  if jax.process_index() == 0:
    print(writers.format_progress(step, config.total_steps, scalars), flush=True)
  timer.reset()
  return scalars


# -------------------------------------------------------------------------------------------------- evaluation


def _gather(tree: Any) -> Any:
  """Host numpy copies of globally sharded outputs (all processes take part)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def evaluate(run_: Run, state: Any, step: int, writer: writers.MetricWriter | None = None) -> dict[str, float]:
  """Mean per-example metrics over the held-out split; writes eval/step_<N>.json and sample grids."""
  is_generator = isinstance(run_.task, tasks.GeneratorTask)
  results, count = (_evaluate_generator if is_generator else _evaluate_reconstruction)(run_, state, step)
  if run_.is_chief:
    record = {"step": step, "num_examples": count, "protocol": run_.config.eval.protocol.to_dict(), **results}
    writers.write_json_atomic(run_.workdir / "eval" / f"step_{step}.json", record)
    print(f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
  if writer is not None:
    writer.write(step, {f"eval_{name}": value for name, value in results.items()})
  return {f"eval_{name}": value for name, value in results.items()}


def _eval_batches(run_: Run):
  """(global batch without the mask, host mask) of every eval batch."""
  for local_batch in data.make_pipeline(run_.config.data, "eval", global_batch_size=run_.config.eval.batch_size):
    batch = sharding.global_batch(local_batch, run_.mesh)
    mask = batch.pop("mask")
    yield batch, _gather(mask).astype(bool)


def _evaluate_reconstruction(run_: Run, state: Any, step: int) -> tuple[dict[str, float], int]:
  config = run_.config
  key = run_.task.input_key
  evaluator = tasks.ReconstructionEvaluator(run_.feature_networks, codebook_size=run_.task.codebook_size)
  examples = None
  for batch, mask in _eval_batches(run_):
    with run_.context():
      outputs = _gather(run_.eval_fn(state, {key: batch[key]}))
    originals = _gather(batch[key])
    evaluator.update(outputs, originals, mask)
    if examples is None:
      examples = [originals[mask], outputs["reconstruction"][mask]]
  if run_.is_chief:
    _save_examples(run_.workdir / "samples", f"eval_step_{step}", examples, config.eval.num_grid_images,
                   fps=float(config.data.get("fps", 8)))
  return evaluator.results(), evaluator.count


def _evaluate_generator(run_: Run, state: Any, step: int) -> tuple[dict[str, float], int]:
  """Teacher-forced NLL / perplexity / token accuracy over the eval tokens, then (config.eval.num_samples > 0)
  samples of the first eval conditions with and without CFG, decoded and scored (`generation`)."""
  sums, count = {"nll": 0.0, "token_accuracy": 0.0}, 0
  for batch, mask in _eval_batches(run_):
    with run_.context():
      outputs = _gather(run_.eval_fn(state, batch))
    for name in sums:
      sums[name] += float(np.sum(outputs[name][mask], dtype=np.float64))
    count += int(mask.sum())
  results = {name: total / max(count, 1) for name, total in sums.items()}
  results["perplexity"] = float(np.exp(results["nll"]))
  if run_.config.eval.protocol.num_samples:
    results |= _sample_eval(run_, state, step)
  return results, count


def _sample_eval(run_: Run, state: Any, step: int) -> dict[str, float]:
  config, task = run_.config, run_.task
  tokenizer = run_.frozen_tokenizer
  source = token_data.open_configured_token_source(config.data, "eval")
  protocol = config.eval.protocol
  examples = [source[i] for i in range(min(int(protocol.num_samples), len(source)))]
  cond = {key: np.stack([e[key] for e in examples]) for key in ("label", "text", "text_mask") if key in examples[0]}
  prompts = (source.captions[:len(examples)] if task.model.conditioning == "text" or "label" not in examples[0]
             else [int(e["label"]) for e in examples])
  reference = tokenizer.decode(np.stack([e["tokens"] for e in examples]))
  scored = prompts is not None and str(config.tokenize.data.source) in generation.SHAPES_SOURCES
  results = {f"reference_{k}": v for k, v in generation.score_shapes(prompts, reference).items()} if scored else {}
  columns = [reference]
  guided = generation.settings_from_config(protocol).guided
  for name, guidance in ({"cfg": True, "nocfg": False} if guided else {"nocfg": False}).items():
    grids = generation.draw(task, state, cond, generation.settings_from_config(protocol, guidance),
                            int(protocol.seed), len(examples))
    columns.append(tokenizer.decode(grids))
    if scored:
      results |= {f"{name}_{k}": v for k, v in generation.score_shapes(prompts, columns[-1]).items()}
  if run_.is_chief:
    _save_examples(run_.workdir / "samples", f"eval_step_{step}", columns, config.eval.num_grid_images,
                   fps=float(config.tokenize.data.get("fps", 8)))
    _write_prompts(run_.workdir / "samples" / f"eval_step_{step}_prompts.txt", prompts or [])
  return results


def _write_prompts(path: pathlib.Path, prompts: list) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{p}\n" for p in prompts), encoding="utf-8")


def compute_statistics(run_: Run) -> dict[str, Any]:
  """--mode=stats: reference feature statistics of the eval split, saved as .npz (`mu`, `sigma`, `count`)."""
  config = run_.config
  key = run_.task.input_key

  def batches():
    for local_batch in data.make_pipeline(config.data, "eval", global_batch_size=config.eval.batch_size):
      batch = sharding.global_batch(local_batch, run_.mesh)
      yield _gather(batch[key]), _gather(batch["mask"])

  statistics = tasks.reference_statistics(run_.feature_networks, key == "video", batches())
  path = pathlib.Path(config.eval.reference_statistics or
                      run_.workdir / "stats" / f"{config.data.source}_{config.data.eval_split}.npz")
  if run_.is_chief:
    path.parent.mkdir(parents=True, exist_ok=True)
    statistics.save(path)
    print(f"stats: {statistics.count} examples, {statistics.dim}-d features → {path}", flush=True)
  return {"path": str(path), "count": statistics.count}


def _save_examples(directory: pathlib.Path, stem: str, columns: list[np.ndarray], max_rows: int, fps: float) -> None:
  """Examples side by side, one row each (e.g. original | reconstruction, or reference | samples). Images: one PNG
  grid. Videos: the same as MP4 and GIF, plus a PNG strip with one column per frame and the columns of each clip
  as rows one above the other."""
  first = columns[0]
  if first.ndim == 4:
    writers.save_image_grid(directory / f"{stem}.png", columns, max_rows=max_rows)
    return
  for suffix in (".mp4", ".gif"):
    writers.save_image_grid(directory / f"{stem}{suffix}", columns, max_rows=max_rows, fps=fps)
  rows = min(max_rows, len(first))
  interleaved = np.stack([c[:rows] for c in columns], axis=1).reshape((len(columns) * rows,) + first.shape[1:])
  writers.save_image_grid(directory / f"{stem}_frames.png", list(interleaved.transpose(1, 0, 2, 3, 4)),
                          max_rows=len(columns) * rows)


def _restore(run_: Run, step: int = 0) -> tuple[Any, int]:
  """The checkpoint of `step` (0: the latest) in the workdir."""
  manager = checkpoint.Manager(str(run_.workdir), keep=run_.config.keep_checkpoints)
  steps = manager.all_steps()
  if not steps:
    raise ConfigError(f"no checkpoint in {manager.directory}: --mode=eval and --mode=sample need a trained run. "
                      f"Train first with --mode=train --workdir={run_.workdir}, or point --workdir at a run.")
  if step and step not in steps:
    raise ConfigError(f"config.eval.checkpoint_step={step} is not a checkpoint in {manager.directory}; it has "
                      f"steps {sorted(steps)}. Pick one of them, or 0 for the latest.")
  step = step or max(steps)
  state = manager.restore(step, run_.abstract_state)
  manager.close()
  return state, step


def evaluate_checkpoint(run_: Run) -> dict[str, float]:
  """--mode=eval: config.eval.checkpoint_step (0: the latest), with results in eval/ and TensorBoard."""
  state, step = _restore(run_, run_.config.eval.checkpoint_step)
  writer = writers.MetricWriter(str(run_.workdir), enabled=run_.is_chief)
  try:
    return evaluate(run_, state, step, writer)
  finally:
    writer.close()


# ----------------------------------------------------------------------------------------------------- sample


def _center_crop_to_multiple(frames: np.ndarray, factor: int) -> np.ndarray:
  """Center-crop the last-but-one two axes (H, W) of an image `[H, W, C]` or video `[T, H, W, C]` to multiples."""
  height, width = (frames.shape[-3] // factor) * factor, (frames.shape[-2] // factor) * factor
  top, left = (frames.shape[-3] - height) // 2, (frames.shape[-2] - width) // 2
  return frames[..., top:top + height, left:left + width, :]


def _load_sample_input(run_: Run, path: str) -> np.ndarray:
  """One file as a model input `[1, (T,) H, W, 3]` in [-1, 1]: a video keeps the longest valid frame count
  (1 + k·s_t for a temporally downsampling tokenizer) of at most config.data.num_frames frames."""
  model = run_.task.model
  if run_.task.input_key == "video":
    frames = data.load_video_file(path, fps=float(run_.config.data.fps))[:int(run_.config.data.num_frames)]
    stride = getattr(model, "temporal_downsample_factor", 1)
    frames = frames[:1 + (len(frames) - 1) // stride * stride]
  else:
    frames = data.load_image_file(path)
  frames = _center_crop_to_multiple(frames, model.downsample_factor)
  return (frames.astype(np.float32) / 127.5 - 1.0)[None]


def sample(run_: Run) -> dict[str, Any]:
  """Tokenizers: reconstruct every file in config.sample.inputs into workdir/samples/recon_<name>.png (.mp4/.gif
  for videos). Generators: draw config.sample.num_per_prompt samples per prompt (see `_sample_prompts`)."""
  if isinstance(run_.task, tasks.GeneratorTask):
    return _sample_prompts(run_)
  paths = [p.strip() for p in run_.config.sample.inputs.split(",") if p.strip()]
  if not paths:
    raise ConfigError("config.sample.inputs is empty: --mode=sample reconstructs given images or videos; pass "
                      "--config.sample.inputs=a.png,b.mp4.")
  state, step = _restore(run_)
  replicated = NamedSharding(run_.mesh, PartitionSpec())
  reconstruct = jax.jit(run_.task.reconstruct)
  written = {}
  for path in paths:
    pixels = _load_sample_input(run_, path)
    with run_.context():
      recon = np.asarray(_gather(reconstruct(state, jax.make_array_from_process_local_data(replicated, pixels))))
    stem = f"recon_{pathlib.Path(path).stem}"
    out = run_.workdir / "samples" / (f"{stem}.mp4" if pixels.ndim == 5 else f"{stem}.png")
    if run_.is_chief:
      _save_examples(out.parent, stem, [pixels, recon], max_rows=1, fps=float(run_.config.data.get("fps", 8)))
      mse = float(np.mean((recon - pixels) ** 2))
      print(f"sample {path} → {out} (step {step}, psnr {10 * np.log10(4.0 / max(mse, 1e-12)):.2f} dB)", flush=True)
    written[path] = str(out)
  return written


def _sample_prompts(run_: Run) -> dict[str, Any]:
  """Samples of `config.sample.prompts` / `prompts_file` into workdir/samples/prompts_step_<N>.png (one row per
  prompt, `num_per_prompt` columns) with the prompts in a .txt beside it; shapes-world captions are scored."""
  config, task = run_.config, run_.task
  prompts = generation.read_prompts(config.sample)
  if not prompts:
    raise ConfigError("no prompts: --mode=sample of a generator needs --config.sample.prompts='a;b' (captions, or "
                      "class ids / names) or --config.sample.prompts_file=FILE (one per line).")
  state, step = _restore(run_)
  per_prompt = int(config.sample.num_per_prompt)
  repeated = [p for p in prompts for _ in range(per_prompt)]
  grids = generation.draw(task, state, generation.prompt_conditions(task, repeated),
                          generation.settings_from_config(config.sample), int(config.sample.seed), len(repeated))
  pixels = run_.frozen_tokenizer.decode(grids)
  path = run_.workdir / "samples" / f"prompts_step_{step}.png"
  summary: dict[str, Any] = {"path": str(path)}
  if str(config.tokenize.data.source) in generation.SHAPES_SOURCES:
    try:
      summary |= generation.score_shapes(repeated, pixels)
    except ConfigError as error:  # free-form prompts: sample, but there is nothing to score against
      logging.warning("prompts are not shapes-world captions, so samples are not scored: %s", error)
  if run_.is_chief:
    columns = [pixels[j::per_prompt] for j in range(per_prompt)]
    _save_examples(path.parent, path.stem, columns, max_rows=len(prompts), fps=float(config.data.get("fps", 8)))
    _write_prompts(path.with_suffix(".txt"), prompts)
    print(f"sample step {step}: {len(prompts)} prompts x {per_prompt} → {path} " +
          ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if k != "path"), flush=True)
  return summary


def tokenize(run_: Run) -> dict[str, Any]:
  """--mode=tokenize: `config.tokenize.data` through the frozen tokenizer into token shards at config.data.path."""
  if not isinstance(run_.task, tasks.GeneratorTask):
    raise ConfigError("--mode=tokenize runs with a generator experiment (it names the tokenizer and where tokens "
                      "go), e.g. --config=experiments/ar_shapes.py:local.")
  counts = generation.tokenize(run_.config, run_.frozen_tokenizer, str(run_.config.data.path), write=run_.is_chief)
  return {"path": str(run_.config.data.path), **counts}
