"""The z-buffer's settings bundle and its code paths (grid or faces, XLA or not)."""

import numpy as np
import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.render import mesh, visibility

S = 32
CAMERA = geometry.Camera.from_fov(S, 10.0)


def test_settings_count_the_pixels_of_the_batch():
  settings = visibility.RasterSettings(3, 4, 5, 0.1, 10.0)
  assert settings.num_pixels == 60
  assert settings._replace(batch=tf.constant(2)).num_pixels.numpy() == 40


def _posed_screen(seed):
  """Smooth depth with a step (its wall), turned by about 60 degrees: small,
  middle and large triangles on screen. [2, S*S, 3] (u, v, z)."""
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal((2, S // 8, S // 8, 1))
  up = tf.image.resize(noise, [S, S], "bicubic")[..., 0]
  step = np.where(np.arange(S) < S // 2, 0.0, 0.15).astype(np.float32)
  depth = 0.95 + 0.05 * up / tf.reduce_max(tf.abs(up)) + step
  vertices = mesh.depth_to_vertices(tf.cast(depth, tf.float32), CAMERA)
  view = tf.constant([[0.2, 1.05, 0.1, 0.03, 0.0, 0.0], [-0.3, -1.0, 0.0, 0.0, 0.02, 0.0]])
  vertices = geometry.rigid_transform(vertices, view, 1.0)
  return tf.concat([geometry.project(vertices, CAMERA), vertices[..., 2:3]], -1)


def test_every_path_finds_the_same_faces():
  """Sliced grid corners or gathered faces, XLA-compiled stages or plain ops:
  one answer, with all three tiers of faces in use."""
  screen = _posed_screen(0)
  faces = mesh.grid_faces(S, S)
  settings = visibility.RasterSettings(2, S, S, CAMERA.znear, CAMERA.zfar)
  _, box = visibility._first_tier_grid(screen, settings)
  box = box.numpy()
  assert (box > visibility._SECOND_SLOTS).sum() > 50
  assert ((box > visibility._FIRST_SLOTS) & (box <= visibility._SECOND_SLOTS)).sum() >= 5
  results = [visibility.visible_faces(screen, f, S, S, CAMERA.znear, CAMERA.zfar, xla).numpy()
             for f in (None, faces) for xla in (True, False)]
  for other in results[1:]:
    np.testing.assert_array_equal(other, results[0])
  face_id = results[0]
  assert face_id.shape == (2, S, S) and face_id.max() < faces.shape[0]
  assert 0.3 < (face_id >= 0).mean() < 1.0
  # Each tier wins pixels (box is image-major: image b's face f is b * F + f).
  num_faces = faces.shape[0]
  won = (face_id + np.arange(2)[:, None, None] * num_faces)[face_id >= 0]
  assert (box[won] > visibility._SECOND_SLOTS).sum() > 50
  assert ((box[won] > visibility._FIRST_SLOTS) & (box[won] <= visibility._SECOND_SLOTS)).any()


def test_a_far_plane_in_front_of_the_mesh_hides_it():
  screen = _posed_screen(1)
  face_id = visibility.visible_faces(screen, None, S, S, 0.1, 0.5, xla=False)
  assert (face_id.numpy() == -1).all()
