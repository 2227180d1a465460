"""Synfaces: a procedural, deformable, probably-symmetric face-like category.

Every sample is built in the canonical (frontal) view of docs/method.md §1 and then
posed and rendered into an input view with a NumPy z-buffer that shares no
code with the model's renderer (so a bug in one cannot hide in the other):

- canonical depth [S, S] (depth range of docs/method.md §2, [0.9, 1.1]): a head-like
  ellipsoid bulging toward the camera, mirrored features (nose, brows, eye
  sockets, cheeks, chin, lips) of random size and position, plus one small
  bump on a random side; background at `FAR_DEPTH` (1.1);
- canonical albedo [S, S, 3] in [-1, 1]: mirrored skin, lips, brows, eyes,
  cheeks and hair, plus a mole and freckles on one random side;
- light (a, b, lx, ly): Lambertian shading a + b max(0, <n, l>) with
  l = normalize([lx, ly, 1]) and the normals of docs/method.md §4, in the canonical
  frame (as the model shades);
- view (rx, ry, rz radians, tx, ty, tz): the rigid transform of docs/method.md §5
  about (0, 0, 1), R = Rz Ry Rx.

The input-view image is the shaded canonical image resampled through the
rendered depth, over a random background (colour gradient plus noise);
the input-view depth holds `FAR_DEPTH` wherever the object is absent, so it
is the map's maximum and docs/method.md §8's foreground `d_gt < max(d_gt)` is exact.

Sample i depends only on (seed, i). Splits use disjoint index ranges
(`SPLIT_OFFSETS`).
"""

import math
import os

import numpy as np

MIN_DEPTH, MAX_DEPTH = 0.9, 1.1   # docs/method.md §2
FAR_DEPTH = MAX_DEPTH             # background, canonical and input view
# Visible object depth stays strictly below the background so that docs/method.md §8's
# mask `d_gt < max(d_gt)` keeps all of it (even after 16-bit quantisation).
FG_MAX_DEPTH = MAX_DEPTH - 1e-3
ROT_CENTER_DEPTH = 1.0            # docs/method.md §5
FOV = 10.0                        # docs/method.md §1
SPLIT_OFFSETS = {"train": 0, "val": 100_000_000, "test": 200_000_000}
_DEPTH_PNG_MAX = 65535            # 16-bit depth PNGs
_RIM_R2 = 0.8                     # head = inside this (x/ax)^2 + (y/ay)^2


# ---------------------------------------------------------------- camera ----

def focal_length(image_size: int, fov: float = FOV) -> float:
  """fx = fy = (S - 1) / 2 / tan(fov / 2) (docs/method.md §1)."""
  return (image_size - 1) / 2 / math.tan(math.radians(fov) / 2)


def rotation_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
  """R = Rz Ry Rx (docs/method.md §5), angles in radians -> [3, 3] float64."""
  cx, sx, cy, sy, cz, sz = (math.cos(rx), math.sin(rx), math.cos(ry),
                            math.sin(ry), math.cos(rz), math.sin(rz))
  rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rot_z @ rot_y @ rot_x


_RAYS = {}


def _rays(height: int, width: int, focal: float) -> np.ndarray:
  """Cached K^-1 [u, v, 1] of every pixel centre: [H, W, 3] float64."""
  key = (height, width, focal)
  if key not in _RAYS:
    u = (np.arange(width) - (width - 1) / 2) / focal
    v = (np.arange(height) - (height - 1) / 2) / focal
    uu, vv = np.meshgrid(u, v)
    _RAYS[key] = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
  return _RAYS[key]


def unproject_np(depth: np.ndarray, focal: float) -> np.ndarray:
  """P(u, v) = d(u, v) K^-1 [u, v, 1]: depth [H, W] -> points [H, W, 3]."""
  return depth[..., None] * _rays(depth.shape[0], depth.shape[1], focal)


def normal_planes(depth: np.ndarray, focal: float):
  """Unit normals of docs/method.md §4 as three [H, W] planes (nx, ny, nz).

  For interior pixels n = normalize(t_u x t_v) (eps 1e-7 in the norm) with
  central differences of the unprojected points; the border gets (0, 0, 1).
  Separate planes keep every operation on contiguous 2-D arrays (faster
  than [H, W, 3] slices).
  """
  height, width = depth.shape
  u = (np.arange(width) - (width - 1) / 2) / focal
  v = (np.arange(height) - (height - 1) / 2) / focal
  px, py = depth * u[None, :], depth * v[:, None]
  ux, uy, uz = (p[1:-1, 2:] - p[1:-1, :-2] for p in (px, py, depth))
  vx, vy, vz = (p[2:, 1:-1] - p[:-2, 1:-1] for p in (px, py, depth))
  nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
  norm = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-7
  planes = []
  for n, border in ((nx, 0.0), (ny, 0.0), (nz, 1.0)):
    plane = np.full((height, width), border, n.dtype)
    plane[1:-1, 1:-1] = n / norm
    planes.append(plane)
  return planes


def normals_np(depth: np.ndarray, focal: float) -> np.ndarray:
  """Unit normals of docs/method.md §4: depth [H, W] -> [H, W, 3]; border (0, 0, 1)."""
  return np.stack(normal_planes(depth, focal), axis=-1)


# ------------------------------------------------------------ rasterizer ----

def _grid_triangles(size: int) -> np.ndarray:
  """[2 (S-1)^2, 3] vertex ids of docs/method.md §5's grid mesh (id = v * S + u)."""
  v, u = np.meshgrid(np.arange(size - 1), np.arange(size - 1), indexing="ij")
  a = (v * size + u).ravel()            # (v, u)
  b = a + size                          # (v+1, u)
  c = a + 1                             # (v, u+1)
  d = b + 1                             # (v+1, u+1)
  return np.concatenate([np.stack([a, b, c], 1), np.stack([c, b, d], 1)])


_TRIANGLES = {}


def grid_triangles(size: int) -> np.ndarray:
  """Cached `_grid_triangles`."""
  if size not in _TRIANGLES:
    _TRIANGLES[size] = _grid_triangles(size)
  return _TRIANGLES[size]


def pose_points(points: np.ndarray, view) -> np.ndarray:
  """P' = R (P - c) + c + t about c = (0, 0, 1) (docs/method.md §5); points [..., 3]."""
  rot = rotation_matrix(*view[:3])
  centre = np.array([0.0, 0.0, ROT_CENTER_DEPTH])
  # One product and one shift: P' = P R^T + (c - R c + t).
  return points @ rot.T + (centre - rot @ centre + np.asarray(view[3:6], np.float64))


def unpose_points(points: np.ndarray, view) -> np.ndarray:
  """P = R^T (P' - t - c) + c, the inverse of `pose_points`."""
  rot = rotation_matrix(*view[:3])
  centre = np.array([0.0, 0.0, ROT_CENTER_DEPTH])
  return (points - np.asarray(view[3:6], np.float64) - centre) @ rot + centre


# Faces whose bounding box has at most this many pixel centres per side are
# enumerated offset by offset (a 64 px grid mesh's faces span a few pixels).
_SMALL_BOX = 4


def _candidates(col0, row0, ncol, nrow):
  """Every (face, pixel centre) pair inside the faces' bounding boxes.

  Args:
    col0, row0: [F] int64 first column and row of each box; ncol, nrow: [F]
      int64 box sizes (>= 1).
  Returns:
    face [N] int64 indices into the F faces, px, py [N] float64 centres.
  """
  small = (ncol <= _SMALL_BOX) & (nrow <= _SMALL_BOX)
  faces, cols, rows = [], [], []
  # Small boxes: one vectorised pass per offset (dx, dy), over the faces
  # whose box reaches that far (cheaper than expanding every face's box).
  small_ids = np.flatnonzero(small)
  for dy in range(int(nrow[small_ids].max(initial=0))):
    reach = small_ids[nrow[small_ids] > dy]
    width = ncol[reach]
    for dx in range(int(width.max(initial=0))):
      sel = reach[width > dx] if dx else reach
      faces.append(sel)
      cols.append(col0[sel] + dx)
      rows.append(row0[sel] + dy)
  # Large boxes (grazing faces, big triangles): expand each box in full.
  large_ids = np.flatnonzero(~small)
  if len(large_ids):
    count = ncol[large_ids] * nrow[large_ids]
    face = np.repeat(large_ids, count)
    k = np.arange(len(face)) - np.repeat(np.cumsum(count) - count, count)
    width = ncol[face]
    faces.append(face)
    cols.append(col0[face] + k % width)
    rows.append(row0[face] + k // width)
  if not faces:
    empty = np.zeros(0, np.int64)
    return empty, empty.astype(np.float64), empty.astype(np.float64)
  return (np.concatenate(faces), np.concatenate(cols).astype(np.float64),
          np.concatenate(rows).astype(np.float64))


def render_depth(canon_depth: np.ndarray, view, face_mask=None,
                 znear: float = 0.1, zfar: float = 10.0) -> np.ndarray:
  """Z-buffer depth of the posed canonical grid mesh, seen by the camera.

  Triangles are those of docs/method.md §5 (both sides rendered); a pixel centre is
  covered by a triangle when its three screen-space barycentrics are >= 0
  (a small tolerance keeps shared edges watertight); the depth there is the
  perspective-correct one (1/z affine in screen space), exact for the planar
  triangle; the nearest triangle wins.

  Args:
    canon_depth: [S, S] canonical depth.
    view: 6 numbers (rx, ry, rz radians; tx, ty, tz).
    face_mask: optional [2 (S-1)^2] bool, which triangles to draw (default all).
    znear, zfar: triangles with a corner outside (znear, zfar) are dropped.
  Returns:
    [S, S] float64 depth; np.inf where no triangle covers the pixel centre.
  """
  size = canon_depth.shape[0]
  tris = _screen_triangles(canon_depth, view, face_mask, znear, zfar)
  zbuf = np.full(size * size, np.inf)
  if tris is not None:
    _, px, py, inv_depth = _covered_pixels(*tris)
    pixel = py.astype(np.int64) * size + px.astype(np.int64)
    np.minimum.at(zbuf, pixel, 1.0 / inv_depth)
  return zbuf.reshape(size, size)


def _screen_triangles(canon_depth: np.ndarray, view, face_mask, znear: float,
                      zfar: float):
  """The drawable triangles of the posed mesh in screen space.

  Returns:
    None when nothing is drawable, else (x, y, z, area, col0, row0, ncol,
    nrow) per kept triangle: x, y, z [3][F] corner screen positions and
    depths, area [F] twice the signed screen area, and the integer
    bounding box of the pixel centres it may cover (first column / row and
    counts, [F] int64).
  """
  size = canon_depth.shape[0]
  focal = focal_length(size)
  centre_px = (size - 1) / 2
  points = pose_points(unproject_np(canon_depth.astype(np.float64), focal), view)
  points = points.reshape(-1, 3)
  z = points[:, 2]
  sx = points[:, 0] / z * focal + centre_px
  sy = points[:, 1] / z * focal + centre_px
  tris = grid_triangles(size)
  if face_mask is not None:
    tris = tris[face_mask]
  x0, x1, x2 = sx[tris[:, 0]], sx[tris[:, 1]], sx[tris[:, 2]]
  y0, y1, y2 = sy[tris[:, 0]], sy[tris[:, 1]], sy[tris[:, 2]]
  z0, z1, z2 = z[tris[:, 0]], z[tris[:, 1]], z[tris[:, 2]]
  area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
  eps = 1e-7
  # Pixel centres (integers) inside each bounding box.
  col0 = np.maximum(np.ceil(np.minimum(np.minimum(x0, x1), x2) - eps), 0)
  col1 = np.minimum(np.floor(np.maximum(np.maximum(x0, x1), x2) + eps), size - 1)
  row0 = np.maximum(np.ceil(np.minimum(np.minimum(y0, y1), y2) - eps), 0)
  row1 = np.minimum(np.floor(np.maximum(np.maximum(y0, y1), y2) + eps), size - 1)
  ncol = (col1 - col0 + 1).astype(np.int64)
  nrow = (row1 - row0 + 1).astype(np.int64)
  zmin = np.minimum(np.minimum(z0, z1), z2)
  zmax = np.maximum(np.maximum(z0, z1), z2)
  keep = (ncol > 0) & (nrow > 0) & (np.abs(area) > 1e-12) & (zmin > znear) & (zmax < zfar)
  if not keep.any():
    return None
  return ([x0[keep], x1[keep], x2[keep]], [y0[keep], y1[keep], y2[keep]],
          [z0[keep], z1[keep], z2[keep]], area[keep],
          col0[keep].astype(np.int64), row0[keep].astype(np.int64),
          ncol[keep], nrow[keep])


def _covered_pixels(x, y, z, area, col0, row0, ncol, nrow):
  """Every (triangle, pixel centre) with the centre inside the triangle.

  Args: as `_screen_triangles` returns them.
  Returns:
    face [N] triangle indices, px, py [N] float64 pixel centres, inv_depth
    [N] the perspective-correct 1/z there.
  """
  (x0, x1, x2), (y0, y1, y2) = x, y
  inv_area = 1.0 / area
  # Barycentrics are affine in the pixel centre (p, q): w_i = A_i p + B_i q + C_i.
  a0, b0, c0 = (y1 - y2) * inv_area, (x2 - x1) * inv_area, (x1 * y2 - x2 * y1) * inv_area
  a1, b1, c1 = (y2 - y0) * inv_area, (x0 - x2) * inv_area, (x2 * y0 - x0 * y2) * inv_area
  a2, b2, c2 = (y0 - y1) * inv_area, (x1 - x0) * inv_area, (x0 * y1 - x1 * y0) * inv_area
  face, px, py = _candidates(col0, row0, ncol, nrow)
  tol = -1e-9  # shared edges: a centre on the edge counts for both faces
  inside = ((a0[face] * px + b0[face] * py + c0[face] >= tol)
            & (a1[face] * px + b1[face] * py + c1[face] >= tol)
            & (a2[face] * px + b2[face] * py + c2[face] >= tol))
  face, px, py = face[inside], px[inside], py[inside]
  r0, r1, r2 = 1.0 / z[0], 1.0 / z[1], 1.0 / z[2]
  # 1/z is affine in the pixel centre too: sum_i w_i / z_i.
  inv_depth = ((a0 * r0 + a1 * r1 + a2 * r2)[face] * px
               + (b0 * r0 + b1 * r1 + b2 * r2)[face] * py
               + (c0 * r0 + c1 * r1 + c2 * r2)[face])
  return face, px, py, inv_depth


def bilinear_np(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Samples image [H, W, C] at pixel coordinates u, v [N] (border clamped)."""
  height, width = image.shape[:2]
  u = np.clip(u, 0, width - 1)
  v = np.clip(v, 0, height - 1)
  u0 = np.minimum(np.floor(u).astype(np.int64), width - 2)
  v0 = np.minimum(np.floor(v).astype(np.int64), height - 2)
  fu, fv = (u - u0)[:, None], (v - v0)[:, None]
  top = image[v0, u0] * (1 - fu) + image[v0, u0 + 1] * fu
  bottom = image[v0 + 1, u0] * (1 - fu) + image[v0 + 1, u0 + 1] * fu
  return top * (1 - fv) + bottom * fv


# ----------------------------------------------------------- the category ----

def _hsv_to_rgb(h, s, v):
  """One HSV colour (all in [0, 1]) -> RGB [3] in [0, 1]."""
  i = int(h * 6) % 6
  f = h * 6 - math.floor(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
  return np.array(rgb, np.float32)


def _blend(base, colour, weight):
  """base [H, W, 3] toward colour [3] by weight [H, W] in [0, 1] (in place)."""
  colour = np.asarray(colour, base.dtype)  # float64 colours would upcast maps
  base += (colour - base) * weight[..., None]
  return base


def _head_faces(head: np.ndarray) -> np.ndarray:
  """[2 (S-1)^2] bool: the grid triangles whose corners all lie on the head
  (the two triangles of each cell in `grid_triangles` order), so the
  background plane is never drawn."""
  upper = head[:-1, :-1] & head[1:, :-1] & head[:-1, 1:]
  lower = head[:-1, 1:] & head[1:, :-1] & head[1:, 1:]
  return np.concatenate([upper.ravel(), lower.ravel()])


class SynFaces:
  """Deterministic procedural face-like samples.

  Args:
    image_size: S (pixels).
    seed: dataset seed; sample i depends only on (seed, i).
    max_yaw, max_pitch, max_roll: uniform pose ranges, degrees.
    max_translation: uniform x, y translation range (camera units; the frame
      spans +-0.0875 at depth 1 with fov 10, so 0.015 moves a head by up to
      about a twelfth of the frame, as loosely centred face crops do).
    asymmetry: scale of the one-sided depth bump and albedo marks (0 gives
      exactly mirror-symmetric canonical depth and albedo).
  """

  def __init__(self, image_size: int = 64, seed: int = 0, max_yaw: float = 60.0,
               max_pitch: float = 20.0, max_roll: float = 10.0,
               max_translation: float = 0.015, asymmetry: float = 1.0):
    if image_size < 8:
      raise ValueError(f"SynFaces: image_size={image_size} is too small; use >= 8 "
                       "(e.g. --image_size 64)")
    self.image_size = image_size
    self.seed = int(seed)
    self.max_yaw, self.max_pitch, self.max_roll = max_yaw, max_pitch, max_roll
    self.max_translation = max_translation
    self.asymmetry = asymmetry
    self.focal = focal_length(image_size)
    # Normalised grid: x, y in [-1, 1] across the frame (pixel centres);
    # float32 because the map work is memory bound. Mirror-symmetric parts
    # are built on the left half (columns 0 .. ceil(S/2)-1) and mirrored:
    # half the work, and exact symmetry.
    axis = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    self._axis = axis
    self._half_axis = axis[:(image_size + 1) // 2]
    self._x, self._y = np.meshgrid(self._half_axis, axis)   # [S, ceil(S/2)]

  def _mirror(self, half):
    """[S, ceil(S/2), ...] left half -> [S, S, ...] mirror-symmetric map."""
    right = half[:, :self.image_size // 2][:, ::-1]
    return np.concatenate([half, right], axis=1)

  def _bumps(self, centres, sigmas, weights):
    """Sum of isotropic Gaussians on the full grid: [S, S].

    Args:
      centres: [K, 2] (x, y) normalised; sigmas, weights: [K].
    """
    a = self._axis
    gx = np.exp(-0.5 * ((a[:, None] - centres[:, 0]) / sigmas) ** 2)   # [S, K]
    gy = np.exp(-0.5 * ((a[:, None] - centres[:, 1]) / sigmas) ** 2)
    # A sum of separable bumps is one matrix product.
    return ((gy * weights) @ gx.T).astype(np.float32)

  # -- parts ----------------------------------------------------------------

  def _relief(self, u, ax, ay, cy):
    """The mirrored facial relief on the half grid [S, ceil(S/2)] (negative
    is toward the camera), and the feature positions the albedo reuses:
    (relief, eye_x, eye_y, brow_y, mouth_y). `u` draws from the sample's
    random stream, in a fixed order."""
    a, h = self._axis, self._half_axis
    eye_x, eye_y = u(0.28, 0.42) * ax, cy + u(-0.25, -0.1) * ay
    nose_len = u(0.25, 0.45) * ay
    brow_y = eye_y - u(0.1, 0.16)
    chin_y = cy + u(0.65, 0.8) * ay
    mouth_y = eye_y + nose_len + u(0.12, 0.2)
    # Mirrored bumps (amplitude, x, y, sigma x, sigma y); negative is toward
    # the camera. Central ones (x = 0) have half amplitude: their pair doubles.
    bumps = np.array([
        (-u(0.02, 0.035) / 2, 0, eye_y + nose_len / 2, u(0.06, 0.1),
         nose_len * 0.9),                                                # nose ridge
        (-u(0.01, 0.02) / 2, 0, eye_y + nose_len, u(0.06, 0.1), u(0.05, 0.08)),  # nose tip
        (u(0.008, 0.016), eye_x, eye_y, u(0.08, 0.12), u(0.05, 0.08)),  # eye sockets
        (-u(0.004, 0.01), eye_x, brow_y, u(0.12, 0.18), u(0.04, 0.06)),  # brows
        (-u(0.004, 0.01), u(0.45, 0.6) * ax, eye_y + u(0.2, 0.3), u(0.12, 0.2),
         u(0.1, 0.16)),                                                  # cheeks
        (-u(0.006, 0.014) / 2, 0, chin_y, u(0.15, 0.25), u(0.08, 0.12)),  # chin
        (-u(0.002, 0.006) / 2, 0, mouth_y, u(0.12, 0.2), u(0.03, 0.05)),  # lips
    ], np.float32)
    amp, bx, by, sx, sy = (bumps[:, i:i + 1] for i in range(5))
    gx = np.exp(-0.5 * ((h - bx) / sx) ** 2) + np.exp(-0.5 * ((h + bx) / sx) ** 2)
    gy = amp * np.exp(-0.5 * ((a - by) / sy) ** 2)                      # [K, S]
    # The nose ridge grows from between the eyes down to the tip.
    gy[0] *= np.clip((a - eye_y) / nose_len, 0, 1)
    # Every bump is separable, so their sum is one matrix product.
    feat = gy.T @ gx                                                    # [S, W]
    return feat, eye_x, eye_y, brow_y, mouth_y

  def _shape(self, rng):
    """Canonical depth [S, S], head mask [S, S] bool, asymmetric part [S, S],
    and the layout the albedo reuses (half-grid maps)."""
    x, y = self._x, self._y
    u = rng.uniform
    # The head fills most of the frame, like a face crop (and like the
    # reference's data): background is the minority of the pixels.
    ax, ay, cy = u(0.85, 0.95), u(0.98, 1.06), u(-0.03, 0.03)
    r2 = (x / ax) ** 2 + ((y - cy) / ay) ** 2
    # The head ends before the ellipsoid turns vertical: a near-vertical rim
    # sampled on the pixel grid shows as spikes when seen at grazing angles.
    head = r2 < _RIM_R2
    relief = u(0.08, 0.11)
    # Features fade out toward the rim so the silhouette stays the ellipse's.
    fade = np.sqrt(np.clip(1 - r2, 0, 1))
    # Ellipsoid: would meet the background depth at r2 = 1; bulges toward
    # the camera.
    depth = FAR_DEPTH - relief * fade
    yy = (y - cy) / ay  # vertical position within the head, -1 top .. 1 bottom
    feat, eye_x, eye_y, brow_y, mouth_y = self._relief(u, ax, ay, cy)
    symmetric = self._mirror(np.where(head, depth + feat * fade, FAR_DEPTH))
    head, fade = self._mirror(head), self._mirror(fade)
    # The asymmetric part: one bump (toward the camera) on a random side.
    side = float(rng.integers(2) * 2 - 1)
    centre = np.array([[side * u(0.3, 0.55) * ax, cy + u(-0.3, 0.4) * ay]])
    bump = self._bumps(centre, np.array([u(0.06, 0.1)]),
                       np.array([self.asymmetry * u(0.004, 0.008)]))
    asym = np.where(head, -bump * fade, np.float32(0))
    depth = np.where(head, np.clip(symmetric + asym, MIN_DEPTH, FAR_DEPTH), FAR_DEPTH)
    layout = dict(ax=ax, ay=ay, cy=cy, eye_x=eye_x, eye_y=eye_y, brow_y=brow_y,
                  mouth_y=mouth_y, yy=yy)
    return depth.astype(np.float32), head, asym, layout

  def _paint(self, albedo, hair, hair_w, features):
    """Paints the hair (weight hair_w) and then each mirrored feature over
    the half-grid skin `albedo` [S, ceil(S/2), 3], all layers at once.

    Args:
      features: (colour, x, y, sigma x, sigma y, gain, offset) per feature,
        in painting order; weight = clip(gain * pair - offset, 0, 1) with
        pair the two mirrored Gaussians.
    """
    a, h = self._axis, self._half_axis
    colours = np.stack([hair] + [f[0] for f in features])                # [K, 3]
    cx, cy_, sx, sy, gain, offset = (np.array([f[i] for f in features], np.float32)[:, None]
                                     for i in range(1, 7))
    gx = np.exp(-0.5 * ((h - cx) / sx) ** 2) + np.exp(-0.5 * ((h + cx) / sx) ** 2)
    gy = np.exp(-0.5 * ((a - cy_) / sy) ** 2)
    weights = np.empty((len(features) + 1,) + hair_w.shape, np.float32)  # [K, S, W]
    weights[0] = hair_w
    weights[1:] = np.clip(gain[:, :, None] * gy[:, :, None] * gx[:, None, :]
                          - offset[:, :, None], 0, 1)
    # Painting layer k over the result of layers < k, all at once: layer k
    # survives the layers above it, prod_{j > k} (1 - w_j).
    through = np.cumprod((1 - weights)[::-1], axis=0)[::-1]           # prod_{j >= k}
    above = np.concatenate([through[1:], np.ones_like(through[:1])])
    painted = (weights * above).reshape(len(colours), -1).T @ colours
    return albedo * through[0][..., None] + painted.reshape(albedo.shape)

  def _albedo(self, rng, layout):
    """Canonical albedo [S, S, 3] in [0, 1] and its asymmetric part."""
    x = self._x
    u = rng.uniform
    skin = _hsv_to_rgb(u(0.02, 0.11), u(0.2, 0.6), u(0.45, 0.95))
    yy = layout["yy"]
    # Skin with a gentle vertical gradient (symmetric, like all of this part).
    albedo = skin * (1 + u(-0.08, 0.08) * yy)[..., None]
    ax, ay, cy = layout["ax"], layout["ay"], layout["cy"]
    eye_x, eye_y = layout["eye_x"], layout["eye_y"]
    hair = _hsv_to_rgb(u(0.0, 0.15), u(0.2, 0.8), u(0.05, 0.6))
    hair_line = u(-0.75, -0.45)
    hair_w = np.clip((hair_line - yy) * 8 + 0.5, 0, 1)
    hair_w = np.maximum(hair_w, np.clip((np.abs(x) / ax - u(0.85, 0.95)) * 10, 0, 1)
                        * (yy < u(0.0, 0.4)))
    # Mirrored features, painted over in this order: (colour, x, y, sigma x,
    # sigma y, gain, offset); weight = clip(gain * pair - offset, 0, 1).
    cheek = skin * np.array([1.1, 0.85, 0.85], np.float32)
    brow = hair * u(0.6, 1.0)
    eye_white = np.array([0.9, 0.9, 0.88], np.float32) * u(0.8, 1.0)
    iris = _hsv_to_rgb(u(0.05, 0.6), u(0.3, 0.8), u(0.1, 0.5))
    lips = _hsv_to_rgb(u(0.95, 1.0), u(0.4, 0.7), u(0.4, 0.8))
    features = [
        (cheek, 0.55 * ax, eye_y + 0.25, 0.12, 0.1, u(0.3, 0.7), 0.0),
        (brow, eye_x, layout["brow_y"], u(0.1, 0.15), 0.03, 1.5, 0.0),
        (eye_white, eye_x, eye_y, 0.09, 0.035, 2.0, 0.6),
        (iris, eye_x, eye_y, 0.035, 0.035, 2.0, 0.5),
        (lips, 0.0, layout["mouth_y"], u(0.12, 0.18), 0.035, 0.75, 0.0),  # x 0: pair = 2x
    ]
    albedo = self._paint(albedo, hair, hair_w, features)
    symmetric = self._mirror(np.clip(albedo, 0, 1))
    # The asymmetric part: a mole and a few freckles, on a random side.
    side = float(rng.integers(2) * 2 - 1)
    count = 1 + int(rng.integers(3, 7))
    centres = np.stack([side * rng.uniform(0.2, 0.6, count) * ax,
                        cy + rng.uniform(-0.2, 0.4, count) * ay], 1)
    sigmas = np.full(count, 0.02)
    sigmas[0] = 0.035
    weights = np.full(count, 0.35 * self.asymmetry)
    weights[0] = 0.6 * self.asymmetry
    mark = np.clip(self._bumps(centres, sigmas, weights), 0, 1)
    albedo = _blend(symmetric.copy(), skin * 0.45, mark)
    return albedo, albedo - symmetric

  def _background(self, rng):
    """[S, S, 3] in [0, 1]: a random colour with a gentle linear gradient and
    smooth noise (a backdrop, as behind portraits: busy, high-contrast
    backgrounds would dominate what a symmetric model has to explain)."""
    size = self.image_size
    c0 = rng.random(3, np.float32)
    c1 = np.clip(c0 + rng.uniform(-0.2, 0.2, 3).astype(np.float32), 0, 1)
    angle = rng.uniform(0, 2 * math.pi)
    a = self._axis
    t = a[None, :] * np.float32(math.cos(angle) / 2) + a[:, None] * np.float32(
        math.sin(angle) / 2) + np.float32(0.5)
    image = c0 + (c1 - c0) * t[..., None]
    # Smooth noise: a random coarse grid, linearly interpolated (separable).
    cells = int(rng.integers(3, 12))
    noise = rng.standard_normal((cells + 1, cells + 1, 3), np.float32)
    noise *= rng.uniform(0.02, 0.06)
    pos = (self._axis + 1) * np.float32(cells / 2)   # 0 .. cells
    interp = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(cells + 1)[None, :]))
    rows = (interp @ noise.reshape(cells + 1, -1)).reshape(size, cells + 1, 3)
    image += np.matmul(interp, rows)                  # [S, S, 3]
    # Fine grain: uniform noise (cheaper to draw than normal), std 0.009.
    image += 0.03 * (rng.random(image.shape, np.float32) - 0.5)
    return np.clip(image, 0, 1)

  def _shade(self, albedo, canon_depth, light):
    """Lambertian shading in the canonical frame (docs/method.md §4): the
    shaded canonical image [S, S, 3] in [0, 1]."""
    nx, ny, nz = normal_planes(canon_depth, self.focal)
    lx, ly, lz = np.array([light[2], light[3], 1.0]) / math.hypot(light[2], light[3], 1.0)
    cosine = np.maximum(nx * np.float32(lx) + ny * np.float32(ly) + nz * np.float32(lz), 0)
    shading = np.float32(light[0]) + np.float32(light[1]) * cosine
    return np.clip(albedo * shading[..., None], 0, 1)

  def _input_view(self, canon_image, zbuf, mask, view, background):
    """The input-view image, uint8 [S, S, 3]: each covered pixel goes back to
    the canonical view through the rendered depth `zbuf` and takes a bilinear
    lookup of the shaded canonical image; the rest is `background` (which is
    written into)."""
    size = self.image_size
    image = background
    vs, us = np.nonzero(mask)
    if len(vs):
      c = (size - 1) / 2
      z = zbuf[vs, us]
      points = np.stack([(us - c) / self.focal * z, (vs - c) / self.focal * z, z], -1)
      canon = unpose_points(points, view)
      cu = canon[:, 0] / canon[:, 2] * self.focal + c
      cv = canon[:, 1] / canon[:, 2] * self.focal + c
      image[vs, us] = bilinear_np(canon_image, cu, cv)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)

  # -- public ---------------------------------------------------------------

  def rng(self, index: int) -> np.random.Generator:
    """The random stream of sample `index` (depends only on seed, index)."""
    if index < 0:
      raise ValueError(f"SynFaces.sample: index={index} must be >= 0")
    return np.random.default_rng([self.seed, int(index)])

  def sample(self, index: int) -> dict:
    """Generates sample `index`.

    Returns:
      dict with
        image: [S, S, 3] uint8, the input view;
        depth: [S, S] float32 input-view depth, object in [0.9, FG_MAX_DEPTH],
          background FAR_DEPTH (1.1);
        mask: [S, S] bool, the object in the input view;
        canon_depth: [S, S] float32 in [0.9, 1.1] (background 1.1);
        canon_albedo: [S, S, 3] float32 in [-1, 1];
        canon_depth_asym, canon_albedo_asym: the asymmetric parts that were
          added to the mirror-symmetric ones (same shapes; albedo in [0, 1]
          units);
        light: [4] float32 (ambient a, diffuse b, lx, ly);
        view: [6] float32 (rx, ry, rz radians; tx, ty, tz).
    """
    rng = self.rng(index)
    canon_depth, head, depth_asym, layout = self._shape(rng)
    albedo, albedo_asym = self._albedo(rng, layout)
    # Ambient in [0.3, 0.6], diffuse in [0.4, 0.8], lx, ly in [-1, 1].
    light = rng.uniform([0.3, 0.4, -1, -1], [0.6, 0.8, 1, 1])
    deg = math.pi / 180
    view = np.zeros(6)
    view[:5] = rng.uniform(-1, 1, 5) * [self.max_pitch * deg, self.max_yaw * deg,
                                        self.max_roll * deg, self.max_translation,
                                        self.max_translation]
    background = self._background(rng)
    canon_image = self._shade(albedo, canon_depth, light)
    zbuf = render_depth(canon_depth, view, _head_faces(head))
    mask = np.isfinite(zbuf)
    depth = np.where(mask, np.clip(zbuf, MIN_DEPTH, FG_MAX_DEPTH), FAR_DEPTH)
    image = self._input_view(canon_image, zbuf, mask, view, background)
    return dict(image=image, depth=depth.astype(np.float32), mask=mask,
                canon_depth=canon_depth.astype(np.float32),
                canon_albedo=(albedo * 2 - 1).astype(np.float32),
                canon_depth_asym=depth_asym.astype(np.float32),
                canon_albedo_asym=albedo_asym.astype(np.float32),
                light=light.astype(np.float32), view=view.astype(np.float32))

  def tf_dataset(self, split: str = "train", num=None, start: int = 0):
    """Streams (image, depth) straight into tf.data, no disk.

    Args:
      split: 'train', 'val' or 'test' (disjoint index ranges, SPLIT_OFFSETS).
      num: number of samples (None: endless).
      start: first index within the split.
    Returns:
      tf.data.Dataset of (image float32 [S, S, 3] in [-1, 1],
      depth float32 [S, S]).
    """
    import tensorflow as tf  # only the streaming path needs TensorFlow
    offset = split_offset(split) + start
    size = self.image_size

    def generate():
      i = 0
      while num is None or i < num:
        s = self.sample(offset + i)
        yield s["image"].astype(np.float32) / 255 * 2 - 1, s["depth"]
        i += 1

    return tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec([size, size, 3], tf.float32),
        tf.TensorSpec([size, size], tf.float32)))


def split_offset(split: str) -> int:
  """First sample index of a split."""
  if split not in SPLIT_OFFSETS:
    raise ValueError(f"synthetic: unknown split {split!r}; use one of "
                     f"{sorted(SPLIT_OFFSETS)}")
  return SPLIT_OFFSETS[split]


# ----------------------------------------------------------------- files ----

def encode_depth(depth: np.ndarray) -> np.ndarray:
  """Depth [S, S] -> uint16 PNG values for docs/method.md §8's decoding.

  g = (1.1 - d) / 0.2 (white = near) so that
  d = depth_rescale((1 - g) * 2 - 1) = 1.1 - 0.2 g with g = value / 65535.
  """
  d = np.clip(depth.astype(np.float64), MIN_DEPTH, MAX_DEPTH)
  g = (MAX_DEPTH - d) / (MAX_DEPTH - MIN_DEPTH)
  return np.round(g * _DEPTH_PNG_MAX).astype(np.uint16)


def depth_from_png_value(g, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH):
  """docs/method.md §8: depth from a depth-PNG value g in [0, 1] (white = near).

  d = depth_rescale((1 - g) * 2 - 1) with depth_rescale mapping [-1, 1] to
  [min_depth, max_depth], i.e. d = (1 - g) * max_depth + g * min_depth
  (1.1 - 0.2 g by default). Works on floats, NumPy arrays and tensors. The
  one decoder of the depth PNGs: the paired folder reader uses it too.
  """
  return (1.0 - g) * max_depth + g * min_depth


def decode_depth(values: np.ndarray) -> np.ndarray:
  """docs/method.md §8 on 16-bit PNG values: g = value / 65535, then
  `depth_from_png_value(g)`; float32."""
  g = values.astype(np.float64) / _DEPTH_PNG_MAX
  return depth_from_png_value(g).astype(np.float32)


def _save_atomic(image, path: str):
  """Writes a PIL image through a temporary file so a crash leaves no half file."""
  tmp = path + ".tmp.png"
  image.save(tmp)
  os.replace(tmp, path)


def write_split(out_dir: str, split: str, num: int, image_size: int = 64,
                seed: int = 0, progress: bool = True, generator=None) -> int:
  """Writes docs/method.md §8's layout for one split; existing pairs are skipped.

  Files: <out_dir>/<split>/image/<name>_image.png (RGB 8-bit) and
  <out_dir>/<split>/depth/<name>_depth.png (16-bit, `encode_depth`), with
  name = the 7-digit index within the split.

  Returns:
    The number of pairs written by this call (0 when all existed).
  """
  from PIL import Image
  gen = generator or SynFaces(image_size=image_size, seed=seed)
  offset = split_offset(split)
  image_dir = os.path.join(out_dir, split, "image")
  depth_dir = os.path.join(out_dir, split, "depth")
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(depth_dir, exist_ok=True)
  indices = range(num)
  if progress:
    from tqdm import tqdm
    indices = tqdm(indices, desc=f"synfaces {split}", unit="img")
  written = 0
  for i in indices:
    name = f"{i:07d}"
    image_path = os.path.join(image_dir, f"{name}_image.png")
    depth_path = os.path.join(depth_dir, f"{name}_depth.png")
    if os.path.exists(image_path) and os.path.exists(depth_path):
      continue
    s = gen.sample(offset + i)
    _save_atomic(Image.fromarray(encode_depth(s["depth"])), depth_path)
    _save_atomic(Image.fromarray(s["image"]), image_path)
    written += 1
  return written


def _depth_to_gray(depth: np.ndarray) -> np.ndarray:
  """Depth [S, S] -> uint8 [S, S, 3], white = near (as the depth PNGs)."""
  g = (MAX_DEPTH - np.clip(depth, MIN_DEPTH, MAX_DEPTH)) / (MAX_DEPTH - MIN_DEPTH)
  return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def preview_grid(path: str, num: int = 8, image_size: int = 64, seed: int = 0,
                 scale: int = 2) -> np.ndarray:
  """Saves a PNG grid: per column one sample; rows input image, input depth,
  canonical albedo, canonical depth (white = near).

  Returns:
    The grid as uint8 [4 S scale, num S scale, 3].
  """
  from PIL import Image
  gen = SynFaces(image_size=image_size, seed=seed)
  columns = []
  for i in range(num):
    s = gen.sample(i)
    albedo = np.round((s["canon_albedo"] / 2 + 0.5) * 255).astype(np.uint8)
    columns.append(np.concatenate([s["image"], _depth_to_gray(s["depth"]), albedo,
                                   _depth_to_gray(s["canon_depth"])], axis=0))
  grid = np.concatenate(columns, axis=1)
  grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid).save(path, optimize=True)
  return grid
