"""Decode work of simulated workers: records (each reads its shards) against
a folder (each decodes the whole global batch and keeps its rows).

  python -m tfsym3d.bench_sharding [--json] [--bench_images 1024] [--bench_workers 1,2,4]

The same random JPEG images are written once as a folder and once as record
shards (bytes unchanged) in a temporary directory. For W = 1, 2, 4 it starts
W processes (multiprocessing, spawn) at once; process w builds the training
stream of worker w of W through `DataSource.train_stream` (the call training
makes) and reads one epoch. Reported per W and layout: images decoded per
worker and in total, per-worker and total images/s, wall seconds. On records
the total decoded stays the epoch's N; on folders it is N x W. The figures
come from one shared machine (other processes may load it); they are for
the ratios, not absolute speeds.
"""

import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from typing import Dict, NamedTuple, Sequence

from absl import app
from absl import flags

flags.DEFINE_integer("bench_images", 1024, "bench_sharding: training images.")
flags.DEFINE_list("bench_workers", ["1", "2", "4"], "bench_sharding: worker counts.")

FLAGS = flags.FLAGS

_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


class Settings(NamedTuple):
  """What to measure: images, worker counts, the global batch, image sizes."""
  images: int = 1024
  workers: Sequence[int] = (1, 2, 4)
  batch_size: int = 64
  source_size: int = 128
  image_size: int = 64
  shard_size: int = 32


def cpu_info() -> Dict:
  """CPU model, logical cores and the vector-unit flags of /proc/cpuinfo."""
  model, present = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          present = set(line.split(":", 1)[1].split())
          break
  except OSError:
    pass
  return {"model": model, "cores": os.cpu_count(),
          "flags": {name: name in present for name in _CPU_FLAGS},
          "load_avg": [round(x, 2) for x in os.getloadavg()]}


def _make_data(root: str, settings: Settings) -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from tfsym3d.data import records  # pylint: disable=import-outside-toplevel
  folder = os.path.join(root, "folder", "train")
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  s = settings.source_size
  base = np.linspace(0, 255, s)[None, :, None] * np.ones((s, 1, 3))
  paths = []
  for i in range(settings.images):
    noise = rng.normal(0, 30, (s, s, 3))
    image = np.clip(base + noise + rng.uniform(-60, 60, 3), 0, 255).astype(np.uint8)
    paths.append(os.path.join(folder, f"{i:06d}.jpg"))
    Image.fromarray(image).save(paths[-1], quality=90)
  records.write_folder_as_records(paths, os.path.join(root, "records"), "train",
                                  settings.shard_size, progress=False)


def _worker(args):
  """One simulated worker: one epoch of its stream; (images, seconds)."""
  layout, root, settings, part, parts = args
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfsym3d.data import sources  # pylint: disable=import-outside-toplevel
  tf.config.threading.set_inter_op_parallelism_threads(2)
  data = sources.DataSource(layout, data_dir=os.path.join(root, layout),
                            image_size=settings.image_size,
                            batch_size=settings.batch_size)
  steps = settings.images // settings.batch_size
  stream = data.train_stream(0, steps, part, parts)
  started = time.perf_counter()
  rows = 0
  for batch in stream.take(steps):
    rows += int(batch.shape[0])
  seconds = time.perf_counter() - started
  # A folder worker decodes the whole global batch for its rows.
  decoded = rows * parts if layout == "folder" else rows
  return decoded, seconds


def run(settings: Settings) -> Dict:
  """Measures every (layout, worker count); returns the result dict."""
  result = {"cpu": cpu_info(), "settings": settings._asdict(), "runs": [],
            "note": "simulated workers are processes on one shared machine"}
  result["settings"]["workers"] = list(settings.workers)
  context = multiprocessing.get_context("spawn")
  with tempfile.TemporaryDirectory(prefix="tfsym3d-bench-sharding-") as root:
    _make_data(root, settings)
    for parts in settings.workers:
      for layout in ("records", "folder"):
        started = time.perf_counter()
        with context.Pool(parts) as pool:
          outcomes = pool.map(_worker, [(layout, root, settings, w, parts)
                                        for w in range(parts)])
        wall = time.perf_counter() - started
        decoded = [d for d, _ in outcomes]
        seconds = [s for _, s in outcomes]
        result["runs"].append({
            "layout": layout, "workers": parts,
            "decoded_per_worker": decoded, "decoded_total": sum(decoded),
            "images_per_s_per_worker": [round(d / s, 1) for d, s in outcomes],
            "images_per_s_total": round(sum(decoded) / max(seconds), 1),
            "epoch_images": settings.images // settings.batch_size * settings.batch_size,
            "epoch_s": round(max(seconds), 2), "wall_s_with_startup": round(wall, 2)})
  result["cpu"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
  return result


def format(result: Dict) -> str:  # pylint: disable=redefined-builtin
  """A table of the result."""
  cpu = result["cpu"]
  flags_on = ", ".join(k for k, v in cpu["flags"].items() if v) or "none"
  lines = [f"CPU: {cpu['model']} ({cpu['cores']} logical cores; {flags_on}); "
           f"load {cpu['load_avg']} -> {cpu['load_avg_after']} ({result['note']})",
           f"{'layout':<8} {'W':>2} {'decoded total':>14} {'per worker':>18} "
           f"{'img/s total':>12} {'epoch s':>8}"]
  for r in result["runs"]:
    lines.append(f"{r['layout']:<8} {r['workers']:>2} {r['decoded_total']:>14} "
                 f"{str(r['decoded_per_worker']):>18} {r['images_per_s_total']:>12} "
                 f"{r['epoch_s']:>8}")
  return "\n".join(lines)


def main(argv):
  del argv
  settings = Settings(images=FLAGS.bench_images,
                      workers=tuple(int(w) for w in FLAGS.bench_workers))
  result = run(settings)
  sys.stdout.write((json.dumps(result) if FLAGS.json else format(result)) + "\n")


if __name__ == "__main__":
  from tfsym3d import flags as _shared  # noqa: F401  (--json)
  app.run(main)
