"""The interactive viewer page of one reconstruction (`viewer.html`).

`page_html` fills the page template with one canonical depth map, its albedo
and light: a single self-contained HTML file (its script, styles and data
inline; no network, no server), which draws the surface on a 2D canvas,
turns it by dragging, and relights it with the model's shading
(docs/method.md §4) under a light the user drags. The initial state can be set
in the URL hash, e.g. `viewer.html#light=-0.5,0.2&yaw=30&pitch=0&mode=shape`
(`light` = lx,ly in the model's convention, or x,y,z of a direction;
`ambient`, `diffuse` in [0, 1]; `mode` textured|albedo|normals|shape); the page
keeps the hash up to date, so a URL shares a view.
"""

import base64
import html
import json
import string
from importlib import resources
from typing import Optional, Sequence, Tuple

import numpy as np

from tfsym3d import geometry

# The surface canvas is about this many CSS pixels wide (an integer multiple
# of the map's size, so pixel centres of the map land on canvas pixels).
DISPLAY_PIXELS = 384


def _asset(name: str) -> str:
  return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def display_scale(size: int, display: int = DISPLAY_PIXELS) -> int:
  """Canvas pixels per map pixel for a map of `size` (as the page computes it)."""
  return max(1, int(round(display / size)))


def page_data(depth, albedo, light, camera: geometry.Camera,
              rot_center_depth: float = 1.0, title: str = "") -> dict:
  """The page's data: depth [S, S] (quantised to uint16 over its own range),
  albedo uint8 [S, S, 3], light [4] (ambient, diffuse, lx, ly), the camera."""
  depth = np.asarray(depth, np.float64)
  albedo = np.asarray(albedo)
  size = depth.shape[0]
  if depth.ndim != 2 or depth.shape[1] != size:
    raise ValueError(f"depth must be [S, S], got shape {depth.shape}")
  if albedo.shape != (size, size, 3) or albedo.dtype != np.uint8:
    raise ValueError(f"albedo must be uint8 [{size}, {size}, 3], got "
                     f"{albedo.dtype} {albedo.shape}")
  if not np.all(np.isfinite(depth)):
    raise ValueError("depth has non-finite values")
  lo, hi = float(depth.min()), float(depth.max())
  span = max(hi - lo, 1e-12)
  quantised = np.round((depth - lo) / span * 65535).astype("<u2")
  light = [float(x) for x in np.asarray(light).reshape(-1)[:4]]
  return {
      "title": title, "size": size, "focal": float(camera.focal),
      "principal": float(camera.principal), "rot_center_depth": float(rot_center_depth),
      "depth_min": lo, "depth_max": lo + span,
      "depth_uint16": base64.b64encode(quantised.tobytes()).decode("ascii"),
      "albedo_rgb": base64.b64encode(np.ascontiguousarray(albedo).tobytes()).decode("ascii"),
      "light": {"ambient": light[0], "diffuse": light[1], "lx": light[2], "ly": light[3]},
      "display": DISPLAY_PIXELS,
  }


def page_html(depth, albedo, light, camera: geometry.Camera, rot_center_depth: float = 1.0,
              title: str = "", links: Optional[Sequence[Tuple[str, str]]] = None) -> str:
  """The viewer page as one HTML string (see the module docstring).

  Args:
    depth: [S, S] canonical depth; albedo: uint8 [S, S, 3]; light: [4].
    camera: the model's camera; rot_center_depth: the centre it turns about.
    title: shown on the page; links: (label, relative href) pairs shown under
      the controls (e.g. the downloads).
  """
  data = page_data(depth, albedo, light, camera, rot_center_depth, title)
  # Inside <script>, "</" could end the element early: JSON allows "<\/".
  data_json = json.dumps(data).replace("</", "<\\/")
  link_html = " ".join(f'<a href="{html.escape(href)}">{html.escape(label)}</a>'
                       for label, href in (links or ()))
  return string.Template(_asset("template.html")).substitute(
      title=html.escape(title), css=_asset("viewer.css"), script=_asset("viewer.js"),
      data=data_json, links=link_html, display=DISPLAY_PIXELS)


def write_page(path: str, depth, albedo, light, camera: geometry.Camera,
               rot_center_depth: float = 1.0, title: str = "",
               links: Optional[Sequence[Tuple[str, str]]] = None) -> str:
  """Writes `page_html(...)` to `path`; returns the path."""
  with open(path, "w", encoding="utf-8") as f:
    f.write(page_html(depth, albedo, light, camera, rot_center_depth, title, links))
  return path
