"""Bounded decoding of one image file into RGB: the loader reconstruct, the
demo server, `prepare faces/folder` and the training folder reader's scan
share, so every entry point follows one rule.

The rule: the pixel count is read from the file's header first; an image of
more than `max_pixels` pixels is refused with `ImageTooLarge` before anything
is decoded (a 12,000 x 12,000 PNG would otherwise take 432 MB as uint8 and
several GB through float conversions). Below the limit, an image larger than
needed is decoded at reduced size where the format allows it: JPEGs through
libjpeg's DCT scaling (Pillow's draft mode: 1/2, 1/4, 1/8, read straight from
the stream), other formats by an integer box reduction right after the
decode. EXIF orientation is applied. Any mode (grey, RGBA, palette, 16-bit)
becomes 8-bit RGB.

`load_rgb` decodes; `check_decodes` applies the same rules without keeping
the pixels (the folder readers' scan, `tfsym3d.data.scan`).

Errors are `ValueError` subclasses whose message names the file and starts
with what went wrong ("unreadable", "too large", "unsupported format",
"too small"), so callers can log `str(error)` as it is; each class has a
`reason` key (unreadable, too_large, unsupported_format, too_small) that
skip counts use, so every reader counts a bad file under the same name.
"""

import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image
from PIL import ImageOps

# File extensions the readers take (case-insensitive); the decoder is chosen
# from the content, not from the extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Pillow formats read; anything else (GIF, ICO, ...) is refused by name so a
# run's summary can list it instead of passing over it.
READ_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF")
# 64 megapixels: above any phone or DSLR photo of today (a 48 MP phone
# sensor is 8064 x 6048), small enough that one decode stays under ~200 MB.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
  """An image file that cannot be used; `path` names it.

  Attributes:
    path: the file.
    detail: what went wrong, without the path (for messages that name the
      file themselves).
    reason: a short key per subclass ("unreadable", "too_large", ...), the
      same in every reader's skip counts.
  """
  reason = "unusable"

  def __init__(self, path, message: str):
    super().__init__(f"{message}: {path}")
    self.path = str(path)
    self.detail = message


class UnreadableImage(ImageError):
  """Not an image, truncated, empty or corrupt."""
  reason = "unreadable"


class ImageTooLarge(ImageError):
  """More pixels than the limit; refused before decoding."""
  reason = "too_large"


class UnsupportedFormat(ImageError):
  """An image format the readers do not take (e.g. GIF)."""
  reason = "unsupported_format"


class ImageTooSmall(ImageError):
  """Smaller than the caller needs."""
  reason = "too_small"


def pil_to_rgb01(im: Image.Image) -> np.ndarray:
  """A Pillow image of any mode as float32 RGB [H, W, 3] in [0, 1]."""
  if im.mode.startswith("I;16") or im.mode == "I":
    # 16-bit grey (Pillow reads 16-bit PNG/TIFF as I;16 or I); convert("RGB")
    # would clip at 255, so scale by the 16-bit maximum instead.
    a = np.clip(np.asarray(im, np.float32) / 65535.0, 0.0, 1.0)
    return np.repeat(a[..., None], 3, axis=-1)
  if im.mode == "F":
    a = np.clip(np.asarray(im, np.float32), 0.0, 1.0)
    return np.repeat(a[..., None], 3, axis=-1)
  return np.asarray(im.convert("RGB"), np.float32) / 255.0


def _to_rgb8(im: Image.Image) -> np.ndarray:
  """uint8 RGB [H, W, 3] of any mode (16-bit scaled, not clipped)."""
  if im.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1", "PA"):
    return np.asarray(im.convert("RGB"), np.uint8)
  return (pil_to_rgb01(im) * 255 + 0.5).astype(np.uint8)


def check_size(path, width: int, height: int, max_pixels: int) -> None:
  """Raises ImageTooLarge when width x height exceeds max_pixels."""
  if max_pixels and width * height > max_pixels:
    raise ImageTooLarge(
        path, f"too large ({width} x {height} = {width * height / 1e6:.1f} "
        f"megapixels, over the limit of {max_pixels / 1e6:.1f}; downscale it, or "
        "raise --max_image_pixels)")


def _open_checked(path, max_pixels: int) -> Image.Image:
  """Opens a file and applies the header rules: a format in READ_FORMATS and
  at most max_pixels pixels (0: no limit). Nothing is decoded yet.

  Raises:
    UnreadableImage, UnsupportedFormat, ImageTooLarge.
  """
  try:
    im = Image.open(path)
  except Image.DecompressionBombError as error:
    # Pillow's own guard fires at open for huge headers: the same verdict as
    # our limit, so the same reason.
    raise ImageTooLarge(path, f"too large ({error})") from None
  except Exception as error:  # pylint: disable=broad-except
    # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError).
    raise UnreadableImage(path, f"unreadable ({type(error).__name__}: {error})") from None
  try:
    if im.format not in READ_FORMATS:
      raise UnsupportedFormat(path, f"unsupported format {im.format} (read: "
                              f"{', '.join(READ_FORMATS)}); convert it to PNG or JPEG")
    check_size(path, im.size[0], im.size[1], max_pixels)
  except ImageError:
    im.close()
    raise
  return im


def _decode_errors(path, decode):
  """Runs decode(); maps Pillow's exceptions to ImageTooLarge / UnreadableImage."""
  try:
    return decode()
  except Image.DecompressionBombError as error:
    raise ImageTooLarge(path, f"too large ({error})") from None
  except Exception as error:  # pylint: disable=broad-except
    raise UnreadableImage(path, f"unreadable ({type(error).__name__}: {error})") from None


def load_rgb(path, max_pixels: int = DEFAULT_MAX_PIXELS,
             min_side: Optional[int] = None, min_size: int = 1) -> np.ndarray:
  """Decodes an image file into uint8 RGB [H, W, 3], bounded in memory.

  Args:
    path: the file.
    max_pixels: refuse images with more pixels than this (0: no limit).
    min_side: when set, the image may be decoded at reduced size as long as
      its shorter side stays >= min_side (JPEG: DCT scaling; others: integer
      reduction after the decode). None: full size.
    min_size: refuse images whose shorter side (before any reduction) is
      below this.

  Returns:
    uint8 [H, W, 3], EXIF orientation applied.

  Raises:
    UnsupportedFormat, ImageTooLarge, ImageTooSmall, UnreadableImage.
  """
  with _open_checked(path, max_pixels) as im:
    width, height = im.size
    if min(width, height) < min_size:
      raise ImageTooSmall(path, f"too small ({width} x {height} pixels, need at "
                          f"least {min_size} on the shorter side)")

    def decode():
      image = im
      if min_side and image.format in ("JPEG", "MPO") and min(width, height) > min_side:
        # draft keeps the result >= the requested size on both sides.
        scale = min(width, height) / min_side
        image.draft("RGB", (int(width / scale) + 1, int(height / scale) + 1))
      image.load()
      factor = min(image.size) // min_side if min_side else 1
      if factor >= 2:
        image = image.reduce(factor)
      return _to_rgb8(ImageOps.exif_transpose(image))

    return _decode_errors(path, decode)


def check_decodes(path, max_pixels: Optional[int] = None) -> Tuple[str, str, int, int]:
  """Checks a file by `load_rgb`'s rules, decoding it once as cheaply as the
  rules allow: the folder readers' up-front scan.

  JPEGs are decoded at 1/8 scale: that still reads the whole stream (so a
  truncated file is caught) but is several times faster. No EXIF rotation:
  the size returned is the stored one, which is what the tf.data decoders
  see.

  Args:
    path: the file.
    max_pixels: the pixel limit; None: DEFAULT_MAX_PIXELS, read at call time
      so that one setting of the module constant governs every reader.

  Returns:
    (Pillow format, Pillow mode, width, height).

  Raises:
    UnsupportedFormat, ImageTooLarge, UnreadableImage.
  """
  if max_pixels is None:
    max_pixels = DEFAULT_MAX_PIXELS
  with _open_checked(path, max_pixels) as im:
    width, height = im.size
    fmt, mode = im.format, im.mode

    def decode():
      if fmt == "JPEG":
        im.draft(mode, (max(1, width // 8), max(1, height // 8)))
      im.load()

    _decode_errors(path, decode)
  return fmt, mode, width, height


def is_image_name(path) -> bool:
  """Whether the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
  return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS
