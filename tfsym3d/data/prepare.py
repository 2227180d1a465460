"""Prepares datasets on disk, one subcommand per dataset.

  python -m tfsym3d.data.prepare synfaces --out DIR --num N --seed K [--image_size 64]
  python -m tfsym3d.data.prepare synfaces --preview docs/synfaces_samples.png

`synfaces` writes METHOD 8's paired layout (<out>/<split>/image/*_image.png,
<out>/<split>/depth/*_depth.png) for train/val/test, splitting --num by
--split_fractions. Pairs already on disk are skipped, so re-running resumes.
"""

from absl import app
from absl import flags

# --image_size (and every model flag) is defined once, in tfsym3d.flags.
from tfsym3d import flags as _model_flags  # noqa: F401  pylint: disable=unused-import

FLAGS = flags.FLAGS

flags.DEFINE_string("out", None, "Output directory (the dataset root).")
flags.DEFINE_integer("num", 10000, "Total number of samples over all splits.")
flags.DEFINE_integer("seed", 0, "Dataset seed: sample i depends only on (seed, i).")
flags.DEFINE_list("split_fractions", ["0.8", "0.1", "0.1"],
                  "Fractions of --num for train,val,test.")
flags.DEFINE_string("preview", None,
                    "Instead of writing a dataset, save a PNG grid of samples "
                    "(input image, input depth, canonical albedo, canonical depth).")
flags.DEFINE_integer("preview_num", 8, "Samples in the --preview grid.")

SPLITS = ("train", "val", "test")


def split_counts(num: int, fractions) -> dict:
  """Samples per split: floor of each fraction, the remainder to train."""
  try:
    values = [float(f) for f in fractions]
  except ValueError as e:
    raise app.UsageError(f"--split_fractions={','.join(fractions)}: {e}; "
                         "give three numbers, e.g. 0.8,0.1,0.1") from None
  if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
    raise app.UsageError(f"--split_fractions={','.join(fractions)}: need three "
                         "non-negative numbers for train,val,test, e.g. 0.8,0.1,0.1")
  total = sum(values)
  counts = {s: int(num * v / total) for s, v in zip(SPLITS, values)}
  counts["train"] += num - sum(counts.values())
  return counts


def synfaces():
  """The `synfaces` subcommand."""
  from tfsym3d.data import synthetic
  if FLAGS.preview:
    synthetic.preview_grid(FLAGS.preview, FLAGS.preview_num, FLAGS.image_size,
                           FLAGS.seed)
    print(f"synfaces: wrote {FLAGS.preview}")
    return
  if not FLAGS.out:
    raise app.UsageError("synfaces: set --out DIR (or --preview FILE.png)")
  if FLAGS.num < 0:
    raise app.UsageError(f"--num={FLAGS.num} must be >= 0")
  generator = synthetic.SynFaces(image_size=FLAGS.image_size, seed=FLAGS.seed)
  for split, count in split_counts(FLAGS.num, FLAGS.split_fractions).items():
    written = synthetic.write_split(FLAGS.out, split, count, generator=generator)
    print(f"synfaces {split}: {count} pairs, {written} newly written")


COMMANDS = {"synfaces": synfaces}


def main(argv):
  commands = argv[1:]
  if len(commands) != 1 or commands[0] not in COMMANDS:
    raise app.UsageError(f"prepare: give exactly one subcommand out of "
                         f"{sorted(COMMANDS)}, got {commands}")
  COMMANDS[commands[0]]()


if __name__ == "__main__":
  app.run(main)
