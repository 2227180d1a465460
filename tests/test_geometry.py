"""Geometry (docs/method.md §1, §4, §5) with hand-checked numbers."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.config import ModelConfig
from tfsym3d.model import Unsup3D

CAMERA = geometry.Camera.from_fov(64, 10.0)


def test_intrinsics_match_method():
  f = 31.5 / math.tan(math.radians(5))
  assert CAMERA.focal == pytest.approx(f)              # 360.05...
  assert CAMERA.principal == 31.5
  np.testing.assert_allclose(CAMERA.intrinsics().numpy(),
                             [[f, 0, 31.5], [0, f, 31.5], [0, 0, 1]], rtol=1e-6)


def test_unproject_project_roundtrip_and_values():
  depth = tf.fill([1, 64, 64], 2.0)
  points = geometry.unproject(depth, CAMERA)
  # Pixel (u=0, v=63) at depth 2: x = 2 * (0 - 31.5) / f, y = 2 * (63 - 31.5) / f.
  np.testing.assert_allclose(points[0, 63, 0].numpy(),
                             [-63 / CAMERA.focal, 63 / CAMERA.focal, 2.0], rtol=1e-6)
  uv = geometry.project(points, CAMERA)
  np.testing.assert_allclose(uv[0].numpy(), geometry.pixel_grid(64, 64).numpy(), atol=1e-4)
  grid = geometry.pixels_to_grid(uv, 64)
  np.testing.assert_allclose(grid[0, 0, 0].numpy(), [-1, -1], atol=1e-5)
  np.testing.assert_allclose(grid[0, 63, 63].numpy(), [1, 1], atol=1e-5)


def test_euler_rotation_order_is_z_y_x():
  rx, ry, rz = 0.3, -0.7, 1.1
  r = geometry.euler_rotation(tf.constant([[rx, ry, rz]]))[0].numpy()
  c, s = np.cos, np.sin
  rot_x = np.array([[1, 0, 0], [0, c(rx), -s(rx)], [0, s(rx), c(rx)]])
  rot_y = np.array([[c(ry), 0, s(ry)], [0, 1, 0], [-s(ry), 0, c(ry)]])
  rot_z = np.array([[c(rz), -s(rz), 0], [s(rz), c(rz), 0], [0, 0, 1]])
  np.testing.assert_allclose(r, rot_z @ rot_y @ rot_x, atol=1e-6)
  # A yaw of +90 degrees turns +x into -z about the centre.
  turned = geometry.rigid_transform(tf.constant([[[1.0, 0.0, 1.0]]]),
                                    tf.constant([[0, math.pi / 2, 0, 0, 0, 0.0]]), 1.0)
  np.testing.assert_allclose(turned[0, 0].numpy(), [0, 0, 0], atol=1e-6)


def test_transform_then_inverse_is_identity():
  rng = np.random.default_rng(1)
  points = tf.constant(rng.uniform(-1, 2, (4, 100, 3)), tf.float32)
  view = tf.constant(np.concatenate([rng.uniform(-1, 1, (4, 3)) * math.pi / 3,
                                     rng.uniform(-0.1, 0.1, (4, 3))], 1), tf.float32)
  moved = geometry.rigid_transform(points, view, 1.0)
  assert np.abs(moved.numpy() - points.numpy()).max() > 0.1
  back = geometry.inverse_rigid_transform(moved, view, 1.0)
  np.testing.assert_allclose(back.numpy(), points.numpy(), atol=1e-6)


def test_plane_normals():
  normal = geometry.normals_from_depth(tf.fill([2, 16, 16], 1.0), CAMERA)
  # t_u = (2/f, 0, 0), t_v = (0, 2/f, 0): n = (0, 0, c / (c + 1e-7)) with
  # c = 4 / f^2 = 3.09e-5. The eps of docs/method.md §4 (as in the reference) keeps
  # the length just under 1 at this scale.
  c = 4 / CAMERA.focal ** 2
  np.testing.assert_allclose(normal[:, 1:-1, 1:-1].numpy(),
                             np.broadcast_to([0, 0, c / (c + 1e-7)], (2, 14, 14, 3)),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(normal[:, 0].numpy(), np.broadcast_to([0, 0, 1], (2, 16, 3)))
  # A plane z = 1 + 0.1 x (in camera space) has normal along (-0.1, 0, 1).
  uv = geometry.pixel_grid(16, 16).numpy()
  x_over_z = (uv[..., 0] - CAMERA.principal) / CAMERA.focal
  depth = 1 / (1 - 0.1 * x_over_z)                   # z = 1 + 0.1 x on each ray
  normal = geometry.normals_from_depth(tf.constant(depth[None], tf.float32), CAMERA)
  inner = normal[0, 1:-1, 1:-1].numpy()
  direction = inner / np.linalg.norm(inner, axis=-1, keepdims=True)
  expected = np.array([-0.1, 0, 1]) / math.sqrt(1.01)
  np.testing.assert_allclose(direction, np.broadcast_to(expected, (14, 14, 3)), atol=1e-3)
  np.testing.assert_allclose(normal[0, 0, 5].numpy(), [0, 0, 1])   # border


def test_zero_view_reproduces_canonical_image_and_depth():
  """With a zero viewpoint, reprojection is the identity (docs/method.md §5)."""
  config = ModelConfig(nf=8, zdim=16, nf_encoder=8, nf_conf=8, zdim_conf=16,
                       vgg_weights="none")
  renderer = Unsup3D(config).renderer
  rng = np.random.default_rng(2)
  depth = tf.constant(rng.uniform(0.9, 1.1, (2, 64, 64)), tf.float32)
  image = tf.constant(rng.uniform(-1, 1, (2, 64, 64, 3)), tf.float32)
  view = tf.zeros([2, 6])
  recon_depth = renderer.reconstructed_depth(depth, view)
  recon_image = renderer.reconstruct_image(image, recon_depth, view)
  inner = (slice(None), slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(recon_depth.numpy()[inner], depth.numpy()[inner], atol=1e-5)
  np.testing.assert_allclose(recon_image.numpy()[inner], image.numpy()[inner], atol=1e-3)
  assert renderer.valid_mask(recon_depth).numpy()[inner].min() == 1.0
