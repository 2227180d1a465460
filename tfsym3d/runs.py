"""What a run is made of, shared by every command that loads one: the model
built from its config, checkpoint lookup and weight restore, and the data
source the data flags describe."""

import os
from typing import Dict, List, Optional

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from tfsym3d import flags as _shared_flags  # noqa: F401  (defines the flags read here)
from tfsym3d.config import ModelConfig
from tfsym3d.data import sources
from tfsym3d.model import Unsup3D

FLAGS = flags.FLAGS


def checkpoint_prefix(path: str) -> str:
  """A run dir, a ckpt/ dir or a checkpoint prefix -> the checkpoint prefix.

  Raises FileNotFoundError naming the path when there is no checkpoint.
  """
  if path and os.path.isdir(path):
    for directory in (os.path.join(path, "ckpt"), path):
      latest = tf.train.latest_checkpoint(directory)
      if latest:
        return latest
    raise FileNotFoundError(f"{path}: no checkpoint in it (nor in {path}/ckpt); "
                            "train first or give a checkpoint prefix like "
                            "runs/x/ckpt/ckpt-1000")
  if path and tf.io.gfile.exists(path + ".index"):
    return path
  raise FileNotFoundError(f"{path}: not a checkpoint (no {path}.index) nor a "
                          "directory holding one")


def build_model(config: ModelConfig, image_size: Optional[int] = None,
                precision: str = "float32", jit_compile: bool = False) -> Unsup3D:
  """An Unsup3D with its variables created (call inside a strategy scope);
  `precision` and `jit_compile` as Unsup3D takes them."""
  model = Unsup3D(config, precision=precision, jit_compile=jit_compile)
  size = image_size or config.image_size
  model.build((None, size, size, 3))
  return model


def weight_dict(model: Unsup3D) -> Dict[str, tf.Variable]:
  """The model's variables by their path inside it ('netD/network_0/kernel').

  tf.train.Checkpoint does not see the variables of Keras 3 layers through
  the model object, so checkpoints list them explicitly; the model's own name
  (unsup3d, unsup3d_1, ...) is left out of the keys so any build restores.
  """
  named = {}
  for variable in model.weights:
    key = variable.path.split("/", 1)[-1]
    if key in named:
      raise ValueError(f"two model variables share the checkpoint key {key!r}")
    named[key] = variable
  return named


def trainable_weight_dict(model: Unsup3D) -> Dict[str, tf.Variable]:
  """`weight_dict` restricted to the trainable weights (what a
  `tfsym3d.step.WeightAverage` averages)."""
  return {key: v for key, v in weight_dict(model).items() if v.trainable}


def checkpoint_for(model: Unsup3D, with_average: bool = True,
                   **extra) -> tf.train.Checkpoint:
  """A tf.train.Checkpoint of the model's weights and state (and `extra`),
  with the moving average of its weights when the model keeps one and
  `with_average`."""
  items = dict(model=model, weights=weight_dict(model), **extra)
  if with_average and model.weight_average is not None:
    items.update(model.weight_average.checkpoint_items())
  return tf.train.Checkpoint(**items)


def has_weight_average(prefix: str) -> bool:
  """Whether the checkpoint at `prefix` holds a moving average of the weights
  (written by a run with --weight_average_decay)."""
  return any(name.startswith("averaged_weights/")
             for name, _ in tf.train.list_variables(prefix))


def restore_weights(model: Unsup3D, path: str, averaged: bool = True) -> str:
  """Loads a checkpoint's model weights (not the optimiser); returns its prefix.

  When the checkpoint holds a moving average of the weights and `averaged`,
  the trainable weights are the average's (what a finished run is evaluated
  and exported with), the rest the checkpoint's own.
  """
  prefix = checkpoint_prefix(path)
  status = checkpoint_for(model, with_average=False).restore(prefix)
  status.expect_partial().assert_existing_objects_matched()
  if averaged and has_weight_average(prefix):
    average = tf.train.Checkpoint(averaged_weights=trainable_weight_dict(model))
    average.restore(prefix).expect_partial().assert_existing_objects_matched()
    logging.info("%s: the moving average of the weights", prefix)
  return prefix


def data_source_from_flags(image_size: int) -> sources.DataSource:
  """The DataSource the data flags (tfsym3d.flags) describe."""
  try:
    crop = sources.parse_crop(FLAGS.crop)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  return sources.DataSource(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                            image_size=image_size, batch_size=FLAGS.batch_size,
                            crop=crop, seed=FLAGS.seed,
                            max_image_pixels=FLAGS.max_image_pixels)


def argv_with_run_flagfile(argv: List[str], flag: str = "checkpoint") -> List[str]:
  """argv with `--flagfile=<run>/flags.txt` inserted first when `--<flag>`
  names a run (its directory, its ckpt/ directory or a checkpoint prefix)
  whose flags.txt exists and argv gives no --flagfile: a run's checkpoint is
  then enough to rebuild its model. Later flags still override the file's."""
  if any(a.startswith("--flagfile") for a in argv):
    return argv
  path = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      path = arg.split("=", 1)[1]
    elif arg == f"--{flag}" and i + 1 < len(argv):
      path = argv[i + 1]
  if not path:
    return argv
  path = os.path.abspath(path)
  for directory in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    flagfile = os.path.join(directory, "flags.txt")
    if os.path.isfile(flagfile):
      return argv[:1] + [f"--flagfile={flagfile}"] + argv[1:]
  return argv
