"""`python -m tfsym3d.bench <benchmark> [--json] [flags]`: runs one benchmark
of `tfsym3d.bench.BENCHMARKS` and prints its table or (--json) exactly one
JSON object on stdout."""

import json
import sys

from absl import app
from absl import flags
from absl import logging

from tfsym3d import bench

FLAGS = flags.FLAGS


def define_flags():
  """The flags every benchmark reads, then each benchmark's own. The model
  flags (--image_size, --nf, ...), --json, --batch_size, --seed and
  --progress are tfsym3d.flags'. Without --batch_size each benchmark uses its
  own default."""
  flags.DEFINE_integer("repeats", 0, "Timed calls (renderer, inference) or epochs "
                       "(data, sharding), median; 0: the benchmark's default.")
  flags.DEFINE_integer("warmup", 0, "Untimed calls / steps / epochs (data) / batches "
                       "(sharding) before timing; "
                       "0: the benchmark's default. The first call (tracing, "
                       "compilation) is never timed.")
  flags.DEFINE_bool("anchor", True, "Also time the reference's PyTorch code in the same "
                    "run (train_step, inference, data; needs torch) and print the ratio.")
  for name in bench.BENCHMARKS:
    bench.module(name).add_flags()


def main(argv):
  if len(argv) != 2 or argv[1] not in bench.BENCHMARKS:
    raise app.UsageError(f"Usage: python -m tfsym3d.bench {{{'|'.join(bench.BENCHMARKS)}}} "
                         "[--json] [flags]")
  module = bench.module(argv[1])
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  settings = {
      "batch_size": (FLAGS.batch_size if FLAGS["batch_size"].present
                     else module.DEFAULTS["batch_size"]),
      "warmup": FLAGS.warmup or module.DEFAULTS["warmup"],
      "repeats": FLAGS.repeats or module.DEFAULTS["repeats"],
  }
  result = module.run(FLAGS, settings)
  sys.stdout.write((json.dumps(result) if FLAGS.json else module.format(result)) + "\n")


if __name__ == "__main__":
  from tfsym3d import flags as _model_flags  # noqa: F401  pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
