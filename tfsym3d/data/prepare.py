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

--layout=records writes each split instead as shards of --shard_size
TFRecords with an index (`tfsym3d.data.records`; train with
--dataset=records), resuming at the first unfinished shard. Every
subcommand writes through a `SplitSink` (`open_sink`); `faces` and `folder`
first prepare their crops as a folder under <out>/.crops (their resume
state), then write each split's crops as records.

  python -m tfsym3d.data.prepare faces --src PHOTOS --out DIR [--image_size 64]
  python -m tfsym3d.data.prepare folder --src IMAGES --out DIR [--crop C]

`faces` and `folder` turn a folder of ordinary photos into the same layout
(`tfsym3d.data.photos`; docs/own_photos.md): faces by BlazeFace framed like
`celeba`, or a centre / box crop; split by source photo with
--split_fractions, duplicates dropped, resumable, with a report and a preview.
"""

import concurrent.futures
import hashlib
import io
import json
import os
import pathlib
import shutil
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from tfsym3d.data.framing import BBOX_SIDE, LANDMARK_SIDE, bbox_box, crop_square, landmark_box  # noqa: F401  pylint: disable=unused-import
# --image_size, --seed (and every shared flag) are defined once, in tfsym3d.flags.
from tfsym3d import flags as _model_flags
from tfsym3d.data import photos

FLAGS = flags.FLAGS

flags.DEFINE_integer("num", 10000, "Total number of samples over all splits.")
flags.DEFINE_list("split_fractions", ["0.8", "0.1", "0.1"],
                  "Fractions of --num for train,val,test.")
flags.DEFINE_string("preview", None,
                    "Instead of writing a dataset, save a PNG grid of samples "
                    "(input image, input depth, canonical albedo, canonical depth).")
flags.DEFINE_integer("preview_num", 8, "Samples in the --preview grid.")
flags.DEFINE_string("src", None, "celeba: root of the CelebA release (holds Img/, "
                    "Anno/, Eval/); faces/folder: the folder of photos (scanned "
                    "recursively).")
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

flags.DEFINE_enum("layout", "folder", ["folder", "records"],
                  "What prepare writes per split: image files (folder) or "
                  "--shard_size TFRecords per shard with an index.json (records; "
                  "read with --dataset=records).")
flags.DEFINE_integer("shard_size", 1000, "--layout=records: records per shard "
                     "(choose it for ten or more shards per worker).")

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------
# Where a split goes.

def _encode(image, fmt: str) -> bytes:
  buffer = io.BytesIO()
  if fmt == "jpg":
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
  else:
    image.save(buffer, format="PNG")
  return buffer.getvalue()


class SplitSink:
  """Where a subcommand writes one split: the folder layout or record shards.

  The hook every image-writing subcommand uses (celeba, synfaces, and faces
  and folder through `photo_records`):

      sink = open_sink(FLAGS.layout, out, split, num_items, has_depth=False,
                       image_format="jpg")
      for i, (name, source) in enumerate(items):     # a fixed order
        if sink.needed(i):                           # resume: skip done work
          sink.add(i, name, pil_image, depth_uint16=None)
      sink.close()

  `needed(i)` is False for items already on disk (folder: the file exists;
  records: item i's shard is finished). Items never added (unreadable
  sources) are simply absent.
  """

  def needed(self, i: int) -> bool:
    raise NotImplementedError

  def add(self, i: int, name: str, image, depth_uint16=None) -> None:
    raise NotImplementedError

  def close(self) -> int:
    """Finishes the split; returns the items on disk (records) or written."""
    raise NotImplementedError


class FolderSink(SplitSink):
  """<out>/<split>/<name>.<fmt>, or docs/method.md §8's image/ and depth/ pairs when
  the items have depth; each file written atomically."""

  def __init__(self, out, split, names, has_depth=False, image_format="jpg"):
    self.dir = pathlib.Path(out) / split
    self.names, self.has_depth, self.fmt = list(names), has_depth, image_format
    for sub in (("image", "depth") if has_depth else (".",)):
      (self.dir / sub).mkdir(parents=True, exist_ok=True)
    self.written = 0

  def _paths(self, name):
    if self.has_depth:
      return (self.dir / "image" / f"{name}_image.png",
              self.dir / "depth" / f"{name}_depth.png")
    return (self.dir / f"{name}.{self.fmt}",)

  def needed(self, i):
    return not all(p.exists() for p in self._paths(self.names[i]))

  def add(self, i, name, image, depth_uint16=None):
    paths = self._paths(name)
    if self.has_depth:
      _write_atomic(Image.fromarray(depth_uint16), paths[1], "png")
      _write_atomic(image, paths[0], "png")
    else:
      _write_atomic(image, paths[0], self.fmt)
    self.written += 1

  def close(self):
    return self.written


class RecordSink(SplitSink):
  """Shards of TFRecords with an index (`tfsym3d.data.records`)."""

  def __init__(self, out, split, names, shard_size, has_depth=False, image_format="jpg"):
    from tfsym3d.data import records  # TensorFlow only when needed
    key = hashlib.sha1("\n".join(names).encode("utf-8")).hexdigest()
    self.writer = records.RecordSplitWriter(out, split, len(names), shard_size,
                                            has_depth, key=key)
    self.fmt = image_format

  def needed(self, i):
    return self.writer.needed(i)

  def add(self, i, name, image, depth_uint16=None):
    depth = None if depth_uint16 is None else _encode(Image.fromarray(depth_uint16), "png")
    self.writer.add(i, name, _encode(image, self.fmt), depth)

  def close(self):
    return self.writer.close()


def open_sink(fmt: str, out, split: str, names, has_depth: bool = False,
              image_format: str = "jpg", shard_size: int = 1000) -> SplitSink:
  """The SplitSink --layout names for a split of `names` (one per item, in order)."""
  if fmt == "records":
    return RecordSink(out, split, list(names), shard_size, has_depth, image_format)
  if fmt == "folder":
    return FolderSink(out, split, names, has_depth, image_format)
  raise app.UsageError(f"--layout={fmt!r}: use folder or records")


def parse_fractions(fractions) -> tuple:
  """--split_fractions as three floats; app.UsageError saying the fix."""
  text = ",".join(str(f) for f in fractions)
  try:
    values = tuple(float(f) for f in fractions)
  except ValueError as e:
    raise app.UsageError(f"--split_fractions={text}: {e}; "
                         "give three numbers, e.g. 0.8,0.1,0.1") from None
  if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
    raise app.UsageError(f"--split_fractions={text}: need three "
                         "non-negative numbers for train,val,test, e.g. 0.8,0.1,0.1")
  return values


def split_counts(num: int, fractions) -> dict:
  """Samples per split: floor of each fraction, the remainder to train."""
  values = parse_fractions(fractions)
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
    if FLAGS.layout == "folder":
      written = synthetic.write_split(FLAGS.out, split, count, generator=generator)
    else:
      written = write_synfaces_split(generator, FLAGS.out, split, count,
                                     FLAGS.layout, FLAGS.shard_size)
    print(f"synfaces {split}: {count} pairs, {written} newly written")


def write_synfaces_split(generator, out, split: str, count: int, fmt: str,
                         shard_size: int = 1000, progress: bool = True) -> int:
  """Writes `count` synfaces samples of a split through a SplitSink; returns
  the samples produced by this call."""
  from tqdm import tqdm
  from tfsym3d.data import synthetic
  names = [f"{i:07d}" for i in range(count)]
  sink = open_sink(fmt, out, split, names, has_depth=True, image_format="png",
                   shard_size=shard_size)
  offset, written = synthetic.split_offset(split), 0
  for i in tqdm(range(count), desc=f"synfaces {split}", unit="img", file=sys.stderr,
                disable=not progress):
    if sink.needed(i):
      s = generator.sample(offset + i)
      sink.add(i, names[i], Image.fromarray(s["image"]),
               synthetic.encode_depth(s["depth"]))
      written += 1
  sink.close()
  return written


# --------------------------------------------------------------------------
# CelebA.

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


def _celeba_crop(job):
  """Crops one image; returns the PIL image or None (unreadable, warned)."""
  source, _, values, box_fn, scale, size, _ = job
  try:
    with Image.open(source) as image:
      image = image.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    logging.warning("celeba: skipping unreadable image %s (%s)", source, e)
    return None
  cx, cy, side = box_fn(values, scale)
  return crop_square(image, cx, cy, side, size)


def _celeba_records(out, jobs_by_split, shard_size, workers, counts):
  """--layout=records: each split's jobs (a fixed order) into record shards;
  finished shards are skipped."""
  from tqdm import tqdm
  for split, jobs in jobs_by_split.items():
    names = [os.path.splitext(target.name)[0] for _, target, *_ in jobs]
    sink = open_sink("records", out, split, names, image_format=jobs[0][-1] if jobs
                     else "jpg", shard_size=shard_size)
    todo = [(i, job) for i, job in enumerate(jobs) if sink.needed(i)]
    counts["existing"] += len(jobs) - len(todo)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for (i, _), image in tqdm(zip(todo, pool.map(_celeba_crop, [j for _, j in todo])),
                                total=len(todo), desc=f"celeba {split}", unit="img",
                                file=sys.stderr, disable=not todo):
        if image is None:
          counts["unreadable"] += 1
        else:
          sink.add(i, names[i], image)
          counts["written"] += 1
    sink.close()


def prepare_celeba(src, out, crop="landmarks", images="auto", size=64,
                   scale=1.0, fmt="jpg", workers=None, output="folder",
                   shard_size=1000) -> dict:
  """Writes the cropped CelebA splits; returns counts per outcome.

  `output`: 'folder' (image files) or 'records' (shards of `shard_size`).

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
  jobs, jobs_by_split = [], {split: [] for split in SPLITS}
  for name, (code,) in sorted(partition.items()):
    if code not in (0, 1, 2):
      raise ValueError(f"{partition_path}: {name} has split {code:g}; expected "
                       "0 (train), 1 (val) or 2 (test)")
    stem_name = os.path.splitext(name)[0]
    target = out / SPLITS[int(code)] / f"{stem_name}.{fmt}"
    if output == "folder" and target.exists():
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
    jobs_by_split[SPLITS[int(code)]].append(jobs[-1])

  if counts["no_annotation"]:
    logging.warning("celeba: %d images listed in %s have no row in %s (skipped)",
                    counts["no_annotation"], partition_path, annotation_path)
  if counts["missing"]:
    logging.warning("celeba: %d images listed in %s are not in %s (skipped)",
                    counts["missing"], partition_path, image_dir)
  # Pillow's decode and resize release the GIL, so threads use every core.
  workers = workers or os.cpu_count() or 1
  if output == "records":
    _celeba_records(out, jobs_by_split, shard_size, workers, counts)
    return counts
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
                            scale=FLAGS.celeba_scale, fmt=FLAGS.celeba_format,
                            output=FLAGS.layout, shard_size=FLAGS.shard_size)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"celeba: {e}") from None
  for split in SPLITS if FLAGS.layout == "folder" else ():
    total = sum(1 for p in (pathlib.Path(FLAGS.out) / split).iterdir()
                if p.suffix == f".{FLAGS.celeba_format}")
    print(f"celeba {split}: {total} images")
  print("celeba: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# --------------------------------------------------------------------------
# Own photos: `faces` (BlazeFace, CelebA framing) and `folder` (centre or box
# crop); the logic is in tfsym3d.data.photos.

# One flag per PrepareConfig setting, its default the config's.
_PHOTO_HELP = {
    "faces": ("faces: crop the largest face of each photo, or every face passing "
              "--min_face_size and --min_face_score."),
    "min_face_size": "faces: smallest face box kept (longer side, pixels of the source photo).",
    "min_face_score": "faces: BlazeFace score threshold.",
    "crop_scale": ("faces: multiplies the CelebA-framed crop side; above 1 keeps more "
                   "context (the margin)."),
    "min_sharpness": ("faces/folder: drop crops whose Laplacian variance (grey, "
                      "0..255) is below this; 0: off (try 20)."),
    "near_duplicate_bits": ("faces/folder: crops whose 64-bit difference hashes "
                            "differ in at most this many bits are near duplicates; -1: off."),
}
_model_flags.define_config_flags(photos.PrepareConfig, _PHOTO_HELP,
                                 {"faces": ["largest", "all"]})
flags.DEFINE_integer("max_photos", 0, "faces/folder: stop after this many new photos "
                     "(0: all); a rerun resumes.")


def _photos_config(mode: str):
  """The PrepareConfig of `faces` / `folder` from the parsed flags."""
  from tfsym3d.data import sources  # pylint: disable=g-import-not-at-top
  fractions = parse_fractions(FLAGS.split_fractions)
  try:
    crop = sources.parse_crop(FLAGS.crop)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  try:
    return photos.PrepareConfig(
        mode=mode, image_size=FLAGS.image_size, split_fractions=fractions,
        crop=list(crop) if isinstance(crop, tuple) else crop,
        max_pixels=FLAGS.max_image_pixels,
        **{name: getattr(FLAGS, name) for name in _PHOTO_HELP})
  except ValueError as error:
    raise app.UsageError(str(error)) from None


# --layout=records: faces and folder choose, deduplicate and split their crops
# over the whole run, so the crops are prepared as a folder here first (the
# run's resume state) and each split is then written as records.
PHOTO_CROPS = ".crops"


def photo_records(crops, out, shard_size: int, progress: bool = True) -> dict:
  """Writes the crops of a `faces`/`folder` run (<crops>/<split>/*.png) as
  record shards under <out>/<split>, in name order, resuming at the first
  unfinished shard; returns the records on disk per split."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  counts = {}
  for split in SPLITS:
    paths = sorted((pathlib.Path(crops) / split).glob("*.png"))
    names = [p.stem for p in paths]
    sink = open_sink("records", out, split, names, image_format="png",
                     shard_size=shard_size)
    for i, path in enumerate(tqdm(paths, desc=f"records {split}", unit="img",
                                  file=sys.stderr, disable=not progress or not paths)):
      if sink.needed(i):
        with Image.open(path) as image:
          sink.add(i, names[i], image.convert("RGB"))
    counts[split] = sink.close()
  return counts


def prepare_own_photos(src, out, config, layout: str = "folder", shard_size: int = 1000,
                       max_photos: int = 0, progress: bool = True, detector=None) -> dict:
  """`faces` / `folder` in either layout; returns the report
  (`photos.prepare_photos`'s, with `records` per split for records).

  Raises what `photos.prepare_photos` raises, and app.UsageError for a bad
  layout.
  """
  out = pathlib.Path(out)
  if layout == "folder":
    return photos.prepare_photos(src, out, config, detector, max_photos, progress)
  if layout != "records":
    raise app.UsageError(f"--layout={layout!r}: use folder or records")
  crops = out / PHOTO_CROPS
  report = photos.prepare_photos(src, crops, config, detector, max_photos, progress)
  if report["pending"]:
    # Records are written once every photo is in, so shards never change.
    report["records"] = None
  else:
    report["records"] = photo_records(crops, out, shard_size, progress)
  report["out"] = str(out)
  (out / photos.REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
  if (crops / photos.PREVIEW_NAME).is_file():
    shutil.copyfile(crops / photos.PREVIEW_NAME, out / photos.PREVIEW_NAME)
  return report


def _own_photos(mode: str):
  """The `faces` and `folder` subcommands."""
  if not FLAGS.src or not FLAGS.out:
    raise app.UsageError(f"{mode}: set --src PHOTOS and --out DIR")
  config = _photos_config(mode)
  try:
    report = prepare_own_photos(FLAGS.src, FLAGS.out, config, FLAGS.layout,
                                FLAGS.shard_size, FLAGS.max_photos, FLAGS.progress)
  except (FileNotFoundError, ValueError, RuntimeError) as error:
    raise SystemExit(f"{mode}: {error}") from None
  if FLAGS.json:
    sys.stdout.write(json.dumps(report) + "\n")
  else:
    print(photos.format_report(report))


COMMANDS = {"synfaces": synfaces, "celeba": celeba,
            "faces": lambda: _own_photos("faces"),
            "folder": lambda: _own_photos("folder")}


def main(argv):
  commands = argv[1:]
  if len(commands) != 1 or commands[0] not in COMMANDS:
    raise app.UsageError(f"prepare: give exactly one subcommand out of "
                         f"{sorted(COMMANDS)}, got {commands}")
  COMMANDS[commands[0]]()


if __name__ == "__main__":
  app.run(main)
