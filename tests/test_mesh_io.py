"""Textured meshes: OBJ and our own GLB writer, read back by trimesh."""

import json
import struct

import numpy as np
import pytest

from tfsym3d import geometry
from tfsym3d import mesh_io

trimesh = pytest.importorskip("trimesh", reason="the mesh read-back tests use trimesh")

SIZE = 12


def _bump_mesh():
  """A plane at depth 1.05 with a bump (nearer) right of centre and above it."""
  v, u = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
  depth = 1.05 - 0.1 * np.exp(-((u - 7.0) ** 2 + (v - 4.0) ** 2) / 6.0)
  texture = np.zeros((SIZE, SIZE, 3), np.uint8)
  texture[..., 0] = (u * 20).astype(np.uint8)
  texture[..., 1] = (v * 20).astype(np.uint8)
  camera = geometry.Camera.from_fov(SIZE, 10.0)
  return depth.astype(np.float32), mesh_io.mesh_from_depth(depth, texture, camera)


def test_orientation_y_up_facing_plus_z():
  depth, m = _bump_mesh()
  grid = m.vertices.reshape(SIZE, SIZE, 3)
  # Row 0 (top of the image) is up, column 0 (left) is left.
  assert np.all(grid[0, :, 1] > grid[-1, :, 1])
  assert np.all(grid[:, 0, 0] < grid[:, -1, 0])
  # Nearer to the camera = larger z; the rotation centre (depth 1) at z = 0.
  top = np.unravel_index(np.argmin(depth), depth.shape)
  assert grid[top][2] == pytest.approx(grid[..., 2].max())
  np.testing.assert_allclose(grid[..., 2], 1.0 - depth, atol=1e-6)
  # Triangles are counter-clockwise seen from +z and agree with the normals.
  tri = m.vertices[m.faces]
  face_normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  assert np.all(face_normal[:, 2] > 0)
  np.testing.assert_allclose(np.linalg.norm(m.normals, axis=1), 1.0, atol=1e-5)
  assert np.all(m.normals[:, 2] > 0.3)
  # The interior vertex normal is close to its faces' normals.
  mean_face = face_normal / np.linalg.norm(face_normal, axis=1, keepdims=True)
  vertex = 5 * SIZE + 5
  touching = np.any(m.faces == vertex, axis=1)
  around = mean_face[touching].mean(0)
  assert np.dot(around / np.linalg.norm(around), m.normals[vertex]) > 0.995


def test_glb_layout_and_trimesh_load(tmp_path):
  _, m = _bump_mesh()
  path = mesh_io.write_glb(m, str(tmp_path / "mesh.glb"))
  data = open(path, "rb").read()
  magic, version, length = struct.unpack_from("<III", data, 0)
  assert (magic, version, length) == (0x46546C67, 2, len(data))
  json_length, json_type = struct.unpack_from("<II", data, 12)
  assert json_type == 0x4E4F534A and json_length % 4 == 0
  doc = json.loads(data[20:20 + json_length])
  bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
  assert bin_type == 0x004E4942 and bin_length % 4 == 0
  assert 20 + json_length + 8 + bin_length == len(data)
  assert doc["buffers"][0]["byteLength"] == bin_length
  for view in doc["bufferViews"]:
    assert view["byteOffset"] % 4 == 0
    assert view["byteOffset"] + view["byteLength"] <= bin_length
  position = doc["accessors"][0]
  np.testing.assert_allclose(position["min"], m.vertices.min(0), rtol=1e-6)
  np.testing.assert_allclose(position["max"], m.vertices.max(0), rtol=1e-6)
  # The positions stored in the BIN chunk are the mesh's.
  start = 20 + json_length + 8 + doc["bufferViews"][0]["byteOffset"]
  stored = np.frombuffer(data, np.float32, SIZE * SIZE * 3, start).reshape(-1, 3)
  np.testing.assert_array_equal(stored, m.vertices)

  scene = trimesh.load(path, process=False)
  (loaded,) = scene.geometry.values()
  assert loaded.vertices.shape == (SIZE * SIZE, 3)
  assert loaded.faces.shape == (2 * (SIZE - 1) ** 2, 3)
  np.testing.assert_allclose(loaded.vertices, m.vertices, atol=1e-6)
  np.testing.assert_array_equal(loaded.faces, m.faces)
  np.testing.assert_allclose(loaded.visual.uv[:, 0], m.uvs[:, 0], atol=1e-6)
  texture = loaded.visual.material.baseColorTexture
  assert texture.size == (SIZE, SIZE)
  np.testing.assert_array_equal(np.asarray(texture.convert("RGB")), m.texture)


def test_obj_mtl_png_trimesh_load(tmp_path):
  _, m = _bump_mesh()
  paths = mesh_io.write_obj(m, str(tmp_path / "face.obj"))
  assert [p.rsplit("/", 1)[-1] for p in paths] == ["face.obj", "face.mtl",
                                                   "face_texture.png"]
  loaded = trimesh.load(paths[0], process=False, maintain_order=True)
  assert loaded.vertices.shape == (SIZE * SIZE, 3)
  assert loaded.faces.shape == (2 * (SIZE - 1) ** 2, 3)
  np.testing.assert_allclose(loaded.vertices, m.vertices, atol=1e-5)
  image = loaded.visual.material.image
  assert image is not None and image.size == (SIZE, SIZE)
  np.testing.assert_array_equal(np.asarray(image.convert("RGB")), m.texture)
  # trimesh turns OBJ's bottom-left UVs back into ours, flipped: v' = 1 - v.
  np.testing.assert_allclose(loaded.visual.uv[:, 1], 1 - m.uvs[:, 1], atol=1e-5)


def test_bad_depth_shape():
  camera = geometry.Camera.from_fov(SIZE, 10.0)
  with pytest.raises(ValueError, match="depth must be"):
    mesh_io.mesh_from_depth(np.ones((1, SIZE, SIZE)), np.zeros((SIZE, SIZE, 3)), camera)
