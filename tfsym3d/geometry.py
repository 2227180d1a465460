"""Camera, projection, rotations, rigid transforms and normals (docs/method.md §1, §4, §5).

Conventions: pixel (u, v) is column u (x, right) and row v (y, down); pixel
centres sit at integer coordinates 0 .. S-1. Camera space is x right, y down,
z forward. Maps are NHWC: a depth map is [B, H, W], points [B, H, W, 3].
All functions are pure and differentiable.
"""

import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Camera:
  """A pinhole camera in pixel units with square pixels.

  Attributes:
    image_size: S; images are S x S.
    focal: fx = fy in pixels.
    principal: cx = cy in pixels.
    znear, zfar: depth range the rasterizer keeps.
  """
  image_size: int
  focal: float
  principal: float
  znear: float = 0.1
  zfar: float = 10.0

  @classmethod
  def from_fov(cls, image_size: int, fov_degrees: float, znear=0.1, zfar=10.0):
    """The camera of docs/method.md §1: fx = (S - 1) / 2 / tan(fov / 2), cx = (S - 1) / 2."""
    focal = (image_size - 1) / 2 / math.tan(math.radians(fov_degrees) / 2)
    return cls(image_size, focal, (image_size - 1) / 2, znear, zfar)

  def intrinsics(self) -> tf.Tensor:
    """K as a [3, 3] float32 tensor."""
    f, c = self.focal, self.principal
    return tf.constant([[f, 0, c], [0, f, c], [0, 0, 1]], tf.float32)


def pixel_grid(height: int, width: int) -> tf.Tensor:
  """[H, W, 2] float32 pixel coordinates (u, v) of every pixel centre."""
  u, v = tf.meshgrid(tf.range(width, dtype=tf.float32),
                     tf.range(height, dtype=tf.float32))
  return tf.stack([u, v], axis=-1)


def unproject(depth, camera: Camera) -> tf.Tensor:
  """Lifts a depth map to camera space: P(u, v) = d(u, v) K^-1 [u, v, 1].

  Args:
    depth: [B, H, W] depth along z.
  Returns:
    [B, H, W, 3] points.
  """
  depth = tf.convert_to_tensor(depth)
  height, width = depth.shape[1], depth.shape[2]
  uv = pixel_grid(height, width)
  rays_xy = (uv - camera.principal) / camera.focal                 # [H, W, 2]
  xy = depth[..., None] * rays_xy
  return tf.concat([xy, depth[..., None]], axis=-1)


def project(points, camera: Camera) -> tf.Tensor:
  """Projects camera-space points to pixel coordinates: p = K P / P_z.

  Args:
    points: [..., 3].
  Returns:
    [..., 2] pixel coordinates (u, v).
  """
  z = points[..., 2:3]
  return points[..., :2] / z * camera.focal + camera.principal


def pixels_to_grid(uv, image_size: int) -> tf.Tensor:
  """Pixel coordinates to the sampling range [-1, 1] (align corners).

  -1 and +1 are the centres of the first and last pixels.
  """
  return uv / (image_size - 1) * 2 - 1


def euler_rotation(angles) -> tf.Tensor:
  """R = Rz(rz) Ry(ry) Rx(rx) (docs/method.md §5).

  Args:
    angles: [B, 3] (rx, ry, rz) in radians.
  Returns:
    [B, 3, 3] rotation matrices.
  """
  angles = tf.convert_to_tensor(angles)
  rx, ry, rz = tf.unstack(angles, axis=-1)
  zeros, ones = tf.zeros_like(rx), tf.ones_like(rx)

  def matrix(rows):
    return tf.stack([tf.stack(row, axis=-1) for row in rows], axis=-2)

  cx, sx, cy, sy, cz, sz = (tf.cos(rx), tf.sin(rx), tf.cos(ry), tf.sin(ry),
                            tf.cos(rz), tf.sin(rz))
  rot_x = matrix([[ones, zeros, zeros], [zeros, cx, -sx], [zeros, sx, cx]])
  rot_y = matrix([[cy, zeros, sy], [zeros, ones, zeros], [-sy, zeros, cy]])
  rot_z = matrix([[cz, -sz, zeros], [sz, cz, zeros], [zeros, zeros, ones]])
  return rot_z @ rot_y @ rot_x


def _rotation_and_translation(view):
  """Splits a [B, 6] view (rx, ry, rz radians; tx, ty, tz) into R and t."""
  view = tf.convert_to_tensor(view)
  return euler_rotation(view[:, :3]), view[:, 3:6]


def _flat(points):
  """[B, ..., 3] -> ([B, N, 3], original shape)."""
  shape = tf.shape(points)
  return tf.reshape(points, [shape[0], -1, 3]), shape


def rigid_transform(points, view, rot_center_depth: float = 1.0) -> tf.Tensor:
  """P' = R (P - c) + c + t about the centre c = (0, 0, rot_center_depth).

  Args:
    points: [B, ..., 3] camera-space points.
    view: [B, 6] (rx, ry, rz) in radians then (tx, ty, tz).
  Returns:
    Points of the same shape as `points`.
  """
  rotation, translation = _rotation_and_translation(view)
  flat, shape = _flat(points)
  centre = tf.constant([0.0, 0.0, rot_center_depth], flat.dtype)
  moved = tf.einsum("bij,bnj->bni", rotation, flat - centre)
  moved = moved + centre + translation[:, None, :]
  return tf.reshape(moved, shape)


def inverse_rigid_transform(points, view, rot_center_depth: float = 1.0):
  """P = R^T (P' - t - c) + c: undoes `rigid_transform` with the same view."""
  rotation, translation = _rotation_and_translation(view)
  flat, shape = _flat(points)
  centre = tf.constant([0.0, 0.0, rot_center_depth], flat.dtype)
  back = flat - translation[:, None, :] - centre
  back = tf.einsum("bji,bnj->bni", rotation, back) + centre
  return tf.reshape(back, shape)


def normals_from_points(points) -> tf.Tensor:
  """Unit normals of a grid of points (docs/method.md §4).

  For interior pixels t_u = P[v, u+1] - P[v, u-1], t_v = P[v+1, u] - P[v-1, u]
  and n = normalize(t_u x t_v) (eps 1e-7 in the norm); the one-pixel border
  gets n = (0, 0, 1).

  Args:
    points: [B, H, W, 3].
  Returns:
    [B, H, W, 3].
  """
  t_u = points[:, 1:-1, 2:, :] - points[:, 1:-1, :-2, :]
  t_v = points[:, 2:, 1:-1, :] - points[:, :-2, 1:-1, :]
  normal = tf.linalg.cross(t_u, t_v)
  normal = normal / (tf.norm(normal, axis=-1, keepdims=True) + 1e-7)
  # Pad the border with (0, 0, 1): pad with zeros, then add 1 to z there.
  normal = tf.pad(normal, [[0, 0], [1, 1], [1, 1], [0, 0]])
  height, width = points.shape[1], points.shape[2]
  interior = tf.pad(tf.ones([height - 2, width - 2], normal.dtype), [[1, 1], [1, 1]])
  border_z = tf.stack([tf.zeros_like(interior), tf.zeros_like(interior), 1 - interior], -1)
  return normal + border_z


def normals_from_depth(depth, camera: Camera) -> tf.Tensor:
  """Normals of a depth map [B, H, W] -> [B, H, W, 3] (docs/method.md §4)."""
  return normals_from_points(unproject(depth, camera))
