"""Tests for the tensorflow-graphics rasterizer backend (tfsym3d.render.tfg_backend)."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.geometry import Camera
from tfsym3d.render import kernel_recipe
from tfsym3d.render import tfg_backend
from tfsym3d.render.interpolate import interpolate
from render_helpers import face_plane_depth


def _have_compiler():
  try:
    tfg_backend.find_compiler()
    return True
  except RuntimeError:
    return False


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
  """Compiles the kernel once for this module into a temporary cache."""
  if not _have_compiler():
    pytest.skip("no C++ compiler ($CXX, g++, c++ or clang++) to build the "
                "tensorflow-graphics rasterizer kernel")
  directory = tmp_path_factory.mktemp("tfsym3d_cache")
  start = time.perf_counter()
  library = tfg_backend.build_kernel_library(directory)
  print(f"kernel build/lookup took {time.perf_counter() - start:.1f} s")
  tfg_backend.load_kernel(directory)
  return directory, library


def grid_faces(height, width):
  """[F, 3] int32 faces of the grid mesh of an H x W map (docs/method.md §5)."""
  v, u = np.meshgrid(np.arange(height - 1), np.arange(width - 1), indexing="ij")
  top_left = (v * width + u).ravel()
  top_right = top_left + 1
  bottom_left = top_left + width
  bottom_right = bottom_left + 1
  first = np.stack([top_left, bottom_left, top_right], -1)
  second = np.stack([top_right, bottom_left, bottom_right], -1)
  return np.stack([first, second], 1).reshape(-1, 3).astype(np.int32)


def grid_mesh(depth, camera):
  """Vertices [B, H*W, 3] (id v * W + u) and faces of a depth map [B, H, W]."""
  depth = tf.convert_to_tensor(depth, tf.float32)
  points = geometry.unproject(depth, camera)
  batch, height, width = depth.shape
  return (tf.reshape(points, [batch, height * width, 3]),
          tf.constant(grid_faces(height, width)))


def _lift(uv, depth, camera):
  """Camera-space points of pixel coordinates uv [..., 2] at depth [...]."""
  xy = (uv - camera.principal) / camera.focal * depth[..., None]
  return np.concatenate([xy, depth[..., None]], -1)


def _square(camera, u_range, v_range, depth):
  """Two triangles spanning a fronto-parallel rectangle in pixel coordinates."""
  (u0, u1), (v0, v1) = u_range, v_range
  uv = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], np.float64)
  vertices = _lift(uv, np.full(4, depth), camera)[None].astype(np.float32)
  faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
  return tf.constant(vertices), tf.constant(faces)


def _depth(vertices, faces, fragments):
  return interpolate(vertices[..., 2:3], faces, fragments)[..., 0]


def test_clip_matrix_maps_pixel_centres():
  camera = Camera.from_fov(64, 10)
  uv = np.array([[0.0, 0.0], [63.0, 63.0], [10.0, 40.0]])
  points = _lift(uv, np.array([0.5, 1.0, 3.0]), camera)
  clip = tfg_backend.clip_matrix(camera).numpy() @ np.concatenate(
      [points, np.ones((3, 1))], -1).T
  ndc = (clip[:2] / clip[3]).T
  # Kernel pixel centre of column ix: (ix + 0.5) / (S / 2) - 1.
  np.testing.assert_allclose(ndc, (uv + 0.5) / 32 - 1, atol=1e-6)
  ndc_z = clip[2] / clip[3]
  near_far = tfg_backend.clip_matrix(camera).numpy() @ np.array(
      [[0, 0, 0.1, 1], [0, 0, 10, 1]]).T
  np.testing.assert_allclose(near_far[2] / near_far[3], [-1, 1], atol=1e-6)
  assert np.all(np.abs(ndc_z) < 1)


IMPLS = pytest.mark.parametrize("impl", ["stable", "tfg"])


@IMPLS
def test_front_square_covers_expected_pixels_at_exact_depth(kernel_cache, impl):
  camera = Camera.from_fov(32, 10)
  vertices, faces = _square(camera, (8.5, 20.5), (5.5, 13.5), 2.0)
  fragments = tfg_backend.rasterize_tfg(vertices, faces, camera, impl)
  expected = np.zeros((32, 32), bool)
  expected[6:14, 9:21] = True                    # rows v 6..13, columns u 9..20
  assert fragments.face_id.dtype == tf.int32
  assert fragments.face_id.shape == (1, 32, 32)
  assert fragments.barycentrics.shape == (1, 32, 32, 3)
  np.testing.assert_array_equal(fragments.mask.numpy()[0], expected)
  face_id = fragments.face_id.numpy()[0]
  np.testing.assert_array_equal(face_id >= 0, expected)
  assert set(np.unique(face_id[expected])) == {0, 1}
  assert np.all(face_id[~expected] == -1)
  assert np.all(fragments.barycentrics.numpy()[0][~expected] == 0)
  depth = _depth(vertices, faces, fragments).numpy()[0]
  # Exact up to float32 rounding of the barycentric sum (1 ulp).
  np.testing.assert_array_max_ulp(
      depth[expected], np.full(expected.sum(), 2.0, np.float32), maxulp=1)
  assert np.all(depth[~expected] == 0)


def test_far_and_behind_geometry_is_clipped(kernel_cache):
  camera = Camera.from_fov(16, 10, znear=0.1, zfar=10.0)
  for depth in (12.0, 0.05):
    vertices, faces = _square(camera, (2.5, 12.5), (2.5, 12.5), depth)
    fragments = tfg_backend.rasterize_tfg(vertices, faces, camera)
    assert fragments.mask.numpy().sum() == 0
    assert np.all(fragments.face_id.numpy() == -1)


def _plane_depth(uv, camera, z0, a, b):
  """Depth along z of the plane z = z0 + a x + b y seen through pixel uv."""
  ray = (uv - camera.principal) / camera.focal
  return z0 / (1 - a * ray[..., 0] - b * ray[..., 1])


@IMPLS
def test_tilted_plane_depth_matches_ray_plane_intersection(kernel_cache, impl):
  size = 64
  camera = Camera.from_fov(size, 10)
  z0, a, b = 1.5, 3.0, -2.0       # steep: ~72 deg about y, ~63 deg about x
  rng = np.random.default_rng(0)
  # A coarse jittered grid that overhangs the image: triangles far larger
  # than a pixel and vertices off pixel centres.
  knots = np.linspace(-6, size + 5, 7)
  uv = np.stack(np.meshgrid(knots, knots), -1)
  uv[1:-1, 1:-1] += rng.uniform(-2, 2, size=(5, 5, 2))
  depth = _plane_depth(uv, camera, z0, a, b)
  vertices = tf.constant(_lift(uv, depth, camera).reshape(1, -1, 3), tf.float32)
  faces = tf.constant(grid_faces(7, 7))
  fragments = tfg_backend.rasterize_tfg(vertices, faces, camera, impl)
  assert fragments.mask.numpy().min() == 1
  got = _depth(vertices, faces, fragments).numpy()[0]
  want = _plane_depth(geometry.pixel_grid(size, size).numpy().astype(np.float64),
                      camera, z0, a, b)
  assert want.max() - want.min() > 0.2
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _random_scene(batch, size, rng, max_angle=30.0):
  """Smooth random depth maps' grid meshes, rigidly moved."""
  camera = Camera.from_fov(size, 10)
  coarse = rng.uniform(0.9, 1.1, size=(batch, 4, 4, 1)).astype(np.float32)
  depth = tf.image.resize(coarse, [size, size], method="bicubic")[..., 0]
  depth = tf.clip_by_value(depth, 0.9, 1.1)
  vertices, faces = grid_mesh(depth, camera)
  angles = np.radians(rng.uniform(-max_angle, max_angle, size=(batch, 3)))
  shift = rng.uniform(-0.1, 0.1, size=(batch, 2))
  view = np.concatenate([angles, shift, np.zeros((batch, 1))], -1)
  vertices = geometry.rigid_transform(vertices, tf.constant(view, tf.float32))
  return camera, vertices, faces


@IMPLS
def test_barycentrics_sum_to_one_on_covered_pixels(kernel_cache, impl):
  rng = np.random.default_rng(1)
  camera, vertices, faces = _random_scene(3, 32, rng)
  fragments = tfg_backend.rasterize_tfg(vertices, faces, camera, impl)
  mask = fragments.mask.numpy() > 0
  assert 0.3 < mask.mean() < 1
  bary = fragments.barycentrics.numpy()
  np.testing.assert_allclose(bary.sum(-1)[mask], 1, atol=1e-5)
  assert bary.min() > -1e-3 and bary.max() < 1 + 1e-3
  assert np.all(bary[~mask] == 0)
  assert np.all((fragments.face_id.numpy() >= 0) == mask)


def test_graph_mode_matches_eager(kernel_cache):
  rng = np.random.default_rng(2)
  camera, vertices, faces = _random_scene(2, 32, rng)
  eager = tfg_backend.rasterize_tfg(vertices, faces, camera)

  @tf.function
  def rasterize(v):
    fragments = tfg_backend.rasterize_tfg(v, faces, camera)
    return fragments.face_id, fragments.barycentrics, fragments.mask

  graph = tfg_backend.Fragments(*rasterize(vertices))
  np.testing.assert_array_equal(graph.face_id.numpy(), eager.face_id.numpy())
  np.testing.assert_array_equal(graph.mask.numpy(), eager.mask.numpy())
  np.testing.assert_allclose(graph.barycentrics.numpy(),
                             eager.barycentrics.numpy(), atol=1e-6)


@IMPLS
def test_depth_gradient_reaches_vertex_z(kernel_cache, impl):
  rng = np.random.default_rng(3)
  camera, vertices, faces = _random_scene(2, 32, rng)
  weights = tf.constant(rng.normal(size=(2, 32, 32)), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(vertices)
    fragments = tfg_backend.rasterize_tfg(vertices, faces, camera, impl)
    loss = tf.reduce_sum(_depth(vertices, faces, fragments) * weights)
  grad = tape.gradient(loss, vertices)
  assert grad is not None
  grad_z = grad.numpy()[..., 2]
  assert np.all(np.isfinite(grad.numpy()))
  assert np.count_nonzero(grad_z) > 100


@IMPLS
def test_depth_gradient_along_scaling_is_depth(kernel_cache, impl):
  # Scaling every vertex by k leaves the image unchanged and scales depth by
  # k, so d(depth)/dk = depth: the gradient w.r.t. the vertices contracted
  # with the vertices must give the sum of rendered depths.
  camera = Camera.from_fov(32, 10)
  vertices, faces = _square(camera, (3.3, 27.6), (4.2, 21.7), 1.0)
  # Tilt the square so the barycentrics matter.
  vertices = vertices * tf.constant([[[1, 1, 1.0]]]) + tf.constant(
      [[[0, 0, 0.0], [0, 0, 0.2], [0, 0, 0.5], [0, 0, 0.1]]])
  with tf.GradientTape() as tape:
    tape.watch(vertices)
    fragments = tfg_backend.rasterize_tfg(vertices, faces, camera, impl)
    depth = _depth(vertices, faces, fragments)
    total = tf.reduce_sum(depth)
  grad = tape.gradient(total, vertices)
  np.testing.assert_allclose(tf.reduce_sum(grad * vertices).numpy(),
                             total.numpy(), rtol=1e-4)


def test_stable_barycentrics_exact_depth_at_steep_views(kernel_cache):
  # 60-degree views of bumpy meshes have many thin, nearly edge-on triangles.
  rng = np.random.default_rng(4)
  camera, vertices, faces = _random_scene(4, 64, rng, max_angle=60.0)
  fragments = tfg_backend.rasterize_tfg(vertices, faces, camera, "stable")
  face_id = fragments.face_id.numpy()
  covered = face_id >= 0
  want = face_plane_depth(vertices.numpy(), faces.numpy(), face_id, camera)
  got = _depth(vertices, faces, fragments).numpy()
  assert np.abs(got - want)[covered].max() < 5e-6


def test_stable_and_tfg_barycentrics_agree(kernel_cache):
  rng = np.random.default_rng(5)
  camera, vertices, faces = _random_scene(2, 32, rng, max_angle=60.0)
  weights = tf.constant(rng.normal(size=(2, 32, 32)), tf.float32)
  results = {}
  for impl in ("tfg", "stable"):
    with tf.GradientTape() as tape:
      tape.watch(vertices)
      fragments = tfg_backend.rasterize_tfg(vertices, faces, camera, impl)
      depth = _depth(vertices, faces, fragments)
      loss = tf.reduce_sum(depth * weights)
    results[impl] = (fragments, depth.numpy(), tape.gradient(loss, vertices))
  (tfg, tfg_depth, tfg_grad) = results["tfg"]
  (stable, stable_depth, stable_grad) = results["stable"]
  np.testing.assert_array_equal(stable.face_id.numpy(), tfg.face_id.numpy())
  # Same values up to tfg's cancellation on thin triangles.
  bary_diff = np.abs(stable.barycentrics.numpy() - tfg.barycentrics.numpy())
  assert np.median(bary_diff) < 1e-6 and bary_diff.max() < 1e-2
  assert np.abs(stable_depth - tfg_depth).max() < 5e-5
  grad_diff = np.linalg.norm(stable_grad.numpy() - tfg_grad.numpy())
  assert grad_diff < 1e-2 * np.linalg.norm(tfg_grad.numpy())


def test_unknown_barycentric_impl(kernel_cache):
  camera = Camera.from_fov(8, 10)
  vertices, faces = _square(camera, (1.5, 5.5), (1.5, 5.5), 1.0)
  with pytest.raises(ValueError, match="barycentric_impl"):
    tfg_backend.rasterize_tfg(vertices, faces, camera, "nope")


def test_no_compiler_error(monkeypatch, tmp_path):
  monkeypatch.setenv("CXX", str(tmp_path / "no" / "such" / "compiler"))
  monkeypatch.setenv("PATH", "")
  with pytest.raises(RuntimeError, match=r"apt-get install g\+\+") as error:
    tfg_backend.build_kernel_library(tmp_path / "fresh_cache")
  assert "CXX" in str(error.value)
  monkeypatch.delenv("CXX")
  with pytest.raises(RuntimeError, match=r"No C\+\+ compiler found.*apt-get"):
    tfg_backend.build_kernel_library(tmp_path / "fresh_cache")
  assert not list((tmp_path / "fresh_cache").glob("*.so"))


def test_compile_failure_reports_compiler_output(monkeypatch, tmp_path):
  fake = tmp_path / "fake-cxx"
  fake.write_text("#!/bin/sh\necho 'fake-cxx: error: this compiler is broken' >&2\n"
                  "exit 3\n")
  fake.chmod(0o755)
  monkeypatch.setenv("CXX", str(fake))
  with pytest.raises(RuntimeError, match="this compiler is broken") as error:
    tfg_backend.build_kernel_library(tmp_path / "cache")
  assert "exit code 3" in str(error.value)
  # Nothing half-written is left behind to be loaded later.
  assert not [p for p in (tmp_path / "cache").iterdir()
              if not p.name.endswith(".lock")]


def test_second_call_uses_cache(kernel_cache, monkeypatch):
  directory, library = kernel_cache
  assert library.parent == directory and library.is_file()
  assert library.name == tfg_backend.library_name()
  mtime = library.stat().st_mtime_ns

  def no_compile(*args, **kwargs):
    raise AssertionError("recompiled although the library is cached")

  monkeypatch.setattr(tfg_backend.subprocess, "run", no_compile)
  monkeypatch.setattr(tfg_backend, "find_compiler", no_compile)
  assert tfg_backend.build_kernel_library(directory) == library
  monkeypatch.setenv("TFSYM3D_CACHE_DIR", str(directory))
  assert tfg_backend.build_kernel_library() == library
  assert library.stat().st_mtime_ns == mtime
  assert tfg_backend.load_kernel() is tfg_backend.load_kernel(directory)


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
  monkeypatch.delenv("TFSYM3D_CACHE_DIR", raising=False)
  assert tfg_backend.cache_dir() == (
      __import__("pathlib").Path.home() / ".cache" / "tfsym3d")
  monkeypatch.setenv("TFSYM3D_CACHE_DIR", str(tmp_path))
  assert tfg_backend.cache_dir() == tmp_path


def test_gcc_command_flags():
  argv = kernel_recipe.gcc_command("c++", ["a.cc", "b.cc"], "out.so")
  assert argv[:5] == ["c++", "-shared", "-fPIC", "-O2", "-w"]
  assert argv[argv.index("-o") + 1] == "out.so"
  for flag in tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags():
    assert flag in argv
  assert os.path.basename(tfg_backend.library_name()).startswith(
      "rasterize_triangles_")
