"""Differentiable rasterization: `rasterize` and the fragments of visible faces.

`rasterize` is the entry point the renderer calls; it picks a backend
(`backends.Backend`): the pure-TensorFlow z-buffer of `visibility` (default)
or tensorflow-graphics' kernel (`tfg_backend`). Visibility itself is discrete
and carries no gradient, so this module then recomputes, densely and
differentiably from the vertex positions, what depends on the winning
triangle at each pixel: its perspective-correct barycentrics
(`barycentrics_for`, `fragments_for`) or directly its depth (`depth_for`,
with a hand-written gradient). Gradients thus reach the vertices through
interpolation.
"""

from typing import List, NamedTuple

import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.render import backends
from tfsym3d.render.fragments import Fragments
# Also reached as `rasterize.visible_faces` by the renderer and the tests.
from tfsym3d.render.visibility import visible_faces


def _pixel_corners(screen, faces, face_id, return_ids=False):
  """Corners of each pixel's face: 3 corners of (x, y, z), each [B, H, W]
  (and, with `return_ids`, the corners' [3, B, H, W] rows of the flattened
  [B * N, 3] screen).

  One gather of [B*N, 3] rows per corner: under XLA on CPU this and its
  gradient (a scatter) run about 2x faster than one [B, H, W, 3, 3] gather
  followed by arithmetic on trailing axes of 3.
  """
  batch, num_vertices = tf.shape(screen)[0], tf.shape(screen)[1]
  vertex_ids = tf.gather(faces, tf.maximum(face_id, 0))             # [B,H,W,3]
  vertex_ids += tf.reshape(tf.range(batch) * num_vertices, [-1, 1, 1, 1])
  rows = tf.reshape(screen, [-1, 3])
  corners = [tf.gather(rows, vertex_ids[..., i]) for i in range(3)]  # [B,H,W,3]
  corners = [(c[..., 0], c[..., 1], c[..., 2]) for c in corners]
  if return_ids:
    return corners, tf.transpose(vertex_ids, [3, 0, 1, 2])
  return corners


def _pixel_weights(screen, faces, face_id):
  """Screen-space weights of the pixel centres in their faces.

  Returns:
    weights: 3 x [B, H, W], w_i = twice the signed area of the triangle the
      pixel centre makes with the edge opposite corner i;
    depths: 3 x [B, H, W] camera depth z_i of corner i.
  """
  return _corner_weights(_pixel_corners(screen, faces, face_id), face_id)


def _corner_weights(corners, face_id):
  """`_pixel_weights` from the corners of `_pixel_corners`."""
  uv = tf.cast(geometry.pixel_grid(face_id.shape[1], face_id.shape[2]), corners[0][0].dtype)
  px, py = uv[..., 0], uv[..., 1]
  weights = []
  for i in range(3):
    (xa, ya, _), (xb, yb, _) = corners[(i + 1) % 3], corners[(i + 2) % 3]
    weights.append((xb - xa) * (py - ya) - (yb - ya) * (px - xa))
  return weights, [z for _, _, z in corners]


def barycentrics_for(screen, faces, face_id):
  """Perspective-correct barycentrics of every pixel centre in a given face.

  Args:
    screen: [B, N, 3] (u, v, z) per vertex; gradients flow through it.
    faces: [F, 3] int32.
    face_id: [B, H, W] int32, -1 for empty pixels.
  Returns:
    [B, H, W, 3] barycentrics (zero where face_id is -1).
  """
  weights, depths = _pixel_weights(screen, faces, face_id)
  # Screen-space weights divided by depth, renormalised: perspective-correct.
  w_over_z = [w / z for w, z in zip(weights, depths)]
  total = w_over_z[0] + w_over_z[1] + w_over_z[2]
  # Empty pixels (and degenerate faces) get weights 0 rather than NaN.
  usable = (face_id >= 0) & (total != 0)
  total = tf.where(usable, total, tf.ones_like(total))
  return tf.stack([tf.where(usable, w / total, tf.zeros_like(w)) for w in w_over_z], -1)


def depth_for(screen, faces, face_id, background):
  """Perspective-correct depth of every pixel centre in a given face.

  The same as interpolating the corners' z with `barycentrics_for`, whose
  weights are b_i = (w_i / z_i) / sum_j (w_j / z_j): sum_i b_i z_i is
  sum_i w_i / sum_j (w_j / z_j), so neither the barycentrics nor a second
  gather of z are needed.

  The gradient is written out by hand (`_depth_gradient`): automatic
  differentiation of this function under XLA re-gathered the corners for
  each of their uses and took 3-4x longer than the scatter it needs.

  Args:
    screen: [B, N, 3] (u, v, z) per vertex; gradients flow through it.
    faces: [F, 3] int32; face_id: [B, H, W] int32, -1 for empty pixels.
    background: depth of empty pixels.
  Returns:
    [B, H, W] depth; 0 on degenerate faces, as with zero barycentrics.
  """
  screen = tf.convert_to_tensor(screen)
  faces = tf.convert_to_tensor(faces, tf.int32)
  background = tf.cast(background, screen.dtype)

  @tf.custom_gradient
  def depth_of(screen):
    """[B, H, W] depth and its hand-written gradient with respect to `screen`."""
    corners, vertex_ids = _pixel_corners(screen, faces, face_id, return_ids=True)
    terms = _depth_terms(corners, face_id)
    def grad(upstream):
      """d(loss)/d(screen) from d(loss)/d(depth), reusing the forward terms."""
      return _depth_gradient(upstream, corners, vertex_ids, terms, tf.shape(screen))
    return tf.where(face_id >= 0, terms.depth, background), grad

  return depth_of(screen)


class _DepthTerms(NamedTuple):
  """What `depth_for` computes per pixel and its gradient reuses, [B, H, W] each.

  Attributes:
    weights: 3 screen weights w_i (`_corner_weights`); depths: 3 corner z_i.
    total: T = sum w_i / z_i (1 where the depth is undefined, so no NaN).
    depth: D = sum w_i / T (0 where undefined); usable: where it is defined.
  """
  weights: List[tf.Tensor]
  depths: List[tf.Tensor]
  total: tf.Tensor
  depth: tf.Tensor
  usable: tf.Tensor


def _depth_terms(corners, face_id) -> _DepthTerms:
  """`_DepthTerms` of each pixel from the corners of `_pixel_corners`."""
  weights, depths = _corner_weights(corners, face_id)
  total = weights[0] / depths[0] + weights[1] / depths[1] + weights[2] / depths[2]
  usable = (total != 0) & (face_id >= 0)
  safe_total = tf.where(usable, total, tf.ones_like(total))
  depth = tf.where(usable, (weights[0] + weights[1] + weights[2]) / safe_total,
                   tf.zeros_like(total))
  return _DepthTerms(weights, depths, safe_total, depth, usable)


def _depth_gradient(upstream, corners, vertex_ids, terms: _DepthTerms, screen_shape):
  """d(depth)/d(screen) for `depth_for`, by the chain rule written out.

  With D = sum_i w_i / T and T = sum_i w_i / z_i:
    dD/dw_i = (1 - D / z_i) / T,   dD/dz_i = D w_i / (T z_i^2),
  and w_i = (xb - xa)(py - ya) - (yb - ya)(px - xa) over edge (a, b) =
  (i+1, i+2) gives dw_i/dxa = yb - py, dw_i/dya = px - xb,
  dw_i/dxb = py - ya, dw_i/dyb = xa - px. The per-pixel corner gradients
  are summed into the vertices with one segment sum.

  Args:
    upstream: [B, H, W] gradient of the depth; corners, vertex_ids: from
      `_pixel_corners(..., return_ids=True)`; terms: the forward pass's;
    screen_shape: [B, N, 3], the shape of the gradient returned.
  """
  weights, depths, depth = terms.weights, terms.depths, terms.depth
  g = tf.where(terms.usable, upstream, tf.zeros_like(upstream)) / terms.total
  uv = tf.cast(geometry.pixel_grid(upstream.shape[1], upstream.shape[2]), upstream.dtype)
  px, py = uv[..., 0], uv[..., 1]
  grad_w = [g * (1.0 - depth / z) for z in depths]
  grad_x = [tf.zeros_like(g)] * 3
  grad_y = [tf.zeros_like(g)] * 3
  for i in range(3):
    a, b = (i + 1) % 3, (i + 2) % 3
    (xa, ya, _), (xb, yb, _) = corners[a], corners[b]
    grad_x[a] += grad_w[i] * (yb - py)
    grad_y[a] += grad_w[i] * (px - xb)
    grad_x[b] += grad_w[i] * (py - ya)
    grad_y[b] += grad_w[i] * (xa - px)
  grad_z = [g * depth * w / (z * z) for w, z in zip(weights, depths)]
  updates = tf.stack([tf.stack([grad_x[k], grad_y[k], grad_z[k]], -1) for k in range(3)])
  num_rows = screen_shape[0] * screen_shape[1]
  summed = tf.math.unsorted_segment_sum(tf.reshape(updates, [-1, 3]),
                                        tf.reshape(vertex_ids, [-1]), num_rows)
  return tf.reshape(summed, screen_shape)


def fragments_for(screen, faces, face_id) -> Fragments:
  """Fragments of known visible faces (differentiable w.r.t. `screen`).

  Args:
    screen: [B, N, 3] (u, v, z) per vertex; faces: [F, 3]; face_id: [B, H, W].
  """
  return Fragments(face_id=face_id, barycentrics=barycentrics_for(screen, faces, face_id),
                   mask=tf.cast(face_id >= 0, screen.dtype))


def rasterize_tf(vertices, faces, camera: geometry.Camera, grid_mesh: bool = False,
                 xla: bool = True) -> Fragments:
  """Rasterizes camera-space meshes with the pure-TensorFlow z-buffer.

  Args:
    vertices: [B, N, 3] camera-space points (x right, y down, z forward).
    faces: [F, 3] int32 vertex ids; both sides of every triangle are drawn.
    camera: pinhole camera; the image is camera.image_size square.
    grid_mesh: promise that `faces` is `mesh.grid_faces(S, S)` of an S x S
      vertex grid (N = S * S): its corners are then sliced, not gathered.
    xla: run the visibility stages XLA-compiled (`visibility.visible_faces`).
  Returns:
    Fragments with [B, S, S] face ids, barycentrics and mask.
  """
  vertices = tf.convert_to_tensor(vertices)
  faces = tf.convert_to_tensor(faces, tf.int32)
  size = camera.image_size
  screen = tf.concat([geometry.project(vertices, camera), vertices[..., 2:3]], -1)
  face_id = visible_faces(screen, None if grid_mesh else faces, size, size,
                          camera.znear, camera.zfar, xla)
  return fragments_for(screen, faces, face_id)


def rasterize(vertices, faces, camera: geometry.Camera, backend: str = "tf",
              grid_mesh: bool = False, tfg_barycentrics: str = "stable",
              xla: bool = True) -> Fragments:
  """Rasterizes with the chosen backend (`backends.Backend` or its name).

  'tf' (default) is `rasterize_tf`. 'tfg' is tensorflow-graphics' CPU kernel,
  compiled on first use; it runs on the CPU only and serves as the reference
  the 'tf' backend is tested against.

  Args:
    vertices, faces, camera: as `rasterize_tf`.
    backend: 'tf' or 'tfg' (`backends.NAMES`); another name is a ValueError
      that lists them.
    grid_mesh: see `rasterize_tf`; only speeds up the 'tf' backend.
    tfg_barycentrics: 'stable' or 'tfg', `rasterize_tfg`'s barycentric_impl.
    xla: see `rasterize_tf`; only applies to the 'tf' backend.
  Returns:
    Fragments with [B, S, S] face ids, barycentrics and mask.
  """
  if backends.parse(backend) is backends.Backend.TF:
    return rasterize_tf(vertices, faces, camera, grid_mesh, xla)
  from tfsym3d.render import tfg_backend  # compiles a kernel: import lazily
  return tfg_backend.rasterize_tfg(vertices, faces, camera,
                                   barycentric_impl=tfg_barycentrics)
