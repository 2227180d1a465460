"""`prepare celeba` on a tiny generated CelebA release (no real data needed).

Each source image is dark with a bright dot where its crop should be centred
(the landmarks' centre, or the box centre), so the dot must land at the
centre of the output.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZE = 32
W, H = 90, 110
# name -> (dot x, dot y, split code); the 4th is corrupt, the 5th has no
# landmarks, the 6th's crop leaves the image (edge padding).
IMAGES = {"000001.jpg": (45, 55, 0), "000002.jpg": (40, 60, 0),
          "000003.jpg": (50, 50, 1), "000004.jpg": (45, 55, 2),
          "000005.jpg": (45, 55, 2), "000006.jpg": (18, 30, 2)}
CORRUPT, UNANNOTATED = "000004.jpg", "000005.jpg"
EXPECTED = {"train": ["000001.jpg", "000002.jpg"], "val": ["000003.jpg"],
            "test": ["000006.jpg"]}


def _write_source_image(path, x, y):
  pixels = np.full((H, W, 3), 30, np.uint8)
  pixels[y - 1:y + 2, x - 1:x + 2] = 255
  Image.fromarray(pixels).save(path, quality=95)


def _write_table(path, header, rows):
  lines = [str(len(rows)), header] + [" ".join(map(str, r)) for r in rows]
  path.write_text("\n".join(lines) + "\n")


def _landmarks(x, y):
  # Eyes 20 apart at y - 10, mouth corners at y + 10: centre (x, y), side 60.
  return [x - 10, y - 10, x + 10, y - 10, x, y, x - 8, y + 10, x + 8, y + 10]


def _make_release(src, image_dir, flat=False):
  """The release layout (Img/, Anno/, Eval/), or everything under src if flat."""
  images = src / image_dir if flat else src / "Img" / image_dir
  anno = src if flat else src / "Anno"
  evaluation = src if flat else src / "Eval"
  for d in (images, anno, evaluation):
    d.mkdir(parents=True, exist_ok=True)
  for name, (x, y, _) in IMAGES.items():
    if name == CORRUPT:
      (images / name).write_bytes(b"\xff\xd8 this is not a JPEG")
    else:
      _write_source_image(images / name, x, y)
  landmark_file = ("list_landmarks_align_celeba.txt" if image_dir == "img_align_celeba"
                   else "list_landmarks_celeba.txt")
  _write_table(anno / landmark_file,
               "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
               "leftmouth_x leftmouth_y rightmouth_x rightmouth_y",
               [[n] + _landmarks(x, y) for n, (x, y, _) in IMAGES.items()
                if n != UNANNOTATED])
  # Boxes 30 x 40 with their centre on the dot's centre (x + 0.5, y + 0.5).
  _write_table(anno / "list_bbox_celeba.txt", "image_id x_1 y_1 width height",
               [[n, x - 14.5, y - 19.5, 30, 40] for n, (x, y, _) in IMAGES.items()])
  # The partition file has neither a count nor a header.
  (evaluation / "list_eval_partition.txt").write_text(
      "".join(f"{n} {s}\n" for n, (_, _, s) in IMAGES.items()))
  return anno / landmark_file


def _run(src, out, *extra):
  command = [sys.executable, "-m", "tfsym3d.data.prepare", "celeba", "--src", str(src),
             "--out", str(out), "--image_size", str(SIZE), *extra]
  return subprocess.run(command, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                        capture_output=True, text=True, timeout=120)


def _dot_centre(path):
  """Brightness-weighted centre (x, y) of the dot, in pixel-index units."""
  grey = np.asarray(Image.open(path).convert("L"), np.float64)
  weight = np.clip(grey - 60, 0, None)
  assert weight.sum() > 0, path
  ys, xs = np.mgrid[:grey.shape[0], :grey.shape[1]]
  return (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()


def _listing(out):
  return {s: sorted(p.name for p in (out / s).iterdir() if not p.name.startswith("."))
          for s in ("train", "val", "test")}


def test_landmark_crop_splits_centres_resumes_and_skips_bad_images(tmp_path):
  src, out = tmp_path / "celeba", tmp_path / "out"
  _make_release(src, "img_align_celeba")
  first = _run(src, out)
  assert first.returncode == 0, first.stderr
  assert _listing(out) == EXPECTED
  # The corrupt image and the unannotated one are named in warnings.
  assert str(src / "Img" / "img_align_celeba" / CORRUPT) in first.stderr
  assert "unreadable" in first.stderr and UNANNOTATED in first.stderr
  assert "written 4" in first.stdout and "unreadable 1" in first.stdout
  for split, names in EXPECTED.items():
    for name in names:
      path = out / split / name
      assert Image.open(path).size == (SIZE, SIZE)
      # The landmarks' centre maps to the output's centre, (SIZE - 1) / 2 in
      # pixel indices; also for 000006.jpg, whose crop is edge-padded.
      x, y = _dot_centre(path)
      assert abs(x - (SIZE - 1) / 2) < 0.6 and abs(y - (SIZE - 1) / 2) < 0.6, (name, x, y)
  # Re-running writes nothing new and leaves the files untouched.
  stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
  second = _run(src, out)
  assert second.returncode == 0, second.stderr
  assert "written 0" in second.stdout and "existing 4" in second.stdout
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == stamps
  assert not list(out.rglob("*.partial"))


def test_bbox_crop_in_the_wild_flat_layout_and_png(tmp_path):
  src, out = tmp_path / "flat", tmp_path / "out"
  _make_release(src, "img_celeba", flat=True)
  result = _run(src, out, "--celeba_crop", "bbox", "--celeba_format", "png")
  assert result.returncode == 0, result.stderr
  names = {s: [n.replace(".jpg", ".png") for n in v] for s, v in EXPECTED.items()}
  names["test"] = sorted(names["test"] + ["000005.png"])  # it has a box
  assert _listing(out) == names
  x, y = _dot_centre(out / "train" / "000002.png")
  assert abs(x - (SIZE - 1) / 2) < 0.6 and abs(y - (SIZE - 1) / 2) < 0.6
  # Boxes only exist for the in-the-wild images.
  aligned = tmp_path / "aligned"
  _make_release(aligned, "img_align_celeba")
  refused = _run(aligned, tmp_path / "out2", "--celeba_crop", "bbox",
                 "--celeba_images", "aligned")
  assert refused.returncode != 0 and "in-the-wild" in refused.stderr


def test_missing_annotation_file_names_the_places_looked(tmp_path):
  src = tmp_path / "celeba"
  landmark_file = _make_release(src, "img_align_celeba")
  landmark_file.unlink()
  result = _run(src, tmp_path / "out")
  assert result.returncode != 0
  assert str(landmark_file) in result.stderr
  assert str(src / "list_landmarks_align_celeba.txt") in result.stderr
  shutil.rmtree(src / "Img")
  result = _run(src, tmp_path / "out")
  assert result.returncode != 0 and "image folder" in result.stderr
  assert str(src / "Img" / "img_align_celeba") in result.stderr


@pytest.mark.parametrize("cx, cy, side", [(10.0, 12.0, 30.0), (-50.0, 5.0, 20.0)])
def test_crop_square_pads_with_edges(cx, cy, side):
  from tfsym3d.data import prepare
  image = Image.fromarray(np.full((20, 16, 3), 77, np.uint8))
  crop = np.asarray(prepare.crop_square(image, cx, cy, side, 8))
  assert crop.shape == (8, 8, 3) and np.all(crop == 77)
