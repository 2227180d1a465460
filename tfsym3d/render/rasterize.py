"""Z-buffer rasterization of triangle meshes in pure TensorFlow.

Visibility (which triangle is nearest at each pixel centre) is discrete and
carries no gradient; it is found without any native kernel, on any device:

1. Every triangle is projected to pixel coordinates. It covers pixel centres
   on the rows ceil(y_min) .. floor(y_max); on each row the covered centres
   form one run whose length is at most the triangle's widest horizontal chord
   (the chord through its middle vertex). So a triangle is enumerated as
   rows x (chord + 2) candidate pixels starting at its left edge on each row:
   long thin slanted triangles (steep surfaces seen at 60 degrees) cost what
   they cover, not their bounding box.
2. Each candidate is tested with edge functions. The function of an edge is
   always evaluated from its lower vertex id to its higher one and negated as
   needed, so two triangles sharing an edge see exactly opposite values: no
   pixel centre falls between them (watertight) and centres on the edge count
   for both, as in the tensorflow-graphics kernel.
3. Depth (perspective-correct) and triangle id are packed into one int64 key,
   depth bits high, and reduced per pixel with one `unsorted_segment_min`:
   the nearest triangle wins and equal depths go to the lowest id, the
   kernel's rule.

Barycentrics are then recomputed densely for the winning triangle from the
vertex positions, so gradients reach the vertices through interpolation.
"""

import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.render.fragments import Fragments

# Slack, in pixels, when bounding rows and runs; the edge test decides.
_EPS = 1e-4
_NO_FACE_KEY = tf.int64.max


# The visibility pass keeps every per-face and per-candidate quantity as
# separate [P] vectors (three per triangle corner) rather than [P, 3] arrays:
# XLA on CPU handles a trailing dimension of 3 badly (measured 10x slower).


def _widest_chord(xs, ys):
  """Length of each triangle's widest horizontal chord.

  The width of a triangle along y is largest at its middle vertex, where the
  chord runs to the opposite edge; flat triangles are measured end to end.

  Args:
    xs, ys: 3-tuples of [P] corner coordinates.
  Returns:
    [P].
  """
  widest = None
  for i in range(3):
    j, k = (i + 1) % 3, (i + 2) % 3
    height = ys[k] - ys[j]
    flat = tf.abs(height) < 1e-6
    t = (ys[i] - ys[j]) / tf.where(flat, tf.ones_like(height), height)
    across = tf.abs(xs[i] - (xs[j] + t * (xs[k] - xs[j])))
    end_to_end = tf.maximum(tf.abs(xs[i] - xs[j]), tf.abs(xs[i] - xs[k]))
    chord = tf.where(flat, end_to_end, tf.where((t >= 0) & (t <= 1), across, 0.0))
    widest = chord if widest is None else tf.maximum(widest, chord)
  return widest


def _edge_table(xs, ys, vertex_ids):
  """Oriented, watertight edge functions of each triangle.

  Edge i is opposite corner i and joins corners i+1 and i+2. Its function is
  always evaluated from its lower-id vertex, so the two faces sharing an edge
  compute bit-identical values of opposite sign: no pixel centre falls
  between them, and centres exactly on the edge count for both. Signs are
  then flipped (exactly) so a centre is inside when all three are >= 0.

  Args:
    xs, ys: 3-tuples of [P] corner coordinates in pixels.
    vertex_ids: 3-tuple of [P] int32 vertex ids of the corners.
  Returns:
    A list of 3 edges, each (slope_x, slope_y, origin_x, origin_y) of [P]
    with w(p) = slope_x (p_x - origin_x) + slope_y (p_y - origin_y); and
    [P] twice the unsigned screen area.
  """
  area = (xs[1] - xs[0]) * (ys[2] - ys[0]) - (ys[1] - ys[0]) * (xs[2] - xs[0])
  orientation = tf.where(area < 0, -1.0, 1.0)
  edges = []
  for i in range(3):
    a, b = (i + 1) % 3, (i + 2) % 3
    swap = vertex_ids[a] > vertex_ids[b]
    xa, xb = tf.where(swap, xs[b], xs[a]), tf.where(swap, xs[a], xs[b])
    ya, yb = tf.where(swap, ys[b], ys[a]), tf.where(swap, ys[a], ys[b])
    sign = tf.where(swap, -orientation, orientation)
    edges.append(((ya - yb) * sign, (xb - xa) * sign, xa, ya))
  return edges, tf.abs(area)


# Rows of the per-face table the face stage hands to the candidate stage.
_TABLE_ROWS = ("sx0", "sy0", "ox0", "oy0", "sx1", "sy1", "ox1", "oy1",
               "sx2", "sy2", "ox2", "oy2", "iz0", "iz1", "iz2",
               "area", "first_row", "first_col", "num_cols", "use_run")
_ROW = {name: i for i, name in enumerate(_TABLE_ROWS)}


def _gather_corners(screen, faces):
  """[B, N, 3] (u, v, z) -> [3 corners, 3 components, B*F] vectors.

  Kept outside the XLA clusters: XLA fuses a gather into every consumer and
  recomputes it there (measured 20x slower than gathering once).
  """
  components = tf.transpose(screen, [2, 0, 1])                      # [3,B,N]
  return tf.stack([tf.reshape(tf.gather(components, faces[:, i], axis=2), [3, -1])
                   for i in range(3)])


@tf.function(jit_compile=True)
def _face_stage(corners, faces, height, width, znear, zfar):
  """Static-shape per-face work, fused by XLA.

  Args:
    corners: [3, 3, B*F] from `_gather_corners`; faces: [F, 3] int32.
  Returns:
    table: [B*F, len(_TABLE_ROWS)] float32; counts: [B*F] int32 candidates.
  """
  batch = tf.shape(corners)[2] // tf.shape(faces)[0]
  xs, ys, zs = zip(*[tf.unstack(corner) for corner in tf.unstack(corners)])
  ids = [tf.tile(faces[:, i], [batch]) for i in range(3)]
  edges, area = _edge_table(xs, ys, ids)

  # Candidates: the rows of pixel centres a face spans; on each row either its
  # bounding-box columns or a run as long as its widest chord starting at its
  # left edge, whichever is shorter.
  height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  x_min = tf.minimum(tf.minimum(xs[0], xs[1]), xs[2])
  x_max = tf.maximum(tf.maximum(xs[0], xs[1]), xs[2])
  y_min = tf.minimum(tf.minimum(ys[0], ys[1]), ys[2])
  y_max = tf.maximum(tf.maximum(ys[0], ys[1]), ys[2])
  first_row = tf.maximum(tf.math.ceil(y_min - _EPS), 0.0)
  last_row = tf.minimum(tf.floor(y_max + _EPS), height - 1)
  first_col = tf.maximum(tf.math.ceil(x_min - _EPS), 0.0)
  last_col = tf.minimum(tf.floor(x_max + _EPS), width - 1)
  num_rows = tf.maximum(last_row - first_row + 1, 0.0)
  box_cols = tf.maximum(last_col - first_col + 1, 0.0)
  run_cols = tf.floor(_widest_chord(xs, ys)) + 2.0
  num_cols = tf.minimum(box_cols, run_cols)
  usable = area > 0
  for z in zs:
    usable &= (z > znear) & (z < zfar)
  counts = tf.where(usable, tf.cast(num_rows * num_cols, tf.int32), 0)
  rows = [value for edge in edges for value in edge]
  rows += [1.0 / z for z in zs]
  rows += [area, first_row, first_col, num_cols, tf.cast(run_cols < box_cols, tf.float32)]
  return tf.stack(rows, axis=1), counts


@tf.function(jit_compile=True)
def _candidate_stage(candidates, owner, local, valid, num_faces, num_pixels, height,
                     width, znear, zfar):
  """Tests every (face, pixel) candidate and keeps the nearest per pixel.

  Args:
    candidates: [P, len(_TABLE_ROWS)] the face table's row of each
      candidate's face (gathered outside XLA, see `_gather_corners`).
    owner, local: [P] int32 face (batch-flattened) and index of the candidate
      within its face; valid: [P] bool, False for padding.
  Returns:
    [num_pixels] int64 keys (depth bits << 32 | face id), int64 max if empty.
  """
  rows = tf.unstack(candidates, axis=1)                             # [P] each
  get = lambda name: rows[_ROW[name]]
  num_cols = tf.maximum(tf.cast(get("num_cols"), tf.int32), 1)
  row = get("first_row") + tf.cast(local // num_cols, tf.float32)
  edges = [(get(f"sx{i}"), get(f"sy{i}"), get(f"ox{i}"), get(f"oy{i}")) for i in range(3)]
  # Left end of the run on this row: the largest bound among edges whose
  # function grows to the right (sx > 0): p_x >= ox - sy (row - oy) / sx.
  run_left = tf.fill(tf.shape(row), -float("inf"))
  for sx, sy, ox, oy in edges:
    grows = sx > 0
    bound = ox - sy * (row - oy) / tf.where(grows, sx, tf.ones_like(sx))
    run_left = tf.where(grows, tf.maximum(run_left, bound), run_left)
  run_left = tf.maximum(tf.math.ceil(run_left - _EPS), 0.0)
  start = tf.where(get("use_run") > 0, run_left, get("first_col"))
  col = start + tf.cast(local % num_cols, tf.float32)

  inside = valid & (col <= tf.cast(width, tf.float32) - 1)
  inv_depth_area = tf.zeros_like(row)
  for i, (sx, sy, ox, oy) in enumerate(edges):
    w = sx * (col - ox) + sy * (row - oy)
    inside &= w >= 0
    inv_depth_area += w * get(f"iz{i}")
  # 1/z is linear in screen space: z = area / sum(w_i / z_i).
  depth = get("area") / inv_depth_area
  inside &= (depth > znear) & (depth < zfar)

  # Positive float32 bit patterns sort like the floats: pack depth above id.
  depth_bits = tf.cast(tf.bitcast(tf.maximum(depth, 0.0), tf.int32), tf.int64)
  key = tf.bitwise.left_shift(depth_bits, 32) + tf.cast(owner % num_faces, tf.int64)
  image = owner // num_faces
  pixel = (image * height + tf.cast(row, tf.int32)) * width + tf.cast(col, tf.int32)
  pixel = tf.where(inside, pixel, num_pixels)                       # dump slot
  return tf.math.unsorted_segment_min(key, pixel, num_pixels + 1)[:-1]


def _bucket(size):
  """Rounds a candidate count up to one of a few sizes (1, 1.25, 1.5, 1.75 x 2^k)
  so the XLA-compiled candidate stage is compiled for few shapes."""
  size = tf.maximum(size, 1024)
  exponent = tf.floor(tf.math.log(tf.cast(size, tf.float32)) / tf.math.log(2.0)) - 2
  step = tf.cast(tf.pow(2.0, exponent), tf.int32)
  return (size + step - 1) // step * step


def visible_faces(screen, faces, height: int, width: int, znear=0.1, zfar=10.0):
  """Z-buffer visibility: the nearest triangle at every pixel centre.

  Args:
    screen: [B, N, 3] per vertex (u, v, z): pixel coordinates (centres at
      integers) and camera depth z.
    faces: [F, 3] int32 vertex ids.
    height, width: output size in pixels.
    znear, zfar: fragments outside this depth range are dropped.
  Returns:
    [B, H, W] int32 face ids, -1 where no triangle covers the pixel centre.
  """
  screen = tf.cast(tf.stop_gradient(screen), tf.float32)
  faces = tf.convert_to_tensor(faces, tf.int32)
  batch = tf.shape(screen)[0]
  num_faces = tf.shape(faces)[0]
  znear, zfar = tf.constant(znear, tf.float32), tf.constant(zfar, tf.float32)
  table, counts = _face_stage(_gather_corners(screen, faces), faces, height, width,
                              znear, zfar)

  # Enumerate the candidates (dynamic count, padded to a bucket size): mark
  # where each face's run of candidates starts and integrate. (tf.repeat
  # builds a [faces, max count] mask: 6x slower here.)
  total = tf.reduce_sum(counts)
  padded = _bucket(total)
  offsets = tf.cumsum(counts, exclusive=True)
  nonempty = tf.cast(tf.where(counts > 0)[:, 0], tf.int32)
  step = nonempty - tf.pad(nonempty[:-1], [[1, 0]])
  owner = tf.cumsum(tf.scatter_nd(tf.gather(offsets, nonempty)[:, None], step, [padded]))
  index = tf.range(padded)
  local = index - tf.gather(offsets, owner)
  valid = index < total
  num_pixels = batch * height * width
  best = _candidate_stage(tf.gather(table, owner), owner, local, valid, num_faces, num_pixels,
                          height, width, znear, zfar)
  face_id = tf.where(best == _NO_FACE_KEY, -1,
                     tf.cast(tf.bitwise.bitwise_and(best, 0xFFFFFFFF), tf.int32))
  return tf.reshape(face_id, [batch, height, width])


def barycentrics_for(screen, faces, face_id):
  """Perspective-correct barycentrics of every pixel centre in a given face.

  Args:
    screen: [B, N, 3] (u, v, z) per vertex; gradients flow through it.
    faces: [F, 3] int32.
    face_id: [B, H, W] int32, -1 for empty pixels.
  Returns:
    [B, H, W, 3] barycentrics (zero where face_id is -1).
  """
  height, width = face_id.shape[1], face_id.shape[2]
  covered = face_id >= 0
  vertex_ids = tf.gather(faces, tf.maximum(face_id, 0))             # [B,H,W,3]
  corners = tf.gather(screen, vertex_ids, batch_dims=1)            # [B,H,W,3,3]
  xs, ys, zs = corners[..., 0], corners[..., 1], corners[..., 2]
  uv = tf.cast(geometry.pixel_grid(height, width), screen.dtype)
  px, py = uv[..., 0][..., None], uv[..., 1][..., None]
  xa, ya = tf.gather(xs, [1, 2, 0], axis=-1), tf.gather(ys, [1, 2, 0], axis=-1)
  xb, yb = tf.gather(xs, [2, 0, 1], axis=-1), tf.gather(ys, [2, 0, 1], axis=-1)
  w = (xb - xa) * (py - ya) - (yb - ya) * (px - xa)                 # [B,H,W,3]
  # Screen-space weights divided by depth, renormalised: perspective-correct.
  w_over_z = w / zs
  total = tf.reduce_sum(w_over_z, axis=-1, keepdims=True)
  # Empty pixels (and degenerate faces) get weights 0 rather than NaN.
  usable = covered[..., None] & (total != 0)
  total = tf.where(usable, total, tf.ones_like(total))
  bary = w_over_z / total
  return tf.where(usable, bary, tf.zeros_like(bary))


def rasterize_tf(vertices, faces, camera: geometry.Camera) -> Fragments:
  """Rasterizes camera-space meshes with the pure-TensorFlow z-buffer.

  Args:
    vertices: [B, N, 3] camera-space points (x right, y down, z forward).
    faces: [F, 3] int32 vertex ids; both sides of every triangle are drawn.
    camera: pinhole camera; the image is camera.image_size square.
  Returns:
    Fragments with [B, S, S] face ids, barycentrics and mask.
  """
  vertices = tf.convert_to_tensor(vertices)
  faces = tf.convert_to_tensor(faces, tf.int32)
  size = camera.image_size
  screen = tf.concat([geometry.project(vertices, camera), vertices[..., 2:3]], -1)
  face_id = visible_faces(screen, faces, size, size, camera.znear, camera.zfar)
  bary = barycentrics_for(screen, faces, face_id)
  return Fragments(face_id=face_id, barycentrics=bary,
                   mask=tf.cast(face_id >= 0, tf.float32))


def rasterize(vertices, faces, camera: geometry.Camera, backend: str = "tf") -> Fragments:
  """Rasterizes with the chosen backend: 'tf' (default) or 'tfg'.

  'tfg' is tensorflow-graphics' CPU kernel, compiled on first use; it runs on
  the CPU only and serves as the reference the 'tf' backend is tested against.
  """
  if backend == "tf":
    return rasterize_tf(vertices, faces, camera)
  if backend == "tfg":
    from tfsym3d.render import tfg_backend  # compiles a kernel: import lazily
    return tfg_backend.rasterize_tfg(vertices, faces, camera)
  raise ValueError(f"Unknown rasterizer backend {backend!r}: use 'tf' or 'tfg' "
                   "(flag --rasterizer)")
