"""tf.data folder pipelines (tfsym3d/data/folders.py): decoding, geometry,
flips, depth units and bad input. All files are generated under tmp_path."""

import logging
import os
import struct
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tfsym3d.data import folders
from tfsym3d.data import scan

S = 16


def _collect(ds):
  """All batches of a dataset concatenated (tuples element-wise)."""
  batches = list(ds.as_numpy_iterator())
  if isinstance(batches[0], tuple):
    return tuple(np.concatenate(parts) for parts in zip(*batches))
  return np.concatenate(batches)


def _save(im, path, **kw):
  path.parent.mkdir(parents=True, exist_ok=True)
  im.save(path, **kw)
  return path


def _rgb(colour, w=24, h=20):
  return Image.new("RGB", (w, h), tuple(colour))


def _palette(colour, w=24, h=20):
  im = Image.new("P", (w, h), 1)
  im.putpalette([0, 0, 0, *colour] + [0] * (768 - 6))
  return im


def _ramp(w, h):
  """uint8 [h, w, 3]: R grows with the column, G with the row (asymmetric)."""
  u, v = np.meshgrid(np.arange(w), np.arange(h))
  return np.stack([u * 5, v * 5, np.full_like(u, 50)], -1).astype(np.uint8)


def _png16_rgb(path, a):
  """Writes uint16 [h, w, 3] as a 16-bit RGB PNG (Pillow cannot)."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))
  h, w, _ = a.shape
  raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in a)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"\x89PNG\r\n\x1a\n"
                   + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
  return path


def _warnings(caplog):
  return "\n".join(r.getMessage() for r in caplog.records
                   if r.levelno >= logging.WARNING)


# --------------------------------------------------------------------------
# Decoding every mode and extension to RGB in [-1, 1].

_COLOUR = (200, 40, 120)
_RGB = np.array(_COLOUR) / 255
_I16 = lambda w, h: Image.fromarray(np.full((h, w), 40000, np.uint16))
# (name, Pillow image of size (w, h), save kwargs, RGB in [0, 1], tolerance)
_CASES = [
    ("rgb.jpg", lambda w, h: _rgb(_COLOUR, w, h), {"quality": 100}, _RGB, 0.02),
    ("rgb.JPEG", lambda w, h: _rgb(_COLOUR, w, h), {"quality": 100}, _RGB, 0.02),
    ("rgb.png", lambda w, h: _rgb(_COLOUR, w, h), {}, _RGB, 1e-5),
    ("rgb.bmp", lambda w, h: _rgb(_COLOUR, w, h), {}, _RGB, 1e-5),
    ("rgb.webp", lambda w, h: _rgb(_COLOUR, w, h), {"lossless": True}, _RGB, 1e-5),
    ("rgb.tif", lambda w, h: _rgb(_COLOUR, w, h), {}, _RGB, 1e-5),
    ("grey.jpg", lambda w, h: Image.new("L", (w, h), 77), {"quality": 100},
     np.full(3, 77 / 255), 0.02),
    ("grey.png", lambda w, h: Image.new("L", (w, h), 77), {}, np.full(3, 77 / 255), 1e-5),
    ("grey.tiff", lambda w, h: Image.new("L", (w, h), 77), {}, np.full(3, 77 / 255), 1e-5),
    ("rgba.png", lambda w, h: Image.new("RGBA", (w, h), (10, 220, 30, 128)), {},
     np.array([10, 220, 30]) / 255, 1e-5),
    ("rgba.webp", lambda w, h: Image.new("RGBA", (w, h), (10, 220, 30, 128)),
     {"lossless": True}, np.array([10, 220, 30]) / 255, 1e-5),
    ("pal.png", lambda w, h: _palette((10, 200, 30), w, h), {},
     np.array([10, 200, 30]) / 255, 1e-5),
    ("pal.bmp", lambda w, h: _palette((10, 200, 30), w, h), {},
     np.array([10, 200, 30]) / 255, 1e-5),
    ("pal.tif", lambda w, h: _palette((10, 200, 30), w, h), {},
     np.array([10, 200, 30]) / 255, 1e-5),
    ("i16.png", _I16, {}, np.full(3, 40000 / 65535), 1e-5),
    ("i16.tif", _I16, {}, np.full(3, 40000 / 65535), 1e-5),
]


def test_every_mode_and_extension_decodes_to_rgb(tmp_path):
  for i, (name, make, kw, _, _) in enumerate(_CASES):
    # Different sizes per file: the per-image resize path.
    _save(make(24 + i, 20), tmp_path / "train" / "sub" / f"{i:02d}_{name}", **kw)
  paths = folders.list_images(tmp_path, "train")
  assert len(paths) == len(_CASES)
  x = _collect(folders.image_folder_dataset(tmp_path, "train", image_size=S, batch_size=64,
                                            training=False))
  assert x.shape == (len(_CASES), S, S, 3) and x.dtype == np.float32
  for (name, _, _, want, tol), got in zip(_CASES, x):
    np.testing.assert_allclose(got, np.broadcast_to(want * 2 - 1, got.shape),
                               atol=tol * 2, err_msg=name)


# --------------------------------------------------------------------------
# Crop and resize geometry.

@pytest.mark.parametrize("ext", ["png", "bmp"])  # TF decoder and Pillow path
def test_centre_crop_and_box_crop_geometry(tmp_path, ext):
  ramp = _ramp(40, 30)  # w 40, h 30
  for i in range(2):
    _save(Image.fromarray(ramp), tmp_path / "val" / f"{i}.{ext}")
  # Centre crop 20 of 40 x 30: top round(5) = 5, left round(10) = 10; S = 20
  # means no resampling, so the values are exact.
  x = _collect(folders.image_folder_dataset(tmp_path, "val", image_size=20, batch_size=2,
                                            training=False, crop=20))
  np.testing.assert_allclose(x[0], ramp[5:25, 10:30] / 255 * 2 - 1, atol=1e-5)
  # Box (top, left, height, width), then a 2x antialiased bilinear shrink.
  x = _collect(folders.image_folder_dataset(tmp_path, "val", image_size=8, batch_size=2,
                                            training=False, crop=(3, 7, 16, 16)))
  want = tf.image.resize(ramp[3:19, 7:23].astype(np.float32) / 255, [8, 8],
                         antialias=True).numpy() * 2 - 1
  np.testing.assert_allclose(x[1], want, atol=1e-5)
  # A linear ramp stays linear in the interior: column step doubles.
  np.testing.assert_allclose(np.diff(x[1][4, 1:-1, 0]), 2 * 5 * 2 / 255, atol=1e-4)


def test_jpeg_crop_decodes_only_the_window(tmp_path):
  ramp = _ramp(40, 30)
  _save(Image.fromarray(ramp), tmp_path / "t" / "a.jpg", quality=100)
  x = _collect(folders.image_folder_dataset(tmp_path, "t", image_size=20, batch_size=1,
                                            training=False, crop=20))
  np.testing.assert_allclose(x[0], ramp[5:25, 10:30] / 255 * 2 - 1, atol=0.05)


def test_jpeg_draft_decodes_smaller_and_stays_close(tmp_path):
  u, v = np.meshgrid(np.arange(72), np.arange(80))
  a = np.stack([u * 3, v * 3, (u + v) * 2], -1).astype(np.uint8)
  _save(Image.fromarray(a), tmp_path / "t" / "a.jpg", quality=100)
  _save(Image.fromarray(a[:, ::-1]), tmp_path / "t" / "b.png")
  full = _collect(folders.image_folder_dataset(tmp_path, "t", image_size=S, batch_size=2,
                                               training=False, jpeg_draft=False))
  fast = _collect(folders.image_folder_dataset(tmp_path, "t", image_size=S, batch_size=2,
                                               training=False))  # the default
  assert folders._jpeg_ratio([(72, 80)], S) == 4
  np.testing.assert_allclose(fast[1], full[1], atol=1e-6)  # PNG: unchanged
  diff = np.abs(fast[0] - full[0])
  assert 0 < diff.max() < 0.15 and diff.mean() < 0.03


@pytest.mark.parametrize("jpeg_draft", [True, False])
def test_jpeg_resize_close_to_pil_reference(tmp_path, jpeg_draft):
  # CelebA-sized smooth random JPEGs (178 x 218 -> 64: DCT ratio 2 when
  # drafting) against the reference's resampling: Pillow's antialiased
  # bilinear resize of the full-size decode.
  rng = np.random.default_rng(0)
  want = []
  for i in range(4):
    coarse = rng.integers(0, 256, (16, 13, 3), np.uint8)
    im = Image.fromarray(coarse).resize((178, 218), Image.BICUBIC)
    path = _save(im, tmp_path / "t" / f"{i}.jpg", quality=90)
    with Image.open(path) as decoded:
      small = decoded.convert("RGB").resize((64, 64), Image.BILINEAR)
    want.append(np.asarray(small, np.float32) / 255 * 2 - 1)
  got = _collect(folders.image_folder_dataset(tmp_path, "t", image_size=64, batch_size=4,
                                              training=False,
                                              jpeg_draft=jpeg_draft))
  err = np.abs(got - np.stack(want))
  assert err.mean() < 0.015 and err.max() < 0.15


# --------------------------------------------------------------------------
# Shuffling and flips.

def test_flips_and_shuffle_only_when_training_and_seeded(tmp_path):
  ramp = _ramp(S, S)
  n = 32
  for i in range(n):
    a = ramp.copy()
    a[..., 2] = i * 7  # blue identifies the file
    _save(Image.fromarray(a), tmp_path / "train" / f"{i:02d}.png")
  plain = ramp / 255 * 2 - 1

  def run(training, seed=0):
    return _collect(folders.image_folder_dataset(
        tmp_path, "train", image_size=S, batch_size=n, training=training,
        seed=seed))

  x = run(False)
  np.testing.assert_allclose(x[..., :2], np.broadcast_to(plain[..., :2], x[..., :2].shape),
                             atol=1e-5)  # no flips
  np.testing.assert_allclose(x[:, 0, 0, 2], np.arange(n) * 7 / 255 * 2 - 1, atol=1e-5)
  y = run(True)
  flipped = np.array([np.allclose(im[..., :2], plain[::, ::-1, :2], atol=1e-5)
                      for im in y])
  kept = np.array([np.allclose(im[..., :2], plain[..., :2], atol=1e-5) for im in y])
  assert np.all(flipped | kept)
  assert 4 <= flipped.sum() <= n - 4, flipped.sum()
  order = np.round((y[:, 0, 0, 2] + 1) / 2 * 255 / 7).astype(int)
  assert sorted(order) == list(range(n)) and list(order) != list(range(n))
  np.testing.assert_array_equal(run(True), y)  # same seed, same epoch
  assert not np.array_equal(run(True, seed=1), y)


def _paired_tree(root, split, n, image_fn, depth_fn, ext="png"):
  for i in range(n):
    _save(image_fn(i), root / split / "image" / f"f{i:03d}_image.png")
    _save(depth_fn(i), root / split / "depth" / f"f{i:03d}_depth.{ext}")


def test_paired_flips_image_and_depth_together(tmp_path):
  ramp = _ramp(S, S)
  _paired_tree(tmp_path, "train", 16, lambda i: Image.fromarray(ramp),
               lambda i: Image.fromarray(ramp[..., 0]))  # depth g = image red
  im, d = _collect(folders.paired_dataset(tmp_path, "train", image_size=S, batch_size=16,
                                          training=True, crop=None))
  assert im.shape == (16, S, S, 3) and d.shape == (16, S, S)
  g = (im[..., 0] + 1) / 2
  np.testing.assert_allclose(d, 1.1 - 0.2 * g, atol=1e-5)
  flipped = im[:, 0, 0, 0] > im[:, 0, -1, 0]
  assert 0 < flipped.sum() < 16


# --------------------------------------------------------------------------
# Depth units (docs/method.md §8).

def test_depth_png_8_and_16_bit_and_rgb(tmp_path):
  values = [("L", 200, 255), ("I;16", 40000, 65535), ("RGB", 90, 255)]

  def depth(i):
    mode, v, _ = values[i]
    if mode == "I;16":
      return Image.fromarray(np.full((180, 176), v, np.uint16))
    if mode == "RGB":
      return Image.new("RGB", (176, 180), (v, 255, 0))  # first channel only
    return Image.new("L", (176, 180), v)

  _paired_tree(tmp_path, "test", 3, lambda i: _rgb(_COLOUR, 176, 180), depth)
  # 16-bit RGB (Pillow would read it as 8-bit): the first channel, exactly.
  a = np.zeros((180, 176, 3), np.uint16)
  a[..., 0], a[..., 1] = 12345, 65535
  _png16_rgb(tmp_path / "test" / "depth" / "f003_depth.png", a)
  _save(_rgb(_COLOUR, 176, 180), tmp_path / "test" / "image" / "f003_image.png")
  values.append(("RGB;16", 12345, 65535))
  im, d = _collect(folders.paired_dataset(tmp_path, "test", image_size=S,
                                          batch_size=8))  # crop 170
  assert d.shape == (4, S, S)
  for (mode, v, vmax), di in zip(values, d):
    np.testing.assert_allclose(di, 1.1 - 0.2 * v / vmax, atol=1e-5, err_msg=mode)
  np.testing.assert_allclose(im, np.broadcast_to(np.array(_COLOUR) / 255 * 2 - 1,
                                                 im.shape), atol=1e-5)
  assert folders.depth_from_png_value(1.0) == pytest.approx(0.9)
  assert folders.depth_from_png_value(0.0) == pytest.approx(1.1)


# --------------------------------------------------------------------------
# Bad input.

def _bad_files(d):
  """Writes one file of each bad kind into d; returns their paths."""
  d.mkdir(parents=True, exist_ok=True)
  bad = {"corrupt": d / "corrupt.png", "truncated": d / "truncated.jpg",
         "empty": d / "empty.jpg", "text": d / "notes.jpg", "small": d / "small.png"}
  bad["corrupt"].write_bytes(np.random.default_rng(0).bytes(500))
  noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
  _save(Image.fromarray(noise), bad["truncated"], quality=95)
  data = bad["truncated"].read_bytes()
  bad["truncated"].write_bytes(data[:len(data) // 2])
  bad["empty"].write_bytes(b"")
  bad["text"].write_text("this is not an image\n")
  _save(_rgb(_COLOUR, 10, 10), bad["small"])
  return bad


def test_bad_files_are_skipped_with_a_warning_naming_each(tmp_path, caplog):
  d = tmp_path / "train"
  bad = _bad_files(d)
  for i in range(3):
    _save(_rgb(_COLOUR, 24, 20), d / f"good{i}.png")
  with caplog.at_level(logging.WARNING):
    x = _collect(folders.image_folder_dataset(tmp_path, "train", image_size=S, batch_size=8,
                                              training=False, crop=16))
  assert x.shape == (3, S, S, 3)
  text = _warnings(caplog)
  for kind, path in bad.items():
    assert str(path) in text, kind
  assert "smaller than the 16x16 centre crop" in text
  assert "skipped 5 of 8 files" in text
  # Only bad files: a clear error instead of an empty dataset.
  for i in range(3):
    os.remove(d / f"good{i}.png")
  with pytest.raises(ValueError, match="none of the 5 image files is usable"):
    folders.image_folder_dataset(tmp_path, "train", image_size=S, batch_size=8, crop=16)


@pytest.mark.parametrize("with_png", [False, True])  # uint8 / uint16 batches
def test_file_changed_after_the_scan(tmp_path, caplog, with_png):
  d = tmp_path / "train"
  for i in range(4):
    _save(_rgb(_COLOUR, 24, 20), d / f"{i}.jpg", quality=95)
  if with_png:
    _save(_rgb(_COLOUR, 24, 20), d / "4.png")
  ds = folders.image_folder_dataset(tmp_path, "train", image_size=S,
                                    batch_size=8, training=False,
                                    scan_cache=False)
  (d / "2.jpg").write_bytes(b"garbage now")  # broken: skipped, named
  _save(_rgb(_COLOUR, 24, 20), d / "3.jpg", quality=50)  # still valid: kept
  with caplog.at_level(logging.WARNING):
    x = _collect(ds)
  assert x.shape == (3 + with_png, S, S, 3)
  np.testing.assert_allclose(x, np.broadcast_to(_RGB * 2 - 1, x.shape), atol=0.04)
  assert str(d / "2.jpg") in _warnings(caplog)


def test_paired_bad_depth_is_skipped(tmp_path, caplog):
  _paired_tree(tmp_path, "test", 3, lambda i: _rgb(_COLOUR, 176, 176),
               lambda i: Image.new("L", (176, 176), 128))
  bad = tmp_path / "test" / "depth" / "f001_depth.png"
  bad.write_bytes(b"")
  # A temporary file left by an interrupted writer: skipped, not fatal.
  stray = _save(_rgb(_COLOUR, 176, 176),
                tmp_path / "test" / "image" / "f009_image.png.tmp.png")
  with caplog.at_level(logging.WARNING):
    im, d = _collect(folders.paired_dataset(tmp_path, "test", image_size=S, batch_size=8))
  assert im.shape == (2, S, S, 3) and d.shape == (2, S, S)
  assert str(bad) in _warnings(caplog) and str(stray) in _warnings(caplog)


def test_missing_or_empty_folders_and_missing_partner_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
    folders.image_folder_dataset(tmp_path, "train")
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "readme.txt").write_text("no images")
  with pytest.raises(ValueError, match=str(tmp_path / "train")):
    folders.image_folder_dataset(tmp_path, "train")
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "train" / "image")):
    folders.paired_dataset(tmp_path, "train")
  _paired_tree(tmp_path, "test", 2, lambda i: _rgb(_COLOUR, 176, 176),
               lambda i: Image.new("L", (176, 176), 128))
  os.remove(tmp_path / "test" / "depth" / "f001_depth.png")
  with pytest.raises(ValueError) as e:
    folders.paired_dataset(tmp_path, "test")
  assert str(tmp_path / "test" / "image" / "f001_image.png") in str(e.value)
  assert str(tmp_path / "test" / "depth" / "f001_depth.png") in str(e.value)
  with pytest.raises(ValueError, match="crop"):
    folders.image_folder_dataset(tmp_path, "test", crop=(1, 2, 3))
  with pytest.raises(ValueError, match="image_size"):
    folders.paired_dataset(tmp_path, "test", image_size=0)


def test_scan_cache_reused_from_json(tmp_path, monkeypatch):
  for i in range(3):
    _save(_rgb(_COLOUR), tmp_path / "train" / f"{i}.png")
  folders.image_folder_dataset(tmp_path, "train", image_size=S, batch_size=4)
  assert (tmp_path / "train" / folders.SCAN_CACHE_NAME).is_file()
  scan._MEMO.clear()

  def no_probe(path, max_pixels):
    raise AssertionError(f"re-probed {path}")

  monkeypatch.setattr(scan, "_probe", no_probe)
  x = _collect(folders.image_folder_dataset(tmp_path, "train", image_size=S, batch_size=4,
                                            training=False))
  assert x.shape == (3, S, S, 3)


def test_reads_the_synthetic_face_writer_exactly(tmp_path):
  """docs/method.md §8 files from tfsym3d.data.synthetic (16-bit depth) round-trip."""
  synthetic = pytest.importorskip("tfsym3d.data.synthetic")
  synthetic.write_split(str(tmp_path), "test", 3, image_size=S, progress=False)
  im, d = _collect(folders.paired_dataset(tmp_path, "test", image_size=S,
                                          batch_size=4, crop=None))
  names = sorted((tmp_path / "test" / "depth").glob("*_depth.png"))
  want = np.stack([synthetic.decode_depth(np.asarray(Image.open(f))) for f in names])
  np.testing.assert_allclose(d, want, atol=1e-6)
  names = sorted((tmp_path / "test" / "image").glob("*_image.png"))
  want = np.stack([np.asarray(Image.open(f)) for f in names]) / 255 * 2 - 1
  np.testing.assert_allclose(im, want, atol=1e-6)


def test_epoch_stream_resumes_at_any_step_with_the_same_batches(tmp_path):
  for i in range(10):
    _save(_rgb((i * 20, 0, 0), 20, 20), tmp_path / "train" / f"{i}.png")
  common = dict(image_size=16, batch_size=4, training=True, seed=7, first_epoch=0)
  stream = folders.image_folder_dataset(tmp_path, "train", **common)
  batches = [b.numpy() for b in stream.take(7)]      # 2 batches (8 files) per epoch
  # Each epoch uses 8 distinct files; epochs differ in order.
  firsts = [np.round((batches[k][:, 0, 0, 0] + 1) * 127.5 / 20) for k in range(4)]
  assert len(set(np.concatenate(firsts[:2]))) == 8
  assert not np.array_equal(np.concatenate(firsts[:2]), np.concatenate(firsts[2:4]))
  # Resuming at step 5 (epoch 2, batch 1) gives exactly batches 5 and 6.
  resumed = folders.image_folder_dataset(tmp_path, "train", **dict(
      common, first_epoch=2, skip_batches=1))
  for k, b in enumerate(resumed.take(2)):
    np.testing.assert_array_equal(b.numpy(), batches[5 + k])


def test_settings_bundle_equals_keywords_and_bad_settings_are_named(tmp_path):
  for i in range(5):
    _save(_rgb((i * 40, 10, 200), 24, 20), tmp_path / "train" / f"{i}.png")
  settings = folders.FolderSettings(image_size=S, batch_size=2, seed=4)
  bundled = _collect(folders.image_folder_dataset(tmp_path, "train", settings))
  keywords = _collect(folders.image_folder_dataset(
      tmp_path, "train", image_size=S, batch_size=2, seed=4))
  np.testing.assert_array_equal(bundled, keywords)
  assert bundled.shape == (4, S, S, 3)  # training drops the partial batch
  # A keyword overrides the bundle's field.
  evaluated = _collect(folders.image_folder_dataset(tmp_path, "train", settings,
                                                    training=False))
  assert evaluated.shape == (5, S, S, 3)
  with pytest.raises(TypeError, match="imagesize"):
    folders.image_folder_dataset(tmp_path, "train", imagesize=S)
  with pytest.raises(TypeError, match="not a FolderSettings"):
    folders.paired_dataset(tmp_path, "train", S)
  with pytest.raises(ValueError, match="batch_size"):
    folders.FolderSettings(batch_size=0)
  assert folders.PAIRED_DEFAULTS.crop == 170 and not folders.PAIRED_DEFAULTS.training
