"""The folder readers' scanning core: which files of a folder a run reads.

Both folder readers of `tfsym3d.data.folders` start here:

  * `scan_images`: every image under `<root>/<split>/` (any nesting);
  * `scan_pairs`: the docs/method.md §8 layout, `<root>/<split>/image/
    <name>_image.<ext>` with `<root>/<split>/depth/<name>_depth.<ext>`.

Each lists its files recursively in sorted order, checks every file once,
up front, by the bounded loader's rules (`tfsym3d.data.images.check_decodes`:
the formats it reads, its pixel limit, a full decode so that truncated files
are caught), drops the unusable ones, each with an absl warning naming it and
its reason, and returns a `Scan`: the usable files in listing order with the
decoder kind, size and byte count of each, plus the skipped files by reason.
An error is raised only when nothing at all is usable.

Why up front: a tf.data decoder that fails mid-epoch cannot say which file
failed, and a batch of mixed sizes fails as a whole. The scan costs one
decode per file, so its results are cached per (path, mtime, size) in memory
and in a JSON file (default `<root>/<split>/.tfsym3d_scan.json`, skipped if
the folder is read-only): later runs only re-check new or changed files.
"""

import concurrent.futures
import dataclasses
import json
import os
import pathlib
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from absl import logging
import numpy as np

from tfsym3d.data import images

IMAGE_EXTENSIONS = images.IMAGE_EXTENSIONS
SCAN_CACHE_NAME = ".tfsym3d_scan.json"
# Bumped whenever the stored probe changes meaning. 4: a skip reason is
# stored, and the pixel limit the files were checked against.
_SCAN_CACHE_VERSION = 4
# Decoder per file, chosen from the content at scan time (PNG: 8-bit or less
# per channel, PNG16: 16-bit; PIL: anything TensorFlow's decoders cannot
# read, e.g. BMP, WebP, TIFF, CMYK JPEGs).
KIND_JPEG, KIND_PNG, KIND_PIL, KIND_PNG16 = 0, 1, 2, 3
# Folders with at least this many unscanned files show a tqdm progress bar.
_PROGRESS_MIN_FILES = 500
# A reason of the scan itself: a pair whose image and depth differ in size.
SIZE_MISMATCH = "size_mismatch"

# In-memory scan cache: (path, mtime_ns, size, pixel limit) -> probe result.
_MEMO: Dict[Tuple[str, int, int, int], dict] = {}


@dataclasses.dataclass(frozen=True)
class ScanSettings:
  """How a folder is checked.

  Attributes:
    cache: True (JSON beside the data), a JSON path, or False (memory only).
    progress: tqdm bar while checking; None: only for >= 500 unchecked files.
    max_pixels: refuse images with more pixels; None: the bounded loader's
      `images.DEFAULT_MAX_PIXELS`; 0: no limit.
  """
  cache: Union[bool, str] = True
  progress: Optional[bool] = None
  max_pixels: Optional[int] = None


class MinSize(NamedTuple):
  """The smallest stored image a reader can use (e.g. what its crop needs).

  `text` names the need in the skip message ("20x20 centre crop").
  """
  height: int
  width: int
  text: str


class Skipped(NamedTuple):
  """One file left out: its path, a reason key and a message for people."""
  path: str
  reason: str
  message: str


@dataclasses.dataclass(frozen=True)
class Scan:
  """The usable part of a folder, in listing order.

  Attributes:
    roles: what each member of a group is, e.g. ("image",) or ("image", "depth").
    files: usable groups, one path per role.
    kinds: int32 [N, len(roles)] decoder kinds (KIND_*).
    sizes: (width, height) of each group's stored images (one size: a
      group's members must match).
    nbytes: int64 [N, len(roles)] file sizes; the pipeline re-routes a file
      whose size changed since the scan to Pillow, which names it if broken.
    skipped: the files left out.
    total: groups listed.
  """
  roles: Tuple[str, ...]
  files: List[Tuple[str, ...]]
  kinds: np.ndarray
  sizes: List[Tuple[int, int]]
  nbytes: np.ndarray
  skipped: List[Skipped]
  total: int

  def counts(self) -> Dict[str, int]:
    """Skipped files per reason key, e.g. {"unreadable": 4, "too_small": 1}."""
    out: Dict[str, int] = {}
    for s in self.skipped:
      out[s.reason] = out.get(s.reason, 0) + 1
    return out

  def elements(self) -> Dict[str, object]:
    """Per-file arrays for `tf.data.Dataset.from_tensor_slices`: for each role
    r, `r` (paths), `r_kind` (int32) and `r_nbytes` (int64)."""
    out: Dict[str, object] = {}
    for j, role in enumerate(self.roles):
      out[role] = [group[j] for group in self.files]
      out[f"{role}_kind"] = self.kinds[:, j]
      out[f"{role}_nbytes"] = self.nbytes[:, j]
    return out


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
  """Image files (by extension, case-insensitive) under d, recursive, sorted.

  Sorted so that a folder gives the same order on every file system: the
  shuffles are seeded over this order.
  """
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


def _stem_under(p: pathlib.Path, d: pathlib.Path, suffix: str) -> Optional[str]:
  """p relative to d without extension and without `suffix`; None if the
  name does not end in it."""
  rel = p.relative_to(d).with_suffix("").as_posix()
  return rel[:-len(suffix)] if rel.endswith(suffix) else None


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
  found = _images_under(image_dir)
  if not found:
    raise ValueError(f"{image_dir}: no images found; {layout}")
  depths = {}
  for p in _images_under(depth_dir):
    key = _stem_under(p, depth_dir, "_depth")
    if key is not None:
      depths[key] = p
  pairs, missing, strays = [], [], []
  for p in found:
    key = _stem_under(p, image_dir, "_image")
    if key is None:
      # E.g. a temporary file left by an interrupted writer: not fatal.
      strays.append(p)
    elif key in depths:
      pairs.append((str(p), str(depths[key])))
    else:
      missing.append((p, depth_dir / f"{key}_depth.png"))
  if missing:
    p, want = missing[0]
    raise ValueError(
        f"{p}: no depth partner, expected {want} ({len(missing)} of "
        f"{len(found)} images in {image_dir} lack one); {layout}")
  for p in strays:
    logging.warning("skipping %s: not named <name>_image.<ext>, so it has no "
                    "depth partner; rename or delete it", p)
  if not pairs:
    raise ValueError(f"{image_dir}: no file named <name>_image.<ext>; {layout}")
  return pairs


# --------------------------------------------------------------------------
# Checking each file once.

def _error(reason: str, detail: str) -> dict:
  """A probe result for an unusable file."""
  return {"error": detail, "reason": reason}


def _probe(path: str, max_pixels: int) -> dict:
  """Checks one file by the bounded loader's rules and picks its decoder.

  Returns:
    {"kind": int, "w": int, "h": int} or {"error": str, "reason": str}.
  """
  try:
    fmt, mode, w, h = images.check_decodes(path, max_pixels)
  except images.ImageError as e:
    return _error(e.reason, e.detail)
  if fmt == "JPEG" and mode in ("L", "RGB"):
    return {"kind": KIND_JPEG, "w": w, "h": h}
  if fmt != "PNG":
    return {"kind": KIND_PIL, "w": w, "h": h}
  # Pillow reads 16-bit RGB as 8-bit "RGB": take the bit depth from IHDR
  # (byte 24: 8 signature + 4 length + 4 type + 4 width + 4 height).
  try:
    with open(path, "rb") as f:
      header = f.read(25)
  except OSError as e:
    return _error(images.UnreadableImage.reason, f"unreadable ({type(e).__name__}: {e})")
  kind = KIND_PNG16 if len(header) == 25 and header[24] == 16 else KIND_PNG
  return {"kind": kind, "w": w, "h": h}


def _load_json_cache(cache_file: Optional[pathlib.Path], max_pixels: int) -> dict:
  """The cached probes of a JSON cache, or {} when absent, stale or unreadable."""
  if cache_file is None or not cache_file.is_file():
    return {}
  try:
    data = json.loads(cache_file.read_text())
    if (data.get("version") == _SCAN_CACHE_VERSION
        and data.get("max_pixels") == max_pixels):
      return data["files"]
  except Exception as e:  # pylint: disable=broad-except
    logging.info("ignoring unreadable scan cache %s (%s)", cache_file, e)
  return {}


def _save_json_cache(cache_file: pathlib.Path, files: dict, max_pixels: int) -> None:
  """Writes the JSON cache atomically; a read-only folder is not an error."""
  tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
  try:
    tmp.write_text(json.dumps({"version": _SCAN_CACHE_VERSION,
                               "max_pixels": max_pixels, "files": files}))
    os.replace(tmp, cache_file)  # atomic: concurrent readers see old or new
  except OSError as e:
    # Read-only datasets are normal; the in-memory cache still works.
    logging.info("could not write scan cache %s (%s)", cache_file, e)
    try:
      tmp.unlink()
    except OSError:
      pass


def _probe_all(paths: Sequence[str], max_pixels: int,
               progress: Optional[bool]) -> List[dict]:
  """Probes files on a thread pool, in order, with an optional tqdm bar."""
  workers = min(8, (os.cpu_count() or 1) + 1)  # Pillow decodes without the GIL
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    probes = pool.map(lambda p: _probe(p, max_pixels), paths)
    if progress or (progress is None and len(paths) >= _PROGRESS_MIN_FILES):
      import tqdm  # pylint: disable=import-outside-toplevel
      probes = tqdm.tqdm(probes, total=len(paths), desc="checking images",
                         unit="file")
    return list(probes)


def scan_files(paths: Sequence[str], cache_file=None,
               progress: Optional[bool] = None,
               max_pixels: Optional[int] = None) -> Dict[str, dict]:
  """Probes files, reusing cached results of unchanged files.

  Args:
    paths: files to check.
    cache_file: JSON cache path, or None for the in-memory cache only.
    progress: show a tqdm bar; None shows one for >= 500 unscanned files.
    max_pixels: the pixel limit; None: `images.DEFAULT_MAX_PIXELS` (read now).

  Returns:
    path -> {"kind", "w", "h"} or {"error": str, "reason": str}. A file that
    cannot even be stat'ed gets an error entry.
  """
  limit = images.DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
  cache_file = pathlib.Path(cache_file) if cache_file else None
  disk = _load_json_cache(cache_file, limit)
  base = os.path.abspath(cache_file.parent) if cache_file else ""
  # JSON keys are relative to the cache's folder, so a moved dataset keeps it.
  rel = {p: os.path.relpath(os.path.abspath(p), base) if base else p
         for p in paths}
  results, todo, stats = {}, [], {}
  for p in paths:
    try:
      st = os.stat(p)
    except OSError as e:
      results[p] = _error(images.UnreadableImage.reason,
                          f"unreadable ({type(e).__name__}: {e})")
      continue
    stats[p] = (st.st_mtime_ns, st.st_size)
    key = (p, *stats[p], limit)
    cached = disk.get(rel[p])
    if key in _MEMO:
      results[p] = _MEMO[key]
    elif cached and tuple(cached[:2]) == stats[p]:
      results[p] = _MEMO[key] = cached[2]
    else:
      todo.append(p)
  if todo:
    for p, r in zip(todo, _probe_all(todo, limit, progress)):
      results[p] = _MEMO[(p, *stats[p], limit)] = r
    if cache_file is not None:
      disk.update({rel[p]: [*stats[p], results[p]] for p in todo})
      _save_json_cache(cache_file, disk, limit)
  return results


# --------------------------------------------------------------------------
# The core: groups of files -> the usable ones, skips by reason.

def _check_group(group: Tuple[str, ...], roles: Tuple[str, ...],
                 infos: Dict[str, dict], need: Optional[MinSize]) -> Optional[Skipped]:
  """Why a group (an image, or an image and its depth) is unusable, or None.

  The first bad member decides; a bad partner takes its image with it.
  """
  first = group[0]
  for path in group:
    info = infos[path]
    if "error" in info:
      also = f"; its image {first} is skipped too" if path != first else ""
      return Skipped(path, info["reason"], f"{info['error']}{also}")
  w, h = infos[first]["w"], infos[first]["h"]
  for path, role in zip(group[1:], roles[1:]):
    pw, ph = infos[path]["w"], infos[path]["h"]
    if (pw, ph) != (w, h):
      return Skipped(first, SIZE_MISMATCH, f"{w}x{h} image but its {role} {path} "
                     f"is {pw}x{ph}; they must match")
  if need is not None and (w < need.width or h < need.height):
    return Skipped(first, images.ImageTooSmall.reason,
                   f"{w}x{h} image is smaller than the {need.text}")
  return None


def _warn_skipped(scan: Scan, where, what: str) -> None:
  """Warns about each skipped file and the counts; raises if none is usable."""
  for s in scan.skipped:
    logging.warning("skipping %s: %s", s.path, s.message)
  if scan.skipped:
    hint = ""
    if any(s.reason == images.ImageTooSmall.reason for s in scan.skipped):
      hint = "; for images smaller than the crop, lower `crop` or set it to None"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(scan.counts().items()))
    logging.warning("skipped %d of %d files under %s (%s; each named above); "
                    "fix or delete them to use them%s", len(scan.skipped),
                    scan.total, where, counts, hint)
  if not scan.files:
    raise ValueError(f"{where}: none of the {scan.total} {what} is usable "
                     "(see the warnings above)")


def scan_groups(groups: Sequence[Tuple[str, ...]], roles: Tuple[str, ...],
                need: Optional[MinSize], settings: ScanSettings,
                cache_file: Optional[pathlib.Path], where, what: str) -> Scan:
  """Checks listed groups of files; keeps the usable ones in order.

  Args:
    groups: one tuple of paths per item, one path per role, in listing order.
    roles: names of the members, e.g. ("image", "depth").
    need: the smallest usable stored image, or None for any size.
    settings: progress bar and pixel limit (`cache_file` is resolved already).
    cache_file: the JSON cache, or None.
    where: the folder, for messages.
    what: the items in plural, for the error ("image files").

  Returns:
    A Scan; each skipped file was logged with its reason.

  Raises:
    ValueError: no group is usable.
  """
  infos = scan_files([p for g in groups for p in g], cache_file,
                     settings.progress, settings.max_pixels)
  good, skipped = [], []
  for group in groups:
    why = _check_group(tuple(group), roles, infos, need)
    if why is None:
      good.append(tuple(group))
    else:
      skipped.append(why)
  shape = (len(good), len(roles))
  result = Scan(
      roles=roles, files=good,
      kinds=np.array([[infos[p]["kind"] for p in g] for g in good],
                     np.int32).reshape(shape),
      sizes=[(infos[g[0]]["w"], infos[g[0]]["h"]) for g in good],
      nbytes=np.array([[os.path.getsize(p) for p in g] for g in good],
                      np.int64).reshape(shape),
      skipped=skipped, total=len(groups))
  _warn_skipped(result, where, what)
  return result


def _cache_file(root, split, cache) -> Optional[pathlib.Path]:
  """The JSON cache a ScanSettings.cache value means for `<root>/<split>`."""
  if cache is True:
    return pathlib.Path(root) / split / SCAN_CACHE_NAME
  if cache:
    return pathlib.Path(cache)
  return None


def scan_images(root, split, need: Optional[MinSize] = None,
                settings: ScanSettings = ScanSettings()) -> Scan:
  """Every usable image under `<root>/<split>/` (role "image").

  Raises:
    FileNotFoundError / ValueError: as `list_images`, or no usable image.
  """
  groups = [(p,) for p in list_images(root, split)]
  return scan_groups(groups, ("image",), need, settings,
                     _cache_file(root, split, settings.cache),
                     pathlib.Path(root) / split, "image files")


def scan_pairs(root, split, need: Optional[MinSize] = None,
               settings: ScanSettings = ScanSettings()) -> Scan:
  """Every usable (image, depth) pair of the docs/method.md §8 layout.

  A pair is skipped when either file is unusable, when they differ in size,
  or when the image is smaller than `need`.

  Raises:
    FileNotFoundError / ValueError: as `list_pairs`, or no usable pair.
  """
  return scan_groups(list_pairs(root, split), ("image", "depth"), need, settings,
                     _cache_file(root, split, settings.cache),
                     pathlib.Path(root) / split, "image/depth pairs")
