"""Prepares datasets on disk, one subcommand per dataset.

  python -m tfsym3d.data.prepare synfaces --out DIR --num N --seed K [--image_size 64]
  python -m tfsym3d.data.prepare synfaces --preview docs/synfaces_samples.png
  python -m tfsym3d.data.prepare celeba --src CELEBA_ROOT --out DIR [--image_size 64]

`synfaces` writes docs/method.md §8's paired layout (<out>/<split>/image/*_image.png,
<out>/<split>/depth/*_depth.png) for train/val/test, splitting --num by
--split_fractions. Pairs already on disk are skipped, so re-running resumes.

`celeba` crops faces from the CelebA release with its own annotations and
writes <out>/{train,val,test}/<name>.jpg (the layout of
`tfsym3d.data.folders.image_folder_dataset`), split by
Eval/list_eval_partition.txt. It reads the aligned images
(Img/img_align_celeba, with Anno/list_landmarks_align_celeba.txt) or the
in-the-wild ones (Img/img_celeba, with Anno/list_landmarks_celeba.txt or
Anno/list_bbox_celeba.txt; CelebA's boxes exist for these only). Files are
also found directly under --src and in the Kaggle mirror's layout. Finished
outputs are skipped, so re-running resumes; unreadable sources are warned
about and skipped. --num, --seed and --split_fractions do not apply.
"""

import concurrent.futures
import math
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

# --image_size, --seed (and every shared flag) are defined once, in tfsym3d.flags.
from tfsym3d import flags as _model_flags  # noqa: F401  pylint: disable=unused-import

FLAGS = flags.FLAGS

flags.DEFINE_integer("num", 10000, "Total number of samples over all splits.")
flags.DEFINE_list("split_fractions", ["0.8", "0.1", "0.1"],
                  "Fractions of --num for train,val,test.")
flags.DEFINE_string("preview", None,
                    "Instead of writing a dataset, save a PNG grid of samples "
                    "(input image, input depth, canonical albedo, canonical depth).")
flags.DEFINE_integer("preview_num", 8, "Samples in the --preview grid.")
flags.DEFINE_string("src", None, "celeba: root of the CelebA release (holds Img/, Anno/, Eval/).")
flags.DEFINE_enum("celeba_crop", "landmarks", ["landmarks", "bbox"],
                  "celeba: square crop around the five landmarks, or around the "
                  "annotated box (in-the-wild images only).")
flags.DEFINE_enum("celeba_images", "auto", ["auto", "aligned", "wild"],
                  "celeba: aligned (img_align_celeba) or in-the-wild (img_celeba) "
                  "images; auto prefers aligned when it is there (bbox needs wild).")
flags.DEFINE_float("celeba_scale", 1.0,
                   "celeba: multiplies the crop side; above 1 keeps more context.")
flags.DEFINE_enum("celeba_format", "jpg", ["jpg", "png"],
                  "celeba: output format (jpg at quality 95, or lossless png).")

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


# --------------------------------------------------------------------------
# CelebA.

# Landmark crop: a square centred halfway between the eyes' midpoint and the
# mouth's midpoint, of side LANDMARK_SIDE x max(inter-ocular distance,
# eye-to-mouth distance). Both distances are ~40 px in the aligned 178x218
# images, so the side is ~120 px: eyebrows to chin, little background, eyes at
# ~1/3 and mouth at ~2/3 of the height, like the reference's cropped 64 px
# CelebA. The max keeps profile (short inter-ocular) and tilted (short
# eye-to-mouth) faces from being cropped too tightly; both are invariant to
# in-plane rotation, so the in-the-wild images crop alike.
LANDMARK_SIDE = 3.0
# Box crop: a square of side BBOX_SIDE x the longer side of CelebA's box,
# centred on the box.
BBOX_SIDE = 1.0
JPEG_QUALITY = 95

_LANDMARK_FILES = {"aligned": "list_landmarks_align_celeba",
                   "wild": "list_landmarks_celeba"}
_BBOX_FILE = "list_bbox_celeba"
_PARTITION_FILE = "list_eval_partition"
_IMAGE_DIRS = {"aligned": ("img_align_celeba", "img_align_celeba_png"),
               "wild": ("img_celeba",)}
# Images without annotation named in warnings before only the count is given.
_MAX_NAMED = 10
_LANDMARK_COLUMNS = 10
_BBOX_COLUMNS = 4


def _annotation_candidates(src: pathlib.Path, stem: str):
  """Where an annotation file may be: the release's Anno/ and Eval/, --src
  itself (flattened mirrors), as .txt or the Kaggle mirror's .csv."""
  return [src / sub / (stem + ext) for sub in ("Anno", "Eval", ".")
          for ext in (".txt", ".csv")]


def _image_dir_candidates(src: pathlib.Path, variant: str):
  """Where the image folder may be: Img/<dir>, <dir>, and <dir>/<dir> (Kaggle)."""
  return [path for name in _IMAGE_DIRS[variant]
          for path in (src / "Img" / name, src / name, src / name / name)]


def _find(candidates, what: str, is_dir: bool = False) -> pathlib.Path:
  """The first existing candidate; FileNotFoundError listing all of them."""
  for path in candidates:
    if (path.is_dir() if is_dir else path.is_file()):
      return path
  looked = "\n  ".join(str(p) for p in candidates)
  raise FileNotFoundError(
      f"{what} not found; looked in:\n  {looked}\nPoint --src at the CelebA "
      "release root (the folder holding Img/, Anno/ and Eval/) or put the "
      "file in one of these places.")


def read_annotation(path, columns: int) -> dict:
  """Rows of a CelebA annotation file as {image name: [numbers]}.

  Accepts the release's format (a count line, a header line, then
  `000001.jpg n n ...` whitespace separated) and comma-separated mirrors: any
  line whose first field is not an image name is a count or header.
  """
  rows = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      fields = line.replace(",", " ").split()
      if not fields or os.path.splitext(fields[0])[1].lower() not in (".jpg", ".png"):
        continue
      try:
        values = [float(v) for v in fields[1:]]
      except ValueError:
        values = []
      if len(values) != columns:
        raise ValueError(f"{path}:{number}: expected an image name and {columns} "
                         f"numbers, got {line.strip()!r}; is this the right "
                         "(unmodified) CelebA annotation file?")
      rows[fields[0]] = values
  if not rows:
    raise ValueError(f"{path}: no annotation rows; is this a CelebA annotation file?")
  return rows


def landmark_box(values, scale: float = 1.0):
  """(centre_x, centre_y, side) of the landmark crop from the 10 coordinates
  (left eye, right eye, nose, left mouth, right mouth; x, y each)."""
  # Landmarks are pixel indices; + 0.5 puts them on the pixel centres.
  p = np.asarray(values, np.float64).reshape(5, 2) + 0.5
  eyes, mouth = (p[0] + p[1]) / 2, (p[3] + p[4]) / 2
  centre = (eyes + mouth) / 2
  extent = max(np.linalg.norm(p[0] - p[1]), np.linalg.norm(mouth - eyes))
  return centre[0], centre[1], LANDMARK_SIDE * scale * max(extent, 1.0)


def bbox_box(values, scale: float = 1.0):
  """(centre_x, centre_y, side) of the square around a CelebA box (x, y, w, h):
  (x, y) is the top-left pixel, so the box spans x .. x + w in corner units."""
  x, y, w, h = values
  return x + w / 2, y + h / 2, BBOX_SIDE * scale * max(w, h, 1.0)


def crop_square(image, cx: float, cy: float, side: float, size: int):
  """The square (cx, cy, side) of a PIL image, resized to size x size.

  Coordinates are in pixel units with (0, 0) the top-left corner of the
  top-left pixel. Parts outside the image repeat the edge pixels (no black
  bars for the network to learn). The resize is Pillow's antialiased LANCZOS,
  on the exact (sub-pixel) box.
  """
  x0, y0 = cx - side / 2, cy - side / 2
  # Integer region holding the box, padded where it leaves the image.
  left, top = math.floor(x0), math.floor(y0)
  right, bottom = math.ceil(x0 + side), math.ceil(y0 + side)
  w, h = image.size
  if left < 0 or top < 0 or right > w or bottom > h:
    # Clamped indices repeat the edge rows and columns.
    xs = np.clip(np.arange(left, right), 0, w - 1)
    ys = np.clip(np.arange(top, bottom), 0, h - 1)
    region = Image.fromarray(np.asarray(image)[ys][:, xs])
    offset_x, offset_y = left, top
  else:
    region, offset_x, offset_y = image, 0, 0
  rw, rh = region.size
  box = (max(x0 - offset_x, 0.0), max(y0 - offset_y, 0.0),
         min(x0 + side - offset_x, float(rw)), min(y0 + side - offset_y, float(rh)))
  return region.resize((size, size), Image.Resampling.LANCZOS, box=box)


def _write_atomic(image, path: pathlib.Path, fmt: str):
  """Saves via a temporary name and os.replace, so a killed run never leaves
  a truncated image under the final name (the temporary name has no image
  extension, so image_folder_dataset ignores leftovers)."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
  try:
    if fmt == "jpg":
      image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    else:
      image.save(tmp, format="PNG")
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def _celeba_one(job):
  """Crops and writes one image; returns 'written' or 'unreadable'."""
  source, target, values, box_fn, scale, size, fmt = job
  try:
    with Image.open(source) as image:
      image = image.convert("RGB")  # also forces the full decode
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    logging.warning("celeba: skipping unreadable image %s (%s)", source, e)
    return "unreadable"
  cx, cy, side = box_fn(values, scale)
  _write_atomic(crop_square(image, cx, cy, side, size), target, fmt)
  return "written"


def prepare_celeba(src, out, crop="landmarks", images="auto", size=64,
                   scale=1.0, fmt="jpg", workers=None) -> dict:
  """Writes the cropped CelebA splits; returns counts per outcome.

  Outcomes: written, existing (already on disk, skipped), unreadable
  (warned, skipped), no_annotation (in the partition file but not the crop
  annotation), missing (in the partition file, not on disk).

  Raises:
    FileNotFoundError: an annotation file or the image folder is missing
      (the message lists every place looked in).
    ValueError: bad arguments or a malformed annotation file.
  """
  from tqdm import tqdm
  src, out = pathlib.Path(src), pathlib.Path(out)
  if not src.is_dir():
    raise FileNotFoundError(f"{src}: no such directory; set --src to the CelebA "
                            "release root (the folder holding Img/, Anno/, Eval/)")
  if scale <= 0:
    raise ValueError(f"--celeba_scale={scale} must be > 0")
  if images == "auto":
    # CelebA's boxes are in the in-the-wild images' coordinates.
    images = "wild" if crop == "bbox" else "aligned"
    if crop == "landmarks" and not any(
        p.is_dir() for p in _image_dir_candidates(src, "aligned")) and any(
            p.is_dir() for p in _image_dir_candidates(src, "wild")):
      images = "wild"
  if crop == "bbox" and images != "wild":
    raise ValueError("--celeba_crop=bbox needs the in-the-wild images "
                     "(--celeba_images=wild): list_bbox_celeba.txt's boxes are in "
                     "img_celeba's coordinates, not the aligned images'")
  image_dir = _find(_image_dir_candidates(src, images),
                    f"CelebA {images} image folder", is_dir=True)
  if crop == "landmarks":
    stem, columns, box_fn = _LANDMARK_FILES[images], _LANDMARK_COLUMNS, landmark_box
  else:
    stem, columns, box_fn = _BBOX_FILE, _BBOX_COLUMNS, bbox_box
  annotation_path = _find(_annotation_candidates(src, stem), f"{stem}.txt")
  partition_path = _find(_annotation_candidates(src, _PARTITION_FILE),
                         f"{_PARTITION_FILE}.txt")
  partition = read_annotation(partition_path, 1)
  annotation = read_annotation(annotation_path, columns)
  logging.info("celeba: images %s, annotations %s, partition %s",
               image_dir, annotation_path, partition_path)

  for split in SPLITS:
    (out / split).mkdir(parents=True, exist_ok=True)
  counts = dict(written=0, existing=0, unreadable=0, no_annotation=0, missing=0)
  jobs = []
  for name, (code,) in sorted(partition.items()):
    if code not in (0, 1, 2):
      raise ValueError(f"{partition_path}: {name} has split {code:g}; expected "
                       "0 (train), 1 (val) or 2 (test)")
    stem_name = os.path.splitext(name)[0]
    target = out / SPLITS[int(code)] / f"{stem_name}.{fmt}"
    if target.exists():
      counts["existing"] += 1
      continue
    if name not in annotation:
      # Named individually up to a point: a wrong file would name them all.
      if counts["no_annotation"] < _MAX_NAMED:
        logging.warning("celeba: %s is not in %s; skipped", name, annotation_path)
      counts["no_annotation"] += 1
      continue
    source = image_dir / name
    if not source.is_file():  # the PNG release names files 000001.png
      source = image_dir / f"{stem_name}.png"
    if not source.is_file():
      counts["missing"] += 1
      continue
    jobs.append((source, target, annotation[name], box_fn, scale, size, fmt))

  if counts["no_annotation"]:
    logging.warning("celeba: %d images listed in %s have no row in %s (skipped)",
                    counts["no_annotation"], partition_path, annotation_path)
  if counts["missing"]:
    logging.warning("celeba: %d images listed in %s are not in %s (skipped)",
                    counts["missing"], partition_path, image_dir)
  # Pillow's decode and resize release the GIL, so threads use every core.
  workers = workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for outcome in tqdm(pool.map(_celeba_one, jobs, chunksize=1), total=len(jobs),
                        desc="celeba", unit="img", file=sys.stderr,
                        disable=not jobs):
      counts[outcome] += 1
  if counts["unreadable"]:
    logging.warning("celeba: skipped %d unreadable images (named above)",
                    counts["unreadable"])
  return counts


def celeba():
  """The `celeba` subcommand."""
  if not FLAGS.src or not FLAGS.out:
    raise app.UsageError("celeba: set --src CELEBA_ROOT and --out DIR")
  try:
    counts = prepare_celeba(FLAGS.src, FLAGS.out, crop=FLAGS.celeba_crop,
                            images=FLAGS.celeba_images, size=FLAGS.image_size,
                            scale=FLAGS.celeba_scale, fmt=FLAGS.celeba_format)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"celeba: {e}") from None
  for split in SPLITS:
    total = sum(1 for p in (pathlib.Path(FLAGS.out) / split).iterdir()
                if p.suffix == f".{FLAGS.celeba_format}")
    print(f"celeba {split}: {total} images")
  print("celeba: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


COMMANDS = {"synfaces": synfaces, "celeba": celeba}


def main(argv):
  commands = argv[1:]
  if len(commands) != 1 or commands[0] not in COMMANDS:
    raise app.UsageError(f"prepare: give exactly one subcommand out of "
                         f"{sorted(COMMANDS)}, got {commands}")
  COMMANDS[commands[0]]()


if __name__ == "__main__":
  app.run(main)
