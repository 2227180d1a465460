"""What a rasterizer hands to the rest of the renderer."""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass
class Fragments:
  """Per-pixel result of rasterizing a batch of meshes.

  Attributes:
    face_id: [B, H, W] int32, index of the visible triangle, -1 where no
      triangle covers the pixel centre. Carries no gradient.
    barycentrics: [B, H, W, 3] float32, perspective-correct barycentric
      coordinates of the pixel centre in the visible triangle (they sum to 1
      and interpolate camera-space attributes). Differentiable with respect to
      the vertex positions; zeros where `face_id` is -1.
    mask: [B, H, W] float32, 1 where a triangle covers the pixel, else 0.
  """
  face_id: tf.Tensor
  barycentrics: tf.Tensor
  mask: tf.Tensor
