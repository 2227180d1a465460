"""Helpers shared by the renderer tests."""

import numpy as np

from tfsym3d import geometry


def face_plane_depth(vertices, faces, face_id, camera):
  """float64 depth, at every pixel centre, of the plane of the face there.

  Args:
    vertices: [B, N, 3] camera-space points; faces: [F, 3];
    face_id: [B, S, S] visible faces (-1 empty: any value there).
  Returns:
    [B, S, S] float64 ray-plane depth (inf / nan where the ray is parallel).
  """
  vertices = np.asarray(vertices, np.float64)
  batch, size = face_id.shape[:2]
  corners = vertices[np.arange(batch)[:, None, None, None],
                     np.asarray(faces)[np.maximum(face_id, 0)]]   # [B,S,S,3,3]
  normal = np.cross(corners[..., 1, :] - corners[..., 0, :],
                    corners[..., 2, :] - corners[..., 0, :])
  uv = geometry.pixel_grid(size, size).numpy().astype(np.float64)
  ray = np.concatenate([(uv - camera.principal) / camera.focal,
                        np.ones((size, size, 1))], -1)
  with np.errstate(divide="ignore", invalid="ignore"):
    return (normal * corners[..., 0, :]).sum(-1) / (normal * ray).sum(-1)
