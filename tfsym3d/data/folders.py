"""tf.data pipelines over image folders and image/depth pairs (docs/method.md §1, §6, §8).

Two layouts:
  * `image_folder_dataset`: every image under `<root>/<split>/` (any nesting),
    e.g. CelebA or cats. Yields image batches [B, S, S, 3] in [-1, 1].
  * `paired_dataset`: the synthetic-face layout of docs/method.md §8,
    `<root>/<split>/image/<name>_image.png` with
    `<root>/<split>/depth/<name>_depth.png`. Yields (image [B, S, S, 3] in
    [-1, 1], depth [B, S, S] in model units).

Images of any mode (grey, RGBA, palette, 16-bit) become RGB. JPEG and PNG are
decoded by TensorFlow inside the parallel map (fast); BMP, WebP, TIFF and
JPEGs TensorFlow cannot read (e.g. CMYK) by Pillow in a `tf.numpy_function`.
The format is taken from the file's content, not its extension.

Bad input: every file is checked once, up front, by Pillow (open, full decode,
size against the crop). Unreadable, truncated, empty, non-image and too-small
files are skipped, each with an absl warning naming it, then one summary
warning with the count. The result is cached per (path, mtime, size) in memory
and in a JSON file (default `<root>/<split>/.tfsym3d_scan.json`, skipped if
the folder is read-only), so later runs only re-check new or changed files.
A file that goes bad after the scan is skipped by the pipeline (`ignore_errors`)
rather than ending the run: if its byte size changed it is routed to Pillow,
which logs its path; otherwise TensorFlow logs the decoder's error.
"""

import concurrent.futures
import io
import json
import os
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from tfsym3d.data import images
from tfsym3d.data.synthetic import depth_from_png_value  # noqa: F401  (re-exported)

IMAGE_EXTENSIONS = images.IMAGE_EXTENSIONS
SCAN_CACHE_NAME = ".tfsym3d_scan.json"
# 3: the pixel limit (images.DEFAULT_MAX_PIXELS) is part of the probe.
_SCAN_CACHE_VERSION = 3
# Decoder per file, chosen from the content at scan time (PNG: 8-bit or less
# per channel, PNG16: 16-bit).
KIND_JPEG, KIND_PNG, KIND_PIL, KIND_PNG16 = 0, 1, 2, 3
# Folders with at least this many unscanned files show a tqdm progress bar.
_PROGRESS_MIN_FILES = 500

Crop = Union[None, int, Sequence[int]]
# In-memory scan cache: (path, mtime_ns, size) -> probe result.
_MEMO: Dict[Tuple[str, int, int], dict] = {}


# --------------------------------------------------------------------------
# Listing.

def _split_dir(root, split) -> pathlib.Path:
  """`<root>/<split>` as a Path; FileNotFoundError if it is not a directory."""
  d = pathlib.Path(root) / split
  if not d.is_dir():
    raise FileNotFoundError(
        f"{d}: no such directory; expected the '{split}' split under the "
        f"dataset root {root} (check --data_dir / the split name)")
  return d


def _images_under(d: pathlib.Path) -> List[pathlib.Path]:
  """Image files (by extension, case-insensitive) under d, recursive, sorted."""
  return sorted(p for p in d.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def list_images(root, split) -> List[str]:
  """Paths of all images under `<root>/<split>/`, recursive and sorted.

  Extensions (case-insensitive): jpg, jpeg, png, bmp, webp, tif, tiff. The
  files are not opened here.

  Raises:
    FileNotFoundError: `<root>/<split>` is not a directory.
    ValueError: it holds no image file.
  """
  d = _split_dir(root, split)
  files = _images_under(d)
  if not files:
    raise ValueError(
        f"{d}: no images found (looked recursively for "
        f"{', '.join(IMAGE_EXTENSIONS)}); point --data_dir at a folder of images")
  return [str(p) for p in files]


def list_pairs(root, split) -> List[Tuple[str, str]]:
  """(image, depth) paths of the docs/method.md §8 layout, sorted by image path.

  `<root>/<split>/image/<rel>_image.<ext>` pairs with
  `<root>/<split>/depth/<rel>_depth.<ext>` (`<rel>` may contain folders; the
  extensions need not match, `.png` is the reference's).

  Raises:
    FileNotFoundError: the split, its `image/` or its `depth/` folder is missing.
    ValueError: no `*_image.<ext>` file; an image without its depth partner
      (the message names the expected depth path). Other files in `image/`
      (e.g. temporary files) are skipped with a warning.
  """
  d = _split_dir(root, split)
  layout = (f"the paired layout (docs/method.md §8) is {d}/image/<name>_image.png with "
            f"{d}/depth/<name>_depth.png")
  image_dir, depth_dir = d / "image", d / "depth"
  for sub in (image_dir, depth_dir):
    if not sub.is_dir():
      raise FileNotFoundError(f"{sub}: no such directory; {layout}")
  images = _images_under(image_dir)
  if not images:
    raise ValueError(f"{image_dir}: no images found; {layout}")
  depths = {}
  for p in _images_under(depth_dir):
    rel = p.relative_to(depth_dir).with_suffix("").as_posix()
    if rel.endswith("_depth"):
      depths[rel[:-len("_depth")]] = p
  pairs, missing, strays = [], [], []
  for p in images:
    rel = p.relative_to(image_dir).with_suffix("").as_posix()
    if not rel.endswith("_image"):
      # E.g. a temporary file left by an interrupted writer: not fatal.
      strays.append(p)
      continue
    key = rel[:-len("_image")]
    if key in depths:
      pairs.append((str(p), str(depths[key])))
    else:
      missing.append((p, depth_dir / f"{key}_depth.png"))
  if missing:
    p, want = missing[0]
    raise ValueError(
        f"{p}: no depth partner, expected {want} ({len(missing)} of "
        f"{len(images)} images in {image_dir} lack one); {layout}")
  for p in strays:
    logging.warning("skipping %s: not named <name>_image.<ext>, so it has no "
                    "depth partner; rename or delete it", p)
  if not pairs:
    raise ValueError(f"{image_dir}: no file named <name>_image.<ext>; {layout}")
  return pairs


# --------------------------------------------------------------------------
# Up-front validation with Pillow.

def _probe(path: str) -> dict:
  """Opens and fully decodes one file; returns its decoder kind and size.

  Returns:
    {"kind": int, "w": int, "h": int} or {"error": str}.
  """
  try:
    with Image.open(path) as im:
      w, h = im.size
      fmt, mode = im.format, im.mode
      # The same pixel limit as every other reader: refused undecoded.
      images.check_size(path, w, h, images.DEFAULT_MAX_PIXELS)
      if fmt == "JPEG":
        # Decoding at 1/8 scale still reads the whole stream (so truncation
        # is caught) but is several times faster.
        im.draft(mode, (max(1, w // 8), max(1, h // 8)))
      im.load()
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError,
    # DecompressionBombError, ...): any of them means unusable.
    return {"error": f"{type(e).__name__}: {e}"}
  if fmt == "JPEG" and mode in ("L", "RGB"):
    kind = KIND_JPEG
  elif fmt == "PNG":
    # Pillow reads 16-bit RGB as 8-bit "RGB": take the bit depth from IHDR
    # (byte 24: 8 signature + 4 length + 4 type + 4 width + 4 height).
    try:
      with open(path, "rb") as f:
        header = f.read(25)
    except OSError as e:
      return {"error": f"{type(e).__name__}: {e}"}
    kind = KIND_PNG16 if len(header) == 25 and header[24] == 16 else KIND_PNG
  else:
    kind = KIND_PIL
  return {"kind": kind, "w": w, "h": h}


def _load_json_cache(cache_file: Optional[pathlib.Path]) -> dict:
  if cache_file is None or not cache_file.is_file():
    return {}
  try:
    data = json.loads(cache_file.read_text())
    if data.get("version") == _SCAN_CACHE_VERSION:
      return data["files"]
  except Exception as e:  # pylint: disable=broad-except
    logging.info("ignoring unreadable scan cache %s (%s)", cache_file, e)
  return {}


def _save_json_cache(cache_file: pathlib.Path, files: dict) -> None:
  tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
  try:
    tmp.write_text(json.dumps({"version": _SCAN_CACHE_VERSION, "files": files}))
    os.replace(tmp, cache_file)  # atomic: concurrent readers see old or new
  except OSError as e:
    # Read-only datasets are normal; the in-memory cache still works.
    logging.info("could not write scan cache %s (%s)", cache_file, e)
    try:
      tmp.unlink()
    except OSError:
      pass


def scan_files(paths: Sequence[str], cache_file=None,
               progress: Optional[bool] = None) -> Dict[str, dict]:
  """Probes files with Pillow, reusing cached results of unchanged files.

  Args:
    paths: files to check.
    cache_file: JSON cache path, or None for the in-memory cache only.
    progress: show a tqdm bar; None shows one for >= 500 unscanned files.

  Returns:
    path -> {"kind", "w", "h"} or {"error": str}. A file that cannot even be
    stat'ed gets an error entry.
  """
  cache_file = pathlib.Path(cache_file) if cache_file else None
  disk = _load_json_cache(cache_file)
  base = os.path.abspath(cache_file.parent) if cache_file else ""
  # JSON keys are relative to the cache's folder, so a moved dataset keeps it.
  rel = {p: os.path.relpath(os.path.abspath(p), base) if base else p
         for p in paths}
  results, todo, stats = {}, [], {}
  for p in paths:
    try:
      st = os.stat(p)
    except OSError as e:
      results[p] = {"error": f"{type(e).__name__}: {e}"}
      continue
    stats[p] = (st.st_mtime_ns, st.st_size)
    key = (p, *stats[p])
    cached = disk.get(rel[p])
    if key in _MEMO:
      results[p] = _MEMO[key]
    elif cached and tuple(cached[:2]) == stats[p]:
      results[p] = _MEMO[key] = cached[2]
    else:
      todo.append(p)
  if todo:
    workers = min(8, (os.cpu_count() or 1) + 1)  # Pillow decodes without the GIL
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      probes = pool.map(_probe, todo)
      if progress or (progress is None and len(todo) >= _PROGRESS_MIN_FILES):
        import tqdm  # pylint: disable=import-outside-toplevel
        probes = tqdm.tqdm(probes, total=len(todo), desc="checking images",
                           unit="file")
      for p, r in zip(todo, probes):
        results[p] = _MEMO[(p, *stats[p])] = r
    if cache_file is not None:
      disk.update({rel[p]: [*stats[p], results[p]] for p in todo})
      _save_json_cache(cache_file, disk)
  return results


def _default_cache(root, split, scan_cache) -> Optional[pathlib.Path]:
  if scan_cache is True:
    return pathlib.Path(root) / split / SCAN_CACHE_NAME
  if scan_cache:
    return pathlib.Path(scan_cache)
  return None


# --------------------------------------------------------------------------
# Crops.

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


def _check_sizes(image_size, batch_size) -> None:
  for name, v in (("image_size", image_size), ("batch_size", batch_size)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
      raise ValueError(f"{name}={v!r}: must be a positive int")


def _crop_fits(crop, w: int, h: int) -> bool:
  if crop is None:
    return True
  if len(crop) == 1:
    return w >= crop[0] and h >= crop[0]
  top, left, ch, cw = crop
  return h >= top + ch and w >= left + cw


def _cropped_hw(crop, w: int, h: int) -> Tuple[int, int]:
  """(height, width) of a w x h image after the crop."""
  if crop is None:
    return h, w
  if len(crop) == 1:
    return crop[0], crop[0]
  return crop[2], crop[3]


def _crop_text(crop) -> str:
  if len(crop) == 1:
    return f"{crop[0]}x{crop[0]} centre crop"
  return f"crop box (top, left, height, width) = {crop}"


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

_pil_to_rgb01 = images.pil_to_rgb01


def _pil_decode(contents: bytes, path: bytes) -> np.ndarray:
  """numpy_function body: decode bytes with Pillow; warn with the path on failure."""
  try:
    with Image.open(io.BytesIO(contents)) as im:
      return _pil_to_rgb01(im)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("skipping %s: unreadable at load time (%s: %s); it changed "
                    "since the scan, fix or delete it", path.decode(),
                    type(e).__name__, e)
    raise


def _storage_dtype(kinds) -> tf.DType:
  """The narrowest dtype that holds every decoder's output exactly.

  Decoded images travel to the batched resize in this dtype: uint8 batches
  (all JPEG, e.g. CelebA) move 4x less memory than float32 ones, which makes
  the whole pipeline about 20-30% faster.
  """
  kinds = set(int(k) for k in kinds)
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


def _decode_crop(path, kind, nbytes, crop, dtype: tf.DType,
                 channels: int = 3, jpeg_ratio: int = 1):
  """Reads, decodes and crops one file.

  Args:
    path: scalar string tensor.
    kind: scalar int32, KIND_* from the scan.
    nbytes: scalar int64, file size at scan time.
    crop: parsed crop (Python) or None.
    dtype: output dtype, see `_storage_dtype`; values are 0..255 (uint8),
      0..65535 (uint16) or [0, 1] (float32).
    channels: 3 for RGB; 1 for the first channel only (depth maps: grey, or
      the red channel of RGB, never a luminance mix).
    jpeg_ratio: 1, 2, 4 or 8: JPEGs are decoded at 1/ratio of their size
      (libjpeg's DCT scaling; only without a crop).

  Returns:
    [H, W, channels] of `dtype` (H, W after the crop).
  """
  contents = tf.io.read_file(path)
  # A file rewritten since the scan goes through Pillow, which names it if
  # it is now unreadable (TensorFlow's decoders cannot say which file failed).
  kind = tf.where(tf.cast(tf.strings.length(contents), tf.int64) == nbytes,
                  kind, KIND_PIL)

  def crop_decoded(x):
    x = x[..., :channels]
    if crop is None:
      return x
    win = _crop_window(crop, tf.shape(x)[0], tf.shape(x)[1])
    # tf.slice fails (and the element is dropped) if the window does not fit.
    return tf.slice(x, [win[0], win[1], 0], [win[2], win[3], channels])

  def jpeg():
    if crop is None:
      x = tf.io.decode_jpeg(contents, channels=3, ratio=jpeg_ratio)
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
  return tf.switch_case(kind, [jpeg, png8, pil, png16])


def _resize(x, image_size: int):
  """Bilinear resize of [..., H, W, C] to S x S, antialiased when shrinking.

  Antialiasing widens the bilinear (triangle) kernel by the shrink factor, as
  PIL's resize does in the reference implementation.
  """
  return tf.image.resize(x, [image_size, image_size], method="bilinear",
                         antialias=True)


def _assemble(elements: dict, decode, value_scale: float, finish,
              image_size: int, same_shape: Optional[Tuple[int, int, int]],
              batch_size: int, training: bool, seed: int,
              drop_remainder: Optional[bool], first_epoch: Optional[int] = None,
              skip_batches: int = 0):
  """The pipeline shared by both layouts.

  files -> [shuffle, flip bits] (training) -> parallel decode + crop
  [+ flip] -> ignore_errors -> batch -> resize, finish -> prefetch.

  Args:
    elements: dict of per-file arrays (paths, decoder kinds, sizes).
    decode: element dict -> [h, w, C] cropped, values in [0, 1 / value_scale].
    value_scale: maps decoded values to [0, 1] (1/255 for uint8, ...).
    finish: (float32 [B, S, S, C] in [0, 1 / value_scale], value_scale) ->
      the batch to yield. It applies the scale itself, so that it can fold
      it into its own arithmetic (each op over the float batch costs ~3% of
      the pipeline's CPU time).
    image_size: S.
    same_shape: (h, w, C) when every cropped image has this shape (known from
      the scan): then whole batches are resized in one op, several times
      faster than resizing each image (the op is parallel over the batch).
      None: each image is resized on its own before batching.
    batch_size, training, seed, drop_remainder, first_epoch, skip_batches:
      see `image_folder_dataset`.
  """
  n = len(next(iter(elements.values())))
  if first_epoch is not None:
    if not training:
      raise ValueError("first_epoch is for training streams (training=True)")
    ds = _epoch_stream(elements, batch_size, seed, first_epoch, skip_batches)
  elif training:
    ds = tf.data.Dataset.from_tensor_slices(elements)
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    # Flip bits are drawn before the parallel map, so they are deterministic.
    flips = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, flips.map(lambda r: r % 2 == 1)))
  else:
    ds = tf.data.Dataset.from_tensor_slices(elements)

  def per_file(e, flip=None):
    x = decode(e)
    if flip is not None:
      # Mirroring the small integer image costs less than mirroring the float
      # batch, and gives the same result: the resampling is symmetric.
      x = tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)
    if same_shape is None:
      x = _resize(x, image_size)
    else:
      # A file whose size changed since the scan fails here and is dropped
      # (a mismatched shape would otherwise break the whole batch).
      x = tf.ensure_shape(x, same_shape)
    return x

  def per_batch(x):
    if same_shape is not None:
      x = _resize(x, image_size)
    return finish(x, value_scale)  # the resize returns float32

  ds = ds.map(per_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  if drop_remainder is None:
    drop_remainder = training
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(per_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def _epoch_stream(elements: dict, batch_size: int, seed: int, first_epoch: int,
                  skip_batches: int) -> tf.data.Dataset:
  """Endless (element, flip) stream, epoch after epoch from `first_epoch`.

  Epoch e is a permutation of the files and a flip bit per file, both drawn
  statelessly from (seed, e); it holds whole batches only (n // B * B files),
  so epoch e's batch k is the stream's batch e * (n // B) + k whatever
  happened before. Skipping happens on file indices, before any decoding:
  resuming deep into an epoch costs nothing.
  """
  n = len(next(iter(elements.values())))
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

  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  ds = ds.skip(skip_batches * batch_size)
  return ds.map(lambda i, flip: ({k: tf.gather(v, i) for k, v in table.items()}, flip))


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


def _warn_skipped(skipped: List[Tuple[str, str]], total: int, where, usable: int,
                  what: str) -> None:
  """Warns about each skipped file and the count; raises if none is usable."""
  for path, why in skipped:
    logging.warning("skipping %s: %s", path, why)
  if skipped:
    hint = ""
    if any("smaller than the" in why for _, why in skipped):
      hint = "; for images smaller than the crop, lower `crop` or set it to None"
    logging.warning("skipped %d of %d files under %s (each named above); fix "
                    "or delete them to use them%s", len(skipped), total, where,
                    hint)
  if not usable:
    raise ValueError(f"{where}: none of the {total} {what} is usable "
                     "(see the warnings above)")


# --------------------------------------------------------------------------
# Public pipelines.

def image_folder_dataset(root, split, image_size: int = 64,
                         batch_size: int = 64, training: bool = True,
                         crop: Crop = None, seed: int = 0,
                         drop_remainder: Optional[bool] = None,
                         scan_cache: Union[bool, str] = True,
                         progress: Optional[bool] = None,
                         jpeg_draft: bool = True,
                         first_epoch: Optional[int] = None,
                         skip_batches: int = 0) -> tf.data.Dataset:
  """Batches of images from `<root>/<split>/**` (docs/method.md §1 and §6).

  Each image: decoded to RGB, optionally cropped, resized to S x S (bilinear,
  antialiased when shrinking), scaled to [-1, 1] by x / 255 * 2 - 1. When
  training: shuffled (seeded, reshuffled every epoch) and mirrored left-right
  with p = 0.5 (seeded). Unusable files are skipped with warnings (module
  docstring).

  Args:
    root: dataset root folder.
    split: sub-folder, e.g. 'train', 'val', 'test'.
    image_size: S.
    batch_size: B.
    training: shuffle and flip.
    crop: None; an int c (centre c x c crop); or (top, left, height, width).
      Images smaller than the crop are skipped with a warning.
    seed: shuffle and flip seed.
    drop_remainder: drop a last partial batch; None means `training`.
    scan_cache: True (JSON beside the data), a JSON path, or False (memory).
    progress: tqdm bar during the scan; None: only for large folders.
    first_epoch: training only. None: one epoch per iteration, reshuffled
      each time. An int e: an endless stream of epochs e, e + 1, ..., each
      shuffled and flipped by (seed, epoch) alone and holding whole batches
      only, so that a resumed run sees exactly the batches it would have.
    skip_batches: with first_epoch, batches of epoch e to skip (a run resumed
      mid-epoch); files are skipped before decoding.
    jpeg_draft: without a crop, decode JPEGs at 1/2, 1/4 or 1/8 size (the
      largest keeping every JPEG >= S x S) by libjpeg's DCT scaling, then
      resize as usual. For 178 x 218 -> 64 this takes ~25% less CPU per
      image (the decode halves, the resize shrinks less). The DCT scaling is
      itself a low-pass shrink, so the result stays close to the reference's
      resampling (PIL's antialiased bilinear resize of the full image): on
      smooth random JPEGs the mean abs error is 0.008 in [-1, 1] units (max
      0.07) against 0.007 (max 0.03) for a full decode. False: full decode.

  Returns:
    A dataset of float32 [B, S, S, 3] batches.

  Raises:
    FileNotFoundError / ValueError: missing or empty folder, bad `crop`, or
    no usable image at all.
  """
  crop = _parse_crop(crop)
  _check_sizes(image_size, batch_size)
  paths = list_images(root, split)
  infos = scan_files(paths, _default_cache(root, split, scan_cache), progress)
  good, skipped = [], []
  for p in paths:
    info = infos[p]
    if "error" in info:
      skipped.append((p, f"not a readable image ({info['error']})"))
    elif not _crop_fits(crop, info["w"], info["h"]):
      skipped.append((p, f"{info['w']}x{info['h']} image is smaller than the "
                         f"{_crop_text(crop)}"))
    else:
      good.append(p)
  _warn_skipped(skipped, len(paths), pathlib.Path(root) / split, len(good), "image files")
  elements = {
      "path": good,
      "kind": np.array([infos[p]["kind"] for p in good], np.int32),
      "nbytes": np.array([os.path.getsize(p) for p in good], np.int64),
  }

  dtype = _storage_dtype(elements["kind"])
  sizes = [(infos[p]["w"], infos[p]["h"]) for p in good]
  ratio = 1
  if jpeg_draft and crop is None:
    jpegs = [wh for wh, p in zip(sizes, good) if infos[p]["kind"] == KIND_JPEG]
    ratio = _jpeg_ratio(jpegs, image_size) if jpegs else 1
    sizes = [(-(-w // ratio), -(-h // ratio))
             if infos[p]["kind"] == KIND_JPEG else (w, h)
             for (w, h), p in zip(sizes, good)]

  def decode(e):
    return _decode_crop(e["path"], e["kind"], e["nbytes"], crop, dtype,
                        jpeg_ratio=ratio)

  def finish(x, scale):
    return x * (2.0 * scale) - 1.0

  same = _same_shape(sizes, crop, 3)
  return _assemble(elements, decode, _value_scale(dtype), finish, image_size,
                   same, batch_size, training, seed, drop_remainder,
                   first_epoch, skip_batches)


def paired_dataset(root, split, image_size: int = 64, batch_size: int = 64,
                   training: bool = False, crop: Crop = 170, seed: int = 0,
                   min_depth: float = 0.9, max_depth: float = 1.1,
                   drop_remainder: Optional[bool] = None,
                   scan_cache: Union[bool, str] = True,
                   progress: Optional[bool] = None,
                   first_epoch: Optional[int] = None,
                   skip_batches: int = 0) -> tf.data.Dataset:
  """Batches of (image, ground-truth depth) in the docs/method.md §8 layout.

  The image is processed as in `image_folder_dataset`. The depth PNG (8- or
  16-bit grey, or RGB whose first channel is used) gives g = value / dtype
  maximum, then d = `depth_from_png_value(g)`. Both get the same crop
  (default: centre 170, as the reference), the same resize (bilinear,
  antialiased when shrinking, like PIL's resize in the reference: depth
  values are interpolated linearly, which blends depths across object edges)
  and, when training, the same flip. A pair whose files are unusable, differ
  in size or are smaller than the crop is skipped with a warning.

  Args:
    root, split, image_size, batch_size, training, crop, seed, drop_remainder,
    scan_cache, progress, first_epoch, skip_batches: as in
      `image_folder_dataset` (training defaults to False: this layout is
      mostly used for evaluation).
    min_depth, max_depth: the model's depth range (docs/method.md §2).

  Returns:
    A dataset of (float32 [B, S, S, 3], float32 [B, S, S]).

  Raises:
    FileNotFoundError / ValueError: missing folders, no images, an image
    without its depth partner, bad `crop`, or no usable pair.
  """
  crop = _parse_crop(crop)
  _check_sizes(image_size, batch_size)
  pairs = list_pairs(root, split)
  infos = scan_files([p for pair in pairs for p in pair],
                     _default_cache(root, split, scan_cache), progress)
  good, skipped = [], []
  for img, dep in pairs:
    ii, di = infos[img], infos[dep]
    if "error" in ii:
      skipped.append((img, f"not a readable image ({ii['error']})"))
    elif "error" in di:
      skipped.append((dep, f"not a readable depth image ({di['error']}); its "
                           f"image {img} is skipped too"))
    elif (ii["w"], ii["h"]) != (di["w"], di["h"]):
      skipped.append((img, f"{ii['w']}x{ii['h']} image but its depth {dep} is "
                           f"{di['w']}x{di['h']}; they must match"))
    elif not _crop_fits(crop, ii["w"], ii["h"]):
      skipped.append((img, f"{ii['w']}x{ii['h']} image is smaller than the "
                           f"{_crop_text(crop)}"))
    else:
      good.append((img, dep))
  _warn_skipped(skipped, len(pairs), pathlib.Path(root) / split, len(good),
                "image/depth pairs")
  elements = {
      "image": [i for i, _ in good],
      "depth": [p for _, p in good],
      "image_kind": np.array([infos[i]["kind"] for i, _ in good], np.int32),
      "depth_kind": np.array([infos[p]["kind"] for _, p in good], np.int32),
      "image_nbytes": np.array([os.path.getsize(i) for i, _ in good], np.int64),
      "depth_nbytes": np.array([os.path.getsize(p) for _, p in good], np.int64),
  }

  dtype = _storage_dtype(np.concatenate([elements["image_kind"],
                                         elements["depth_kind"]]))

  def decode(e):
    x = _decode_crop(e["image"], e["image_kind"], e["image_nbytes"], crop,
                     dtype)
    g = _decode_crop(e["depth"], e["depth_kind"], e["depth_nbytes"], crop,
                     dtype, channels=1)
    # One tensor through resize and flip: identical geometry by construction.
    # (If the two no longer match in size, concat fails: the pair is dropped.)
    return tf.concat([x, g], axis=-1)

  def finish(both, scale):
    image = both[..., :3] * (2.0 * scale) - 1.0
    depth = depth_from_png_value(both[..., 3] * scale, min_depth, max_depth)
    return image, depth

  same = _same_shape([(infos[i]["w"], infos[i]["h"]) for i, _ in good], crop, 4)
  return _assemble(elements, decode, _value_scale(dtype), finish, image_size,
                   same, batch_size, training, seed, drop_remainder,
                   first_epoch, skip_batches)
