"""How a face is framed in a training crop: the square of our CelebA
preparation, from CelebA's landmarks or boxes or from BlazeFace's key points,
and the crop itself. Shared by `prepare celeba` and `prepare faces`
(tfsym3d.data.prepare, tfsym3d.data.photos) so both give configs/faces.cfg
the framing it was tuned on.
"""

import math
from typing import Tuple

import numpy as np
from PIL import Image

# Landmark crop: a square centred halfway between the eyes' midpoint and the
# mouth's midpoint, of side LANDMARK_SIDE x max(inter-ocular distance,
# eye-to-mouth distance). Both distances are ~40 px in the aligned 178x218
# images, so the side is ~120 px: eyebrows to chin, little background, eyes at
# ~1/3 and mouth at ~2/3 of the height, like the reference's cropped 64 px
# CelebA. The max keeps profile (short inter-ocular) and tilted (short
# eye-to-mouth) faces from being cropped too tightly; both are invariant to
# in-plane rotation, so the in-the-wild images crop alike.
LANDMARK_SIDE = 3.0
# Box crop: a square of side BBOX_SIDE x the longer side of CelebA's box,
# centred on the box.
BBOX_SIDE = 1.0


def _square(eye_a, eye_b, mouth, scale: float) -> Tuple[float, float, float]:
  """(centre_x, centre_y, side) of the landmark framing from both eyes and
  the mouth's midpoint, each an (x, y) point in pixel units."""
  eyes = (eye_a + eye_b) / 2
  centre = (eyes + mouth) / 2
  extent = max(np.linalg.norm(eye_a - eye_b), np.linalg.norm(mouth - eyes), 1.0)
  return float(centre[0]), float(centre[1]), LANDMARK_SIDE * scale * extent


def landmark_box(values, scale: float = 1.0) -> Tuple[float, float, float]:
  """(centre_x, centre_y, side) of the landmark crop from CelebA's 10
  coordinates (left eye, right eye, nose, left mouth, right mouth; x, y each)."""
  # Landmarks are pixel indices; + 0.5 puts them on the pixel centres.
  p = np.asarray(values, np.float64).reshape(5, 2) + 0.5
  return _square(p[0], p[1], (p[3] + p[4]) / 2, scale)


def bbox_box(values, scale: float = 1.0) -> Tuple[float, float, float]:
  """(centre_x, centre_y, side) of the square around a CelebA box (x, y, w, h):
  (x, y) is the top-left pixel, so the box spans x .. x + w in corner units."""
  x, y, w, h = values
  return x + w / 2, y + h / 2, BBOX_SIDE * scale * max(w, h, 1.0)


def face_square(face: np.ndarray, scale: float = 1.0) -> Tuple[float, float, float]:
  """(centre_x, centre_y, side) of the landmark framing from one BlazeFace
  row [17] (score, box, 6 key points), in image pixels.

  BlazeFace has no mouth corners, only the mouth centre, which is the
  midpoint `landmark_box` computes from the corners: the same square.
  """
  points = np.asarray(face[5:17], np.float64).reshape(6, 2)
  return _square(points[0], points[1], points[3], scale)


def crop_square(image: Image.Image, cx: float, cy: float, side: float,
                size: int) -> Image.Image:
  """The square (cx, cy, side) of a PIL image, resized to size x size.

  Coordinates are in pixel units with (0, 0) the top-left corner of the
  top-left pixel. Parts outside the image repeat the edge pixels (no black
  bars for the network to learn). The resize is Pillow's antialiased LANCZOS,
  on the exact (sub-pixel) box.
  """
  x0, y0 = cx - side / 2, cy - side / 2
  # Integer region holding the box, padded where it leaves the image.
  left, top = math.floor(x0), math.floor(y0)
  right, bottom = math.ceil(x0 + side), math.ceil(y0 + side)
  w, h = image.size
  if left < 0 or top < 0 or right > w or bottom > h:
    # Clamped indices repeat the edge rows and columns.
    xs = np.clip(np.arange(left, right), 0, w - 1)
    ys = np.clip(np.arange(top, bottom), 0, h - 1)
    region = Image.fromarray(np.asarray(image)[ys][:, xs])
    offset_x, offset_y = left, top
  else:
    region, offset_x, offset_y = image, 0, 0
  rw, rh = region.size
  box = (max(x0 - offset_x, 0.0), max(y0 - offset_y, 0.0),
         min(x0 + side - offset_x, float(rw)), min(y0 + side - offset_y, float(rh)))
  return region.resize((size, size), Image.Resampling.LANCZOS, box=box)
