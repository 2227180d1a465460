"""tf.data pipelines over image folders and image/depth pairs (docs/method.md §1, §6, §8).

Two layouts, one pipeline:
  * `image_folder_dataset`: every image under `<root>/<split>/` (any nesting),
    e.g. CelebA or cats. Yields image batches [B, S, S, 3] in [-1, 1].
  * `paired_dataset`: the synthetic-face layout of docs/method.md §8,
    `<root>/<split>/image/<name>_image.png` with
    `<root>/<split>/depth/<name>_depth.png`. Yields (image [B, S, S, 3] in
    [-1, 1], depth [B, S, S] in model units).
Both take a `FolderSettings` (size, batch, crop, shuffling, scan options).

Which files are read is decided up front by `tfsym3d.data.scan`: files are
listed recursively and sorted, checked once by the bounded loader's rules,
and unusable ones are skipped with a warning naming each and its reason
(that module's docstring has the details and the scan cache). This module
turns the scan's usable files into batches.

Images of any mode (grey, RGBA, palette, 16-bit) become RGB. JPEG and PNG are
decoded by TensorFlow inside the parallel map (fast); BMP, WebP, TIFF and
JPEGs TensorFlow cannot read (e.g. CMYK) by Pillow in a `tf.numpy_function`.
The format is taken from the file's content, not its extension.

A file that goes bad after the scan is skipped by the pipeline
(`ignore_errors`) rather than ending the run: if its byte size changed it is
routed to Pillow, which logs its path; otherwise TensorFlow logs the
decoder's error.
"""

import dataclasses
import io
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from tfsym3d.data import images
from tfsym3d.data import scan
from tfsym3d.data import synthetic
# The listing and checking of files live in `scan`; these names stay here
# for the callers that know them from this module.
from tfsym3d.data.scan import (IMAGE_EXTENSIONS, KIND_JPEG, KIND_PIL,  # noqa: F401
                               KIND_PNG, KIND_PNG16, SCAN_CACHE_NAME,
                               list_images, list_pairs, scan_files)
from tfsym3d.data.scan import _MEMO  # noqa: F401  (tests clear the scan memo here)
from tfsym3d.data.synthetic import depth_from_png_value  # noqa: F401  (re-exported)

Crop = Union[None, int, Sequence[int]]


# --------------------------------------------------------------------------
# Settings.

def _check_sizes(image_size, batch_size) -> None:
  """Raises ValueError unless both are positive ints."""
  for name, v in (("image_size", image_size), ("batch_size", batch_size)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
      raise ValueError(f"{name}={v!r}: must be a positive int")


def _parse_crop(crop: Crop) -> Optional[Tuple[int, ...]]:
  """None, (size,) for a centre crop, or (top, left, height, width)."""
  if crop is None:
    return None
  if isinstance(crop, (int, np.integer)) and not isinstance(crop, bool):
    if crop <= 0:
      raise ValueError(f"crop={crop}: a centre-crop size must be > 0")
    return (int(crop),)
  try:
    box = tuple(int(c) for c in crop)
  except TypeError:
    box = ()
  if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] <= 0 or box[3] <= 0:
    raise ValueError(
        f"crop={crop!r}: use None, an int (centre crop size) or a box "
        "(top, left, height, width) with top, left >= 0 and height, width > 0")
  return box


@dataclasses.dataclass(frozen=True)
class FolderSettings:
  """How a folder reader turns files into batches.

  Attributes:
    image_size: S.
    batch_size: B.
    training: shuffle and flip.
    crop: None; an int c (centre c x c crop); or (top, left, height, width).
      Images smaller than the crop are skipped with a warning.
    seed: shuffle and flip seed.
    drop_remainder: drop a last partial batch; None means `training`.
    first_epoch: training only. None: one epoch per iteration, reshuffled
      each time. An int e: an endless stream of epochs e, e + 1, ..., each
      shuffled and flipped by (seed, epoch) alone and holding whole batches
      only, so that a resumed run sees exactly the batches it would have.
    skip_batches: with first_epoch, batches of epoch e to skip (a run resumed
      mid-epoch); files are skipped before decoding.
    jpeg_draft: image folders without a crop: decode JPEGs at 1/2, 1/4 or
      1/8 size (the largest keeping every JPEG >= S x S) by libjpeg's DCT
      scaling, then resize as usual. This saves CPU on every image (the
      decode produces fewer pixels, the resize has fewer to shrink). The
      DCT scaling is itself a low-pass shrink, so the result stays close to
      the reference's resampling (PIL's antialiased bilinear resize of the
      full image): on smooth random JPEGs the mean abs error is 0.008 in
      [-1, 1] units (max 0.07) against 0.007 (max 0.03) for a full decode.
      False: full decode. The paired reader always decodes in full.
    scan_cache: True (JSON beside the data), a JSON path, or False (memory).
    progress: tqdm bar during the scan; None: only for large folders.
    max_pixels: the scan's pixel limit; None: `images.DEFAULT_MAX_PIXELS`.
  """
  image_size: int = 64
  batch_size: int = 64
  training: bool = True
  crop: Crop = None
  seed: int = 0
  drop_remainder: Optional[bool] = None
  first_epoch: Optional[int] = None
  skip_batches: int = 0
  jpeg_draft: bool = True
  scan_cache: Union[bool, str] = True
  progress: Optional[bool] = None
  max_pixels: Optional[int] = None

  def __post_init__(self):
    # Fail when the settings are made, naming the field, not in the pipeline.
    _parse_crop(self.crop)
    _check_sizes(self.image_size, self.batch_size)

  @property
  def scan_settings(self) -> scan.ScanSettings:
    """The part of the settings the scan uses."""
    return scan.ScanSettings(self.scan_cache, self.progress, self.max_pixels)

  @property
  def drops_remainder(self) -> bool:
    """Whether a last partial batch is dropped."""
    return self.training if self.drop_remainder is None else self.drop_remainder


# The paired layout is mostly used for evaluation, and the reference crops
# its 256 x 256 synthetic faces to the centre 170 x 170.
PAIRED_DEFAULTS = FolderSettings(training=False, crop=170)


def _settings(base: FolderSettings, settings: Optional[FolderSettings],
              options: dict, caller: str) -> FolderSettings:
  """`settings` (or `base`) with keyword overrides, naming unknown ones."""
  if settings is not None and not isinstance(settings, FolderSettings):
    # E.g. the image size passed in the place the settings now take.
    raise TypeError(f"{caller}: settings={settings!r} is not a FolderSettings; "
                    "pass its fields by name (image_size=..., batch_size=...)")
  fields = {f.name for f in dataclasses.fields(FolderSettings)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise TypeError(f"{caller}: unknown option(s) {', '.join(unknown)}; "
                    f"FolderSettings has {', '.join(sorted(fields))}")
  return dataclasses.replace(settings or base, **options)


# --------------------------------------------------------------------------
# Crops.

def _crop_need(crop) -> Optional[scan.MinSize]:
  """The smallest stored image a parsed crop fits in (None: any)."""
  if crop is None:
    return None
  if len(crop) == 1:
    return scan.MinSize(crop[0], crop[0], f"{crop[0]}x{crop[0]} centre crop")
  top, left, height, width = crop
  return scan.MinSize(top + height, left + width,
                      f"crop box (top, left, height, width) = {crop}")


def _cropped_hw(crop, w: int, h: int) -> Tuple[int, int]:
  """(height, width) of a w x h image after the crop."""
  if crop is None:
    return h, w
  if len(crop) == 1:
    return crop[0], crop[0]
  return crop[2], crop[3]


def _crop_window(crop, h, w):
  """[top, left, height, width] int32 for an image of height h, width w.

  A centre crop puts the top-left corner at round((h - c) / 2) rounding
  halves to even, as Python's round() in torchvision's CenterCrop does.
  """
  if len(crop) == 1:
    c = crop[0]
    top = tf.cast(tf.round(tf.cast(h - c, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(w - c, tf.float32) / 2), tf.int32)
    return tf.stack([top, left, c, c])
  return tf.constant(crop, tf.int32)


# --------------------------------------------------------------------------
# Decoding (graph side).

def _pil_decode(contents: bytes, path: bytes) -> np.ndarray:
  """numpy_function body: decode bytes with Pillow; warn with the path on failure."""
  try:
    with Image.open(io.BytesIO(contents)) as im:
      return images.pil_to_rgb01(im)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("skipping %s: unreadable at load time (%s: %s); it changed "
                    "since the scan, fix or delete it", path.decode(),
                    type(e).__name__, e)
    raise


def _storage_dtype(kinds) -> tf.DType:
  """The narrowest dtype that holds every decoder's output exactly.

  Decoded images travel to the batched resize in this dtype: uint8 batches
  (all JPEG, e.g. CelebA) move 4x less memory than float32 ones, which makes
  the whole pipeline markedly faster.
  """
  kinds = set(int(k) for k in np.ravel(kinds))
  if kinds <= {KIND_JPEG, KIND_PNG}:
    return tf.uint8
  if kinds <= {KIND_JPEG, KIND_PNG, KIND_PNG16}:
    return tf.uint16  # 8-bit values x 257 are exact
  return tf.float32


def _value_scale(dtype: tf.DType) -> float:
  """Factor mapping a dtype's values to [0, 1]."""
  return {tf.uint8: 1 / 255, tf.uint16: 1 / 65535}.get(dtype, 1.0)


def _convert(x, src: tf.DType, dst: tf.DType):
  """Converts decoded values between uint8, uint16 and float32 in [0, 1]."""
  if src == dst:
    return x
  if dst == tf.float32:
    return tf.cast(x, tf.float32) * _value_scale(src)
  if src == tf.uint8 and dst == tf.uint16:
    return tf.cast(x, tf.uint16) * 257
  # float32 [0, 1] -> integers (a Pillow fallback inside an integer pipeline)
  x = tf.round(tf.clip_by_value(x, 0.0, 1.0) / _value_scale(dst))
  return tf.cast(x, dst)


class _Decode(NamedTuple):
  """How one file is decoded: the same for every file of a pipeline.

  crop: parsed crop or None. dtype: output dtype (`_storage_dtype`); values
  0..255 (uint8), 0..65535 (uint16) or [0, 1] (float32). channels: 3 for
  RGB; 1 for the first channel only (depth maps: grey, or the red channel of
  RGB, never a luminance mix). jpeg_ratio: 1, 2, 4 or 8: JPEGs decoded at
  1/ratio of their size (libjpeg's DCT scaling; only without a crop).
  """
  crop: Optional[Tuple[int, ...]]
  dtype: tf.DType
  channels: int = 3
  jpeg_ratio: int = 1


def _decoders(contents, path, spec: _Decode):
  """The decode-and-crop branches, indexed by KIND_*, for one file's bytes."""
  crop, dtype, channels = spec.crop, spec.dtype, spec.channels

  def crop_decoded(x):
    x = x[..., :channels]
    if crop is None:
      return x
    win = _crop_window(crop, tf.shape(x)[0], tf.shape(x)[1])
    # tf.slice fails (and the element is dropped) if the window does not fit.
    return tf.slice(x, [win[0], win[1], 0], [win[2], win[3], channels])

  def jpeg():
    if crop is None:
      x = tf.io.decode_jpeg(contents, channels=3, ratio=spec.jpeg_ratio)
    else:
      shape = tf.image.extract_jpeg_shape(contents)
      # Decoding only the window skips work outside the crop.
      x = tf.io.decode_and_crop_jpeg(
          contents, _crop_window(crop, shape[0], shape[1]), channels=3)
    # (channels=1 in the decoder would mix RGB to luminance.)
    return _convert(x[..., :channels], tf.uint8, dtype)

  def png(bits):
    # Native channels (0) keeps grey depth maps cheap and RGB ones un-mixed.
    x = tf.io.decode_png(contents, channels=channels if channels == 3 else 0,
                         dtype=bits)
    return _convert(crop_decoded(x), bits, dtype)

  def pil():
    x = tf.numpy_function(_pil_decode, [contents, path], tf.float32,
                          stateful=False)
    x.set_shape([None, None, 3])
    return _convert(crop_decoded(x), tf.float32, dtype)

  png8 = lambda: png(tf.uint8)
  # In a uint8 pipeline there is no 16-bit file (and a changed one goes to
  # Pillow), so the 16-bit branch need not be traced.
  png16 = (lambda: png(tf.uint16)) if dtype != tf.uint8 else pil
  return [jpeg, png8, pil, png16]


def _decode_crop(element: dict, role: str, spec: _Decode):
  """Reads, decodes and crops one file of a scan element.

  Args:
    element: the tf.data element of `scan.Scan.elements`; `role` names the
      file (its path, decoder kind and byte size at scan time).
    role: "image" or "depth".
    spec: how to decode.

  Returns:
    [H, W, spec.channels] of `spec.dtype` (H, W after the crop).
  """
  path = element[role]
  contents = tf.io.read_file(path)
  # A file rewritten since the scan goes through Pillow, which names it if
  # it is now unreadable (TensorFlow's decoders cannot say which file failed).
  kind = tf.where(tf.cast(tf.strings.length(contents), tf.int64)
                  == element[f"{role}_nbytes"], element[f"{role}_kind"], KIND_PIL)
  return tf.switch_case(kind, _decoders(contents, path, spec))


def _resize(x, image_size: int):
  """Bilinear resize of [..., H, W, C] to S x S, antialiased when shrinking.

  Antialiasing widens the bilinear (triangle) kernel by the shrink factor, as
  PIL's resize does in the reference implementation.
  """
  return tf.image.resize(x, [image_size, image_size], method="bilinear",
                         antialias=True)


# --------------------------------------------------------------------------
# The pipeline shared by both layouts.

def _epoch_stream(elements: dict, settings: FolderSettings) -> tf.data.Dataset:
  """Endless (element, flip) stream, epoch after epoch from `first_epoch`.

  Epoch e is a permutation of the files and a flip bit per file, both drawn
  statelessly from (seed, e); it holds whole batches only (n // B * B files),
  so epoch e's batch k is the stream's batch e * (n // B) + k whatever
  happened before. Skipping happens on file indices, before any decoding:
  resuming deep into an epoch costs nothing.
  """
  n = len(next(iter(elements.values())))
  batch_size, seed = settings.batch_size, settings.seed
  per_epoch = n // batch_size * batch_size
  if per_epoch == 0:
    raise ValueError(f"{n} usable files: fewer than one batch of {batch_size}")
  table = {k: tf.constant(v) for k, v in elements.items()}

  def epoch(e):
    order_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(
        tf.stack([tf.constant(seed, tf.int64), e]), 2))
    order = tf.argsort(tf.random.stateless_uniform([n], seed=order_key))[:per_epoch]
    flips = tf.random.stateless_uniform([per_epoch], seed=flip_key) < 0.5
    return tf.data.Dataset.from_tensor_slices((order, flips))

  ds = tf.data.Dataset.range(settings.first_epoch,
                             np.iinfo(np.int64).max).flat_map(epoch)
  ds = ds.skip(settings.skip_batches * batch_size)
  return ds.map(lambda i, flip: ({k: tf.gather(v, i) for k, v in table.items()}, flip))


def _file_stream(elements: dict, settings: FolderSettings) -> tf.data.Dataset:
  """Elements in reading order: as listed (evaluation), shuffled per
  iteration with a flip bit each (training), or the resumable epoch stream."""
  if settings.first_epoch is not None:
    if not settings.training:
      raise ValueError("first_epoch is for training streams (training=True)")
    return _epoch_stream(elements, settings)
  ds = tf.data.Dataset.from_tensor_slices(elements)
  if not settings.training:
    return ds
  n = len(next(iter(elements.values())))
  ds = ds.shuffle(n, seed=settings.seed, reshuffle_each_iteration=True)
  # Flip bits are drawn before the parallel map, so they are deterministic.
  flips = tf.data.Dataset.random(seed=settings.seed, rerandomize_each_iteration=True)
  return tf.data.Dataset.zip((ds, flips.map(lambda r: r % 2 == 1)))


def _assemble(elements: dict, decode: Callable, value_scale: float,
              finish: Callable, same_shape: Optional[Tuple[int, int, int]],
              settings: FolderSettings) -> tf.data.Dataset:
  """files -> [shuffle, flip bits] (training) -> parallel decode + crop
  [+ flip] -> ignore_errors -> batch -> resize, finish -> prefetch.

  Args:
    elements: `scan.Scan.elements()`.
    decode: element dict -> [h, w, C] cropped, values in [0, 1 / value_scale].
    value_scale: maps decoded values to [0, 1] (1/255 for uint8, ...).
    finish: (float32 [B, S, S, C] in [0, 1 / value_scale], value_scale) ->
      the batch to yield. It applies the scale itself, so that it can fold
      it into its own arithmetic (each extra op over the float batch is a
      visible share of the pipeline's CPU time).
    same_shape: (h, w, C) when every cropped image has this shape (known from
      the scan): then whole batches are resized in one op, several times
      faster than resizing each image (the op is parallel over the batch).
      None: each image is resized on its own before batching.
    settings: size, batch and shuffling.
  """
  image_size = settings.image_size

  def per_file(e, flip=None):
    x = decode(e)
    if flip is not None:
      # Mirroring the small integer image costs less than mirroring the float
      # batch, and gives the same result: the resampling is symmetric.
      x = tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)
    if same_shape is None:
      return _resize(x, image_size)
    # A file whose size changed since the scan fails here and is dropped
    # (a mismatched shape would otherwise break the whole batch).
    return tf.ensure_shape(x, same_shape)

  def per_batch(x):
    if same_shape is not None:
      x = _resize(x, image_size)
    return finish(x, value_scale)  # the resize returns float32

  ds = _file_stream(elements, settings)
  ds = ds.map(per_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(settings.batch_size, drop_remainder=settings.drops_remainder)
  ds = ds.map(per_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def _jpeg_ratio(sizes, image_size: int) -> int:
  """Largest DCT scaling ratio keeping every (w, h) JPEG at least S x S."""
  for r in (8, 4, 2):
    if all(-(-w // r) >= image_size and -(-h // r) >= image_size
           for w, h in sizes):
      return r
  return 1


def _same_shape(sizes, crop, channels: int) -> Optional[Tuple[int, int, int]]:
  """(h, w, channels) if every (w, h) in sizes gives one cropped shape."""
  shapes = {_cropped_hw(crop, w, h) for w, h in sizes}
  if len(shapes) == 1:
    return (*shapes.pop(), channels)
  return None


def _drafted_sizes(found: scan.Scan, settings: FolderSettings, crop):
  """(JPEG ratio, per-file (w, h) as decoded) of an image folder."""
  sizes, kinds = found.sizes, found.kinds[:, 0]
  if not settings.jpeg_draft or crop is not None:
    return 1, sizes
  jpegs = [wh for wh, k in zip(sizes, kinds) if k == KIND_JPEG]
  ratio = _jpeg_ratio(jpegs, settings.image_size) if jpegs else 1
  return ratio, [(-(-w // ratio), -(-h // ratio)) if k == KIND_JPEG else (w, h)
                 for (w, h), k in zip(sizes, kinds)]


# --------------------------------------------------------------------------
# Public pipelines.

def image_folder_dataset(root, split, settings: Optional[FolderSettings] = None,
                         **options) -> tf.data.Dataset:
  """Batches of images from `<root>/<split>/**` (docs/method.md §1 and §6).

  Each image: decoded to RGB, optionally cropped, resized to S x S (bilinear,
  antialiased when shrinking), scaled to [-1, 1] by x / 255 * 2 - 1. When
  training: shuffled (seeded, reshuffled every epoch) and mirrored left-right
  with p = 0.5 (seeded). Unusable files are skipped with warnings
  (`tfsym3d.data.scan`).

  Args:
    root: dataset root folder.
    split: sub-folder, e.g. 'train', 'val', 'test'.
    settings: a FolderSettings; None: its defaults.
    **options: FolderSettings fields overriding `settings`, for callers that
      set a few (`image_size=32, training=False`).

  Returns:
    A dataset of float32 [B, S, S, 3] batches.

  Raises:
    FileNotFoundError / ValueError: missing or empty folder, bad `crop`, or
    no usable image at all.
  """
  settings = _settings(FolderSettings(), settings, options, "image_folder_dataset")
  crop = _parse_crop(settings.crop)
  found = scan.scan_images(root, split, _crop_need(crop), settings.scan_settings)
  dtype = _storage_dtype(found.kinds)
  ratio, sizes = _drafted_sizes(found, settings, crop)
  spec = _Decode(crop, dtype, jpeg_ratio=ratio)

  def decode(e):
    return _decode_crop(e, "image", spec)

  def finish(x, scale):
    return x * (2.0 * scale) - 1.0

  return _assemble(found.elements(), decode, _value_scale(dtype), finish,
                   _same_shape(sizes, crop, 3), settings)


def paired_dataset(root, split, settings: Optional[FolderSettings] = None,
                   depth_range: Tuple[float, float] = (synthetic.MIN_DEPTH,
                                                       synthetic.MAX_DEPTH),
                   **options) -> tf.data.Dataset:
  """Batches of (image, ground-truth depth) in the docs/method.md §8 layout.

  The image is processed as in `image_folder_dataset`. The depth PNG (8- or
  16-bit grey, or RGB whose first channel is used) gives g = value / dtype
  maximum, then d = `synthetic.depth_from_png_value(g)`. Both get the same
  crop (default: centre 170, as the reference), the same resize (bilinear,
  antialiased when shrinking, like PIL's resize in the reference: depth
  values are interpolated linearly, which blends depths across object edges)
  and, when training, the same flip. A pair whose files are unusable, differ
  in size or are smaller than the crop is skipped with a warning.

  Args:
    root, split: as in `image_folder_dataset`.
    settings: a FolderSettings; None: `PAIRED_DEFAULTS` (no training
      shuffle, centre crop 170).
    depth_range: (min_depth, max_depth), the model's depth range
      (docs/method.md §2).
    **options: FolderSettings fields overriding `settings`.

  Returns:
    A dataset of (float32 [B, S, S, 3], float32 [B, S, S]).

  Raises:
    FileNotFoundError / ValueError: missing folders, no images, an image
    without its depth partner, bad `crop`, or no usable pair.
  """
  settings = _settings(PAIRED_DEFAULTS, settings, options, "paired_dataset")
  min_depth, max_depth = depth_range
  crop = _parse_crop(settings.crop)
  found = scan.scan_pairs(root, split, _crop_need(crop), settings.scan_settings)
  dtype = _storage_dtype(found.kinds)
  image_spec, depth_spec = _Decode(crop, dtype), _Decode(crop, dtype, channels=1)

  def decode(e):
    # One tensor through resize and flip: identical geometry by construction.
    # (If the two no longer match in size, concat fails: the pair is dropped.)
    return tf.concat([_decode_crop(e, "image", image_spec),
                      _decode_crop(e, "depth", depth_spec)], axis=-1)

  def finish(both, scale):
    image = both[..., :3] * (2.0 * scale) - 1.0
    depth = depth_from_png_value(both[..., 3] * scale, min_depth, max_depth)
    return image, depth

  return _assemble(found.elements(), decode, _value_scale(dtype), finish,
                   _same_shape(found.sizes, crop, 4), settings)
