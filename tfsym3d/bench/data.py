"""Input-pipeline benchmark: images per second of `tfsym3d.data`'s pipelines,
`image_folder_dataset` over generated JPEGs, `paired_dataset` over generated
image/depth PNG pairs (both in a temporary directory, full epochs after an
untimed warm-up epoch), the synthetic-face generator `SynFaces` directly and
through its `tf_dataset`; and, as the anchor, a reference-style PIL loader in
worker processes over the same JPEGs (torch installed).

  python -m tfsym3d.bench data [--json] [--batch_size 64] [--image_size 64]
      [--repeats 3] [--warmup 1] [--data_num_images 2000] [--data_num_pairs 1000]
      [--data_num_synthetic 500] [--data_anchor_workers 0] [--noanchor]
"""

import os
import statistics
import sys
import tempfile
import time
from typing import Dict

from absl import flags
from absl import logging
import numpy as np
from tqdm import tqdm

from tfsym3d.bench import anchors
from tfsym3d.bench import machine

DEFAULTS = {"batch_size": 64, "warmup": 1, "repeats": 3}

# CelebA's aligned image size (width, height) and the paired layout's default
# centre crop (docs/method.md §8; the reference's synthetic faces are 256 x 256).
_FOLDER_WH = (178, 218)
_PAIRED_WH = (256, 256)
_PAIRED_CROP = 170


def _smooth_noise(rng, width: int, height: int, channels: int):
  """A random smooth uint8 image: coarse noise upsampled bicubically."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, channels), np.uint8)
  im = Image.fromarray(coarse[..., 0] if channels == 1 else coarse)
  return im.resize((width, height), Image.BICUBIC)


def write_image_folder(directory: str, num: int, seed: int = 0,
                       progress: bool = True) -> None:
  """Writes `num` random smooth 178 x 218 JPEGs (quality 90) to `directory`."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in tqdm(range(num), desc="writing JPEGs", file=sys.stderr,
                disable=not progress, leave=False):
    _smooth_noise(rng, *_FOLDER_WH, 3).save(
        os.path.join(directory, f"{i:06d}.jpg"), quality=90)


def write_pairs(directory: str, num: int, seed: int = 0, progress: bool = True) -> None:
  """Writes `num` pairs in docs/method.md §8's layout under `directory` (a split).

  `image/<name>_image.png`: random smooth 256 x 256 RGB; `depth/<name>_depth.png`:
  random smooth 8-bit grey of the same size.
  """
  image_dir = os.path.join(directory, "image")
  depth_dir = os.path.join(directory, "depth")
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(depth_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in tqdm(range(num), desc="writing pairs", file=sys.stderr,
                disable=not progress, leave=False):
    _smooth_noise(rng, *_PAIRED_WH, 3).save(os.path.join(image_dir, f"{i:06d}_image.png"))
    _smooth_noise(rng, *_PAIRED_WH, 1).save(os.path.join(depth_dir, f"{i:06d}_depth.png"))


def _time_epochs(make_dataset, repeats: int, warmup: int, desc: str, progress: bool):
  """Builds a dataset and times full passes over it.

  Returns:
    (images per timed epoch, per-epoch seconds, construction seconds (the file
    scan), seconds of the untimed warm-up epochs).
  """
  start = time.perf_counter()
  dataset = make_dataset()
  build = time.perf_counter() - start

  def epoch():
    count = 0
    start = time.perf_counter()
    for batch in dataset:
      # The image batch (paired datasets yield (image, depth)).
      images = batch[0] if isinstance(batch, tuple) else batch
      count += int(images.shape[0])
    return count, time.perf_counter() - start

  warm = sum(epoch()[1] for _ in range(warmup))
  timed = [epoch() for _ in tqdm(range(repeats), desc=desc, file=sys.stderr,
                                 disable=not progress, leave=False)]
  return timed[-1][0], [t for _, t in timed], build, warm


def data_benchmark(num_images: int = 2000, num_pairs: int = 1000, num_synthetic: int = 500,
                   batch_size: int = 64, image_size: int = 64, repeats: int = 3,
                   warmup: int = 1, seed: int = 0, progress: bool = True,
                   anchor: bool = True, anchor_workers: int = 0) -> Dict:
  """Images per second of the input pipelines (`tfsym3d.data`).

  * folder: `image_folder_dataset` (training: shuffle and flip, no crop) over
    `num_images` random smooth 178 x 218 JPEGs (CelebA's size, quality 90).
  * paired: `paired_dataset` (training, centre crop 170) over `num_pairs`
    random smooth 256 x 256 RGB PNGs with 8-bit grey depth PNGs (docs/method.md §8).
  * synthetic: `SynFaces.sample` called `num_synthetic` times, and the same
    samples through `SynFaces.tf_dataset`.

  The files are written to a temporary directory, untimed. For the folder
  datasets the construction (the file scan) and the first `warmup` epochs (at
  least one) are not timed; then `repeats` full epochs are, and the median is
  reported.

  With `anchor` (and torch installed), a reference-style loader (PIL decode,
  resize and flip in torch DataLoader worker processes; `anchor_workers`, 0:
  one per core) reads the same JPEGs, timed the same way: anchor_torch and
  folder_speedup_vs_torch (ours / its images per second).

  Returns:
    A dict: folder_, paired_ and synthetic_images_per_s (median),
    synthetic_tf_dataset_images_per_s, per-epoch seconds, scan seconds, the
    settings and the environment.
  """
  from tfsym3d.data import folders, synthetic  # pylint: disable=g-import-not-at-top

  warmup = max(int(warmup), 1)
  repeats = max(int(repeats), 1)
  result = {"benchmark": "data", "batch_size": batch_size, "image_size": image_size,
            "repeats": repeats, "warmup_epochs": warmup,
            "folder_source": f"{num_images} random smooth {_FOLDER_WH[0]}x"
                             f"{_FOLDER_WH[1]} JPEGs (quality 90), no crop",
            "paired_source": f"{num_pairs} random smooth {_PAIRED_WH[0]}x{_PAIRED_WH[1]} "
                             f"RGB PNGs + 8-bit grey depth PNGs, centre crop {_PAIRED_CROP}",
            "synthetic_source": f"{num_synthetic} SynFaces samples"}
  result.update(machine.environment())
  with tempfile.TemporaryDirectory(prefix="tfsym3d_bench_data_") as tmp:
    logging.info("data: writing %d JPEGs and %d pairs to %s (untimed)",
                 num_images, num_pairs, tmp)
    write_image_folder(os.path.join(tmp, "folder", "train"), num_images, seed, progress)
    write_pairs(os.path.join(tmp, "paired", "train"), num_pairs, seed, progress)
    scan_progress = None if progress else False
    pipelines = {
        "folder": lambda: folders.image_folder_dataset(
            os.path.join(tmp, "folder"), "train", image_size=image_size,
            batch_size=batch_size, training=True, crop=None, seed=seed,
            progress=scan_progress),
        "paired": lambda: folders.paired_dataset(
            os.path.join(tmp, "paired"), "train", image_size=image_size,
            batch_size=batch_size, training=True, crop=_PAIRED_CROP, seed=seed,
            progress=scan_progress),
    }
    for name, make in pipelines.items():
      count, times, build, warm = _time_epochs(make, repeats, warmup, f"data[{name}]",
                                               progress)
      result[f"{name}_images_per_s"] = count / statistics.median(times)
      result[f"{name}_images_per_epoch"] = count
      result[f"{name}_epoch_s"] = times
      result[f"{name}_scan_s"] = build
      result[f"{name}_warmup_s"] = warm
    if anchor:
      folder = os.path.join(tmp, "folder", "train")
      paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                     if n.endswith(".jpg"))  # not the scan's index files
      result["anchor_torch"] = anchors.torch_folder_loader(
          paths, image_size, batch_size, repeats, warmup,
          anchor_workers or os.cpu_count() or 1, seed)
    else:
      result["anchor_torch"] = "not measured (anchor=False)"
  torch_rate = (result["anchor_torch"]["images_per_s"]
                if isinstance(result["anchor_torch"], dict) else None)
  result["folder_speedup_vs_torch"] = anchors.ratio(result["folder_images_per_s"], torch_rate)

  # Synthetic faces: the generator itself, then through tf.data (unbatched).
  gen = synthetic.SynFaces(image_size=image_size, seed=seed)
  gen.sample(0)  # untimed: first-call costs
  start = time.perf_counter()
  for i in tqdm(range(num_synthetic), desc="data[synthetic]", file=sys.stderr,
                disable=not progress, leave=False):
    gen.sample(i)
  seconds = time.perf_counter() - start
  result["synthetic_images_per_s"] = num_synthetic / seconds
  result["synthetic_s"] = seconds
  dataset = gen.tf_dataset("train", num=num_synthetic)
  start = time.perf_counter()
  count = sum(1 for _ in dataset)
  seconds = time.perf_counter() - start
  result["synthetic_tf_dataset_images_per_s"] = count / seconds
  result["synthetic_tf_dataset_s"] = seconds
  result["load_avg_after"] = machine.load_average()
  return result


def add_flags():
  """This benchmark's own flags (the shared ones are in tfsym3d.bench.__main__)."""
  flags.DEFINE_integer("data_num_images", 2000, "data: JPEGs in the image folder.")
  flags.DEFINE_integer("data_num_pairs", 1000, "data: image/depth pairs.")
  flags.DEFINE_integer("data_num_synthetic", 500, "data: SynFaces samples timed.")
  flags.DEFINE_integer("data_anchor_workers", 0, "data: worker processes of the "
                       "reference-style PyTorch loader (the anchor); 0: one per core.")


def run(FLAGS, settings) -> Dict:  # pylint: disable=invalid-name
  """The benchmark from parsed flags; settings: batch_size, warmup, repeats."""
  return data_benchmark(FLAGS.data_num_images, FLAGS.data_num_pairs,
                        FLAGS.data_num_synthetic, settings["batch_size"], FLAGS.image_size,
                        settings["repeats"], settings["warmup"], FLAGS.seed, FLAGS.progress,
                        FLAGS.anchor, FLAGS.data_anchor_workers)


def format(result: Dict) -> str:  # pylint: disable=redefined-builtin
  """A human-readable report of `data_benchmark`'s result."""
  lines = []
  lines.append(f"data: batch {result['batch_size']}, {result['image_size']} px, "
               f"median of {result['repeats']} epochs after {result['warmup_epochs']} "
               "untimed")
  lines.append(f"{'pipeline':<22} {'images/s':>10}  source")
  for name in ("folder", "paired"):
    lines.append(f"{name:<22} {result[name + '_images_per_s']:10.1f}  "
                 f"{result[name + '_source']} (scan {result[name + '_scan_s']:.1f} s)")
  lines.append(f"{'synthetic':<22} {result['synthetic_images_per_s']:10.1f}  "
               f"{result['synthetic_source']}, SynFaces.sample")
  lines.append(f"{'synthetic tf_dataset':<22} "
               f"{result['synthetic_tf_dataset_images_per_s']:10.1f}  "
               "the same through SynFaces.tf_dataset")
  line = anchors.describe(
      result.get("anchor_torch"),
      lambda loader: (f"{'anchor: PIL + workers':<22} {loader['images_per_s']:10.1f}  the "
                      f"same JPEGs, torch DataLoader, {loader['workers']} worker processes; "
                      f"folder {result['folder_speedup_vs_torch']:.2f}x"),
      "anchor, reference-style PIL loader")
  lines += [line] if line else []
  lines.append(machine.format_environment(result))
  return "\n".join(lines)
