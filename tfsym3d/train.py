"""Training: `python -m tfsym3d.train --flagfile=configs/<name>.cfg`.

The step is `Unsup3D.train_step` run by Keras' `fit` (a `tf.function`; the
networks as one XLA program with --jit_compile) under a tf.distribute
strategy (--strategy): MirroredStrategy over every visible GPU (or the CPU),
OneDeviceStrategy, or MultiWorkerMirroredStrategy over the processes that
TF_CONFIG names. Batches are global and split over the replicas: replica r of
R gets rows [r * B / R, (r + 1) * B / R) of the batch a one-process run sees
(each worker builds only its own rows). --mixed_precision runs the networks
in 16 bits (see `tfsym3d.model.Unsup3D`).

Multi-worker: every worker restores from --run_dir/ckpt (a shared file
system), only the chief writes checkpoints, TensorBoard, images, flags.txt
and the final evaluation; the others save their checkpoints to a temporary
directory deleted at the end (every worker must take part in a save).

A run lives in --run_dir:
  ckpt/      tf.train.CheckpointManager checkpoints (model, optimiser, step)
             every --checkpoint_every steps and at each epoch end, newest
             --keep_checkpoints kept. A checkpoint only becomes "latest" once
             all of its files are written, so a run killed mid-write resumes
             from the previous one.
  tb/        TensorBoard: scalars, histograms, image grids, yaw animation.
  images/    the same grids and animation as PNG / GIF.
  eval/      the final evaluation (ground-truth datasets).
  flags.txt  the flags of the last start (a flagfile).

Restarting with the same --run_dir resumes from the newest checkpoint: same
step, epoch, optimiser state and data position (the training stream is a
function of the step, see `tfsym3d.data.sources`). --init_from starts a new
run from another checkpoint's weights only.
"""

import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, Optional

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import tfsym3d
from tfsym3d import flags as tflags
from tfsym3d import evaluate as evaluate_lib
from tfsym3d import metrics
from tfsym3d import runs
from tfsym3d import step as step_lib
from tfsym3d import visualize
from tfsym3d.config import ModelConfig, TrainConfig
from tfsym3d.data import sources
from tfsym3d.model import make_training_optimizer
from tfsym3d.nets import check_precision

FLAGS = flags.FLAGS


class TrainingStopped(RuntimeError):
  """The run stopped itself (e.g. too many non-finite steps)."""


# -------------------------------------------------------------- callbacks ----

class StepCounter(keras.callbacks.Callback):
  """Counts the batches consumed (the data position) into a variable."""

  def __init__(self, step: tf.Variable):
    super().__init__()
    self.step = step

  def on_train_batch_end(self, batch, logs=None):
    """One more batch consumed (skipped non-finite steps count too)."""
    self.step.assign_add(1)


class NonFiniteGuard(keras.callbacks.Callback):
  """Reports skipped non-finite steps; stops after `max_streak` in a row."""

  def __init__(self, step: tf.Variable, max_streak: int):
    super().__init__()
    self.step, self.max_streak = step, max_streak
    self.reason = None

  def on_train_batch_end(self, batch, logs=None):
    """Warns about a skipped step; ends training at `max_streak` in a row."""
    streak = int((logs or {}).get("nonfinite_streak", 0))
    if streak == 0:
      return
    step = int(self.step.numpy())
    logging.warning("step %d: non-finite loss or gradient, step skipped (%d in a "
                    "row, limit --max_nonfinite_steps=%d)", step, streak,
                    self.max_streak)
    if streak >= self.max_streak:
      self.reason = (f"stopped at step {step}: {streak} non-finite steps in a row "
                     f"(--max_nonfinite_steps={self.max_streak}); the weights are "
                     "those of the last good step and the newest checkpoint was "
                     "written before the trouble. Lower --learning_rate or check "
                     "the data.")
      self.model.stop_training = True


class CheckpointSaver(keras.callbacks.Callback):
  """Saves every `every` steps and at each epoch end, unless the current
  step was non-finite (a streak in progress keeps the last good checkpoint
  the newest)."""

  def __init__(self, manager: tf.train.CheckpointManager, step: tf.Variable,
               every: int):
    super().__init__()
    self.manager, self.step, self.every = manager, step, every
    self._healthy = True

  def _save(self):
    """Saves at the current step unless unhealthy or saved there already."""
    step = int(self.step.numpy())
    if self._healthy and self.manager.latest_checkpoint != self._name(step):
      self.manager.save(checkpoint_number=step)
      logging.info("step %d: saved %s", step, self.manager.latest_checkpoint)

  def _name(self, step):
    """The checkpoint prefix the manager gives a save at `step`."""
    return os.path.join(self.manager.directory, f"ckpt-{step}")

  def on_train_batch_end(self, batch, logs=None):
    """Saves every `every` steps (if this step was finite)."""
    self._healthy = int((logs or {}).get("nonfinite_streak", 0)) == 0
    if self.every > 0 and int(self.step.numpy()) % self.every == 0:
      self._save()

  def on_epoch_end(self, epoch, logs=None):
    """Saves at every epoch end, so a finished epoch is never retrained."""
    self._save()


def depth_smoothness_weight(epoch: int, epochs: int, start: float,
                            final: Optional[float]) -> float:
  """The depth smoothness weight of an epoch: `start` (--lam_depth_sm) in the
  first epoch, moving linearly to `final` (--lam_depth_sm_final) in the last;
  constant when `final` is None."""
  if final is None or epochs <= 1:
    return start
  return start + (final - start) * min(epoch, epochs - 1) / (epochs - 1)


class LossWeightSchedule(keras.callbacks.Callback):
  """Sets the model's per-epoch loss weights at each epoch's start (a resumed
  run gets its epoch's): lam_flip = 1.0 for the first `flip_start_epoch`
  epochs, then the config's; the depth smoothness weight by
  `depth_smoothness_weight`."""

  def __init__(self, config, flip_start_epoch: int, epochs: int,
               depth_sm_final: Optional[float]):
    super().__init__()
    self.config, self.flip_start_epoch = config, flip_start_epoch
    self.epochs, self.depth_sm_final = epochs, depth_sm_final

  def on_epoch_begin(self, epoch, logs=None):
    """Sets `epoch`'s flip and depth smoothness weights on the model."""
    self.model.lam_flip.assign(
        1.0 if epoch < self.flip_start_epoch else self.config.lam_flip)
    self.model.lam_depth_sm.assign(depth_smoothness_weight(
        epoch, self.epochs, self.config.lam_depth_sm, self.depth_sm_final))


class Progress(keras.callbacks.Callback):
  """A tqdm bar over the whole run with the loss and images/s."""

  def __init__(self, total_steps: int, step: tf.Variable, batch_size: int,
               enabled: bool = True):
    super().__init__()
    self.total, self.step, self.batch_size = total_steps, step, batch_size
    self.enabled = enabled
    self.bar = None
    self._times = []

  def on_train_begin(self, logs=None):
    """Opens the bar at the current step (once: a resumed run's second fit
    call keeps it)."""
    if self.enabled and self.bar is None:
      self.bar = tqdm(total=self.total, initial=int(self.step.numpy()), unit="step",
                      dynamic_ncols=True, file=sys.stderr, desc="train")

  def images_per_second(self) -> float:
    """Throughput over the last (up to) 20 steps."""
    if len(self._times) < 2:
      return float("nan")
    return (len(self._times) - 1) * self.batch_size / (self._times[-1] - self._times[0])

  def on_train_batch_end(self, batch, logs=None):
    """Advances the bar; shows the step's total loss and the throughput."""
    self._times = (self._times + [time.perf_counter()])[-21:]
    if self.bar is not None:
      self.bar.update(1)
      logs = logs or {}
      self.bar.set_postfix(loss=f"{float(logs.get('total', float('nan'))):.4f}",
                           img_s=f"{self.images_per_second():.1f}", refresh=False)

  def write(self, line: str):
    """Prints a line above the bar (or plainly without one)."""
    if self.bar is not None:
      self.bar.write(line, file=sys.stderr)
    else:
      print(line, file=sys.stderr)

  def close(self):
    """Closes the bar (at the end of the run, also when it fails)."""
    if self.bar is not None:
      self.bar.close()
      self.bar = None


class Validation(keras.callbacks.Callback):
  """At each epoch end: every loss term averaged over the whole validation
  set, and SIDE (x1e-2) and MAD (degrees) when it has ground truth, printed
  and written to TensorBoard."""

  def __init__(self, dataset: tf.data.Dataset, writer_dir: str, step: tf.Variable,
               progress: Progress):
    super().__init__()
    self.dataset, self.step, self.progress = dataset, step, progress
    self.writer = tf.summary.create_file_writer(writer_dir)
    self._batch_fn = None
    self.history = []

  def _batch(self, images, depth_gt=None):
    """Every loss term of one batch, with SIDE and MAD per image if there is
    ground truth."""
    model = self.model
    out = model(images, training=False)
    terms = model.compute_losses(images, out)
    if depth_gt is not None:
      mask = metrics.evaluation_mask(depth_gt, out.recon_mask)
      terms["side"] = metrics.side(out.recon_depth, depth_gt, mask) * 100.0
      terms["mad"] = metrics.mad(out.recon_depth, depth_gt, mask, model.renderer.camera)
    return terms

  def results(self) -> Dict[str, float]:
    """Means over the validation set (per image for SIDE and MAD)."""
    if self._batch_fn is None:
      # Plain TensorFlow throughout: no AutoGraph conversion to pay for at
      # every run's first validation.
      self._batch_fn = tf.function(self._batch, autograph=False)
    sums, counts = {}, {}
    for batch in self.dataset:
      images, depth = batch if isinstance(batch, tuple) else (batch, None)
      n = int(images.shape[0])
      for key, value in self._batch_fn(images, depth).items():
        value = value.numpy()
        if value.ndim:   # per image: NaN (empty mask) left out
          finite = value[np.isfinite(value)]
          sums[key] = sums.get(key, 0.0) + float(finite.sum())
          counts[key] = counts.get(key, 0) + finite.size
        else:            # batch mean
          sums[key] = sums.get(key, 0.0) + float(value) * n
          counts[key] = counts.get(key, 0) + n
    return {k: sums[k] / counts[k] for k in sums if counts[k]}

  def on_epoch_end(self, epoch, logs=None):
    """Validates, keeps the means in `history`, writes and prints them."""
    values = self.results()
    self.history.append(values)
    step = int(self.step.numpy())
    with self.writer.as_default(step=step):
      for key, value in values.items():
        group = "val_depth" if key in ("side", "mad") else "val"
        tf.summary.scalar(f"{group}/{key}", value)
    self.writer.flush()
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()))
    self.progress.write(f"epoch {epoch + 1} (step {step}) validation: {shown}")


class TensorBoardLogger(keras.callbacks.Callback):
  """Scalars every `log_every` steps (window means of every loss term, the
  learning rate, images/s); histograms, image grids and the yaw animation
  every `images_every` steps on a fixed batch."""

  def __init__(self, log_dir: str, image_dir: str, step: tf.Variable,
               progress: Progress, log_every: int, images_every: int,
               sample_images: tf.Tensor):
    super().__init__()
    self.writer = tf.summary.create_file_writer(log_dir)
    self.image_dir = image_dir
    self.step, self.progress = step, progress
    self.log_every, self.images_every = log_every, images_every
    self.sample_images = sample_images
    self._window: Dict[str, list] = {}

  def _learning_rate(self) -> float:
    """The optimiser's current learning rate (a schedule's value at its step)."""
    lr = self.model.optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)

  def on_train_batch_end(self, batch, logs=None):
    """Collects the step's logs; writes the window's means every `log_every`
    steps and the pictures every `images_every`."""
    step = int(self.step.numpy())
    for key, value in (logs or {}).items():
      self._window.setdefault(key, []).append(float(value))
    if self.log_every > 0 and step % self.log_every == 0:
      with self.writer.as_default(step=step):
        for key, values in self._window.items():
          if key == "nonfinite_streak":
            continue
          finite = [v for v in values if math.isfinite(v)]
          if finite:
            tf.summary.scalar(f"loss/{key}", float(np.mean(finite)))
        tf.summary.scalar("train/learning_rate", self._learning_rate())
        tf.summary.scalar("train/images_per_s", self.progress.images_per_second())
        tf.summary.scalar("train/skipped_steps", int(self.model.skipped_steps.numpy()))
        tf.summary.scalar("train/lam_flip", float(self.model.lam_flip.numpy()))
        tf.summary.scalar("train/lam_depth_sm", float(self.model.lam_depth_sm.numpy()))
      self._window = {}
    if self.images_every > 0 and step % self.images_every == 0:
      self.write_pictures(step)

  def write_pictures(self, step: int):
    """The decomposition grid, the yaw animation and the factors' histograms
    of the fixed sample batch, to TensorBoard and as PNG / GIF in images/."""
    model = self.model
    out = model(self.sample_images, training=False)
    named = visualize.panels(self.sample_images, out, model.config, model.renderer.camera)
    grid = visualize.overview(named)
    frames = visualize.animation_strip(visualize.yaw_frames(model.renderer, out))
    with self.writer.as_default(step=step):
      tf.summary.image("decomposition", grid[None], max_outputs=1,
                       description="rows: images; columns: " + ", ".join(named))
      tf.summary.image("yaw_animation", frames, max_outputs=frames.shape[0],
                       description="textured, normal and shape views from -90 to "
                       "+90 degrees of yaw (one image per frame)")
      tf.summary.histogram("factors/view_rotation_deg", out.view[:, :3] * 180 / math.pi)
      tf.summary.histogram("factors/view_translation", out.view[:, 3:])
      tf.summary.histogram("factors/light", out.light)
      tf.summary.histogram("factors/canonical_depth", out.canon_depth)
    visualize.save_png(grid, os.path.join(self.image_dir, f"step{step:07d}.png"))
    visualize.save_gif(frames, os.path.join(self.image_dir, f"step{step:07d}_yaw.gif"))
    self.writer.flush()

  def on_train_end(self, logs=None):
    """Flushes the summaries, so a finished run's TensorBoard is complete."""
    self.writer.flush()


# ------------------------------------------------------------------ run ----

def learning_rate(config: ModelConfig, train_config: TrainConfig, total_steps: int):
  """config.learning_rate, constant or cosine-decayed to lr * lr_final_fraction
  at `total_steps` (train_config.lr_schedule), after a linear warm-up from 0
  over the first train_config.lr_warmup_steps steps if that is > 0."""
  lr = config.learning_rate
  warmup = train_config.lr_warmup_steps
  if warmup >= total_steps > 0:
    raise ValueError(f"lr_warmup_steps={warmup} must be fewer than the run's "
                     f"{total_steps} steps (--lr_warmup_steps)")
  final_fraction = (train_config.lr_final_fraction
                    if train_config.lr_schedule == "cosine" else 1.0)
  if warmup:
    # Keras' cosine decay with its warm-up; a final fraction of 1 keeps the
    # rate constant after the warm-up.
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(total_steps - warmup, 1), alpha=final_fraction,
        warmup_target=lr, warmup_steps=warmup)
  if train_config.lr_schedule == "cosine":
    return keras.optimizers.schedules.CosineDecay(lr, max(total_steps, 1),
                                                  alpha=final_fraction)
  return lr


def _write_flags(run_dir: str, text: str) -> None:
  """Writes the run's flagfile (what restarts it) as <run_dir>/flags.txt."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "flags.txt"), "w") as f:
    f.write(text)


def restore_latest(checkpoint: tf.train.Checkpoint,
                   manager: tf.train.CheckpointManager):
  """Restores the newest readable checkpoint of `manager`; returns its path.

  Only checkpoints recorded in the manager's state file are candidates (a
  save killed before that record is never seen); one that fails to load
  anyway (e.g. a damaged file) is reported and the previous one is tried.
  """
  for path in reversed(manager.checkpoints):
    try:
      checkpoint.restore(path).assert_existing_objects_matched()
      return path
    except (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError) as error:
      logging.warning("%s is unreadable (%s); trying the previous checkpoint",
                      path, str(error).splitlines()[0])
  return None


def _tf_config() -> Dict:
  """The parsed TF_CONFIG of a multi-worker run (UsageError if unusable)."""
  text = os.environ.get("TF_CONFIG")
  if not text:
    raise app.UsageError(
        "--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\' on the first machine and '
        '"index": 1 on the second (see docs/training.md, several machines)')
  try:
    spec = json.loads(text)
    workers = spec["cluster"]["worker"]
    task = spec["task"]
    task["type"], int(task["index"])
  except (ValueError, KeyError, TypeError) as error:
    raise app.UsageError(f"TF_CONFIG={text!r} is not a cluster spec with a worker "
                         f"list and a task type and index ({error!r})") from None
  if not workers:
    raise app.UsageError(f"TF_CONFIG={text!r}: the worker list is empty")
  return spec


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy --strategy names.

  Call before any other TensorFlow work: MultiWorkerMirroredStrategy
  configures the runtime's collectives and must come first.
  """
  if name == "multi_worker":
    _tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  raise app.UsageError(f"--strategy={name!r}: use mirrored, multi_worker or one_device")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's files (always, but for the
  non-chief workers of a multi-worker run: a 'chief' task if the cluster has
  one, else worker 0)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type in (None, "chief"):
    return True
  return task_type == "worker" and task_id == 0 and \
      "chief" not in resolver.cluster_spec().as_dict()


def precision_for(mixed: bool) -> str:
  """--mixed_precision -> the networks' Keras dtype policy: mixed_float16 on
  a GPU (tensor cores; loss scaling), mixed_bfloat16 on CPU, else float32."""
  if not mixed:
    return "float32"
  return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def distributed_stream(strategy: tf.distribute.Strategy, data: sources.DataSource,
                       start: int, steps_per_epoch: int):
  """The training stream from step `start`, split over the replicas.

  Each input pipeline (one per worker) builds only its workers' rows of the
  global batch, as per-replica batches in replica order; the union over the
  replicas of a step is exactly the batch a one-process run sees.
  """
  def per_worker(context: tf.distribute.InputContext):
    """This input pipeline's per-replica batches."""
    local = context.num_replicas_in_sync // context.num_input_pipelines
    stream = data.train_stream(start, steps_per_epoch, context.input_pipeline_id,
                               context.num_input_pipelines)
    if local > 1:
      rows = context.get_per_replica_batch_size(data.batch_size)
      stream = stream.unbatch().batch(rows, drop_remainder=True)
    return stream

  return strategy.distribute_datasets_from_function(per_worker)


def _check_workers_agree(strategy: tf.distribute.Strategy, step: tf.Variable,
                         run_dir: str) -> None:
  """Multi-worker: raises unless every worker restored the same step (a
  worker that cannot see the chief's checkpoints would start elsewhere and
  train other batches in lock step)."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return
  mine = tf.cast(step.read_value(), tf.float64)

  def gather():
    """Every replica's step, stacked."""
    return tf.distribute.get_replica_context().all_gather(mine[None], axis=0)

  steps = strategy.experimental_local_results(strategy.run(gather))[0].numpy()
  if steps.min() != steps.max():
    raise app.UsageError(
        f"the workers resumed from different steps ({int(steps.min())} to "
        f"{int(steps.max())}): --run_dir={run_dir} must be one directory every worker "
        "sees (a shared file system) holding the chief's checkpoints")


def train(config: ModelConfig, train_config: TrainConfig, data: sources.DataSource,
          strategy: tf.distribute.Strategy = None,
          precision: str = "float32") -> Dict:
  """Trains (or resumes) a run in train_config.run_dir; returns a summary
  dict (steps, epochs, steps_per_epoch, train_seconds, model, chief,
  validation). Reads no flags: `main` builds both configs from them. With
  train_config.weight_average_decay the returned model holds the moving
  average of the weights (the raw ones stay in the checkpoints, for resuming).

  Args:
    config: what the model computes (its learning_rate included).
    train_config: how the run trains (epochs, schedules, checkpoints, logs).
    data: the data source (`tfsym3d.runs.data_source_from_flags`).
    strategy: a tf.distribute strategy (`make_strategy`); None: mirrored.
    precision: the networks' dtype policy (`precision_for`).
  Raises TrainingStopped when the non-finite guard ends the run.
  """
  if strategy is None:
    strategy = tf.distribute.MirroredStrategy()
  chief = is_chief(strategy)
  # A non-chief worker takes part in every save (MultiWorkerMirroredStrategy
  # may reduce values while saving) but into a directory of its own that is
  # deleted at the end; it writes no summaries.
  run_dir = train_config.run_dir
  write_dir = run_dir if chief else tempfile.mkdtemp(prefix="tfsym3d-worker-")
  try:
    return _train(config, train_config, data, write_dir, chief, strategy,
                  check_precision(precision))
  finally:
    if not chief:
      shutil.rmtree(write_dir, ignore_errors=True)


def _steps_per_epoch(data: sources.DataSource, requested: int) -> int:
  """`requested` (--steps_per_epoch), or one pass over the training split
  when it is 0; a UsageError where neither is possible."""
  if requested > 0:
    return requested
  size = data.train_size()
  if size is None:
    raise app.UsageError("--steps_per_epoch must be > 0 for --dataset=synfaces "
                         "(the generator is endless)")
  steps = size // data.batch_size
  if steps == 0:
    raise app.UsageError(f"{data.data_dir}/train holds {size} images, fewer than "
                         f"--batch_size={data.batch_size}")
  return steps


def _check_replicas(strategy: tf.distribute.Strategy, batch_size: int, precision: str,
                    chief: bool, write_dir: str) -> None:
  """Raises unless the global batch splits evenly over the replicas; logs
  the devices, the precision and where a non-chief worker writes."""
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise app.UsageError(f"--batch_size={batch_size} must be a multiple of the "
                         f"{replicas} replicas")
  threads = tf.config.threading.get_intra_op_parallelism_threads()
  logging.info("%d replica(s): %s; networks in %s; oneDNN CPU kernels %s; intra-op "
               "threads %s%s", replicas, strategy.extended.worker_devices, precision,
               "on" if tfsym3d.onednn_enabled() else "off", threads or "all cores",
               "" if chief else f"; not the chief: checkpoints and summaries go to "
               f"{write_dir} (deleted at the end)")


def _build_model(config: ModelConfig, tc: TrainConfig, strategy: tf.distribute.Strategy,
                 precision: str, total_steps: int):
  """The compiled model, its built optimiser and the data-step variable,
  all created under the strategy's scope so they are mirrored."""
  with strategy.scope():
    # --jit_compile: the networks as one XLA program (see Unsup3D); Keras'
    # whole-step jit_compile cannot take the rasterizer's dynamic shapes.
    model = runs.build_model(config, precision=precision, jit_compile=tc.jit_compile)
    optimizer = make_training_optimizer(config, learning_rate(config, tc, total_steps),
                                        precision, tc.adam_epsilon)
    # Built before any checkpoint is restored, so its slot variables exist
    # to receive the saved values.
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer, jit_compile=False)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_step")
    if tc.weight_average_decay > 0:
      model.keep_weight_average(step_lib.WeightAverage(
          runs.trainable_weight_dict(model), tc.weight_average_decay))
      shortfall = step_lib.weight_average_shortfall(tc.weight_average_decay, total_steps)
      if shortfall:
        logging.warning("%s", shortfall)
  return model, optimizer, step


def _resume(model, optimizer, step: tf.Variable, tc: TrainConfig,
            write_dir: str) -> tf.train.CheckpointManager:
  """Restores the run's newest checkpoint (else --init_from's weights, if
  set); returns the manager that saves this process's checkpoints."""
  checkpoint = runs.checkpoint_for(model, optimizer=optimizer, step=step)
  # Every worker resumes from the chief's checkpoints (the weight average
  # apart: a checkpoint may have been written without one)...
  core = runs.checkpoint_for(model, with_average=False, optimizer=optimizer, step=step)
  resumed = restore_latest(core, tf.train.CheckpointManager(
      core, os.path.join(tc.run_dir, "ckpt"), max_to_keep=tc.keep_checkpoints))
  # ...and saves into its own write directory (the run's, for the chief).
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "ckpt"),
                                       max_to_keep=tc.keep_checkpoints)
  if resumed:
    logging.info("resumed from %s (step %d)", resumed, int(step.numpy()))
  elif tc.init_from:
    prefix = runs.restore_weights(model, tc.init_from)
    logging.info("weights initialised from %s", prefix)
  average = model.weight_average
  if average is not None:
    if resumed and runs.has_weight_average(resumed):
      tf.train.Checkpoint(**average.checkpoint_items()).restore(resumed).expect_partial()
    else:
      average.reset()
  return manager


def _validation_and_sample(data: sources.DataSource, tc: TrainConfig, chief: bool):
  """The validation set (None when off or not the chief) and the batch of 8
  images the image grids and the yaw animation show."""
  val_data = None
  if tc.val_images > 0 and chief:
    data.check(("val",))
    val_data = data.eval_dataset("val", tc.val_images)
  sample = next(iter(data.eval_dataset("val" if val_data is not None else "train",
                                       8, batch_size=8)))
  return val_data, sample[0] if isinstance(sample, tuple) else sample


def fit_phases(start: int, steps_per_epoch: int, epochs: int):
  """The `fit` calls that train from data step `start` to the end.

  A run resumed mid-epoch first finishes that epoch, then continues with
  whole epochs: at most two calls, as (initial_epoch, epochs, steps_per_epoch)
  triples of `keras.Model.fit`'s arguments.
  """
  first_epoch, done_in_epoch = divmod(start, steps_per_epoch)
  phases = []
  if done_in_epoch:
    phases.append((first_epoch, first_epoch + 1, steps_per_epoch - done_in_epoch))
    first_epoch += 1
  if first_epoch < epochs:
    phases.append((first_epoch, epochs, steps_per_epoch))
  return phases


def _fit(model, stream, phases, callbacks, guard: NonFiniteGuard, next_stream):
  """Runs `fit` once per phase (`fit_phases`) over `stream`, then over
  `next_stream()` (the stream from the current step); stops early when the
  model or the non-finite guard asks."""
  for initial_epoch, end_epoch, steps in phases:
    model.fit(stream, initial_epoch=initial_epoch, epochs=end_epoch, steps_per_epoch=steps,
              callbacks=callbacks, verbose=0, shuffle=False)
    if model.stop_training or guard.reason:
      break
    stream = next_stream()


def _final_weights(model) -> None:
  """The weights a finished run is evaluated with: their moving average when
  the run keeps one (its checkpoints hold both; `runs.restore_weights` reads
  the average)."""
  average = model.weight_average
  if average is not None:
    average.copy_to_weights()
    updates = int(average.updates.numpy())
    logging.info("final weights: the moving average of the weights over %d steps "
                 "(decay %g; %.5f at the last update)", updates, average.decay,
                 step_lib.weight_average_decay_at(average.decay, max(updates - 1, 0)))


def _train(config, tc, data, write_dir, chief, strategy, precision):
  """`train` once the strategy and the directories are settled."""
  run_dir, epochs = tc.run_dir, tc.epochs
  data.check(("train",))
  steps_per_epoch = _steps_per_epoch(data, tc.steps_per_epoch)
  total_steps = epochs * steps_per_epoch
  # Seeds Python, NumPy and TensorFlow before any weight exists, so the
  # initial weights follow --seed.
  keras.utils.set_random_seed(tc.seed)
  _check_replicas(strategy, data.batch_size, precision, chief, write_dir)
  model, optimizer, step = _build_model(config, tc, strategy, precision, total_steps)
  manager = _resume(model, optimizer, step, tc, write_dir)
  _check_workers_agree(strategy, step, run_dir)
  if chief and tc.flagfile_text:
    _write_flags(run_dir, tc.flagfile_text)

  start = int(step.numpy())
  if start >= total_steps:
    logging.info("step %d >= %d: training already finished", start, total_steps)
    _final_weights(model)
    return {"steps": start, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
            "train_seconds": 0.0, "model": model, "chief": chief, "validation": []}
  stream = distributed_stream(strategy, data, start, steps_per_epoch)
  val_data, sample_images = _validation_and_sample(data, tc, chief)

  progress = Progress(total_steps, step, data.batch_size, tc.progress and chief)
  validation = (Validation(val_data, os.path.join(write_dir, "tb"), step, progress)
                if val_data is not None else None)
  guard = NonFiniteGuard(step, tc.max_nonfinite_steps)
  callbacks = [
      StepCounter(step),
      LossWeightSchedule(config, tc.lam_flip_start_epoch, epochs, tc.lam_depth_sm_final),
      guard,
      CheckpointSaver(manager, step, tc.checkpoint_every),
      progress,
  ] + ([TensorBoardLogger(os.path.join(run_dir, "tb"), os.path.join(run_dir, "images"),
                          step, progress, tc.log_every, tc.images_every,
                          sample_images)] if chief else []) + (
      [validation] if validation is not None else [])
  started = time.perf_counter()
  try:
    _fit(model, stream, fit_phases(start, steps_per_epoch, epochs), callbacks, guard,
         lambda: distributed_stream(strategy, data, int(step.numpy()), steps_per_epoch))
  finally:
    progress.close()
  seconds = time.perf_counter() - started
  if guard.reason:
    raise TrainingStopped(guard.reason)
  _final_weights(model)
  return {"steps": int(step.numpy()), "epochs": epochs,
          "steps_per_epoch": steps_per_epoch, "train_seconds": seconds,
          "model": model, "chief": chief,
          "validation": validation.history if validation is not None else []}


def main(argv):
  """Trains from the command line's flags, then evaluates on ground truth.

  Reads the flags into the two configs once, here; `train` reads none.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]} (flags start with --)")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  # Before TensorFlow's runtime starts (the strategy starts it).
  if FLAGS.intra_op_threads > 0:
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
  # First: the multi-worker strategy must set up the runtime itself.
  strategy = make_strategy(FLAGS.strategy)
  precision = precision_for(FLAGS.mixed_precision)
  # bfloat16 without the CPU's bfloat16 units is slower than float32: say so now.
  from tfsym3d.bench import machine  # pylint: disable=g-import-not-at-top
  machine.warn_if_bfloat16_slow(precision)
  config = tflags.model_config()
  train_config = tflags.train_config()
  final = train_config.lam_depth_sm_final
  if final is not None and (final < 0 or config.lam_depth_sm <= 0):
    raise app.UsageError(f"--lam_depth_sm_final={final} needs --lam_depth_sm > 0 (the "
                         f"first epoch's weight; it is {config.lam_depth_sm}) and a "
                         "final weight >= 0")
  data = runs.data_source_from_flags(config.image_size)
  try:
    data.check(("train",))
  except sources.DataNotFoundError as error:
    raise app.UsageError(str(error)) from None
  wall = time.perf_counter()
  try:
    result = train(config, train_config, data, strategy, precision)
  except TrainingStopped as error:
    logging.error("%s", error)
    sys.exit(f"tfsym3d.train: {error}")
  if not result["chief"]:
    print(f"trained {result['steps']} steps as a non-chief worker")
    return
  print(f"trained {result['steps']} steps ({result['epochs']} epochs of "
        f"{result['steps_per_epoch']}) in {result['train_seconds'] / 60:.1f} min; "
        f"checkpoints in {os.path.join(FLAGS.run_dir, 'ckpt')}")
  if data.has_ground_truth and FLAGS.eval_images > 0:
    eval_dir = FLAGS.eval_dir or os.path.join(FLAGS.run_dir, "eval", FLAGS.eval_split)
    summary = evaluate_lib.evaluate_model(result["model"], data, FLAGS.eval_split,
                                          FLAGS.eval_images, eval_dir,
                                          dump_images=FLAGS.dump_images,
                                          progress=FLAGS.progress)
    summary["train_minutes"] = result["train_seconds"] / 60
    summary["wall_minutes"] = (time.perf_counter() - wall) / 60
    summary["steps"] = result["steps"]
    summary["weights"] = ("moving average" if result["model"].weight_average is not None
                          else "raw")
    # The summary on disk gets the run's steps and minutes too
    # (`tfsym3d.compare` reads them).
    evaluate_lib.write_summary(summary, eval_dir)
    print(evaluate_lib.format_table(summary))


if __name__ == "__main__":
  app.run(main)
