"""Z-buffer rasterization of triangle meshes in pure TensorFlow.

Visibility (which triangle is nearest at each pixel centre) is discrete and
carries no gradient; it is found without any native kernel, on any device, in
stages that XLA compiles (static shapes) around dynamic compactions and
enumerations:

1. First tier, every triangle: build its edge functions, bound the pixel
   centres it can cover. A triangle whose bounding box holds at most
   `_FIRST_SLOTS` centres (most triangles of a smooth depth mesh) is tested
   right there.
2. Second tier: the triangles whose box holds at most `_SECOND_SLOTS`
   centres are gathered and tested likewise; the rest are large.
3. Large triangles: enumerate (triangle, row) pairs, solve each row's edge
   inequalities for the exact run of covered centres, enumerate those.
   Long thin triangles of steep surfaces seen at 60 degrees thus cost what
   they cover, not their bounding box.
4. Every candidate is tested with edge functions. The function of an edge is
   always evaluated from its lower vertex id to its higher one and negated as
   needed, so two triangles sharing an edge see exactly opposite values: no
   pixel centre falls between them (watertight) and centres on the edge count
   for both, as in the tensorflow-graphics kernel.
5. Depth (perspective-correct) and triangle id are packed into one int64 key,
   depth bits high, and reduced per pixel with `unsorted_segment_min`: the
   nearest triangle wins and equal depths go to the lowest id, the kernel's
   rule.

Barycentrics (or directly the depth, `depth_for`) are then recomputed
densely for the winning triangle from the vertex positions, so gradients
reach the vertices through interpolation.
"""

import tensorflow as tf

from tfsym3d import geometry
from tfsym3d.render import mesh as mesh_lib
from tfsym3d.render.fragments import Fragments

# Slack, in pixels, when bounding rows and runs; the edge test decides.
_EPS = 1e-4
_NO_FACE_KEY = tf.int64.max


# The visibility pass keeps every per-face and per-candidate quantity as
# separate [P] vectors (three per triangle corner) rather than [P, 3] arrays:
# XLA on CPU handles a trailing dimension of 3 badly (measured 10x slower).


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


def _gather_corners(screen, faces):
  """Corners of arbitrary faces: [B, N, 3] (u, v, z) -> [3 corners, 3, B, F].

  Kept outside the XLA clusters: XLA fuses a gather into every consumer and
  recomputes it there (measured 20x slower than gathering once).
  """
  components = tf.transpose(screen, [2, 0, 1])                      # [3,B,N]
  return tf.stack([tf.gather(components, faces[:, i], axis=2) for i in range(3)])


def _grid_corners(grid):
  """Corners of a grid mesh's faces by slicing: [C, B, H, W] -> 3 x [C, B, F].

  Face order and corner order are those of `mesh.grid_faces`: cell (v, u)
  holds faces [(v,u), (v+1,u), (v,u+1)] and [(v,u+1), (v+1,u), (v+1,u+1)].
  """
  top_left, top_right = grid[:, :, :-1, :-1], grid[:, :, :-1, 1:]
  bottom_left, bottom_right = grid[:, :, 1:, :-1], grid[:, :, 1:, 1:]
  pairs = [(top_left, top_right), (bottom_left, bottom_left), (top_right, bottom_right)]
  channels = grid.shape[0]
  return [tf.reshape(tf.stack(pair, -1), [channels, tf.shape(grid)[1], -1]) for pair in pairs]


def _test_candidates(edges, inv_z, area, row, col, height, width, znear, zfar):
  """Edge test and perspective-correct depth of pixel centres (col, row).

  Returns (inside [P] bool, depth [P]).
  """
  inside = (col <= width - 1.0) & (row <= height - 1.0)
  inv_depth_area = tf.zeros_like(row)
  for (sx, sy, ox, oy), iz in zip(edges, inv_z):
    w = sx * (col - ox) + sy * (row - oy)
    inside &= w >= 0
    inv_depth_area += w * iz
  # 1/z is linear in screen space: z = area / sum(w_i / z_i).
  depth = area / inv_depth_area
  return inside & (depth > znear) & (depth < zfar), depth


def _pack_keys(inside, depth, face, image, row, col, height, width, num_pixels):
  """(key, pixel) pairs for the per-pixel minimum; outside -> dump slot."""
  # Positive float32 bit patterns sort like the floats: pack depth above id.
  depth_bits = tf.cast(tf.bitcast(tf.maximum(depth, 0.0), tf.int32), tf.int64)
  key = tf.bitwise.left_shift(depth_bits, 32) + tf.cast(face, tf.int64)
  pixel = (image * height + tf.cast(row, tf.int32)) * width + tf.cast(col, tf.int32)
  return key, tf.where(inside, pixel, num_pixels)


# Rows of the per-face table the face stage hands to the candidate stage.
_TABLE_ROWS = ("sx0", "sy0", "ox0", "oy0", "sx1", "sy1", "ox1", "oy1",
               "sx2", "sy2", "ox2", "oy2", "iz0", "iz1", "iz2",
               "area", "first_row")
_ROW = {name: i for i, name in enumerate(_TABLE_ROWS)}
# Faces are sorted by the number of pixel centres their bounding box holds.
# Every face is tested at `_FIRST_SLOTS` candidates where it stands (64% of a
# posed 64x64 depth mesh's faces hold at most one centre, 79% at most two);
# the faces holding up to `_SECOND_SLOTS` (97%) are gathered and tested at
# that many candidates; only the rest go through the dynamic enumeration.
# (Measured on the renderer benchmark: a single tier of 4 slots spent 40% of
# the visibility time enumerating the 10% of faces it left over.)
_FIRST_SLOTS = 2
_SECOND_SLOTS = 9


def _bounds(xs, ys, height, width):
  """Pixel-centre rows and columns each face's bounding box spans.

  Returns first_row, num_rows, first_col, num_cols ([P] float each).
  """
  x_min = tf.minimum(tf.minimum(xs[0], xs[1]), xs[2])
  x_max = tf.maximum(tf.maximum(xs[0], xs[1]), xs[2])
  y_min = tf.minimum(tf.minimum(ys[0], ys[1]), ys[2])
  y_max = tf.maximum(tf.maximum(ys[0], ys[1]), ys[2])
  first_row = tf.maximum(tf.math.ceil(y_min - _EPS), 0.0)
  last_row = tf.minimum(tf.floor(y_max + _EPS), height - 1.0)
  first_col = tf.maximum(tf.math.ceil(x_min - _EPS), 0.0)
  last_col = tf.minimum(tf.floor(x_max + _EPS), width - 1.0)
  return (first_row, tf.maximum(last_row - first_row + 1, 0.0),
          first_col, tf.maximum(last_col - first_col + 1, 0.0))


def _usable(area, zs, znear, zfar):
  """Non-degenerate faces with every corner between the clipping planes."""
  usable = area > 0
  for z in zs:
    usable &= (z > znear) & (z < zfar)
  return usable


def _test_small_faces(xs, ys, zs, ids, face, image, eligible, slots, num_pixels,
                      height, width, znear, zfar):
  """Tests every eligible face whose box holds at most `slots` centres.

  Static shapes throughout (inside XLA): candidate k of a face is the k-th
  centre of its bounding box, row-major.

  Args:
    xs, ys, zs: 3-tuples of [P] corner coordinates; ids: 3-tuple of [P]
      int32 vertex ids; face, image: [P] int32 face id in its mesh and image;
      eligible: [P] bool (False for padding).
    slots: python int.
  Returns:
    best: [num_pixels] int64 nearest keys among the tested faces;
    box: [P] float centres in each face's box, 0 where not usable.
  """
  edges, area = _edge_table(xs, ys, ids)
  inv_z = [1.0 / z for z in zs]
  first_row, num_rows, first_col, num_cols = _bounds(xs, ys, height, width)
  box = tf.where(eligible & _usable(area, zs, znear, zfar), num_rows * num_cols, 0.0)
  tested = box <= slots
  keys, pixels = [], []
  safe_cols = tf.maximum(num_cols, 1.0)
  for slot in range(slots):
    row = first_row + tf.floor(slot / safe_cols)
    col = first_col + (slot - tf.floor(slot / safe_cols) * safe_cols)
    inside, depth = _test_candidates(edges, inv_z, area, row, col, height, width,
                                     znear, zfar)
    inside &= tested & (slot < box)
    key, pixel = _pack_keys(inside, depth, face, image, row, col, height, width,
                            num_pixels)
    keys.append(key)
    pixels.append(pixel)
  best = tf.math.unsorted_segment_min(tf.concat(keys, 0), tf.concat(pixels, 0),
                                      num_pixels + 1)[:-1]
  return best, box


def _first_tier(corners, corner_ids, batch, height, width, znear, zfar):
  """`_test_small_faces` at `_FIRST_SLOTS` over every face.

  Args:
    corners: 3 corners of [3 (u, v, z), B, F].
    corner_ids: 3 corners of [1 or B, F] int32 vertex ids.
    batch: B; height, width: image size (python ints).
  Returns:
    best: [B*H*W] int64 nearest keys among the faces tested;
    box: [B*F] float centres in each face's box (0: unusable).
  """
  num_faces = tf.shape(corners[0])[2]
  flat = lambda t: tf.reshape(t, [-1])
  xs, ys, zs = ([flat(c[k]) for c in corners] for k in range(3))
  ids = [flat(tf.broadcast_to(i, tf.shape(corners[0])[1:])) for i in corner_ids]
  index = tf.range(tf.size(xs[0]))
  return _test_small_faces(xs, ys, zs, ids, index % num_faces, index // num_faces,
                           tf.ones_like(xs[0], tf.bool), _FIRST_SLOTS,
                           batch * height * width, height, width, znear, zfar)


def _first_tier_grid(screen, height, width, znear, zfar):
  """`_first_tier` for the grid mesh of an H x W map: corners by slicing."""
  batch = tf.shape(screen)[0]
  components = tf.transpose(tf.reshape(screen, [batch, height, width, 3]), [3, 0, 1, 2])
  vertex_ids = tf.reshape(tf.range(height * width), [1, 1, height, width])
  corners = _grid_corners(components)
  corner_ids = [c[0] for c in _grid_corners(vertex_ids)]
  return _first_tier(corners, corner_ids, batch, height, width, znear, zfar)


def _first_tier_mesh(corners, faces, height, width, znear, zfar):
  """`_first_tier` for arbitrary faces; corners from `_gather_corners`."""
  batch = tf.shape(corners)[2]
  corner_ids = [faces[None, :, i] for i in range(3)]
  return _first_tier(tf.unstack(corners), corner_ids, batch, height, width, znear, zfar)


def _second_tier(corners, corner_ids, face, image, valid, num_pixels, height, width,
                 znear, zfar):
  """`_test_small_faces` at `_SECOND_SLOTS` over gathered faces.

  Args:
    corners: [3 corners, 3 (u, v, z), M]; corner_ids: [3, M] int32;
    face, image: [M] int32; valid: [M] bool, False for padding.
  Returns:
    [num_pixels] int64 nearest keys.
  """
  xs, ys, zs = ([corners[i, k] for i in range(3)] for k in range(3))
  best, _ = _test_small_faces(xs, ys, zs, tf.unstack(corner_ids), face, image, valid,
                              _SECOND_SLOTS, num_pixels, height, width, znear, zfar)
  return best


def _large_face_table(corners, corner_ids, height, width):
  """Test constants and spanned rows of the large faces.

  Args:
    corners: [3 corners, 3 (u, v, z), L]; corner_ids: [3, L] int32.
  Returns:
    table: [L, len(_TABLE_ROWS)]; num_rows: [L] int32 rows of pixel centres.
  """
  xs, ys, zs = ([corners[i, k] for i in range(3)] for k in range(3))
  edges, area = _edge_table(xs, ys, tf.unstack(corner_ids))
  first_row, num_rows, _, _ = _bounds(xs, ys, height, width)
  table = tf.stack([value for edge in edges for value in edge] + [1.0 / z for z in zs] +
                   [area, first_row], axis=1)
  return table, tf.cast(num_rows, tf.int32)


def _row_spans(rows, row, width):
  """Exact run of pixel centres each (face, row) pair covers.

  On row y, edge w = sx (x - ox) + sy (y - oy) >= 0 bounds x from below
  where sx > 0 and from above where sx < 0; long thin triangles of steep
  surfaces then cost what they cover, not their bounding box. The bounds get
  `_EPS` of slack: the candidate test decides.

  Args:
    rows: [R, len(_TABLE_ROWS)] the face table's row of each pair.
    row: [R] float row index.
  Returns:
    first_col: [R] float; count: [R] int32 (0 for an empty run).
  """
  table = tf.unstack(rows, axis=1)
  get = lambda name: table[_ROW[name]]
  left = tf.zeros_like(row)
  right = tf.fill(tf.shape(row), width - 1.0)
  empty = tf.zeros_like(row, tf.bool)
  for i in range(3):
    sx, sy, ox, oy = (get(f"{k}{i}") for k in ("sx", "sy", "ox", "oy"))
    offset = sy * (row - oy)
    bound = ox - offset / tf.where(sx == 0, tf.ones_like(sx), sx)
    left = tf.where(sx > 0, tf.maximum(left, bound), left)
    right = tf.where(sx < 0, tf.minimum(right, bound), right)
    empty |= (sx == 0) & (offset < -_EPS * tf.abs(sy))
  first = tf.maximum(tf.math.ceil(left - _EPS), 0.0)
  last = tf.minimum(tf.floor(right + _EPS), width - 1.0)
  count = tf.where(empty, 0, tf.cast(tf.maximum(last - first + 1, 0.0), tf.int32))
  return first, count


def _candidate_stage(rows, row, col, face, image, valid, num_pixels, height, width,
                     znear, zfar):
  """Tests the enumerated (face, pixel) candidates of the large faces.

  Args:
    rows: [P, len(_TABLE_ROWS)] the face table's row of each candidate's face.
    row, col: [P] float pixel centre; face, image: [P] int32 face id within
      its mesh and image; valid: [P] bool, False for padding.
  Returns:
    [num_pixels] int64 keys (depth bits << 32 | face id), int64 max if empty.
  """
  table = tf.unstack(rows, axis=1)
  get = lambda name: table[_ROW[name]]
  edges = [(get(f"sx{i}"), get(f"sy{i}"), get(f"ox{i}"), get(f"oy{i}")) for i in range(3)]
  inv_z = [get(f"iz{i}") for i in range(3)]
  inside, depth = _test_candidates(edges, inv_z, get("area"), row, col,
                                   tf.cast(height, tf.float32), tf.cast(width, tf.float32),
                                   znear, zfar)
  key, pixel = _pack_keys(inside & valid, depth, face, image, row, col, height, width,
                          num_pixels)
  return tf.math.unsorted_segment_min(key, pixel, num_pixels + 1)[:-1]


# The stages above compiled by XLA (3-6x faster on CPU than as plain ops);
# `_bucket` pads their data-dependent sizes so few shapes compile. With
# `xla=False` they run as plain TensorFlow ops instead: no compile at all,
# which is cheaper for one-off renders and runs of a few steps.
_COMPILED = {stage.__name__: tf.function(stage, jit_compile=True) for stage in (
    _first_tier_grid, _first_tier_mesh, _second_tier, _large_face_table, _row_spans,
    _candidate_stage)}


def _stage(stage, xla: bool):
  """`stage` itself, or its XLA-compiled form."""
  return _COMPILED[stage.__name__] if xla else stage


def _bucket(size):
  """Rounds a count up to one of a few sizes (1, 1.25, 1.5, 1.75 x 2^k) so the
  XLA-compiled stages are compiled for few shapes."""
  size = tf.maximum(size, 1024)
  exponent = tf.floor(tf.math.log(tf.cast(size, tf.float32)) / tf.math.log(2.0)) - 2
  step = tf.cast(tf.pow(2.0, exponent), tf.int32)
  return (size + step - 1) // step * step


def _enumerate(counts):
  """Expands counts [n] into items: (owner, local, valid), padded to a bucket.

  owner[j] is the index whose counts[owner] items include j, local[j] its
  rank among them; valid is False on the padding. Marks where each run
  starts and integrates (tf.repeat builds an [n, max count] mask: 6x slower).
  """
  total = tf.reduce_sum(counts)
  padded = _bucket(total)
  offsets = tf.cumsum(counts, exclusive=True)
  nonempty = tf.cast(tf.where(counts > 0)[:, 0], tf.int32)
  step = nonempty - tf.pad(nonempty[:-1], [[1, 0]])
  owner = tf.cumsum(tf.scatter_nd(tf.gather(offsets, nonempty)[:, None], step, [padded]))
  index = tf.range(padded)
  return owner, index - tf.gather(offsets, owner), index < total


def visible_faces(screen, faces, height: int, width: int, znear=0.1, zfar=10.0,
                  xla: bool = True):
  """Z-buffer visibility: the nearest triangle at every pixel centre.

  Args:
    screen: [B, N, 3] per vertex (u, v, z): pixel coordinates (centres at
      integers) and camera depth z.
    faces: [F, 3] int32 vertex ids, or None for the grid mesh of an H x W
      map (N = H * W, faces as `mesh.grid_faces`), whose corners are sliced
      rather than gathered.
    height, width: output size in pixels.
    znear, zfar: fragments outside this depth range are dropped.
    xla: run the stages XLA-compiled (see `_COMPILED`).
  Returns:
    [B, H, W] int32 face ids, -1 where no triangle covers the pixel centre.
  """
  screen = tf.cast(tf.stop_gradient(screen), tf.float32)
  batch = tf.shape(screen)[0]
  num_pixels = batch * height * width
  znear, zfar = tf.constant(znear, tf.float32), tf.constant(zfar, tf.float32)
  if faces is None:
    num_faces = 2 * (height - 1) * (width - 1)
    best, box = _stage(_first_tier_grid, xla)(screen, height, width, znear, zfar)
    faces = mesh_lib.grid_faces(height, width)
  else:
    faces = tf.convert_to_tensor(faces, tf.int32)
    num_faces = tf.shape(faces)[0]
    best, box = _stage(_first_tier_mesh, xla)(_gather_corners(screen, faces), faces,
                                              height, width, znear, zfar)

  # Faces left by the first tier, gathered (padded to a bucket size so the
  # XLA stages see few shapes): corners [3, 3, M], vertex ids [3, M].
  flat_screen = tf.reshape(screen, [-1, 3])
  def gather_faces(selected):
    index = tf.cast(tf.where(selected)[:, 0], tf.int32)
    count = tf.size(index)
    index = tf.pad(index, [[0, _bucket(count) - count]])
    image = index // num_faces
    vertex_ids = tf.gather(faces, index % num_faces)                # [M,3]
    corners = tf.gather(flat_screen, vertex_ids + image[:, None] * tf.shape(screen)[1])
    valid = tf.range(tf.size(index)) < count
    return (index, tf.transpose(corners, [1, 2, 0]), tf.transpose(vertex_ids), valid)

  index, corners, vertex_ids, valid = gather_faces(
      (box > _FIRST_SLOTS) & (box <= _SECOND_SLOTS))
  best = tf.minimum(best, _stage(_second_tier, xla)(
      corners, vertex_ids, index % num_faces, index // num_faces, valid, num_pixels,
      height, width, znear, zfar))

  # The few large faces: enumerate (face, row) pairs, then the pixel
  # centres of each pair's exact run.
  large_index, corners, vertex_ids, valid = gather_faces(box > _SECOND_SLOTS)
  table, num_rows = _stage(_large_face_table, xla)(corners, vertex_ids, height, width)
  num_rows = tf.where(valid, num_rows, 0)

  face_of_pair, row_rank, pair_valid = _enumerate(num_rows)
  pair_rows = tf.gather(table, face_of_pair)
  row = pair_rows[:, _ROW["first_row"]] + tf.cast(row_rank, tf.float32)
  first_col, num_cols = _stage(_row_spans, xla)(pair_rows, row, float(width))
  num_cols = tf.where(pair_valid, num_cols, 0)

  pair, col_rank, valid = _enumerate(num_cols)
  owner = tf.gather(large_index, tf.gather(face_of_pair, pair))
  best = tf.minimum(best, _stage(_candidate_stage, xla)(
      tf.gather(pair_rows, pair), tf.gather(row, pair),
      tf.gather(first_col, pair) + tf.cast(col_rank, tf.float32),
      owner % num_faces, owner // num_faces, valid, num_pixels, height, width,
      znear, zfar))
  face_id = tf.where(best == _NO_FACE_KEY, -1,
                     tf.cast(tf.bitwise.bitwise_and(best, 0xFFFFFFFF), tf.int32))
  return tf.reshape(face_id, [batch, height, width])


def _pixel_corners(screen, faces, face_id, return_ids=False):
  """Corners of each pixel's face: 3 corners of (x, y, z), each [B, H, W]
  (and, with `return_ids`, the corners' [3, B, H, W] rows of the flattened
  [B * N, 3] screen).

  One gather of [B*N, 3] rows per corner: under XLA on CPU this and its
  gradient (a scatter) run about 2x faster than one [B, H, W, 3, 3] gather
  followed by arithmetic on trailing axes of 3.
  """
  batch, num_vertices = tf.shape(screen)[0], tf.shape(screen)[1]
  vertex_ids = tf.gather(faces, tf.maximum(face_id, 0))             # [B,H,W,3]
  vertex_ids += tf.reshape(tf.range(batch) * num_vertices, [-1, 1, 1, 1])
  rows = tf.reshape(screen, [-1, 3])
  corners = [tf.gather(rows, vertex_ids[..., i]) for i in range(3)]  # [B,H,W,3]
  corners = [(c[..., 0], c[..., 1], c[..., 2]) for c in corners]
  if return_ids:
    return corners, tf.transpose(vertex_ids, [3, 0, 1, 2])
  return corners


def _pixel_weights(screen, faces, face_id):
  """Screen-space weights of the pixel centres in their faces.

  Returns:
    weights: 3 x [B, H, W], w_i = twice the signed area of the triangle the
      pixel centre makes with the edge opposite corner i;
    depths: 3 x [B, H, W] camera depth z_i of corner i.
  """
  return _corner_weights(_pixel_corners(screen, faces, face_id), face_id)


def _corner_weights(corners, face_id):
  """`_pixel_weights` from the corners of `_pixel_corners`."""
  uv = tf.cast(geometry.pixel_grid(face_id.shape[1], face_id.shape[2]), corners[0][0].dtype)
  px, py = uv[..., 0], uv[..., 1]
  weights = []
  for i in range(3):
    (xa, ya, _), (xb, yb, _) = corners[(i + 1) % 3], corners[(i + 2) % 3]
    weights.append((xb - xa) * (py - ya) - (yb - ya) * (px - xa))
  return weights, [z for _, _, z in corners]


def barycentrics_for(screen, faces, face_id):
  """Perspective-correct barycentrics of every pixel centre in a given face.

  Args:
    screen: [B, N, 3] (u, v, z) per vertex; gradients flow through it.
    faces: [F, 3] int32.
    face_id: [B, H, W] int32, -1 for empty pixels.
  Returns:
    [B, H, W, 3] barycentrics (zero where face_id is -1).
  """
  weights, depths = _pixel_weights(screen, faces, face_id)
  # Screen-space weights divided by depth, renormalised: perspective-correct.
  w_over_z = [w / z for w, z in zip(weights, depths)]
  total = w_over_z[0] + w_over_z[1] + w_over_z[2]
  # Empty pixels (and degenerate faces) get weights 0 rather than NaN.
  usable = (face_id >= 0) & (total != 0)
  total = tf.where(usable, total, tf.ones_like(total))
  return tf.stack([tf.where(usable, w / total, tf.zeros_like(w)) for w in w_over_z], -1)


def depth_for(screen, faces, face_id, background):
  """Perspective-correct depth of every pixel centre in a given face.

  The same as interpolating the corners' z with `barycentrics_for`, whose
  weights are b_i = (w_i / z_i) / sum_j (w_j / z_j): sum_i b_i z_i is
  sum_i w_i / sum_j (w_j / z_j), so neither the barycentrics nor a second
  gather of z are needed.

  The gradient is written out by hand (`_depth_gradient`): automatic
  differentiation of this function under XLA re-gathered the corners for
  each of their uses and took 3-4x longer than the scatter it needs.

  Args:
    screen: [B, N, 3] (u, v, z) per vertex; gradients flow through it.
    faces: [F, 3] int32; face_id: [B, H, W] int32, -1 for empty pixels.
    background: depth of empty pixels.
  Returns:
    [B, H, W] depth; 0 on degenerate faces, as with zero barycentrics.
  """
  screen = tf.convert_to_tensor(screen)
  faces = tf.convert_to_tensor(faces, tf.int32)
  background = tf.cast(background, screen.dtype)

  @tf.custom_gradient
  def depth_of(screen):
    corners, vertex_ids = _pixel_corners(screen, faces, face_id, return_ids=True)
    weights, depths, total, depth, usable = _depth_terms(corners, face_id)
    def grad(upstream):
      return _depth_gradient(upstream, corners, vertex_ids, weights, depths, total, depth,
                             usable, tf.shape(screen))
    return tf.where(face_id >= 0, depth, background), grad

  return depth_of(screen)


def _depth_terms(corners, face_id):
  """Screen weights w_i, corner depths z_i, T = sum w_i / z_i and the depth
  sum w_i / T of each pixel (0 where T = 0), plus where it is defined."""
  weights, depths = _corner_weights(corners, face_id)
  total = weights[0] / depths[0] + weights[1] / depths[1] + weights[2] / depths[2]
  usable = (total != 0) & (face_id >= 0)
  safe_total = tf.where(usable, total, tf.ones_like(total))
  depth = tf.where(usable, (weights[0] + weights[1] + weights[2]) / safe_total,
                   tf.zeros_like(total))
  return weights, depths, safe_total, depth, usable


def _depth_gradient(upstream, corners, vertex_ids, weights, depths, total, depth, usable,
                    screen_shape):
  """d(depth)/d(screen) for `depth_for`, by the chain rule written out.

  With D = sum_i w_i / T and T = sum_i w_i / z_i:
    dD/dw_i = (1 - D / z_i) / T,   dD/dz_i = D w_i / (T z_i^2),
  and w_i = (xb - xa)(py - ya) - (yb - ya)(px - xa) over edge (a, b) =
  (i+1, i+2) gives dw_i/dxa = yb - py, dw_i/dya = px - xb,
  dw_i/dxb = py - ya, dw_i/dyb = xa - px. The per-pixel corner gradients
  are summed into the vertices with one segment sum.
  """
  g = tf.where(usable, upstream, tf.zeros_like(upstream)) / total
  uv = tf.cast(geometry.pixel_grid(upstream.shape[1], upstream.shape[2]), upstream.dtype)
  px, py = uv[..., 0], uv[..., 1]
  grad_w = [g * (1.0 - depth / z) for z in depths]
  grad_x = [tf.zeros_like(g)] * 3
  grad_y = [tf.zeros_like(g)] * 3
  for i in range(3):
    a, b = (i + 1) % 3, (i + 2) % 3
    (xa, ya, _), (xb, yb, _) = corners[a], corners[b]
    grad_x[a] += grad_w[i] * (yb - py)
    grad_y[a] += grad_w[i] * (px - xb)
    grad_x[b] += grad_w[i] * (py - ya)
    grad_y[b] += grad_w[i] * (xa - px)
  grad_z = [g * depth * w / (z * z) for w, z in zip(weights, depths)]
  updates = tf.stack([tf.stack([grad_x[k], grad_y[k], grad_z[k]], -1) for k in range(3)])
  num_rows = screen_shape[0] * screen_shape[1]
  summed = tf.math.unsorted_segment_sum(tf.reshape(updates, [-1, 3]),
                                        tf.reshape(vertex_ids, [-1]), num_rows)
  return tf.reshape(summed, screen_shape)


def fragments_for(screen, faces, face_id) -> Fragments:
  """Fragments of known visible faces (differentiable w.r.t. `screen`).

  Args:
    screen: [B, N, 3] (u, v, z) per vertex; faces: [F, 3]; face_id: [B, H, W].
  """
  return Fragments(face_id=face_id, barycentrics=barycentrics_for(screen, faces, face_id),
                   mask=tf.cast(face_id >= 0, screen.dtype))


def rasterize_tf(vertices, faces, camera: geometry.Camera, grid_mesh: bool = False,
                 xla: bool = True) -> Fragments:
  """Rasterizes camera-space meshes with the pure-TensorFlow z-buffer.

  Args:
    vertices: [B, N, 3] camera-space points (x right, y down, z forward).
    faces: [F, 3] int32 vertex ids; both sides of every triangle are drawn.
    camera: pinhole camera; the image is camera.image_size square.
    grid_mesh: promise that `faces` is `mesh.grid_faces(S, S)` of an S x S
      vertex grid (N = S * S): its corners are then sliced, not gathered.
  Returns:
    Fragments with [B, S, S] face ids, barycentrics and mask.
  """
  vertices = tf.convert_to_tensor(vertices)
  faces = tf.convert_to_tensor(faces, tf.int32)
  size = camera.image_size
  screen = tf.concat([geometry.project(vertices, camera), vertices[..., 2:3]], -1)
  face_id = visible_faces(screen, None if grid_mesh else faces, size, size,
                          camera.znear, camera.zfar, xla)
  return fragments_for(screen, faces, face_id)


def rasterize(vertices, faces, camera: geometry.Camera, backend: str = "tf",
              grid_mesh: bool = False, tfg_barycentrics: str = "stable",
              xla: bool = True) -> Fragments:
  """Rasterizes with the chosen backend: 'tf' (default) or 'tfg'.

  'tfg' is tensorflow-graphics' CPU kernel, compiled on first use; it runs on
  the CPU only and serves as the reference the 'tf' backend is tested against.
  `grid_mesh` (see `rasterize_tf`) only speeds up the 'tf' backend;
  `tfg_barycentrics` ('stable' or 'tfg') is `rasterize_tfg`'s barycentric_impl;
  `xla` (see `rasterize_tf`) only applies to the 'tf' backend.
  """
  if backend == "tf":
    return rasterize_tf(vertices, faces, camera, grid_mesh, xla)
  if backend == "tfg":
    from tfsym3d.render import tfg_backend  # compiles a kernel: import lazily
    return tfg_backend.rasterize_tfg(vertices, faces, camera,
                                     barycentric_impl=tfg_barycentrics)
  raise ValueError(f"Unknown rasterizer backend {backend!r}: use 'tf' or 'tfg' "
                   "(flag --rasterizer)")
