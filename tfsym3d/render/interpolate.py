"""Differentiable interpolation of per-vertex attributes over fragments."""

import tensorflow as tf

from tfsym3d.render.fragments import Fragments


def interpolate(attributes, faces, fragments: Fragments, background=0.0):
  """Interpolates vertex attributes at every pixel with the fragments' weights.

  Args:
    attributes: [B, N, C] float, one C-vector per vertex.
    faces: [F, 3] int32 vertex ids of each triangle (shared by the batch).
    fragments: the rasterizer's output for the same meshes.
    background: value for pixels no triangle covers.

  Returns:
    [B, H, W, C]. Gradients reach `attributes` and, through the barycentrics,
    the vertex positions the rasterizer was given.
  """
  attributes = tf.convert_to_tensor(attributes)
  face_id = tf.maximum(fragments.face_id, 0)                       # [B,H,W]
  vertex_ids = tf.gather(faces, face_id)                            # [B,H,W,3]
  corner_values = tf.gather(attributes, vertex_ids, batch_dims=1)   # [B,H,W,3,C]
  values = tf.einsum("bhwk,bhwkc->bhwc", fragments.barycentrics, corner_values)
  mask = tf.cast(fragments.mask[..., None], values.dtype)
  return values * mask + tf.cast(background, values.dtype) * (1 - mask)
