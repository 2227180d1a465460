"""Triangle meshes of depth maps (docs/method.md §5)."""

import functools

import numpy as np
import tensorflow as tf

from tfsym3d import geometry


@functools.lru_cache(maxsize=None)
def _grid_faces_np(height: int, width: int) -> np.ndarray:
  """`grid_faces` as a cached numpy array (one per size in a process)."""
  v, u = np.meshgrid(np.arange(height - 1), np.arange(width - 1), indexing="ij")
  top_left = (v * width + u).ravel()
  top_right, bottom_left = top_left + 1, top_left + width
  bottom_right = bottom_left + 1
  first = np.stack([top_left, bottom_left, top_right], axis=1)
  second = np.stack([top_right, bottom_left, bottom_right], axis=1)
  # Interleave so the two triangles of cell (v, u) are faces 2k and 2k + 1.
  return np.stack([first, second], axis=1).reshape(-1, 3).astype(np.int32)


def grid_faces(height: int, width: int) -> tf.Tensor:
  """Faces of the grid mesh of an H x W map: [2 (H-1) (W-1), 3] int32.

  Vertex (v, u) has id v * W + u; cell (v, u) has the triangles
  [(v,u), (v+1,u), (v,u+1)] and [(v,u+1), (v+1,u), (v+1,u+1)].
  """
  return tf.constant(_grid_faces_np(height, width))


def depth_to_vertices(depth, camera: geometry.Camera) -> tf.Tensor:
  """Camera-space vertices of a depth map's grid mesh: [B, H, W] -> [B, H*W, 3]."""
  points = geometry.unproject(depth, camera)
  return tf.reshape(points, [tf.shape(points)[0], -1, 3])
