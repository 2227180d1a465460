"""Sharding benchmark: the decode work of simulated training workers reading
record shards (each worker decodes only its own shards) against the same
workers reading the image folder (each decodes the whole global batch and
keeps its rows), same images, same run.

  python -m tfsym3d.bench sharding [--json] [--batch_size 64] [--image_size 64]
      [--repeats 1] [--warmup 1] [--sharding_images 1024]
      [--sharding_workers 1,2,4] [--sharding_shard_size 32]

The images (random smooth 178 x 218 JPEGs, as the data benchmark writes them)
are written once as a folder and once as record shards with the bytes
unchanged (`records.write_folder_as_records`), in a temporary directory. For
each worker count W it starts W processes at once (multiprocessing, spawn);
process w builds the training stream of worker w of W with
`DataSource.train_stream` (the call training makes), reads `warmup` untimed
batches, then `repeats` timed epochs, each started by all W workers together
(a barrier). Reported per W and layout: images
decoded per worker and in total, images/s per worker and in total (the
images decoded over the slowest worker's epoch), and the same-run ratios of
the two layouts. On records the total decoded stays the epoch's N; on a
folder it is N x W.
"""

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, NamedTuple, Sequence, Tuple

from absl import flags
from tqdm import tqdm

from tfsym3d.bench import machine

DEFAULTS = {"batch_size": 64, "warmup": 1, "repeats": 1}

LAYOUTS = ("records", "folder")


class Settings(NamedTuple):
  """What to measure: images, worker counts, the global batch B, the model's
  image size S, images per record shard, untimed batches and timed epochs."""
  images: int = 1024
  workers: Sequence[int] = (1, 2, 4)
  batch_size: int = 64
  image_size: int = 64
  shard_size: int = 32
  warmup: int = 1
  repeats: int = 1


def write_datasets(root: str, settings: Settings, seed: int = 0,
                   progress: bool = True) -> None:
  """Writes the same JPEGs as `root`/folder/train and as record shards under
  `root`/records (split train)."""
  from tfsym3d.bench import data  # pylint: disable=g-import-not-at-top
  from tfsym3d.data import records  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, "folder", "train")
  data.write_image_folder(folder, settings.images, seed, progress)
  paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".jpg"))
  records.write_folder_as_records(paths, os.path.join(root, "records"), "train",
                                  settings.shard_size, progress=progress)


def decoded_per_batch(layout: str, rows: int, parts: int) -> int:
  """Images a worker decodes for a batch of `rows` of its own: a folder
  worker decodes the whole global batch (`rows` x `parts`) and keeps its
  rows; a records worker decodes only its rows."""
  return rows * parts if layout == "folder" else rows


# Set in each worker process by the pool's initializer: every timed epoch
# starts when all W workers are ready, so their epochs overlap as on a cluster
# (process start and TensorFlow's import take different times in each).
_START_TOGETHER = None


def _set_barrier(barrier) -> None:
  """Pool initializer: keeps the barrier the timed epochs start on."""
  global _START_TOGETHER  # pylint: disable=global-statement
  _START_TOGETHER = barrier


def _worker(args) -> Tuple[int, float]:
  """One simulated worker: (images decoded, median seconds per epoch).

  Runs in a fresh (spawned) process: TensorFlow is imported here.
  """
  layout, root, settings, part, parts = args
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfsym3d.data import sources  # pylint: disable=g-import-not-at-top
  # Each process stands for one machine's worker; the processes share the
  # cores, so none may claim all of them for its inter-op pool.
  tf.config.threading.set_inter_op_parallelism_threads(2)
  data = sources.DataSource(layout, data_dir=os.path.join(root, layout),
                            image_size=settings.image_size,
                            batch_size=settings.batch_size)
  steps = settings.images // settings.batch_size
  batches = iter(data.train_stream(0, steps, part, parts))
  for _ in range(max(settings.warmup, 1)):  # the pipeline's start is not timed
    next(batches)
  decoded, epochs = 0, []
  for _ in range(max(settings.repeats, 1)):
    decoded = 0
    if _START_TOGETHER is not None:
      _START_TOGETHER.wait(timeout=900)
    start = time.perf_counter()
    for _ in range(steps):
      decoded += decoded_per_batch(layout, int(next(batches).shape[0]), parts)
    epochs.append(time.perf_counter() - start)
  return decoded, statistics.median(epochs)


def summarize(layout: str, parts: int, outcomes, epoch_images: int) -> Dict:
  """One (layout, worker count) entry from the workers' (decoded, seconds)."""
  decoded = [d for d, _ in outcomes]
  seconds = [s for _, s in outcomes]
  return {"layout": layout, "workers": parts, "epoch_images": epoch_images,
          "decoded_per_worker": decoded, "decoded_total": sum(decoded),
          "images_per_s_per_worker": [d / s for d, s in outcomes],
          "images_per_s_total": sum(decoded) / max(seconds),
          "epoch_s_per_worker": seconds, "epoch_s": max(seconds)}


def ratios(runs: Sequence[Dict]) -> Dict:
  """Per worker count, the same-run ratios of the folder to the records
  layout: decoded_folder_over_records (decode work) and
  epoch_s_folder_over_records (> 1: the records epoch ended sooner)."""
  by = {(r["layout"], r["workers"]): r for r in runs}
  out = {}
  for parts in sorted({r["workers"] for r in runs}):
    rec, fol = by.get(("records", parts)), by.get(("folder", parts))
    if rec and fol:
      out[str(parts)] = {
          "decoded_folder_over_records": fol["decoded_total"] / rec["decoded_total"],
          "epoch_s_folder_over_records": fol["epoch_s"] / rec["epoch_s"]}
  return out


def sharding_benchmark(settings: Settings = Settings(), seed: int = 0,
                       progress: bool = True) -> Dict:
  """Decode work and speed of W simulated workers on records and on a folder.

  Returns:
    A dict: "runs" (one entry per worker count and layout, see `summarize`),
    "ratios" (see `ratios`), the settings and the environment.
  """
  if settings.images < settings.batch_size:
    raise ValueError(f"sharding: --sharding_images={settings.images} is fewer than one "
                     f"batch (--batch_size={settings.batch_size}); raise it")
  for parts in settings.workers:
    if parts < 1 or settings.batch_size % parts:
      raise ValueError(f"sharding: {parts} workers do not divide --batch_size="
                       f"{settings.batch_size}; pick --sharding_workers that divide it")
  result = {"benchmark": "sharding", **settings._asdict(),
            "workers": list(settings.workers),
            "source": f"{settings.images} random smooth 178x218 JPEGs (quality 90), "
                      f"the same bytes as a folder and as record shards of "
                      f"{settings.shard_size}",
            "note": "simulated workers are processes sharing this machine's cores"}
  result.update(machine.environment())
  epoch_images = settings.images // settings.batch_size * settings.batch_size
  context = multiprocessing.get_context("spawn")
  runs = []
  with tempfile.TemporaryDirectory(prefix="tfsym3d_bench_sharding_") as root:
    write_datasets(root, settings, seed, progress)
    plan = [(parts, layout) for parts in settings.workers for layout in LAYOUTS]
    for parts, layout in tqdm(plan, desc="sharding", file=sys.stderr,
                              disable=not progress, leave=False):
      barrier = context.Barrier(parts)
      with context.Pool(parts, initializer=_set_barrier, initargs=(barrier,)) as pool:
        outcomes = pool.map(_worker, [(layout, root, settings, w, parts)
                                      for w in range(parts)])
      runs.append(summarize(layout, parts, outcomes, epoch_images))
  result["runs"] = runs
  result["ratios"] = ratios(runs)
  result["load_avg_after"] = machine.load_average()
  return result


def add_flags():
  """This benchmark's own flags (the shared ones are in tfsym3d.bench.__main__)."""
  flags.DEFINE_integer("sharding_images", 1024, "sharding: training images.")
  flags.DEFINE_list("sharding_workers", ["1", "2", "4"], "sharding: simulated worker "
                    "counts (each must divide --batch_size).")
  flags.DEFINE_integer("sharding_shard_size", 32, "sharding: images per record shard.")


def run(FLAGS, settings) -> Dict:  # pylint: disable=invalid-name
  """The benchmark from parsed flags; settings: batch_size, warmup, repeats."""
  return sharding_benchmark(
      Settings(images=FLAGS.sharding_images,
               workers=tuple(int(w) for w in FLAGS.sharding_workers),
               batch_size=settings["batch_size"], image_size=FLAGS.image_size,
               shard_size=FLAGS.sharding_shard_size, warmup=settings["warmup"],
               repeats=settings["repeats"]),
      FLAGS.seed, FLAGS.progress)


def format(result: Dict) -> str:  # pylint: disable=redefined-builtin
  """A human-readable report of `sharding_benchmark`'s result."""
  lines = [f"sharding: {result['source']}; global batch {result['batch_size']}, "
           f"{result['image_size']} px, median of {result['repeats']} epochs after "
           f"{result['warmup']} untimed batches ({result['note']})",
           f"{'layout':<8}{'W':>3}{'decoded':>9}  {'per worker':<22}"
           f"{'img/s total':>12}  {'img/s per worker':<28}{'epoch s':>8}"]
  for r in result["runs"]:
    per_worker = ", ".join(str(d) for d in r["decoded_per_worker"])
    rates = ", ".join(f"{x:.0f}" for x in r["images_per_s_per_worker"])
    lines.append(f"{r['layout']:<8}{r['workers']:>3}{r['decoded_total']:>9}  "
                 f"{per_worker:<22}{r['images_per_s_total']:>12.0f}  {rates:<28}"
                 f"{r['epoch_s']:>8.2f}")
  for parts, entry in result["ratios"].items():
    lines.append(f"W={parts}: folder decodes {entry['decoded_folder_over_records']:.1f}x "
                 f"the images of records; its epoch takes "
                 f"{entry['epoch_s_folder_over_records']:.2f}x as long")
  lines.append(machine.format_environment(result))
  return "\n".join(lines)
