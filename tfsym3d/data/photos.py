"""Turns a folder of ordinary photos into a training folder:
`python -m tfsym3d.data.prepare faces|folder --src PHOTOS --out DIR`.

`faces` finds faces with BlazeFace (`tfsym3d.face_crop`) and frames each like
our CelebA preparation (`framing.face_square`, as `framing.landmark_box`: a square centred halfway
between the eyes' midpoint and the mouth, of side LANDMARK_SIDE x max(eye
distance, eye-to-mouth distance)), so configs/faces.cfg's framing holds.
`folder` takes a centre or fixed-box crop of every image (pre-framed
categories without a detector).

Both: every file under --src is scanned recursively; crops are resized with
Pillow's antialiased LANCZOS to --image_size and written as
<out>/<split>/<source path>_<k>.png. The split of a source is decided by a
hash of its relative path (all crops of one photo land in one split, stable
when photos are added), and with three photos or more every split gets at
least one (`assign_splits`). Exact duplicate sources (same bytes) and near
duplicate crops (difference hash within a Hamming distance) are dropped; an
optional sharpness floor drops blurry crops. `<out>/.prepare_state.json`
records every finished source, so a rerun (after a crash or with more
photos) skips them and ends with the same output. Each run writes
`<out>/report.json` (kept, skipped by reason, unsupported formats seen) and
`<out>/preview.png` (a contact sheet of kept crops).
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from tfsym3d.data import framing
from tfsym3d.data import images

SPLITS = ("train", "val", "test")
STATE_NAME = ".prepare_state.json"
REPORT_NAME = "report.json"
PREVIEW_NAME = "preview.png"
_STATE_VERSION = 1
# Detector floor: faces scored between this and --min_face_score count as
# low_score rather than no_face, so the report says which threshold to move.
_DETECTOR_FLOOR = 0.3
# Photos decode at reduced size down to this shorter side (bounded memory;
# BlazeFace sees 128 px anyway, the crops need only --image_size).
_DECODE_MIN_SIDE = 1536
_PREVIEW_MAX = 64
_SAVE_EVERY = 20
_SAVE_FRACTION = 20
REASONS = ("no_face", "low_score", "face_too_small", "too_small", "blurry",
           "duplicate", "near_duplicate", "unreadable", "too_large",
           "unsupported_format")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  """Settings of one `faces` or `folder` run (part of the resume state).

  Attributes:
    mode: 'faces' or 'folder'.
    image_size: output side S.
    split_fractions: (train, val, test) fractions.
    faces: 'largest' (one crop per photo) or 'all' (every face passing).
    min_face_size: faces whose box is smaller (pixels of the source photo,
      longer box side) are skipped as face_too_small.
    min_face_score: BlazeFace score threshold.
    crop_scale: multiplies the CelebA-framed crop side (>1 keeps more context).
    crop: folder mode: None (largest centred square), an int c (centre c x c)
      or (top, left, height, width).
    min_sharpness: variance of the Laplacian of the grey crop (0..255 units)
      below which a crop is blurry; 0 turns the filter off.
    near_duplicate_bits: crops whose 64-bit difference hashes differ in at
      most this many bits are near duplicates (-1: off).
    max_pixels: the bounded loader's pixel limit.
  """
  mode: str = "faces"
  image_size: int = 64
  split_fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1)
  faces: str = "largest"
  min_face_size: int = 40
  min_face_score: float = 0.7
  crop_scale: float = 1.0
  crop: object = None
  min_sharpness: float = 0.0
  near_duplicate_bits: int = 4
  max_pixels: int = images.DEFAULT_MAX_PIXELS

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the flag of a bad setting."""
    if self.mode not in ("faces", "folder"):
      raise ValueError(f"mode={self.mode!r}: 'faces' or 'folder'")
    if self.faces not in ("largest", "all"):
      raise ValueError(f"--faces={self.faces!r}: 'largest' or 'all'")
    if self.image_size < 8:
      raise ValueError(f"--image_size={self.image_size}: must be >= 8")
    if self.crop_scale <= 0:
      raise ValueError(f"--crop_scale={self.crop_scale}: must be > 0")
    f = self.split_fractions
    if len(f) != 3 or min(f) < 0 or sum(f) <= 0:
      raise ValueError(f"--split_fractions={f}: three non-negative numbers")


# ---------------------------------------------------------------- pieces ----

def _unit(relative_path: str) -> float:
  """A source's position in [0, 1), from a hash of its relative path."""
  digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2 ** 64


def _intervals(fractions: Sequence[float]) -> Dict[str, Tuple[float, float]]:
  """Each split's share [lo, hi) of [0, 1)."""
  total, edge, out = float(sum(fractions)), 0.0, {}
  for split, fraction in zip(SPLITS, fractions):
    out[split] = (edge, edge + fraction / total)
    edge += fraction / total
  return out


def split_of(relative_path: str, fractions: Sequence[float]) -> str:
  """The split a source's hash falls in (before `assign_splits` fills empty
  splits)."""
  u = _unit(relative_path)
  for split, (_, hi) in _intervals(fractions).items():
    if u < hi:
      return split
  return SPLITS[-1]


def assign_splits(sources: Sequence[str], fractions: Sequence[float],
                  fixed: Optional[Dict[str, str]] = None) -> Dict[str, str]:
  """The split of every source photo (all crops of a photo go there).

  Each photo goes where the hash of its relative path falls (`split_of`).
  With at least three photos, a split of positive fraction left without any
  then takes one photo: of those not in `fixed` and in a split holding two
  or more, the one whose hash lies nearest its share (ties by path). The
  result depends only on the set of paths, so an interrupted run resumes
  with the same assignment.

  Args:
    sources: relative paths of the image files.
    fractions: (train, val, test).
    fixed: splits decided by an earlier run (photos already written); kept
      as they are, never moved.
  """
  fixed = dict(fixed or {})
  assignment = {rel: fixed.get(rel) or split_of(rel, fractions) for rel in sources}
  if len(assignment) < len(SPLITS):
    return assignment
  counts = {s: 0 for s in SPLITS}
  for split in assignment.values():
    counts[split] += 1
  intervals = _intervals(fractions)
  for split, fraction in zip(SPLITS, fractions):
    if fraction <= 0 or counts[split]:
      continue
    lo, hi = intervals[split]
    movable = [rel for rel in sorted(assignment)
               if rel not in fixed and counts[assignment[rel]] >= 2]
    if not movable:
      continue
    distance = lambda rel: max(lo - _unit(rel), _unit(rel) - hi, 0.0)  # pylint: disable=cell-var-from-loop
    chosen = min(movable, key=lambda rel: (distance(rel), rel))
    counts[assignment[chosen]] -= 1
    counts[split] += 1
    assignment[chosen] = split
  return assignment


class NearDuplicates:
  """Kept crops' 64-bit difference hashes, indexed for near-duplicate lookup.

  Two hashes differing in at most `bits` bits agree exactly on at least one
  of `bits` + 1 disjoint bands of their bits (pigeonhole), so a lookup
  compares the query only with the kept hashes sharing a band with it, not
  with every kept crop. The answer is the earliest kept crop within `bits`,
  as a scan of all of them in order would give.
  """

  def __init__(self, bits: int):
    self.bits = bits
    bands = min(bits + 1, 64) if bits >= 0 else 1
    edges = [round(64 * k / bands) for k in range(bands + 1)]
    self._bands = list(zip(edges[:-1], edges[1:]))
    self._tables: List[Dict[int, List[int]]] = [{} for _ in self._bands]
    self._kept: Dict[int, Tuple[int, str]] = {}   # hash -> (order kept, name)

  def _keys(self, dhash: int):
    return [(dhash >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in self._bands]

  def add(self, dhash: int, name: str) -> None:
    """Records a kept crop's hash (a hash seen before keeps its place)."""
    if dhash in self._kept:
      self._kept[dhash] = (self._kept[dhash][0], name)
      return
    self._kept[dhash] = (len(self._kept), name)
    for table, key in zip(self._tables, self._keys(dhash)):
      table.setdefault(key, []).append(dhash)

  def find(self, dhash: int) -> Optional[str]:
    """The name of the earliest kept crop within `bits` of dhash, or None."""
    if self.bits < 0:
      return None
    if self.bits >= 64:
      candidates = set(self._kept)
    else:
      candidates = set()
      for table, key in zip(self._tables, self._keys(dhash)):
        candidates.update(table.get(key, ()))
    close = [h for h in candidates if bin(h ^ dhash).count("1") <= self.bits]
    if not close:
      return None
    return self._kept[min(close, key=lambda h: self._kept[h][0])][1]


def difference_hash(image: np.ndarray) -> int:
  """64-bit dHash: grey 9 x 8, one bit per horizontal neighbour pair."""
  grey = Image.fromarray(image).convert("L").resize((9, 8), Image.Resampling.BILINEAR)
  a = np.asarray(grey, np.int16)
  bits = (a[:, 1:] > a[:, :-1]).ravel()
  return int("".join("1" if b else "0" for b in bits), 2)


def sharpness(image: np.ndarray) -> float:
  """Variance of the 4-neighbour Laplacian of the grey image (0..255 units)."""
  g = np.asarray(Image.fromarray(image).convert("L"), np.float32)
  lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1])
  return float(lap.var())


def folder_square(width: int, height: int, crop) -> Optional[Tuple[float, float, float, float]]:
  """(x0, y0, w, h) of the folder crop, or None when it does not fit."""
  if crop is None:
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, side, side
  if isinstance(crop, int):
    if crop > min(width, height):
      return None
    return (width - crop) / 2, (height - crop) / 2, crop, crop
  top, left, h, w = crop
  if top + h > height or left + w > width:
    return None
  return left, top, w, h


def _file_digest(path: pathlib.Path) -> str:
  """sha256 of a file, read in blocks (memory bounded whatever its size)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _safe_name(relative: str) -> str:
  stem = os.path.splitext(relative)[0]
  return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")) or "image"


def list_sources(src: pathlib.Path) -> Tuple[List[str], Dict[str, int]]:
  """Relative paths of image files under src (sorted) and the count of other
  (not hidden) files by extension."""
  found, others = [], {}
  for path in sorted(src.rglob("*")):
    if not path.is_file() or any(p.startswith(".") for p in path.relative_to(src).parts):
      continue
    rel = path.relative_to(src).as_posix()
    if images.is_image_name(rel):
      found.append(rel)
    else:
      ext = path.suffix.lower() or "(none)"
      others[ext] = others.get(ext, 0) + 1
  return found, others


# ----------------------------------------------------------------- state ----

def _load_state(out: pathlib.Path, config: PrepareConfig) -> dict:
  path = out / STATE_NAME
  settings = json.loads(json.dumps(dataclasses.asdict(config)))
  if path.is_file():
    state = json.loads(path.read_text())
    if state.get("version") == _STATE_VERSION:
      if state["settings"] != settings:
        raise ValueError(
            f"{path}: this folder was prepared with other settings "
            f"({state['settings']}); rerun with those or use a new --out")
      return state
  return {"version": _STATE_VERSION, "settings": settings, "sources": {}}


def _save_state(out: pathlib.Path, state: dict) -> None:
  path = out / STATE_NAME
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(state))
  os.replace(tmp, path)


def _write_png(image: np.ndarray, path: pathlib.Path) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
  Image.fromarray(image).save(tmp, format="PNG")
  os.replace(tmp, path)


# -------------------------------------------------------------- the run ----

def _candidates(config: PrepareConfig, image: np.ndarray, scale: float, detector):
  """(squares [(cx, cy, side)], reasons [str], boxes) for one decoded photo.

  `scale` = source pixels per decoded pixel (for --min_face_size).
  """
  h, w = image.shape[:2]
  if config.mode == "folder":
    box = folder_square(round(w * scale), round(h * scale), config.crop)
    if box is None:
      return [], ["too_small"], []
    x0, y0, bw, bh = (v / scale for v in box)
    return [(x0 + bw / 2, y0 + bh / 2, bw, bh)], [], []
  faces = detector.detect(image, keypoints=True)
  if not len(faces):
    return [], ["no_face"], []
  strong = faces[faces[:, 0] >= config.min_face_score]
  if not len(strong):
    return [], ["low_score"], []
  sizes = np.maximum(strong[:, 3] - strong[:, 1], strong[:, 4] - strong[:, 2]) * scale
  if config.faces == "largest":
    strong, sizes = strong[np.argmax(sizes)][None], sizes[np.argmax(sizes)][None]
  squares, reasons, boxes = [], [], []
  for face, size in zip(strong, sizes):
    if size < config.min_face_size:
      reasons.append("face_too_small")
      continue
    cx, cy, side = framing.face_square(face, config.crop_scale)
    squares.append((cx, cy, side, side))
    boxes.append([float(v * scale) for v in face[1:5]])
  return squares, reasons, boxes


def _process(config: PrepareConfig, src: pathlib.Path, rel: str, split: str, detector,
             kept_hashes: NearDuplicates, content_seen: Dict[str, str]) -> dict:
  """One source: returns its state entry (crops to write are in '_images')."""
  path = src / rel
  entry = {"crops": [], "skipped": [], "split": split}
  digest = _file_digest(path)
  entry["sha256"] = digest
  if digest in content_seen:
    entry["skipped"].append(["duplicate", f"same bytes as {content_seen[digest]}"])
    return entry
  content_seen[digest] = rel
  try:
    image = images.load_rgb(path, config.max_pixels, min_side=_DECODE_MIN_SIDE)
    with Image.open(path) as probe:
      full_long = max(probe.size)
  except images.UnsupportedFormat as error:
    entry["skipped"].append(["unsupported_format", str(error)])
    return entry
  except images.ImageTooLarge as error:
    entry["skipped"].append(["too_large", str(error)])
    return entry
  except (images.ImageError, OSError) as error:
    entry["skipped"].append(["unreadable", str(error)])
    return entry
  # Source pixels per decoded pixel (EXIF rotation keeps the longer side).
  scale = full_long / max(image.shape[:2])
  squares, reasons, boxes = _candidates(config, image, scale, detector)
  entry["skipped"] += [[r, ""] for r in reasons]
  pil = Image.fromarray(image)
  entry["_images"] = []
  for k, (cx, cy, bw, bh) in enumerate(squares):
    if config.mode == "faces":
      crop = np.asarray(framing.crop_square(pil, cx, cy, bw, config.image_size))
    else:
      box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
      crop = np.asarray(pil.resize((config.image_size, config.image_size),
                                   Image.Resampling.LANCZOS, box=box))
    if config.min_sharpness > 0 and sharpness(crop) < config.min_sharpness:
      entry["skipped"].append(["blurry", f"crop {k}: sharpness {sharpness(crop):.1f}"])
      continue
    dhash = difference_hash(crop)
    near = kept_hashes.find(dhash)
    if near is not None:
      entry["skipped"].append(["near_duplicate", f"crop {k} looks like {near}"])
      continue
    name = f"{entry['split']}/{_safe_name(rel)}_{k}.png"
    kept_hashes.add(dhash, name)
    crop_entry = {"name": name, "dhash": f"{dhash:016x}"}
    if k < len(boxes):
      crop_entry["face_box"] = boxes[k]
    entry["crops"].append(crop_entry)
    entry["_images"].append(crop)
  return entry


def prepare_photos(src, out, config: PrepareConfig, detector=None,
                   max_photos: int = 0, progress: bool = True) -> dict:
  """Runs `faces` or `folder` (module docstring); returns the report.

  Args:
    src, out: source folder (scanned recursively) and dataset root.
    config: the settings.
    detector: a `face_crop.FaceDetector` (faces mode; built when None).
    max_photos: stop after this many new sources (0: all); a later run
      resumes.
    progress: tqdm bar on stderr.

  Raises:
    FileNotFoundError: src is not a folder. ValueError: bad settings, or
    `out` holds a run with other settings.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  config.validate()
  src, out = pathlib.Path(src), pathlib.Path(out)
  if not src.is_dir():
    raise FileNotFoundError(f"{src}: no such directory; set --src to a folder of photos")
  if config.mode == "faces" and detector is None:
    from tfsym3d import face_crop  # pylint: disable=g-import-not-at-top
    detector = face_crop.FaceDetector(min_score=_DETECTOR_FLOOR)
  for split in SPLITS:
    (out / split).mkdir(parents=True, exist_ok=True)
  state = _load_state(out, config)
  sources, others = list_sources(src)
  done = state["sources"]
  kept_hashes = NearDuplicates(config.near_duplicate_bits)
  content_seen = {}
  for rel, entry in sorted(done.items()):
    content_seen.setdefault(entry["sha256"], rel)
    for crop in entry["crops"]:
      kept_hashes.add(int(crop["dhash"], 16), crop["name"])
  splits = assign_splits(sources, config.split_fractions,
                         {rel: e["split"] for rel, e in done.items()})
  todo = [rel for rel in sources if rel not in done]
  if max_photos:
    todo = todo[:max_photos]
  unsaved = 0
  for rel in tqdm(todo, desc=f"prepare {config.mode}", unit="photo",
                  file=sys.stderr, disable=not progress or not todo):
    entry = _process(config, src, rel, splits[rel], detector, kept_hashes,
                     content_seen)
    for crop, picture in zip(entry["crops"], entry.pop("_images", [])):
      _write_png(picture, out / crop["name"])
    done[rel] = entry
    unsaved += 1
    # The state is rewritten whole, so saves are spaced in proportion to
    # its size: the total written stays linear in the photos, and a crash
    # redoes at most 1 / _SAVE_FRACTION of the work done.
    if unsaved >= max(_SAVE_EVERY, len(done) // _SAVE_FRACTION):
      _save_state(out, state)
      unsaved = 0
  _save_state(out, state)
  report = _report(state, sources, others, out)
  (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
  _preview(state, out)
  return report


def _report(state: dict, sources: Sequence[str], others: Dict[str, int],
            out: pathlib.Path) -> dict:
  entries = state["sources"]
  kept = {s: 0 for s in SPLITS}
  skipped = {r: 0 for r in REASONS}
  examples = {}
  for rel in sorted(entries):
    for crop in entries[rel]["crops"]:
      kept[crop["name"].split("/")[0]] += 1
    for reason, detail in entries[rel]["skipped"]:
      skipped[reason] = skipped.get(reason, 0) + 1
      examples.setdefault(reason, []).append(f"{rel} {detail}".strip())
  skipped["unsupported_format"] += sum(others.values())
  formats = dict(others)
  for rel in sorted(entries):
    for reason, _ in entries[rel]["skipped"]:
      if reason == "unsupported_format":
        ext = os.path.splitext(rel)[1].lower()
        formats[ext] = formats.get(ext, 0) + 1
  return {"mode": state["settings"]["mode"], "out": str(out),
          "sources": len(sources), "processed": len(entries),
          "pending": len([s for s in sources if s not in entries]),
          "kept": sum(kept.values()), "kept_by_split": kept,
          "skipped": {r: n for r, n in skipped.items() if n},
          "unsupported_formats": formats,
          "examples": {r: v[:5] for r, v in examples.items()},
          "settings": state["settings"]}


def _preview(state: dict, out: pathlib.Path) -> Optional[str]:
  from tfsym3d import visualize  # pylint: disable=g-import-not-at-top
  names = [c["name"] for rel in sorted(state["sources"])
           for c in state["sources"][rel]["crops"]][:_PREVIEW_MAX]
  if not names:
    return None
  crops = []
  for name in names:
    with Image.open(out / name) as im:
      crops.append(np.asarray(im.convert("RGB")))
  sheet = visualize.tile(np.stack(crops), min(8, len(crops)), pad=2)
  visualize.save_png(sheet, str(out / PREVIEW_NAME))
  return str(out / PREVIEW_NAME)


def format_report(report: dict) -> str:
  """The report as a printed table."""
  lines = [f"prepare {report['mode']}: {report['sources']} image files, "
           f"{report['processed']} processed, {report['pending']} pending",
           f"  {'kept':<20}{report['kept']:>7}  "
           + " ".join(f"{s} {n}" for s, n in report["kept_by_split"].items())]
  for reason, count in report["skipped"].items():
    lines.append(f"  {'skipped ' + reason:<20}{count:>7}")
  if report["unsupported_formats"]:
    lines.append("  formats not read: " + ", ".join(
        f"{ext} ({n})" for ext, n in sorted(report["unsupported_formats"].items())))
  if report.get("records"):
    lines.append("  records: " + " ".join(f"{s} {n}" for s, n in report["records"].items()))
  elif "records" in report:
    lines.append("  records: not written yet (photos pending; rerun to finish)")
  lines.append(f"  report: {report['out']}/{REPORT_NAME}, preview: "
               f"{report['out']}/{PREVIEW_NAME}")
  return "\n".join(lines)
