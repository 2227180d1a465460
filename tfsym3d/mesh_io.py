"""Textured meshes of canonical depth maps, as OBJ (+MTL+PNG) and binary glTF.

Orientation (docs/method.md §9): the model's camera space is x right, y down, z
forward (away from the viewer). glTF 2.0 specifies y up with the front of
an asset facing +z, and common viewers open OBJ files the same way (the
viewer looking down -z). Every vertex P = (x, y, z) is written as
(x, -y, rot_center_depth - z): a half turn about the x axis (so handedness
and triangle winding keep their meaning) that also moves the rotation centre
to the origin. Triangles are counter-clockwise seen from +z (glTF's front
face) and the normals point out of the surface towards +z.

One vertex per depth pixel (id v * S + u), the faces of
`tfsym3d.render.mesh.grid_faces`, one UV per vertex at the pixel's centre,
the texture being the canonical albedo (or any S x S picture).
"""

import io
import json
import os
import struct

import numpy as np
import tensorflow as tf
from PIL import Image

from tfsym3d import geometry
from tfsym3d.render import mesh


class TexturedMesh:
  """Arrays of one mesh, viewer-oriented (see the module docstring).

  vertices [V, 3] float32, normals [V, 3] float32 unit, uvs [V, 2] float32
  with (0, 0) at the texture's top-left (glTF's convention), faces [F, 3]
  int32, texture uint8 [H, W, 3].
  """

  def __init__(self, vertices, normals, uvs, faces, texture):
    self.vertices = np.asarray(vertices, np.float32)
    self.normals = np.asarray(normals, np.float32)
    self.uvs = np.asarray(uvs, np.float32)
    self.faces = np.asarray(faces, np.int32)
    self.texture = np.asarray(texture, np.uint8)


def mesh_from_depth(depth, texture, camera: geometry.Camera,
                    rot_center_depth: float = 1.0) -> TexturedMesh:
  """The textured grid mesh of one canonical depth map.

  Args:
    depth: [S, S] canonical depth.
    texture: uint8 [S, S, 3] (e.g. the albedo as a picture).
    camera: the model's camera; rot_center_depth: moved to the origin.
  """
  depth = np.asarray(depth, np.float32)
  if depth.ndim != 2:
    raise ValueError(f"depth must be [S, S], got shape {depth.shape}")
  height, width = depth.shape
  batch = tf.constant(depth[None])
  points = mesh.depth_to_vertices(batch, camera)[0].numpy()
  # The model's normals face away from the camera (+z for a plane facing it,
  # docs/method.md §4); the surface's outward normal is their opposite.
  normals = -geometry.normals_from_depth(batch, camera)[0].numpy().reshape(-1, 3)
  flip = np.array([1.0, -1.0, -1.0], np.float32)
  vertices = points * flip + np.array([0.0, 0.0, rot_center_depth], np.float32)
  # Renormalised: the model's eps in the norm leaves small cross products
  # (fine grids) short of unit length, which glTF requires.
  normals = normals * flip
  normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
  v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  uvs = np.stack([(u.ravel() + 0.5) / width, (v.ravel() + 0.5) / height], -1)
  faces = mesh.grid_faces(height, width).numpy()
  return TexturedMesh(vertices, normals, uvs, faces, texture)


def _png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def write_obj(m: TexturedMesh, path: str) -> list:
  """Writes `<stem>.obj`, `<stem>.mtl` and `<stem>_texture.png`; returns the paths.

  OBJ's texture origin is the bottom-left, so v is written as 1 - v.
  """
  directory, name = os.path.split(os.path.abspath(path))
  stem = os.path.splitext(name)[0]
  os.makedirs(directory, exist_ok=True)
  mtl, png = stem + ".mtl", stem + "_texture.png"
  Image.fromarray(m.texture).save(os.path.join(directory, png))
  with open(os.path.join(directory, mtl), "w") as f:
    f.write(f"newmtl {stem}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {png}\n")
  lines = [f"# tfsym3d mesh: y up, facing +z\nmtllib {mtl}\no {stem}\n"]
  lines += [f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in m.vertices]
  lines += [f"vt {s:.6f} {1 - t:.6f}\n" for s, t in m.uvs]
  lines += [f"vn {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in m.normals]
  lines.append(f"usemtl {stem}\n")
  one = m.faces + 1
  lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}\n" for a, b, c in one]
  with open(path, "w") as f:
    f.writelines(lines)
  return [path, os.path.join(directory, mtl), os.path.join(directory, png)]


# glTF constants.
_FLOAT, _UINT32 = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_GLB_MAGIC, _CHUNK_JSON, _CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


def _pad4(data: bytes, fill: bytes) -> bytes:
  return data + fill * (-len(data) % 4)


def glb_bytes(m: TexturedMesh) -> bytes:
  """The mesh as a binary glTF 2.0 file: header, JSON chunk, BIN chunk.

  The BIN chunk holds positions, normals, texcoords, uint32 indices and the
  PNG texture, each view starting on a 4-byte boundary; POSITION carries its
  min and max as the specification requires.
  """
  blobs = [m.vertices.tobytes(), m.normals.tobytes(), m.uvs.tobytes(),
           m.faces.astype(np.uint32).tobytes(), _png_bytes(m.texture)]
  targets = [_ARRAY_BUFFER, _ARRAY_BUFFER, _ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER, None]
  views, binary = [], b""
  for blob, target in zip(blobs, targets):
    view = {"buffer": 0, "byteOffset": len(binary), "byteLength": len(blob)}
    if target:
      view["target"] = target
    views.append(view)
    binary += _pad4(blob, b"\0")
  count = len(m.vertices)
  accessors = [
      {"bufferView": 0, "componentType": _FLOAT, "count": count, "type": "VEC3",
       "min": m.vertices.min(0).tolist(), "max": m.vertices.max(0).tolist()},
      {"bufferView": 1, "componentType": _FLOAT, "count": count, "type": "VEC3"},
      {"bufferView": 2, "componentType": _FLOAT, "count": count, "type": "VEC2"},
      {"bufferView": 3, "componentType": _UINT32, "count": int(m.faces.size),
       "type": "SCALAR"},
  ]
  document = {
      "asset": {"version": "2.0", "generator": "tfsym3d"},
      "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "tfsym3d"}],
      "meshes": [{"primitives": [{
          "attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2},
          "indices": 3, "material": 0, "mode": 4}]}],
      "materials": [{"pbrMetallicRoughness": {
          "baseColorTexture": {"index": 0}, "metallicFactor": 0.0,
          "roughnessFactor": 1.0}, "doubleSided": True}],
      "textures": [{"source": 0, "sampler": 0}],
      # Linear filtering, clamped at the edges.
      "samplers": [{"magFilter": 9729, "minFilter": 9729, "wrapS": 33071,
                    "wrapT": 33071}],
      "images": [{"bufferView": 4, "mimeType": "image/png"}],
      "accessors": accessors, "bufferViews": views,
      "buffers": [{"byteLength": len(binary)}],
  }
  text = _pad4(json.dumps(document, separators=(",", ":")).encode(), b" ")
  total = 12 + 8 + len(text) + 8 + len(binary)
  return (struct.pack("<III", _GLB_MAGIC, 2, total)
          + struct.pack("<II", len(text), _CHUNK_JSON) + text
          + struct.pack("<II", len(binary), _CHUNK_BIN) + binary)


def write_glb(m: TexturedMesh, path: str) -> str:
  """Writes `glb_bytes(m)` to `path`; returns it."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(glb_bytes(m))
  return path
