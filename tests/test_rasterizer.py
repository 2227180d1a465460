"""The pure-TensorFlow rasterizer: coverage, depth, gradients, tf.function."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.render import interpolate, mesh, rasterize

S = 64
CAMERA = geometry.Camera.from_fov(S, 10.0)


def _render_depth(vertices, faces, camera=CAMERA):
  fragments = rasterize.rasterize(vertices, faces, camera)
  depth = interpolate.interpolate(vertices[..., 2:3], faces, fragments, background=10.0)
  return depth[..., 0], fragments


def _smooth_depth(rng, batch, size=S):
  noise = rng.standard_normal((batch, size // 8, size // 8))
  up = tf.image.resize(noise[..., None], [size, size], "bicubic")[..., 0].numpy()
  depth = 1.0 + 0.1 * up / np.abs(up).max()
  depth[:, :, :2] = depth[:, :, -2:] = 1.05
  return tf.constant(depth, tf.float32)


def test_canonical_view_renders_input_depth_back():
  depth = _smooth_depth(np.random.default_rng(0), 3)
  vertices = mesh.depth_to_vertices(depth, CAMERA)
  rendered, fragments = _render_depth(vertices, mesh.grid_faces(S, S))
  inner = (slice(None), slice(1, -1), slice(1, -1))
  assert fragments.mask.numpy()[inner].min() == 1.0
  np.testing.assert_allclose(rendered.numpy()[inner], depth.numpy()[inner], atol=1e-5)
  # Every pixel centre is a vertex: its barycentrics are one-hot.
  assert np.abs(fragments.barycentrics.numpy()[inner].max(-1) - 1).max() < 1e-3


def test_triangles_much_larger_than_a_pixel_have_no_holes():
  """Two triangles spanning most of the image, seen tilted: a plane."""
  corners = np.array([[-0.07, -0.06], [0.07, -0.06], [-0.07, 0.06], [0.07, 0.06]])
  z = 1.0 + 0.8 * corners[:, 0] + 0.5 * corners[:, 1]       # plane z = 1 + .8x + .5y
  vertices = tf.constant(np.c_[corners, z][None], tf.float32)
  faces = tf.constant([[0, 2, 1], [1, 2, 3]], tf.int32)
  rendered, fragments = _render_depth(vertices, faces)
  uv = geometry.project(vertices, CAMERA)[0].numpy()
  grid = geometry.pixel_grid(S, S).numpy()
  # Pixel centres strictly inside the projected quad (a convex polygon).
  quad = uv[[0, 1, 3, 2]]
  inside = np.ones((S, S), bool)
  for a, b in zip(quad, np.roll(quad, -1, axis=0)):
    cross = (b[0] - a[0]) * (grid[..., 1] - a[1]) - (b[1] - a[1]) * (grid[..., 0] - a[0])
    inside &= cross > 1e-3
  assert inside.sum() > 1500
  mask = fragments.mask[0].numpy() > 0
  assert mask[inside].all() and not mask[~inside].any()
  # Depth on a pixel's ray where it meets the plane: z (1 - .8 x/z - .5 y/z) = 1.
  rays = (grid - CAMERA.principal) / CAMERA.focal
  plane_depth = 1.0 / (1.0 - 0.8 * rays[..., 0] - 0.5 * rays[..., 1])
  np.testing.assert_allclose(rendered[0].numpy()[inside], plane_depth[inside], rtol=1e-5)


def test_steep_surface_at_60_degrees_is_covered_without_holes():
  """A depth step seen from 60 degrees: its wall triangles span ~45 pixels."""
  depth = np.full((1, S, S), 0.95)
  depth[:, :, 32:] = 1.1
  vertices = mesh.depth_to_vertices(tf.constant(depth, tf.float32), CAMERA)
  view = tf.constant([[0.0, math.radians(60), 0.0, 0.0, 0.0, 0.0]])
  turned = geometry.rigid_transform(vertices, view, 1.0)
  _, fragments = _render_depth(turned, mesh.grid_faces(S, S))
  mask = fragments.mask[0].numpy() > 0
  face_id = fragments.face_id[0].numpy()
  # Faces 2k, 2k+1 belong to cell k = v * (S-1) + u; the wall is cell column 31.
  wall = (face_id >= 0) & ((face_id // 2) % (S - 1) == 31)
  rows = range(3, S - 3)
  assert min(wall[r].sum() for r in rows) > 30
  # Every row is one unbroken run of covered pixels.
  for r in rows:
    covered = np.flatnonzero(mask[r])
    assert covered[-1] - covered[0] + 1 == covered.size, f"hole in row {r}"


def test_nearest_surface_wins():
  """Two parallel squares: the nearer one is seen where they overlap."""
  square = np.array([[-0.05, -0.05], [0.05, -0.05], [-0.05, 0.05], [0.05, 0.05]])
  far = np.c_[square * 2.0, np.full(4, 2.0)]
  near = np.c_[(square + 0.02) * 1.0, np.full(4, 1.0)]
  vertices = tf.constant(np.r_[far, near][None], tf.float32)
  faces = tf.constant([[0, 2, 1], [1, 2, 3], [4, 6, 5], [5, 6, 7]], tf.int32)
  rendered, fragments = _render_depth(vertices, faces)
  ids = fragments.face_id[0].numpy()
  assert set(np.unique(ids)) == {-1, 0, 1, 2, 3}
  np.testing.assert_allclose(rendered[0].numpy()[ids >= 2], 1.0, rtol=1e-6)
  np.testing.assert_allclose(rendered[0].numpy()[(ids >= 0) & (ids < 2)], 2.0, rtol=1e-6)


def test_rendered_depth_gradient_matches_finite_differences():
  """tf.test.compute_gradient of rendered depth w.r.t. vertex depth."""
  size = 8
  camera = geometry.Camera.from_fov(size, 10.0)
  rng = np.random.default_rng(3)
  # Vertices offset by a fraction of a pixel so no pixel centre sits on an
  # edge: visibility cannot change under the finite-difference step.
  grid = geometry.pixel_grid(size, size).numpy().reshape(-1, 2) + [0.31, 0.17]
  rays = (grid - camera.principal) / camera.focal
  faces = mesh.grid_faces(size, size)

  def rendered(z):
    xy = tf.constant(rays, tf.float64) * z[0, :, None]
    vertices = tf.concat([xy, z[0, :, None]], -1)[None]
    return _render_depth(vertices, faces, camera)[0]

  z0 = tf.constant(1.0 + 0.05 * rng.standard_normal((1, size * size)), tf.float64)
  theoretical, numerical = tf.test.compute_gradient(rendered, [z0], delta=1e-6)
  assert np.abs(theoretical[0]).max() > 0.1
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_depth_for_is_interpolated_depth_with_same_gradient():
  """`depth_for` (the renderer's shortcut) equals interpolating z with the
  barycentrics, values and gradients, on a posed smooth depth mesh."""
  depth = _smooth_depth(np.random.default_rng(5), 2)
  vertices = mesh.depth_to_vertices(depth, CAMERA)
  view = tf.constant([[0.3, -0.5, 0.2, 0.05, -0.03, 0.0], [-0.6, 0.4, -0.1, 0.0, 0.04, 0.0]])
  vertices = geometry.rigid_transform(vertices, view, 1.0)
  screen = tf.concat([geometry.project(vertices, CAMERA), vertices[..., 2:3]], -1)
  faces = mesh.grid_faces(S, S)
  face_id = rasterize.visible_faces(screen, None, S, S)
  assert 0 < (face_id.numpy() >= 0).mean() < 1
  weight = tf.random.stateless_uniform(face_id.shape, [1, 2])

  def both(screen):
    fragments = rasterize.fragments_for(screen, faces, face_id)
    interpolated = interpolate.interpolate(screen[..., 2:3], faces, fragments, 10.0)[..., 0]
    return interpolated, rasterize.depth_for(screen, faces, face_id, 10.0)

  with tf.GradientTape(persistent=True) as tape:
    tape.watch(screen)
    interpolated, direct = both(screen)
    losses = [tf.reduce_sum(weight * d) for d in (interpolated, direct)]
  np.testing.assert_allclose(direct.numpy(), interpolated.numpy(), rtol=1e-6)
  grads = [tape.gradient(loss, screen).numpy() for loss in losses]
  np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-4 * np.abs(grads[0]).max())


def test_runs_in_tf_function_with_unknown_batch():
  faces = mesh.grid_faces(16, 16)
  camera = geometry.Camera.from_fov(16, 10.0)

  @tf.function(input_signature=[tf.TensorSpec([None, 16 * 16, 3], tf.float32)])
  def render(vertices):
    return rasterize.rasterize(vertices, faces, camera).mask

  depth = tf.fill([2, 16, 16], 1.0)
  mask = render(mesh.depth_to_vertices(depth, camera))
  assert mask.shape == (2, 16, 16) and mask.numpy()[:, 1:-1, 1:-1].min() == 1.0


def test_unknown_backend_is_a_clear_error():
  with pytest.raises(ValueError, match="--rasterizer"):
    rasterize.rasterize(tf.zeros([1, 3, 3]), tf.constant([[0, 1, 2]]), CAMERA, "opengl")


def test_runs_in_mirrored_strategy_replicas():
  """Two logical CPU devices, one replica each (a fresh process sets them up)."""
  script = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfsym3d import geometry
    from tfsym3d.render import mesh, rasterize
    camera = geometry.Camera.from_fov(16, 10.0)
    faces = mesh.grid_faces(16, 16)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    depth = tf.fill([4, 16, 16], 1.0)
    dataset = tf.data.Dataset.from_tensor_slices(depth).batch(4)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    @tf.function
    def step(d):
      return tf.reduce_sum(rasterize.rasterize(mesh.depth_to_vertices(d, camera), faces, camera).mask)
    per_replica = strategy.run(step, args=(batch,))
    covered = strategy.reduce("SUM", per_replica, axis=None).numpy()
    print("replicas", strategy.num_replicas_in_sync, "covered", covered)
  """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  line = result.stdout.strip().splitlines()[-1].split()
  assert line[1] == "2"
  assert float(line[3]) >= 4 * 14 * 14
