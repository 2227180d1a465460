"""The pure-TF rasterizer ('tf') agrees with tensorflow-graphics' kernel ('tfg').

Scenes are what the model renders (docs/method.md §2, §5): grid meshes of smooth random
depth maps in [0.9, 1.1] with the border columns at 1.05, moved by random
rigid transforms (rotations up to 60 degrees about each axis, translations up
to 0.1 in x and y) about (0, 0, 1). Run with -s to see the measured agreement.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.geometry import Camera
from tfsym3d.render import mesh
from tfsym3d.render import tfg_backend
from tfsym3d.render.interpolate import interpolate
from tfsym3d.render.rasterize import rasterize
from render_helpers import face_plane_depth

MIN_DEPTH, MAX_DEPTH, BORDER_DEPTH = 0.9, 1.1, 1.05
TIE_RELATIVE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def kernel(tmp_path_factory):
  try:
    tfg_backend.find_compiler()
  except RuntimeError:
    pytest.skip("no C++ compiler ($CXX, g++, c++ or clang++) to build the "
                "tensorflow-graphics rasterizer kernel")
  # Compiles into a temporary cache unless this process already loaded it.
  tfg_backend.load_kernel(tmp_path_factory.mktemp("tfsym3d_cache"))


def random_scene(batch, size, coarse, rng):
  """Vertices [B, S*S, 3], faces and camera of randomly posed depth meshes."""
  camera = Camera.from_fov(size, 10)
  noise = rng.normal(size=(batch, coarse, coarse, 1)).astype(np.float32)
  field = tf.image.resize(noise, [size, size], method="bicubic")[..., 0]
  # As the depth network's output is turned into depth (docs/method.md §2).
  field = field - tf.reduce_mean(field, axis=[1, 2], keepdims=True)
  t = tf.tanh(field).numpy()
  depth = (1 + t) / 2 * MAX_DEPTH + (1 - t) / 2 * MIN_DEPTH
  depth[:, :, [0, 1, size - 2, size - 1]] = BORDER_DEPTH
  vertices = mesh.depth_to_vertices(tf.constant(depth), camera)
  angles = np.radians(rng.uniform(-60, 60, size=(batch, 3)))
  shift = rng.uniform(-0.1, 0.1, size=(batch, 2))
  view = np.concatenate([angles, shift, np.zeros((batch, 1))], -1)
  vertices = geometry.rigid_transform(vertices, tf.constant(view, tf.float32),
                                      1.0)
  return vertices, mesh.grid_faces(size, size), camera


def compare(vertices, faces, camera):
  """Agreement statistics of the two backends on one batch."""
  ours = rasterize(vertices, faces, camera, backend="tf")
  ref = rasterize(vertices, faces, camera, backend="tfg")
  id_ours, id_ref = ours.face_id.numpy(), ref.face_id.numpy()
  covered_ours, covered_ref = id_ours >= 0, id_ref >= 0
  both = covered_ours & covered_ref
  same = id_ours == id_ref
  # Ties: different faces at (numerically) the same depth, e.g. a pixel
  # centre on an edge shared by two faces; either answer is right.
  depth_ours = face_plane_depth(vertices.numpy(), faces.numpy(), id_ours, camera)
  depth_ref = face_plane_depth(vertices.numpy(), faces.numpy(), id_ref, camera)
  with np.errstate(invalid="ignore"):
    tie = np.abs(depth_ours - depth_ref) < TIE_RELATIVE * np.abs(depth_ref)
  judged = both & (same | ~tie)
  rendered_ours = interpolate(vertices[..., 2:3], faces, ours).numpy()[..., 0]
  rendered_ref = interpolate(vertices[..., 2:3], faces, ref).numpy()[..., 0]
  return {
      "pixels": id_ours.size,
      "covered": int(both.sum()),
      "ties": int((both & ~same & tie).sum()),
      "judged": int(judged.sum()),
      "face_agree": int((judged & same).sum()),
      "mask_agree": int((covered_ours == covered_ref).sum()),
      "depth_max_diff": float(np.abs(rendered_ours - rendered_ref)[both & same].max()),
  }


SCENES = [  # (image size, batch, coarse noise size, seed)
    (64, 16, 6, 0),
    (64, 16, 10, 1),
    (64, 16, 14, 2),
    (32, 8, 6, 3),
    (32, 8, 10, 4),
]


@pytest.mark.parametrize("size,batch,coarse,seed", SCENES)
def test_backends_agree(size, batch, coarse, seed):
  vertices, faces, camera = random_scene(batch, size, coarse,
                                         np.random.default_rng(seed))
  stats = compare(vertices, faces, camera)
  face_rate = stats["face_agree"] / stats["judged"]
  mask_rate = stats["mask_agree"] / stats["pixels"]
  print(f"\nS={size} B={batch} coarse={coarse}: covered {stats['covered']}, "
        f"ties {stats['ties']}, face ids {stats['face_agree']}/{stats['judged']} "
        f"= {face_rate:.6f}, masks {stats['mask_agree']}/{stats['pixels']} = "
        f"{mask_rate:.6f}, depth max diff {stats['depth_max_diff']:.2e}")
  assert stats["covered"] > 0.3 * stats["pixels"]
  assert face_rate >= 0.999
  assert mask_rate >= 0.999
  assert stats["depth_max_diff"] < 1e-5
