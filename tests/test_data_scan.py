"""The folder readers' scanning core (tfsym3d/data/scan.py): recursive sorted
listing, skips by reason with counts, decoder kinds, the cache and its pixel
limit. All files are generated under tmp_path."""

import logging

import numpy as np
from PIL import Image
import pytest

from tfsym3d.data import scan


def _save(im, path, **kw):
  path.parent.mkdir(parents=True, exist_ok=True)
  im.save(path, **kw)
  return path


def _rgb(w=24, h=20, value=90):
  return Image.new("RGB", (w, h), (value, 40, 120))


def _warnings(caplog):
  return "\n".join(r.getMessage() for r in caplog.records
                   if r.levelno >= logging.WARNING)


def test_lists_recursively_in_sorted_order_on_every_call(tmp_path):
  d = tmp_path / "train"
  # Written out of order, nested, mixed-case extensions, plus non-images.
  names = ["z/b.PNG", "a.jpg", "m/n/o.Png", "b.bmp", "m/a.jpeg"]
  for name in reversed(names):
    _save(_rgb(), d / name)
  (d / "notes.txt").write_text("not an image")
  (d / "m" / "n" / "x.gif").write_bytes(b"GIF89a")
  want = sorted(str(d / name) for name in names)
  settings = scan.ScanSettings(cache=False)
  first = scan.scan_images(tmp_path, "train", settings=settings)
  assert [f for (f,) in first.files] == want
  assert scan.list_images(tmp_path, "train") == want
  again = scan.scan_images(tmp_path, "train", settings=settings)
  assert again.files == first.files and again.skipped == [] and again.total == 5
  assert first.sizes == [(24, 20)] * 5


def test_skips_each_bad_file_by_reason_with_counts(tmp_path, caplog):
  d = tmp_path / "train"
  for i in range(3):
    _save(_rgb(), d / "ok" / f"{i}.png")
  (d / "garbage.png").write_bytes(np.random.default_rng(0).bytes(300))
  (d / "empty.jpg").write_bytes(b"")
  noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
  data = _save(Image.fromarray(noise), d / "cut.jpg", quality=95).read_bytes()
  (d / "cut.jpg").write_bytes(data[:len(data) // 2])
  _save(_rgb(), d / "really_a_gif.png", format="GIF")
  _save(_rgb(80, 80), d / "big.png")                 # 6400 px > the limit
  _save(_rgb(10, 30), d / "narrow.png")              # narrower than the need
  need = scan.MinSize(height=16, width=16, text="16x16 centre crop")
  settings = scan.ScanSettings(cache=False, max_pixels=5000)
  with caplog.at_level(logging.WARNING):
    found = scan.scan_images(tmp_path, "train", need, settings)
  assert [f for (f,) in found.files] == [str(d / "ok" / f"{i}.png") for i in range(3)]
  assert found.total == 9
  assert found.counts() == {"unreadable": 3, "unsupported_format": 1,
                            "too_large": 1, "too_small": 1}
  by_path = {s.path: s.reason for s in found.skipped}
  assert by_path == {str(d / "garbage.png"): "unreadable",
                     str(d / "empty.jpg"): "unreadable",
                     str(d / "cut.jpg"): "unreadable",
                     str(d / "really_a_gif.png"): "unsupported_format",
                     str(d / "big.png"): "too_large",
                     str(d / "narrow.png"): "too_small"}
  text = _warnings(caplog)
  for path in by_path:
    assert f"skipping {path}: " in text
  assert "10x30 image is smaller than the 16x16 centre crop" in text
  assert "skipped 6 of 9 files" in text and "unreadable 3" in text
  # Without the limit the large image is usable: the limit is part of the
  # check, so its cached verdict is not reused.
  found = scan.scan_images(tmp_path, "train", need, scan.ScanSettings(cache=False))
  assert str(d / "big.png") in [f for (f,) in found.files]


def test_pairs_skip_a_bad_or_mismatched_partner_and_give_per_role_elements(
    tmp_path, caplog):
  d = tmp_path / "test"
  for i in range(4):
    _save(_rgb(), d / "image" / f"f{i}_image.png")
    depth = np.full((20, 24), 30000, np.uint16)
    _save(Image.fromarray(depth), d / "depth" / f"f{i}_depth.png")
  (d / "depth" / "f1_depth.png").write_bytes(b"")
  _save(Image.new("L", (12, 10), 9), d / "depth" / "f2_depth.png")
  _save(_rgb(), d / "image" / "f3_image.png", format="JPEG", quality=90)
  with caplog.at_level(logging.WARNING):
    found = scan.scan_pairs(tmp_path, "test", settings=scan.ScanSettings(cache=False))
  assert found.files == [(str(d / "image" / f"f{i}_image.png"),
                          str(d / "depth" / f"f{i}_depth.png")) for i in (0, 3)]
  assert found.counts() == {"unreadable": 1, scan.SIZE_MISMATCH: 1}
  bad = found.skipped[0]
  assert bad.path == str(d / "depth" / "f1_depth.png")
  assert str(d / "image" / "f1_image.png") in bad.message  # its image goes too
  assert "24x20 image but its depth" in _warnings(caplog)
  e = found.elements()
  assert sorted(e) == ["depth", "depth_kind", "depth_nbytes",
                       "image", "image_kind", "image_nbytes"]
  # f3's image is a JPEG under a .png name: the decoder follows the content.
  assert list(e["image_kind"]) == [scan.KIND_PNG, scan.KIND_JPEG]
  assert list(e["depth_kind"]) == [scan.KIND_PNG16, scan.KIND_PNG16]
  assert list(e["depth_nbytes"]) == [(d / "depth" / f"f{i}_depth.png").stat().st_size
                                     for i in (0, 3)]


def test_nothing_usable_is_an_error_naming_the_folder(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "a.png").write_bytes(b"")
  with pytest.raises(ValueError, match="none of the 1 image files is usable"):
    scan.scan_images(tmp_path, "train", settings=scan.ScanSettings(cache=False))


def test_json_cache_is_reused_and_keyed_on_the_pixel_limit(tmp_path, monkeypatch):
  for i in range(2):
    _save(_rgb(), tmp_path / "train" / f"{i}.bmp")
  first = scan.scan_images(tmp_path, "train")
  assert (tmp_path / "train" / scan.SCAN_CACHE_NAME).is_file()
  assert list(first.kinds[:, 0]) == [scan.KIND_PIL] * 2
  scan._MEMO.clear()  # pylint: disable=protected-access
  probed = []
  real = scan._probe  # pylint: disable=protected-access

  def counting(path, max_pixels):
    probed.append(path)
    return real(path, max_pixels)

  monkeypatch.setattr(scan, "_probe", counting)
  assert scan.scan_images(tmp_path, "train").files == first.files
  assert probed == []  # every verdict came from the JSON file
  scan._MEMO.clear()  # pylint: disable=protected-access
  scan.scan_images(tmp_path, "train", settings=scan.ScanSettings(max_pixels=10_000))
  assert len(probed) == 2  # another limit: checked again
