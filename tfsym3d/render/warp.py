"""The renderer operations of docs/method.md §5 and the yaw animation of docs/method.md §9.

`Renderer` holds what is fixed for a model (camera, mesh connectivity, depth
range, rasterizer backend); every method is a pure function of its tensors.
"""

import math
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.config import ModelConfig
from tfsym3d.render import backends
from tfsym3d.render import interpolate as interpolate_lib
from tfsym3d.render import mesh
from tfsym3d.render import rasterize as rasterize_lib
from tfsym3d.render import visibility
from tfsym3d.render.sample import bilinear_sample


class Renderer:
  """Reprojects canonical depth and images into the input view.

  Args:
    config: the model's constants (image size, fov, depth range, backend).
  """

  def __init__(self, config: ModelConfig):
    self.config = config
    self.camera = geometry.Camera.from_fov(config.image_size, config.fov,
                                           config.znear, config.zfar)
    self.faces = mesh.grid_faces(config.image_size, config.image_size)
    self.backend = backends.parse(config.rasterizer)
    # 'tfg' backend only: 'stable' (default) or tensorflow-graphics' own
    # differentiable barycentrics ('tfg'); see tfg_backend.rasterize_tfg.
    self.tfg_barycentrics = "stable"
    # The dense, differentiable parts around visibility are compiled by XLA
    # (measured 3-6x faster on CPU, forward and backward) unless
    # config.renderer_xla is off. The rasterizer's own stages are compiled
    # separately; the 'tfg' kernel cannot be.
    self.xla = config.renderer_xla
    dense = (lambda f: tf.function(f, jit_compile=True)) if self.xla else (lambda f: f)
    self._posed_vertices = dense(self._posed_vertices_impl)
    self._depth_of_faces = dense(self._depth_of_faces_impl)
    self._canonical_grid = dense(self._canonical_grid_impl)
    self._sample = dense(bilinear_sample)

  @property
  def depth_clamp(self):
    """(low, high) bounds of reconstructed depth (docs/method.md §5)."""
    margin = self.config.depth_margin
    return self.config.min_depth - margin, self.config.max_depth + margin

  def rasterize(self, vertices, xla: Optional[bool] = None):
    """Rasterizes [B, S*S, 3] camera-space grid-mesh vertices -> Fragments
    (`xla`: None for the renderer's setting)."""
    return rasterize_lib.rasterize(vertices, self.faces, self.camera,
                                   self.backend, grid_mesh=True,
                                   tfg_barycentrics=self.tfg_barycentrics,
                                   xla=self.xla if xla is None else xla)

  def render_depth(self, vertices):
    """Depth of [B, S*S, 3] grid-mesh vertices seen by the camera: [B, S, S].

    Pixels no triangle covers get the far plane (zfar).
    """
    fragments = self.rasterize(vertices)
    depth = interpolate_lib.interpolate(vertices[..., 2:3], self.faces, fragments,
                                        background=self.config.zfar)
    return depth[..., 0]

  def _posed_vertices_impl(self, canon_depth, view):
    """Canonical mesh moved into the input view: ([B, N, 3], screen [B, N, 3])."""
    vertices = mesh.depth_to_vertices(canon_depth, self.camera)
    vertices = geometry.rigid_transform(vertices, view, self.config.rot_center_depth)
    screen = tf.concat([geometry.project(vertices, self.camera), vertices[..., 2:3]], -1)
    return vertices, screen

  def _depth_of_faces_impl(self, screen, face_id):
    """Perspective-correct depth of the visible faces, far plane elsewhere."""
    return rasterize_lib.depth_for(screen, self.faces, face_id, self.config.zfar)

  def reconstructed_depth(self, canon_depth, view):
    """Canonical depth seen from the predicted viewpoint, clamped (docs/method.md §5).

    Args:
      canon_depth: [B, S, S] canonical depth.
      view: [B, 6] (rx, ry, rz) radians and (tx, ty, tz).
    Returns:
      [B, S, S] depth in the input view, clamped to `depth_clamp`; pixels no
      triangle covers end at the upper bound.
    """
    vertices, screen = self._posed_vertices(canon_depth, view)
    if self.backend is backends.Backend.TF:
      # Visibility, then the depth of the visible faces directly: no
      # barycentrics, and a gradient written out by hand (`depth_for`).
      size = self.config.image_size
      face_id = visibility.visible_faces(screen, None, size, size,
                                         self.config.znear, self.config.zfar, self.xla)
      depth = self._depth_of_faces(screen, face_id)
    else:
      depth = self.render_depth(vertices)
    low, high = self.depth_clamp
    return tf.clip_by_value(depth, low, high)

  def valid_mask(self, recon_depth):
    """[B, S, S] 1.0 where the reconstruction saw the object (docs/method.md §5)."""
    return tf.cast(recon_depth < self.depth_clamp[1], recon_depth.dtype)

  def _canonical_grid_impl(self, recon_depth, view):
    """`canonical_grid` before the optional XLA compile."""
    points = geometry.unproject(recon_depth, self.camera)
    points = geometry.inverse_rigid_transform(points, view, self.config.rot_center_depth)
    uv = geometry.project(points, self.camera)
    return geometry.pixels_to_grid(uv, self.config.image_size)

  def canonical_grid(self, recon_depth, view):
    """Where each input-view pixel lands in the canonical image (docs/method.md §5).

    Unprojects the input-view depth, applies the inverse rigid transform and
    projects into the canonical view.

    Args:
      recon_depth: [B, S, S]; view: [B, 6].
    Returns:
      [B, S, S, 2] sampling grid (x, y) in [-1, 1] (align corners).
    """
    return self._canonical_grid(recon_depth, view)

  def reconstruct_image(self, canon_image, recon_depth, view):
    """Samples the canonical image into the input view: [B, S, S, 3]."""
    return self._sample(canon_image, self.canonical_grid(recon_depth, view))

  def turntable(self, canon_depth, vertex_colors: Optional[Dict[str, tf.Tensor]] = None,
                num_frames: int = 9, max_yaw_degrees: float = 90.0, shaded: bool = False,
                background=1.0, light=(0.0, 0.0, 1.0)) -> Dict[str, tf.Tensor]:
    """The canonical mesh turning about the y axis (docs/method.md §9), every style
    from one rasterization per frame.

    Args:
      canon_depth: [B, S, S] canonical depth.
      vertex_colors: by style name, [B, S, S, C] a colour per vertex (e.g.
        the canonical image or normals, mapped to [0, 1]).
      num_frames: yaws evenly spaced from -max_yaw to +max_yaw.
      shaded: also a textureless style 'shape': the geometry alone, its
        shading recomputed in every view from the rendered depth and lit from
        `light` (the camera side by default).
      background: colour of uncovered pixels in the coloured styles (the
        'shape' style's background is white).
    Returns:
      By style, [num_frames, B, S, S, C] frames in [0, 1] (C = 1 for 'shape').
    """
    colors = {name: tf.reshape(value, [tf.shape(value)[0], -1, value.shape[-1]])
              for name, value in (vertex_colors or {}).items()}
    direction = tf.constant(light, tf.float32)
    direction = direction / tf.norm(direction)
    frames = {name: [] for name in list(colors) + (["shape"] if shaded else [])}
    vertices = mesh.depth_to_vertices(canon_depth, self.camera)
    for yaw in np.linspace(-max_yaw_degrees, max_yaw_degrees, num_frames):
      view = yaw_view(tf.shape(canon_depth)[0], float(yaw))
      turned = geometry.rigid_transform(vertices, view, self.config.rot_center_depth)
      # Without XLA: every yaw's mesh has its own bucketed sizes, and
      # compiling them costs far more than these few renders save.
      fragments = self.rasterize(turned, xla=False)
      for name, value in colors.items():
        frames[name].append(interpolate_lib.interpolate(value, self.faces, fragments,
                                                        background))
      if shaded:
        depth = interpolate_lib.interpolate(turned[..., 2:3], self.faces, fragments,
                                            background=self.config.zfar)[..., 0]
        normal = geometry.normals_from_depth(depth, self.camera)
        # Same convention as the model's shading (docs/method.md §4): normals of a
        # facing surface and a light from the camera both point along +z.
        shade = tf.maximum(tf.reduce_sum(normal * direction, -1, keepdims=True), 0.0)
        mask = fragments.mask[..., None]
        frames["shape"].append((0.2 + 0.8 * shade) * mask + (1 - mask))
    return {name: tf.stack(values) for name, values in frames.items()}

  def yaw_views(self, canon_depth, vertex_colors, num_frames: int = 9,
                max_yaw_degrees: float = 90.0, background=1.0):
    """`turntable` of one colouring: [num_frames, B, S, S, C] frames.

    Args:
      canon_depth: [B, S, S] canonical depth.
      vertex_colors: [B, S, S, C] a colour per vertex, in [0, 1].
      background: colour of uncovered pixels.
    """
    return self.turntable(canon_depth, {"colors": vertex_colors}, num_frames,
                          max_yaw_degrees, background=background)["colors"]

  def shaded_yaw_views(self, canon_depth, num_frames: int = 9,
                       max_yaw_degrees: float = 90.0, light=(0.0, 0.0, 1.0)):
    """`turntable`'s textureless 'shape' style alone: [num_frames, B, S, S, 1]
    in [0, 1], white background."""
    return self.turntable(canon_depth, None, num_frames, max_yaw_degrees,
                          shaded=True, light=light)["shape"]


def yaw_view(batch, yaw_degrees: float):
  """[B, 6] view that turns by `yaw_degrees` about the y axis, no translation."""
  yaw = math.radians(yaw_degrees)
  return tf.tile(tf.constant([[0.0, yaw, 0.0, 0.0, 0.0, 0.0]]), [batch, 1])
