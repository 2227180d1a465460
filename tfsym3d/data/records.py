"""Datasets of sharded TFRecord files: writer and tf.data readers.

Layout of a records dataset (one folder per split):

  <root>/<split>/shard-00000.tfrecord, shard-00001.tfrecord, ...
  <root>/<split>/index.json   {"version", "shard_size", "has_depth",
                               "shards": [{"file", "count", "bytes"}, ...]}

Each record is a `tf.train.Example` with `image` (the encoded PNG or JPEG
bytes), `name` (where the image came from) and, for ground-truth sets,
`depth` (a 16-bit PNG in docs/method.md §8's encoding, see `docs/method.md §8`).
Shard k holds the split's items k * shard_size .. (k + 1) * shard_size - 1;
a shard is written under a temporary name and renamed when complete, and the
index is rewritten after every shard, so an interrupted writer resumes at the
first unfinished shard.

Why records: a worker of a multi-worker run reads only its own shard files
and decodes only its own images, instead of listing and decoding the whole
folder and keeping its rows (see `tfsym3d.data.sources`). Each training
epoch e deals the shards out afresh: the shard list is permuted by (seed, e)
(the same on every worker) and worker w of W takes shards w, w + W, ...;
its records are shuffled within a buffer (seeded by seed, e, w) and the
epoch holds exactly steps_per_epoch x (B / W) of them (cycled when the
worker's shards hold fewer, cut when they hold more). A worker's stream is
thus a function of (seed, epoch, step within the epoch): resuming at step s
skips s mod steps_per_epoch batches of records of epoch s // steps_per_epoch
before decoding, landing on the next unseen records, at the granularity of
one batch, as for folders.

Bad data never ends a run: a shard whose size differs from the index (e.g.
truncated) is named in a warning; TensorFlow's `DataLossError` on a
truncated or corrupted record is skipped (`ignore_errors`, the rest of that
shard is lost for that pass: TFRecord files have no resync point), and a
record whose image does not decode is dropped, TensorFlow logging the error.
"""

import dataclasses
import json
import os
import pathlib
import sys
from typing import Dict, List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from tfsym3d.data import synthetic

INDEX_NAME = "index.json"
INDEX_VERSION = 1
DEFAULT_SHARD_SIZE = 1000
_SHARD_PATTERN = "shard-{:05d}.tfrecord"


# ----------------------------------------------------------------- writer ---

def _bytes_feature(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def encode_example(image: bytes, name: str, depth: Optional[bytes] = None) -> bytes:
  """One serialized record: encoded image bytes, its name, optional depth PNG."""
  feature = {"image": _bytes_feature(image), "name": _bytes_feature(name.encode())}
  if depth is not None:
    feature["depth"] = _bytes_feature(depth)
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def read_index(split_dir) -> dict:
  """The index of a records split; FileNotFoundError naming the fix if absent."""
  path = pathlib.Path(split_dir) / INDEX_NAME
  if not path.is_file():
    raise FileNotFoundError(
        f"{path}: no records index; write the split with `python -m "
        "tfsym3d.data.prepare <subcommand> --layout=records --out DIR`")
  index = json.loads(path.read_text())
  if index.get("version") != INDEX_VERSION:
    raise ValueError(f"{path}: index version {index.get('version')}, expected "
                     f"{INDEX_VERSION}; re-prepare the dataset")
  return index


class RecordSplitWriter:
  """Writes one split as shards of `shard_size` records, resumably.

  Items are numbered 0 .. num - 1 in a fixed order; call `needed(i)` to know
  whether item i still has to be produced (its shard is not finished) and
  `add(i, ...)` in increasing i. Items never added (e.g. unreadable sources)
  leave their shard shorter; the index counts what is there.

  `key` names the item list (e.g. a hash of the names in order): finished
  shards of an earlier run are reused only under the same key, so a list
  that changed (photos added) is rewritten instead of mixing old shards
  with new numbering. An index without a key is taken as matching.
  """

  def __init__(self, out, split: str, num: int, shard_size: int = DEFAULT_SHARD_SIZE,
               has_depth: bool = False, key: str = ""):
    if shard_size <= 0:
      raise ValueError(f"--shard_size={shard_size} must be > 0")
    self.dir = pathlib.Path(out) / split
    self.dir.mkdir(parents=True, exist_ok=True)
    self.num, self.shard_size, self.has_depth = num, shard_size, has_depth
    self.key = key
    self.num_shards = -(-num // shard_size)
    self._shards: Dict[int, dict] = {}
    try:
      old = read_index(self.dir)
      if old.get("key", key) != key:
        logging.warning("%s: written for another list of items; rewriting it", self.dir)
      elif old["shard_size"] == shard_size and old["has_depth"] == has_depth:
        for k, shard in enumerate(old["shards"]):
          path = self.dir / shard["file"]
          if shard and path.is_file() and path.stat().st_size == shard["bytes"]:
            self._shards[k] = shard
      else:
        logging.warning("%s: written with --shard_size=%s; rewriting with %s",
                        self.dir, old["shard_size"], shard_size)
    except (FileNotFoundError, ValueError, KeyError):
      pass
    self._open_shard, self._writer, self._count = None, None, 0

  def needed(self, i: int) -> bool:
    """Whether item i's shard is still to be written."""
    return i // self.shard_size not in self._shards

  def add(self, i: int, name: str, image: bytes, depth: Optional[bytes] = None):
    """Appends item i (encoded image bytes, and depth PNG bytes if has_depth)."""
    if (depth is not None) != self.has_depth:
      raise ValueError(f"{self.dir}: depth must be given iff the split has depth")
    shard = i // self.shard_size
    if shard in self._shards:
      return
    if shard != self._open_shard:
      self._finish()
      self._open_shard, self._count = shard, 0
      self._writer = tf.io.TFRecordWriter(str(self._tmp(shard)))
    self._writer.write(encode_example(image, name, depth))
    self._count += 1

  def _tmp(self, shard):
    return self.dir / (_SHARD_PATTERN.format(shard) + ".partial")

  def _finish(self):
    if self._writer is None:
      return
    self._writer.close()
    name = _SHARD_PATTERN.format(self._open_shard)
    os.replace(self._tmp(self._open_shard), self.dir / name)
    self._shards[self._open_shard] = {"file": name, "count": self._count,
                                      "bytes": (self.dir / name).stat().st_size}
    self._writer = None
    self._write_index()

  def _write_index(self):
    shards = [self._shards.get(k, {}) for k in range(self.num_shards)]
    text = json.dumps({"version": INDEX_VERSION, "shard_size": self.shard_size,
                       "has_depth": self.has_depth, "num": self.num,
                       "key": self.key,
                       "complete": all(shards), "shards": shards}, indent=1)
    tmp = self.dir / f".{INDEX_NAME}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, self.dir / INDEX_NAME)

  def close(self) -> int:
    """Finishes the open shard, writes the index; returns the records on disk.

    A shard all of whose items were skipped is written empty, so the index
    is complete.
    """
    self._finish()
    for k in range(self.num_shards):
      if k not in self._shards:
        self._open_shard, self._count = k, 0
        self._writer = tf.io.TFRecordWriter(str(self._tmp(k)))
        self._finish()
    self._write_index()
    return sum(s["count"] for s in self._shards.values())


# ----------------------------------------------------------------- reader ---

@dataclasses.dataclass(frozen=True)
class Split:
  """A checked records split: its shard paths and their record counts."""
  files: List[str]
  counts: List[int]
  has_depth: bool

  @property
  def size(self) -> int:
    return sum(self.counts)


def open_split(root, split: str) -> Split:
  """Reads the index and checks the shards; a shard missing or of another
  size than the index says (truncated, damaged) is named in a warning."""
  split_dir = pathlib.Path(root) / split
  index = read_index(split_dir)
  files, counts, bad = [], [], 0
  for shard in index["shards"]:
    if not shard:
      logging.warning("%s: a shard is unfinished (interrupted writer); resume the "
                      "prepare command to complete it", split_dir)
      continue
    path = split_dir / shard["file"]
    if not path.is_file():
      logging.warning("%s: missing; its %d records are skipped", path, shard["count"])
      bad += 1
      continue
    size = path.stat().st_size
    if size != shard["bytes"]:
      logging.warning("%s: %d bytes, the index says %d (truncated or damaged); "
                      "its readable records are used, the rest skipped", path,
                      size, shard["bytes"])
      bad += 1
    files.append(str(path))
    counts.append(int(shard["count"]))
  if bad:
    logging.warning("%s: %d of %d shards are damaged or missing (named above)",
                    split_dir, bad, len(index["shards"]))
  if not files or not sum(counts):
    raise ValueError(f"{split_dir}: no records to read")
  return Split(files, counts, bool(index["has_depth"]))


def _features(has_depth: bool) -> dict:
  spec = {"image": tf.io.FixedLenFeature([], tf.string),
          "name": tf.io.FixedLenFeature([], tf.string)}
  if has_depth:
    spec["depth"] = tf.io.FixedLenFeature([], tf.string)
  return spec


def _crop(x, crop):
  """Centre (int) or box (top, left, height, width) crop of [H, W, C]."""
  if crop is None:
    return x
  if isinstance(crop, int):
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    top, left = (h - crop) // 2, (w - crop) // 2
    return tf.slice(x, [top, left, 0], [crop, crop, -1])
  top, left, height, width = crop
  return tf.slice(x, [top, left, 0], [height, width, -1])


def _decoder(has_depth: bool, with_depth: bool, image_size: int, crop,
             min_depth: float = 0.9, max_depth: float = 1.1):
  """serialized record (, flip) -> image [S, S, 3] in [-1, 1] (, depth [S, S])."""
  spec = _features(has_depth)

  def decode(record, flip=None):
    e = tf.io.parse_single_example(record, spec)
    # Decoded as integers (a float decode converts every pixel); scaled once.
    x = tf.cast(tf.io.decode_image(e["image"], channels=3, expand_animations=False),
                tf.float32) / 255.0
    if with_depth:
      g = tf.cast(tf.io.decode_png(e["depth"], channels=1, dtype=tf.uint16),
                  tf.float32) / 65535.0
      x = tf.concat([x, g], axis=-1)
    x = _crop(x, crop)
    if flip is not None:
      x = tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)
    x = tf.image.resize(x, [image_size, image_size], method="bilinear", antialias=True)
    image = x[..., :3] * 2.0 - 1.0
    if not with_depth:
      return image
    return image, synthetic.depth_from_png_value(x[..., 3], min_depth, max_depth)
  return decode


def _record_stream(data: Split, seed: int, steps_per_epoch: int, rows: int,
                   start_step: int, part: int, parts: int) -> tf.data.Dataset:
  """Endless (serialized record, flip) pairs of worker `part`, from
  `start_step` (module docstring: how epochs deal out the shards)."""
  per_epoch = steps_per_epoch * rows
  files = tf.constant(data.files)
  num_shards = len(data.files)
  buffer = min(max(4 * rows, 256), data.size)
  seed = int(seed)

  def epoch(e):
    key = tf.stack([tf.constant(seed, tf.int64), e])
    order = tf.argsort(tf.random.stateless_uniform([num_shards], seed=key))
    mine = tf.gather(files, order[part::parts])
    # A truncated or corrupted record raises DataLossError; the reader then
    # moves on to the next shard.
    records = tf.data.TFRecordDataset(mine).ignore_errors(log_warning=True)
    # The buffer's seed must be a Python int: the epoch enters through the
    # shard order (and the flips) instead.
    records = records.shuffle(buffer, seed=seed * 1_000_003 + part)
    mix = tf.constant(seed * 1_000_003 + part, tf.int64) * 7919 + e
    # Exactly per_epoch records: cycled when this worker's shards hold fewer.
    records = records.repeat().take(per_epoch)
    flips = tf.random.stateless_uniform(
        [per_epoch], seed=tf.stack([mix, tf.constant(part + 1, tf.int64)])) < 0.5
    return tf.data.Dataset.zip((records, tf.data.Dataset.from_tensor_slices(flips)))

  first_epoch, skip = divmod(int(start_step), steps_per_epoch)
  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  return ds.skip(skip * rows)   # before decoding: resuming costs reads only


def _checked(root, split, batch_size, steps_per_epoch, parts) -> Split:
  data = open_split(root, split)
  if len(data.files) < parts:
    raise ValueError(f"{root}/{split}: {len(data.files)} shards for {parts} workers; "
                     "re-prepare with a smaller --shard_size (at least one shard "
                     "per worker, ideally ten or more)")
  if steps_per_epoch <= 0 or batch_size % parts:
    raise ValueError(f"records: steps_per_epoch={steps_per_epoch} must be > 0 and "
                     f"batch_size={batch_size} a multiple of {parts}")
  return data


def train_stream(root, split: str, image_size: int, batch_size: int, seed: int,
                 steps_per_epoch: int, start_step: int = 0, part: int = 0,
                 parts: int = 1, crop=None) -> tf.data.Dataset:
  """Endless [B / parts, S, S, 3] training batches of worker `part`.

  Batches are a function of (seed, step, part, parts) alone (module
  docstring). Images are flipped left-right with p = 0.5, drawn from
  (seed, epoch, part, position in the epoch).

  Raises ValueError if there are fewer shards than `parts` (re-prepare with
  a smaller --shard_size).
  """
  data = _checked(root, split, batch_size, steps_per_epoch, parts)
  rows = batch_size // parts
  ds = _record_stream(data, seed, steps_per_epoch, rows, start_step, part, parts)
  decode = _decoder(data.has_depth, False, image_size, crop)
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # A record whose image does not decode is dropped (TensorFlow logs why).
  ds = ds.ignore_errors(log_warning=True)
  return ds.batch(rows, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def names_stream(root, split: str, batch_size: int, seed: int, steps_per_epoch: int,
                 start_step: int = 0, part: int = 0, parts: int = 1):
  """The record names in the order `train_stream` reads them (the same
  stream, parsed instead of decoded; for tests and audits): an endless
  dataset of string batches [B / parts]."""
  data = _checked(root, split, batch_size, steps_per_epoch, parts)
  rows = batch_size // parts
  spec = _features(data.has_depth)
  ds = _record_stream(data, seed, steps_per_epoch, rows, start_step, part, parts)
  ds = ds.map(lambda r, flip: tf.io.parse_single_example(r, spec)["name"])
  return ds.batch(rows, drop_remainder=True)


def eval_dataset(root, split: str, image_size: int, batch_size: int,
                 with_depth: Optional[bool] = None, crop=None) -> tf.data.Dataset:
  """The split in shard order, unshuffled, unflipped: image batches, or
  (image, depth) batches when `with_depth` (default: if the split has depth)."""
  data = open_split(root, split)
  if with_depth is None:
    with_depth = data.has_depth
  if with_depth and not data.has_depth:
    raise ValueError(f"{root}/{split}: the records have no depth")
  ds = tf.data.TFRecordDataset(data.files).ignore_errors(log_warning=True)
  decode = _decoder(data.has_depth, with_depth, image_size, crop)
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def split_size(root, split: str) -> int:
  """Records of a split by its index (damaged shards still counted)."""
  return open_split(root, split).size


def write_folder_as_records(image_paths, out, split: str, shard_size: int,
                            progress: bool = True) -> int:
  """Copies encoded image files (bytes unchanged) into a records split;
  returns the records on disk. Used by the benchmark and tests."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  writer = RecordSplitWriter(out, split, len(image_paths), shard_size)
  for i, path in enumerate(tqdm(image_paths, desc=f"records {split}", unit="img",
                                file=sys.stderr, disable=not progress)):
    if writer.needed(i):
      with open(path, "rb") as f:
        writer.add(i, os.path.basename(path), f.read())
  return writer.close()
