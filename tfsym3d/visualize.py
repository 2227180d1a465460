"""Pictures of a `Decomposition`: image grids, colour maps, the symmetry line,
the yaw animation, and the files of the evaluation's test-mode dump.

Reads decompositions and the model's renderer, never the networks. Arrays
going in are tensors or NumPy arrays; pictures coming out are uint8 NumPy.
"""

import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tfsym3d import geometry


def to_uint8(images) -> np.ndarray:
  """[-1, 1] images [..., C] -> uint8 [..., C]."""
  x = np.asarray(images, np.float32)
  return (np.clip(x / 2 + 0.5, 0, 1) * 255 + 0.5).astype(np.uint8)


def unit_to_uint8(images) -> np.ndarray:
  """[0, 1] images -> uint8."""
  return (np.clip(np.asarray(images, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def depth_to_rgb(depth, min_depth: float, max_depth: float) -> np.ndarray:
  """[..., H, W] depth -> uint8 [..., H, W, 3] grey, near = white (docs/method.md §8)."""
  g = (max_depth - np.asarray(depth, np.float32)) / (max_depth - min_depth)
  return np.repeat(unit_to_uint8(g)[..., None], 3, axis=-1)


# Anchor colours of the depth colour map, far (0) to near (1): deep blue,
# teal, green, yellow, near white; piecewise linear in between.
_DEPTH_COLOURS = np.array([[0.05, 0.03, 0.35], [0.0, 0.45, 0.6], [0.2, 0.7, 0.3],
                           [0.95, 0.85, 0.15], [1.0, 0.98, 0.85]], np.float32)


def depth_to_colormap(depth, min_depth: float, max_depth: float) -> np.ndarray:
  """[..., H, W] depth -> uint8 [..., H, W, 3] colours, near = bright yellow,
  far = dark blue (a monotonic ramp in brightness, so it also reads in grey)."""
  g = np.clip((max_depth - np.asarray(depth, np.float32)) / (max_depth - min_depth), 0, 1)
  position = g * (len(_DEPTH_COLOURS) - 1)
  low = np.minimum(position.astype(np.int64), len(_DEPTH_COLOURS) - 2)
  frac = (position - low)[..., None]
  return unit_to_uint8(_DEPTH_COLOURS[low] * (1 - frac) + _DEPTH_COLOURS[low + 1] * frac)


def depth_to_uint16(depth, min_depth: float, max_depth: float) -> np.ndarray:
  """Depth [..., H, W] -> uint16, linear: min_depth -> 0, max_depth -> 65535.

  Values outside the range are clipped; the step is (max - min) / 65535.
  """
  g = (np.asarray(depth, np.float64) - min_depth) / (max_depth - min_depth)
  return np.round(np.clip(g, 0, 1) * 65535).astype(np.uint16)


def uint16_to_depth(values, min_depth: float, max_depth: float) -> np.ndarray:
  """The inverse of `depth_to_uint16` (within its quantisation)."""
  return (min_depth + np.asarray(values, np.float64) / 65535
          * (max_depth - min_depth)).astype(np.float32)


def save_png16(values: np.ndarray, path: str, text=None) -> None:
  """Writes uint16 [H, W] as a 16-bit greyscale PNG, with optional text chunks."""
  from PIL import PngImagePlugin  # pylint: disable=g-import-not-at-top
  values = np.asarray(values)
  if values.dtype != np.uint16 or values.ndim != 2:
    raise ValueError(f"save_png16 wants uint16 [H, W], got {values.dtype} {values.shape}")
  info = PngImagePlugin.PngInfo()
  for key, value in (text or {}).items():
    info.add_text(key, str(value))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(values).save(path, pnginfo=info)


def load_png16(path: str) -> np.ndarray:
  """Reads a 16-bit greyscale PNG as uint16 [H, W]."""
  with Image.open(path) as im:
    return np.asarray(im).astype(np.uint16)


def upscale(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] -> [size, size, C] by nearest neighbour (any factor)."""
  h, w = image.shape[:2]
  rows = np.arange(size) * h // size
  cols = np.arange(size) * w // size
  return image[rows][:, cols]


def normals_to_rgb(normals) -> np.ndarray:
  """Unit normals [..., 3] -> uint8 colours ((n + 1) / 2, the usual map)."""
  return unit_to_uint8((np.asarray(normals, np.float32) + 1) / 2)


def confidence_to_rgb(sigma) -> np.ndarray:
  """sigma [..., H, W] -> uint8 grey [..., H, W, 3], confident (small) = white.

  Each map is scaled by its own range of 1 / sigma, so the picture shows
  where the model trusts symmetry, not the absolute level.
  """
  inv = 1.0 / np.maximum(np.asarray(sigma, np.float32), 1e-6)
  low = inv.min(axis=(-2, -1), keepdims=True)
  high = inv.max(axis=(-2, -1), keepdims=True)
  g = (inv - low) / np.maximum(high - low, 1e-6)
  return np.repeat(unit_to_uint8(g)[..., None], 3, axis=-1)


def shading_to_rgb(shading) -> np.ndarray:
  """[..., H, W, 1] shading (about [0, 1]) -> uint8 grey [..., H, W, 3]."""
  return np.repeat(unit_to_uint8(np.asarray(shading)[..., 0])[..., None], 3, axis=-1)


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
  """[N, h, w, C] -> [N, size, size, C] by repetition (h, w divide size)."""
  n, h, w = images.shape[:3]
  if (h, w) == (size, size):
    return images
  return np.repeat(np.repeat(images, size // h, axis=1), size // w, axis=2)


def symmetry_line(canon_depth, view, camera: geometry.Camera,
                  rot_center_depth: float = 1.0) -> np.ndarray:
  """Where the symmetry plane's trace on the surface lands in the input view.

  The canonical surface's middle column (between columns S/2 - 1 and S/2)
  is posed by the view and projected.

  Args:
    canon_depth: [B, S, S]; view: [B, 6].
  Returns:
    [B, S, 2] pixel coordinates (u, v), one point per row.
  """
  depth = tf.convert_to_tensor(canon_depth, tf.float32)
  size = depth.shape[-1]
  points = geometry.unproject(depth, camera)                       # [B, S, S, 3]
  middle = (points[:, :, size // 2 - 1] + points[:, :, size // 2]) / 2  # [B, S, 3]
  posed = geometry.rigid_transform(middle, tf.convert_to_tensor(view, tf.float32),
                                   rot_center_depth)
  return geometry.project(posed, camera).numpy()


def draw_points(images: np.ndarray, uv: np.ndarray, color=(255, 0, 0)) -> np.ndarray:
  """Marks pixels (rounded (u, v) per image) on a copy of uint8 images [B, H, W, 3]."""
  out = images.copy()
  height, width = out.shape[1:3]
  for b in range(out.shape[0]):
    u = np.round(uv[b, :, 0]).astype(int)
    v = np.round(uv[b, :, 1]).astype(int)
    keep = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    out[b, v[keep], u[keep]] = color
  return out


def tile(images: np.ndarray, columns: int, pad: int = 1, value: int = 255) -> np.ndarray:
  """[N, H, W, C] -> one [rows * (H + pad), columns * (W + pad), C] picture."""
  n, h, w, c = images.shape
  rows = -(-n // columns)
  canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), value,
                   images.dtype)
  for i in range(n):
    r, col = divmod(i, columns)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    canvas[top:top + h, left:left + w] = images[i]
  return canvas


def panels(images, out, config, camera) -> Dict[str, np.ndarray]:
  """The named pictures of a batch: uint8 [B, S, S, 3] each.

  Args:
    images: [B, S, S, 3] inputs in [-1, 1].
    out: the model's `Decomposition` of `images`.
    config: the model's ModelConfig; camera: its Camera.
  """
  size = config.image_size
  lo, hi = config.min_depth, config.max_depth
  line = symmetry_line(out.canon_depth, out.view, camera, config.rot_center_depth)
  result = {
      "input": draw_points(to_uint8(images), line),
      "albedo": to_uint8(out.canon_albedo),
      "canonical_image": to_uint8(out.canon_image),
      "reconstruction": to_uint8(out.recon_image),
      "reconstruction_flip": to_uint8(out.recon_image_flip),
      "canonical_depth": depth_to_rgb(out.canon_depth, lo, hi),
      "reconstructed_depth": depth_to_rgb(np.minimum(out.recon_depth, hi), lo, hi),
      "canonical_normal": normals_to_rgb(out.canon_normal),
      "reconstructed_normal": normals_to_rgb(out.recon_normal),
      "shading": shading_to_rgb(out.canon_diffuse_shading),
  }
  if out.conf_sigma_l1 is not None:
    result["confidence"] = confidence_to_rgb(np.asarray(out.conf_sigma_l1)[..., 0])
    result["confidence_flip"] = confidence_to_rgb(np.asarray(out.conf_sigma_l1)[..., 1])
    percl = np.asarray(out.conf_sigma_percl)
    result["confidence_perceptual"] = resize_nearest(confidence_to_rgb(percl[..., 0]), size)
  return result


def overview(named: Dict[str, np.ndarray], max_images: int = 8) -> np.ndarray:
  """One picture: a row per image, a column per panel (in `named`'s order)."""
  columns = list(named)
  n = min(max_images, next(iter(named.values())).shape[0])
  cells = np.stack([named[c][i] for i in range(n) for c in columns])
  return tile(cells, len(columns))


def yaw_frames(renderer, out, num_frames: int = 9) -> Dict[str, np.ndarray]:
  """The yaw animation of docs/method.md §9: uint8 [F, B, S, S, 3] per style.

  Styles: 'textured' (canonical image), 'normal' (normal colours), 'shape'
  (textureless, lit from the camera).
  """
  frames = renderer.turntable(
      out.canon_depth, {"textured": out.canon_image / 2 + 0.5,
                        "normal": (out.canon_normal + 1) / 2}, num_frames, shaded=True)
  frames["shape"] = tf.tile(frames["shape"], [1, 1, 1, 1, 3])
  return {name: unit_to_uint8(value) for name, value in frames.items()}


def animation_strip(frames: Dict[str, np.ndarray], max_images: int = 4) -> np.ndarray:
  """[F, B, S, S, 3] per style -> [F, H, W, 3]: each frame a grid with a row
  per (image, style) and the styles side by side."""
  styles = list(frames)
  f, b = frames[styles[0]].shape[:2]
  b = min(b, max_images)
  out = []
  for t in range(f):
    cells = np.stack([frames[s][t, i] for i in range(b) for s in styles])
    out.append(tile(cells, len(styles)))
  return np.stack(out)


def save_png(array: np.ndarray, path: str) -> None:
  """Writes uint8 [H, W, 3] (or [H, W]) to `path` (folders created)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(array)).save(path)


def save_gif(frames: np.ndarray, path: str, duration_ms: int = 120) -> None:
  """Writes uint8 [F, H, W, 3] frames as a looping GIF that goes back and forth."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  sequence = list(frames) + list(frames[-2:0:-1])
  images = [Image.fromarray(f) for f in sequence]
  images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms,
                 loop=0)


def dump_results(images, out, config, camera, directory: str, names: Sequence[str]) -> List[str]:
  """Test mode: writes every picture and the light and view of each image.

  Files per image `<name>`: `<name>_<panel>.png` for every panel of
  `panels()` and `<name>_factors.txt` (light and view, one value per line,
  named). Returns the paths written.
  """
  named = panels(images, out, config, camera)
  light, view = np.asarray(out.light), np.asarray(out.view)
  written = []
  os.makedirs(directory, exist_ok=True)
  for i, name in enumerate(names):
    for panel, pictures in named.items():
      path = os.path.join(directory, f"{name}_{panel}.png")
      save_png(pictures[i], path)
      written.append(path)
    path = os.path.join(directory, f"{name}_factors.txt")
    with open(path, "w") as f:
      for key, value in zip(("ambient", "diffuse", "light_x", "light_y"), light[i]):
        f.write(f"{key} {value:.6f}\n")
      for key, value in zip(("rot_x_rad", "rot_y_rad", "rot_z_rad", "trans_x",
                             "trans_y", "trans_z"), view[i]):
        f.write(f"{key} {value:.6f}\n")
    written.append(path)
  return written
