"""Which data a run trains and evaluates on, built from the data flags.

A `DataSource` turns `--dataset`, `--data_dir`, `--crop`, `--image_size`,
`--batch_size` and `--seed` into:

- `train_stream(start_step, steps_per_epoch)`: an endless `tf.data` stream of
  [B, S, S, 3] training batches whose content is a function of the global
  step alone, so a resumed run continues with exactly the batch it would
  have seen (epoch e of a folder is shuffled with the seed (seed, e); synfaces
  batch g holds samples g*B .. g*B + B - 1);
- `eval_dataset(split, num)`: batches of (image, depth_gt) for ground-truth
  data, or of images alone;
- `check()`: fails at once, before any model is built, when the data is
  missing, saying how to prepare it.
"""

import dataclasses
import pathlib
from typing import Optional

import numpy as np
import tensorflow as tf

from tfsym3d.data import folders
from tfsym3d.data import records
from tfsym3d.data import scan
from tfsym3d.data import synthetic

DATASETS = ("synfaces", "folder", "paired", "records")


class DataNotFoundError(FileNotFoundError):
  """The configured dataset is missing; the message says how to prepare it."""


def parse_crop(text: Optional[str]):
  """--crop text -> None, an int, or (top, left, height, width)."""
  if text is None or not str(text).strip() or str(text).strip().lower() == "none":
    return None
  parts = [p.strip() for p in str(text).split(",")]
  try:
    values = [int(p) for p in parts]
  except ValueError:
    raise ValueError(f"--crop={text!r}: give an int (centre crop) or "
                     "'top,left,height,width'") from None
  if len(values) == 1:
    return values[0]
  if len(values) == 4:
    return tuple(values)
  raise ValueError(f"--crop={text!r}: give an int (centre crop) or "
                   "'top,left,height,width'")


@dataclasses.dataclass(frozen=True)
class DataSource:
  """The data of a run (see the module docstring).

  Attributes:
    dataset: 'synfaces', 'folder', 'paired' or 'records' (sharded TFRecord
      files, `tfsym3d.data.records`: under multi-worker training each
      worker reads and decodes only its own shards).
    data_dir: dataset root (folder, paired); unused for synfaces.
    image_size: S.
    batch_size: global batch B.
    crop: None, int or (top, left, height, width) (folder and paired).
    seed: data seed.
    max_image_pixels: folder and paired images with more pixels are skipped
      before decoding (0: no limit; None: `images.DEFAULT_MAX_PIXELS`).
  """
  dataset: str = "synfaces"
  data_dir: Optional[str] = None
  image_size: int = 64
  batch_size: int = 64
  crop: object = None
  seed: int = 0
  max_image_pixels: Optional[int] = None

  @property
  def has_ground_truth(self) -> bool:
    """Whether eval batches carry ground-truth depth (synfaces, paired, and
    records written with depth)."""
    if self.dataset == "records":
      return self.check_records_depth()
    return self.dataset in ("synfaces", "paired")

  def check_records_depth(self) -> bool:
    """Whether a records dataset's train (or else test) split holds depth."""
    for split in ("train", "test", "val"):
      try:
        return bool(records.read_index(pathlib.Path(self.data_dir) / split)["has_depth"])
      except (FileNotFoundError, ValueError, TypeError):
        continue
    return False

  def _prepare_hint(self) -> str:
    """The command that writes this dataset, for missing-data errors."""
    if self.dataset == "records":
      return ("write one with `python -m tfsym3d.data.prepare synfaces|celeba ... "
              f"--layout=records --out {self.data_dir or 'DIR'}`")
    if self.dataset == "paired":
      return ("write one with `python -m tfsym3d.data.prepare synfaces --out "
              f"{self.data_dir or 'DIR'} --num 20000` or point --data_dir at the "
              "reference's synthetic faces (<split>/image, <split>/depth)")
    return ("prepare CelebA with `python -m tfsym3d.data.prepare celeba --src "
            f"CELEBA_RELEASE --out {self.data_dir or 'DIR'}`, or point --data_dir at "
            "any folder with train/, val/ and test/ sub-folders of images")

  def check(self, splits=("train",)) -> None:
    """Raises DataNotFoundError (with a preparation hint) if data is missing."""
    if self.dataset not in DATASETS:
      raise ValueError(f"--dataset={self.dataset!r}: use one of {DATASETS}")
    if self.dataset == "synfaces":
      return
    if not self.data_dir:
      raise DataNotFoundError(f"--dataset={self.dataset} needs --data_dir; "
                              + self._prepare_hint())
    for split in splits:
      where = pathlib.Path(self.data_dir) / split
      if self.dataset == "records" and where.is_dir() and not (
          where / records.INDEX_NAME).is_file():
        raise DataNotFoundError(f"--data_dir={self.data_dir}: {where} has no "
                                f"{records.INDEX_NAME}; " + self._prepare_hint())
      if not where.is_dir():
        raise DataNotFoundError(f"--data_dir={self.data_dir}: no '{split}' folder "
                                f"({where} does not exist); " + self._prepare_hint())

  # -- training ------------------------------------------------------------

  def train_size(self) -> Optional[int]:
    """Training images per epoch (None for the endless generator)."""
    if self.dataset == "synfaces":
      return None
    if self.dataset == "paired":
      return len(scan.list_pairs(self.data_dir, "train"))
    if self.dataset == "records":
      return records.split_size(self.data_dir, "train")
    return len(scan.list_images(self.data_dir, "train"))

  def train_stream(self, start_step: int = 0, steps_per_epoch: int = 0,
                   part: int = 0, parts: int = 1) -> tf.data.Dataset:
    """Endless [B, S, S, 3] training batches from global step `start_step`.

    Args:
      start_step: batches already consumed (a resumed run's step).
      steps_per_epoch: batches per epoch (folder and paired: the epoch length
        that decides which shuffled epoch `start_step` falls in).
      part, parts: yield only rows [part * b, (part + 1) * b) of each global
        batch, b = B / parts (one worker's share in multi-worker training);
        the parts of a step together are exactly the one-process batch.
        Records: worker `part` reads only its own shards instead (each image
        decoded once per epoch over the cluster); the parts are then not the
        one-process batch, but together cover the epoch.
    """
    if parts < 1 or not 0 <= part < parts or self.batch_size % parts:
      raise ValueError(f"train_stream: part {part} of {parts} does not divide "
                       f"--batch_size={self.batch_size} (use a multiple of {parts})")
    if self.dataset == "synfaces":
      # Only this part's samples are generated.
      return _synfaces_batches(self.image_size, self.batch_size, self.seed,
                               "train", start_step * self.batch_size, None,
                               training=True, part=part, parts=parts)
    if self.dataset == "records":
      return records.train_stream(self.data_dir, "train", self.image_size,
                                  self.batch_size, self.seed, steps_per_epoch,
                                  start_step, part, parts, crop=self.crop)
    stream = self._folder_stream(start_step, steps_per_epoch)
    if parts == 1:
      return stream
    rows = self.batch_size // parts
    # Every worker reads the whole global batch and keeps its rows: simple
    # and exact; decoding is repeated on each worker (--dataset=records
    # avoids that).
    return stream.map(lambda batch: batch[part * rows:(part + 1) * rows])

  def _folder_stream(self, start_step, steps_per_epoch):
    """Whole global batches of a folder or paired dataset from `start_step`."""
    if steps_per_epoch <= 0:
      raise ValueError("train_stream: steps_per_epoch must be > 0 for a folder")
    epoch, skip = divmod(start_step, steps_per_epoch)
    settings = self._folder_settings(self.batch_size, training=True,
                                     first_epoch=epoch, skip_batches=skip)
    if self.dataset == "paired":
      return folders.paired_dataset(self.data_dir, "train", settings).map(
          lambda image, depth: image)
    return folders.image_folder_dataset(self.data_dir, "train", settings)

  def _folder_settings(self, batch_size: int, **fields) -> folders.FolderSettings:
    """The folder readers' settings of this source, plus `fields`."""
    return folders.FolderSettings(image_size=self.image_size, batch_size=batch_size,
                                  crop=self.crop, seed=self.seed,
                                  max_pixels=self.max_image_pixels, **fields)

  # -- evaluation ----------------------------------------------------------

  def eval_dataset(self, split: str, num: Optional[int] = None,
                   batch_size: Optional[int] = None) -> tf.data.Dataset:
    """Unshuffled, unflipped batches of a split.

    Yields (image [B, S, S, 3], depth_gt [B, S, S]) when `has_ground_truth`,
    else image batches. `num` caps the images (required for synfaces).
    """
    batch = batch_size or self.batch_size
    if self.dataset == "synfaces":
      if not num:
        raise ValueError("eval_dataset: synfaces needs a number of images")
      return _synfaces_batches(self.image_size, batch, self.seed, split, 0, num,
                               training=False, with_depth=True)
    if self.dataset == "records":
      ds = records.eval_dataset(self.data_dir, split, self.image_size, batch,
                                with_depth=self.has_ground_truth, crop=self.crop)
    else:
      settings = self._folder_settings(batch, training=False, drop_remainder=False)
      if self.dataset == "paired":
        ds = folders.paired_dataset(self.data_dir, split, settings)
      else:
        ds = folders.image_folder_dataset(self.data_dir, split, settings)
    if num:
      ds = ds.unbatch().take(num).batch(batch)
    return ds


def _synfaces_batches(image_size, batch_size, seed, split, start, num, training,
                      with_depth=False, part=0, parts=1):
  """Synfaces samples start, start + 1, ... of a split as batches.

  Samples are generated in parallel (two NumPy workers; the generator
  releases the GIL in its array work). Training flips each image left-right
  with p = 0.5, decided by (seed, index) alone. With `parts` > 1 (training
  only; `start` a multiple of `batch_size`) only rows [part * b, (part + 1)
  * b) of each batch are made, b = batch_size / parts, in batches of b.
  """
  generator = synthetic.SynFaces(image_size=image_size, seed=seed)
  offset = synthetic.split_offset(split)

  def make(index):
    s = generator.sample(int(index))
    image = s["image"].astype(np.float32) / 127.5 - 1.0
    return image, s["depth"]

  def load(i):
    image, depth = tf.numpy_function(make, [i + offset], (tf.float32, tf.float32),
                                     stateful=False)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    depth = tf.ensure_shape(depth, [image_size, image_size])
    if training:
      coin = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), i]))
      image = tf.cond(coin < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
    return (image, depth) if with_depth else image

  stop = None if num is None else start + num
  ds = tf.data.Dataset.range(start, stop if stop is not None else np.iinfo(np.int64).max)
  if parts > 1:
    rows = batch_size // parts
    ds = ds.filter(lambda i: (i - start) % batch_size // rows == part)
    batch_size = rows
  ds = ds.map(load, num_parallel_calls=2, deterministic=True)
  return ds.batch(batch_size, drop_remainder=training).prefetch(2)
