"""`python -m export --checkpoint RUN_DIR --format savedmodel|tflite|onnx|all --out DIR`
(installed: `tfsym3d-export ...`).

Loads a checkpoint the way `tfsym3d.evaluate` does (model flags ->
`runs.build_model` -> `runs.restore_weights`) and writes the formats of
`writers` under --out. The model's settings come from the model flags; when
--checkpoint is a run directory (or a checkpoint in its ckpt/) holding the
training job's flags.txt and no --flagfile is given, that file is read
first, so `--checkpoint runs/x` alone rebuilds the trained model (flags given
on the command line still win).
"""

import os
import sys
from typing import List

from absl import app
from absl import flags
from absl import logging

from tfsym3d import flags as tflags
from tfsym3d import runs

from . import writers

FORMATS = ("savedmodel", "tflite", "onnx")
FLAGS = flags.FLAGS

flags.DEFINE_enum("format", "all", FORMATS + ("all",), "What to write.")
flags.DEFINE_string("model_name", "tfsym3d", "Model name: the SavedModel goes to "
                    "<out>/<model_name>/<version>/ (TF Serving's layout); file names.")
flags.DEFINE_integer("version", 1, "SavedModel version directory (integer >= 1).")
flags.DEFINE_list("tflite_variants", list(writers.TFLITE_VARIANTS),
                  "TFLite variants to write.")
flags.DEFINE_string("representative_dir", None, "int8_full calibration images: a "
                    "folder of JPEG/PNG (searched recursively); default: synthetic "
                    "smooth-noise images.")
flags.DEFINE_integer("representative_images", 128, "Calibration images for int8_full.")
flags.DEFINE_integer("opset", 17, "ONNX opset.")


def run_flagfile(argv: List[str]) -> List[str]:
  """argv with the run's flags.txt first when --checkpoint names a run
  (`runs.argv_with_run_flagfile`)."""
  return runs.argv_with_run_flagfile(argv, "checkpoint")


def export_checkpoint(checkpoint: str, out: str, formats=FORMATS) -> dict:
  """Builds the model from the model flags, restores `checkpoint` and writes
  `formats`; returns what was written (format -> path(s))."""
  # Inference never runs the perceptual loss: no VGG16 weights are read.
  config = tflags.model_config().replace(vgg_weights="none")
  model = runs.build_model(config)
  try:
    prefix = runs.restore_weights(model, checkpoint)
  except (ValueError, AssertionError) as error:
    # The error lists unmatched variables with their values: keep its start.
    detail = str(error).split(", value=", 1)[0][:400]
    raise app.UsageError(
        f"--checkpoint={checkpoint}: its weights do not fit the model the flags "
        f"describe ({detail} ...); pass the run's flags, e.g. "
        "--flagfile=<run>/flags.txt") from None
  written = {}
  if "savedmodel" in formats:
    logging.info("writing the SavedModel")
    written["savedmodel"] = writers.write_savedmodel(model, out, FLAGS.model_name,
                                                     FLAGS.version, prefix)
  if "tflite" in formats:
    size = config.image_size
    if FLAGS.representative_dir:
      representative = writers.folder_images(FLAGS.representative_dir, size,
                                             FLAGS.representative_images)
      source = os.path.abspath(FLAGS.representative_dir)
    else:
      representative = writers.synthetic_images(FLAGS.representative_images, size,
                                                FLAGS.seed)
      source = f"synthetic (seed {FLAGS.seed})"
    written["tflite"] = writers.write_tflite(
        model, out, FLAGS.model_name, FLAGS.tflite_variants, representative, source,
        prefix, log=logging.info)
  if "onnx" in formats:
    logging.info("writing ONNX")
    written["onnx"] = writers.write_onnx(model, out, FLAGS.model_name, FLAGS.opset,
                                         prefix)
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]} (flags start with --)")
  if not FLAGS.checkpoint:
    raise app.UsageError("set --checkpoint (a run directory or checkpoint prefix)")
  if not FLAGS.out:
    raise app.UsageError("set --out (the output directory)")
  unknown = set(FLAGS.tflite_variants) - set(writers.TFLITE_VARIANTS)
  if unknown:
    raise app.UsageError(f"--tflite_variants: unknown {sorted(unknown)}; choose from "
                         f"{list(writers.TFLITE_VARIANTS)}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  formats = FORMATS if FLAGS.format == "all" else (FLAGS.format,)
  try:
    written = export_checkpoint(FLAGS.checkpoint, FLAGS.out, formats)
  except (FileNotFoundError, FileExistsError) as error:
    raise app.UsageError(str(error)) from None
  for fmt, where in written.items():
    paths = where.values() if isinstance(where, dict) else [where]
    for path in paths:
      print(f"{fmt}: {path}")


def run():
  """Console-script entry point (tfsym3d-export)."""
  app.run(main, argv=run_flagfile(sys.argv))
