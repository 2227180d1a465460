"""Every command-line flag of tfsym3d, defined once.

Model flags mirror `ModelConfig` field by field (same names, same defaults);
`model_config()` builds the frozen config from the parsed flags. configs/*.cfg
are absl flagfiles over these names: `--flagfile=configs/faces.cfg`.
"""

import dataclasses

from absl import flags

from tfsym3d.config import ModelConfig, TrainConfig
from tfsym3d.data import images
from tfsym3d.render import backends

FLAGS = flags.FLAGS

_MODEL_HELP = {
    "image_size": "Images are resized to S x S (a multiple of 16; reference 64).",
    "fov": "Camera field of view in degrees.",
    "min_depth": "Smallest canonical depth.",
    "max_depth": "Largest canonical depth.",
    "min_amb_light": "Lower end of the ambient light range.",
    "max_amb_light": "Upper end of the ambient light range.",
    "min_diff_light": "Lower end of the diffuse light range.",
    "max_diff_light": "Upper end of the diffuse light range.",
    "xyz_rotation_range": "Largest rotation about each axis, degrees.",
    "xy_translation_range": "Largest x and y translation.",
    "z_translation_range": "Largest z translation (0 for faces, 0.1 for cats).",
    "rot_center_depth": "Depth of the centre the object rotates about.",
    "znear": "Rasterizer near plane.",
    "zfar": "Rasterizer far plane (uncovered pixels get this depth).",
    "nf": "Width of the depth and albedo networks (reference 64).",
    "zdim": "Bottleneck size of the depth and albedo networks (reference 256).",
    "nf_encoder": "Width of the light and view encoders (reference 32).",
    "nf_conf": "Width of the confidence network (reference 64).",
    "zdim_conf": "Bottleneck size of the confidence network (reference 128).",
    "use_conf_map": "Predict confidence maps and weight the losses with them.",
    "lam_perc": "Weight of the perceptual loss.",
    "lam_flip": "Weight of the flipped reconstruction's losses.",
    "lam_depth_sm": "Weight of the depth smoothness term (synthetic cars use it).",
    "vgg_weights": ("VGG16 weights for the perceptual loss: 'imagenet' (Keras "
                    "downloads them), 'none' (term off) or the path of a local "
                    "weights file (e.g. vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5)."),
    "vgg_input": ("VGG16 input normalisation: 'caffe' for Keras' ImageNet weights, "
                  "'torch' for weights converted from torchvision."),
    "learning_rate": "Adam learning rate.",
    "weight_decay": "Classic L2 weight decay added to every gradient.",
    "rasterizer": ("Rasterizer backend: 'tf' (pure TensorFlow, any device) or 'tfg' "
                   "(tensorflow-graphics' CPU kernel, compiled on first use)."),
    "renderer_xla": ("Compile the 'tf' renderer's stages with XLA: faster "
                     "steps after a one-off compile per shape and process (cached "
                     "across processes by TF_XLA_FLAGS=--tf_xla_persistent_cache_"
                     "directory=DIR). Off: plain TensorFlow ops, no compile; for "
                     "runs of a few steps (configs/tiny.cfg)."),
}


def define_config_flags(config_class, help_texts: dict, enums: dict = None) -> None:
  """Defines one flag per field of a config dataclass named in `help_texts`
  (the field's name, default and type; `enums`: {name: choices})."""
  enums = enums or {}
  for field in dataclasses.fields(config_class):
    if field.name not in help_texts:
      continue
    name, default, help_text = field.name, field.default, help_texts[field.name]
    if name in enums:
      flags.DEFINE_enum(name, default, list(enums[name]), help_text)
    elif isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


define_config_flags(ModelConfig, _MODEL_HELP,
                    {"rasterizer": backends.NAMES, "vgg_input": ["caffe", "torch"]})


def model_config() -> ModelConfig:
  """The ModelConfig the parsed command line asks for."""
  values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(ModelConfig)}
  try:
    return ModelConfig(**values)
  except ValueError as error:
    raise flags.ValidationError(f"{error} (check the flags or the --flagfile)") from error


# ----------------------------------------------------------------- data ----
# Shared by train, evaluate, prepare and the benchmarks.

flags.DEFINE_integer("seed", 0, "Random seed: data order and flips, synthetic samples "
                     "(sample i depends only on (seed, i)), initial weights.")
flags.DEFINE_enum("dataset", "synfaces", ["synfaces", "folder", "paired", "records"],
                  "Training data: 'synfaces' (built-in generator, streamed, with "
                  "ground truth), 'folder' (<data_dir>/{train,val,test}/** images, "
                  "e.g. CelebA from `tfsym3d.data.prepare celeba`) or 'paired' "
                  "(<data_dir>/<split>/image|depth, docs/method.md §8, with ground truth) or "
                  "'records' (<data_dir>/<split>/shard-*.tfrecord from `prepare "
                  "--layout=records`; multi-worker runs split it by shard file).")
flags.DEFINE_string("data_dir", None, "Dataset root for --dataset=folder, paired "
                    "or records.")
flags.DEFINE_string("crop", None, "Crop before resizing: none (empty), an int c (centre "
                    "c x c) or 'top,left,height,width'.")
flags.DEFINE_integer("max_image_pixels", images.DEFAULT_MAX_PIXELS, "Images with "
                     "more pixels are refused before decoding: skipped as too_large "
                     "by prepare faces/folder and by the training and evaluation "
                     "folder readers, skipped with a message by reconstruct "
                     "(0: no limit).")
flags.DEFINE_integer("batch_size", 64, "Global batch size, split over the replicas.")
flags.DEFINE_integer("val_images", 512, "Validation images per epoch (0: no validation).")
flags.DEFINE_integer("eval_images", 1000, "Held-out test images the training job "
                     "evaluates at the end (synfaces: generated; 0: skip).")

# ------------------------------------------------------------- training ----

flags.DEFINE_string("run_dir", "runs/default", "Where a run keeps its checkpoints "
                    "(ckpt/), TensorBoard logs (tb/) and evaluation (eval/). A run "
                    "restarted with the same --run_dir resumes.")
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch; 0: one pass over the "
                     "training split (required > 0 for --dataset=synfaces).")
flags.DEFINE_integer("lam_flip_start_epoch", 0, "Epochs trained with flip weight 1.0 "
                     "before --lam_flip applies (cats: 10).")
flags.DEFINE_float("lam_depth_sm_final", None, "If set, the depth smoothness weight "
                   "moves linearly, epoch by epoch, from --lam_depth_sm in the first "
                   "epoch to this in the last (unset: constant).")
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"],
                  "Learning rate schedule: constant (reference) or cosine decay "
                  "to --lr_final_fraction of --learning_rate over the run.")
flags.DEFINE_float("lr_final_fraction", 0.1, "Cosine schedule: final lr / initial lr.")
flags.DEFINE_integer("lr_warmup_steps", 0, "Raise the learning rate linearly from 0 "
                     "over the first N steps, then follow --lr_schedule over the "
                     "rest (0: no warm-up).")
flags.DEFINE_integer("checkpoint_every", 1000, "Save a checkpoint every N steps "
                     "(and at every epoch end).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept (the newest K).")
flags.DEFINE_string("init_from", None, "Start from the weights of this checkpoint "
                    "(file prefix or directory); step, epoch and optimiser restart.")
flags.DEFINE_integer("log_every", 50, "TensorBoard scalars every N steps.")
flags.DEFINE_integer("images_every", 500, "TensorBoard image grids, histograms and "
                     "the yaw animation every N steps (0: never).")
flags.DEFINE_integer("max_nonfinite_steps", 5, "Stop after this many non-finite "
                     "(NaN/Inf) steps in a row; each one is skipped.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_integer("intra_op_threads", 0, "Threads one TensorFlow op may use (0: "
                     "TensorFlow's choice, all cores). 1 suits small models on few "
                     "cores: independent ops (the five networks) then run side by side "
                     "instead of splitting each small op over every core.")
flags.DEFINE_bool("jit_compile", False, "Compile the five networks (forward and "
                  "backward) of the train step as one XLA program (the "
                  "rasterizer's data-dependent search stays outside).")
flags.DEFINE_enum("strategy", "mirrored", ["mirrored", "multi_worker", "one_device"],
                  "tf.distribute strategy: 'mirrored' (every local GPU, or the "
                  "CPU), 'one_device' (the first GPU, or the CPU) or "
                  "'multi_worker' (MultiWorkerMirroredStrategy over the cluster "
                  "in the TF_CONFIG environment variable; start one process per "
                  "worker, all with the same flags and a shared --run_dir).")
flags.DEFINE_bool("mixed_precision", False, "Networks compute in mixed_float16 "
                  "(with dynamic loss scaling) on GPU or mixed_bfloat16 on CPU; "
                  "GroupNorm, output activations, geometry, renderer and losses "
                  "stay float32.")
flags.DEFINE_float("weight_average_decay", 0.0, "Keep an exponential moving "
                   "average of the weights with this decay per step (0.999: about "
                   "the last 1,000 steps; 0: none). Evaluation, export and "
                   "--init_from then read the average; training resumes from the "
                   "raw weights.")
flags.DEFINE_float("adam_epsilon", 1e-8, "Adam's epsilon (reference 1e-8).")

# ----------------------------------------------------------- evaluation ----

# One output-directory flag for the commands that write a directory tree
# (several commands can share a process, e.g. in tests: defined once here).
flags.DEFINE_string("out", None, "Output directory of the command: the dataset root "
                    "(tfsym3d.data.prepare), the exported models (export; layout in "
                    "export.writers) or the converted run (tfsym3d.convert: ckpt/, "
                    "flags.txt, conversion.json).")
flags.DEFINE_string("checkpoint", None, "A checkpoint: a run directory (its newest "
                    "checkpoint), a ckpt/ directory or a checkpoint file prefix.")
flags.DEFINE_string("eval_split", "test", "Split to evaluate.")
flags.DEFINE_string("eval_dir", None, "Where evaluation writes its CSV, summary and "
                    "test-mode dump (default: <checkpoint run>/eval/<split>).")
flags.DEFINE_integer("dump_images", 0, "Test mode: dump the results of the first N "
                     "images (input, albedo, canonical image, reconstructions, depth, "
                     "normals, confidence maps, light and view).")
flags.DEFINE_bool("json", False, "Print the summary as one JSON object on stdout.")


def train_config() -> TrainConfig:
  """The TrainConfig the parsed command line asks for (read once, in main)."""
  values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(TrainConfig)
            if f.name != "flagfile_text"}
  values["init_from"] = values["init_from"] or ""
  try:
    return TrainConfig(flagfile_text=FLAGS.flags_into_string(), **values)
  except ValueError as error:
    raise flags.ValidationError(f"{error} (check the flags or the --flagfile)") from error
