"""Z-buffer visibility of triangle meshes in pure TensorFlow: `visible_faces`.

Which triangle is nearest at each pixel centre is discrete and carries no
gradient; it is found without any native kernel, on any device, in stages
that XLA compiles (static shapes) around dynamic compactions and
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

The barycentrics of the winning triangles are computed afterwards, densely
and differentiably, in `rasterize`.
"""

from typing import NamedTuple, Union

import tensorflow as tf

from tfsym3d.render import mesh as mesh_lib

# Slack, in pixels, when bounding rows and runs; the edge test decides.
_EPS = 1e-4
_NO_FACE_KEY = tf.int64.max


class RasterSettings(NamedTuple):
  """What every visibility stage of one call shares: the output and depth range.

  A NamedTuple, so it passes through `tf.function` (and XLA) like the tensors
  it holds: the python ints are part of the trace, the tensors are inputs.

  Attributes:
    batch: B, the number of images (an int32 scalar tensor or a python int).
    height, width: output size in pixels (python ints).
    znear, zfar: float32 scalars; fragments outside (znear, zfar) are dropped.
  """
  batch: Union[int, tf.Tensor]
  height: int
  width: int
  znear: Union[float, tf.Tensor]
  zfar: Union[float, tf.Tensor]

  @property
  def num_pixels(self):
    """B * H * W: the z-buffer's slots (slot `num_pixels` collects misses)."""
    return self.batch * self.height * self.width


class _Owners(NamedTuple):
  """Whose an entry is (a face to test, or a candidate pixel of one), [P] each.

  Attributes:
    face: int32 face id within its mesh; image: int32 image of the batch;
    valid: bool, False for the padding that keeps the XLA shapes few.
  """
  face: tf.Tensor
  image: tf.Tensor
  valid: tf.Tensor


class _FaceTests(NamedTuple):
  """Per-face constants of the edge test, [P] vectors.

  Attributes:
    edges: 3 edges (slope_x, slope_y, origin_x, origin_y) of `_edge_table`.
    inv_z: 3 inverse corner depths 1 / z_i.
    area: twice the unsigned screen area.
  """
  edges: list
  inv_z: list
  area: tf.Tensor


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


def _test_candidates(tests: _FaceTests, row, col, settings: RasterSettings):
  """Edge test and perspective-correct depth of pixel centres (col, row).

  Returns (inside [P] bool, depth [P]).
  """
  inside = (col <= settings.width - 1.0) & (row <= settings.height - 1.0)
  inv_depth_area = tf.zeros_like(row)
  for (sx, sy, ox, oy), iz in zip(tests.edges, tests.inv_z):
    w = sx * (col - ox) + sy * (row - oy)
    inside &= w >= 0
    inv_depth_area += w * iz
  # 1/z is linear in screen space: z = area / sum(w_i / z_i).
  depth = tests.area / inv_depth_area
  return inside & (depth > settings.znear) & (depth < settings.zfar), depth


def _pack_keys(inside, depth, owners: _Owners, row, col, settings: RasterSettings):
  """(key, pixel) pairs for the per-pixel minimum; outside -> the miss slot.

  `owners.valid` is not consulted: callers fold it into `inside`.
  """
  # Positive float32 bit patterns sort like the floats: pack depth above id.
  depth_bits = tf.cast(tf.bitcast(tf.maximum(depth, 0.0), tf.int32), tf.int64)
  key = tf.bitwise.left_shift(depth_bits, 32) + tf.cast(owners.face, tf.int64)
  pixel = ((owners.image * settings.height + tf.cast(row, tf.int32)) * settings.width
           + tf.cast(col, tf.int32))
  return key, tf.where(inside, pixel, settings.num_pixels)


def _nearest(keys, pixels, settings: RasterSettings):
  """[num_pixels] int64 minimum key per pixel (`_NO_FACE_KEY` where none)."""
  return tf.math.unsorted_segment_min(keys, pixels, settings.num_pixels + 1)[:-1]


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


def _bounds(xs, ys, settings: RasterSettings):
  """Pixel-centre rows and columns each face's bounding box spans.

  Returns first_row, num_rows, first_col, num_cols ([P] float each).
  """
  x_min = tf.minimum(tf.minimum(xs[0], xs[1]), xs[2])
  x_max = tf.maximum(tf.maximum(xs[0], xs[1]), xs[2])
  y_min = tf.minimum(tf.minimum(ys[0], ys[1]), ys[2])
  y_max = tf.maximum(tf.maximum(ys[0], ys[1]), ys[2])
  first_row = tf.maximum(tf.math.ceil(y_min - _EPS), 0.0)
  last_row = tf.minimum(tf.floor(y_max + _EPS), settings.height - 1.0)
  first_col = tf.maximum(tf.math.ceil(x_min - _EPS), 0.0)
  last_col = tf.minimum(tf.floor(x_max + _EPS), settings.width - 1.0)
  return (first_row, tf.maximum(last_row - first_row + 1, 0.0),
          first_col, tf.maximum(last_col - first_col + 1, 0.0))


def _usable(area, zs, settings: RasterSettings):
  """Non-degenerate faces with every corner between the clipping planes."""
  usable = area > 0
  for z in zs:
    usable &= (z > settings.znear) & (z < settings.zfar)
  return usable


def _test_small_faces(corners, ids, owners: _Owners, slots: int,
                      settings: RasterSettings):
  """Tests every valid face whose box holds at most `slots` centres.

  Static shapes throughout (inside XLA): candidate k of a face is the k-th
  centre of its bounding box, row-major.

  Args:
    corners: (xs, ys, zs), 3-tuples of [P] corner coordinates.
    ids: 3-tuple of [P] int32 vertex ids of the corners.
    owners: the faces' ids and images; `valid` False for padding.
    slots: python int.
  Returns:
    best: [num_pixels] int64 nearest keys among the tested faces;
    box: [P] float centres in each face's box, 0 where not usable.
  """
  xs, ys, zs = corners
  edges, area = _edge_table(xs, ys, ids)
  tests = _FaceTests(edges, [1.0 / z for z in zs], area)
  first_row, num_rows, first_col, num_cols = _bounds(xs, ys, settings)
  box = tf.where(owners.valid & _usable(area, zs, settings), num_rows * num_cols, 0.0)
  tested = box <= slots
  keys, pixels = [], []
  safe_cols = tf.maximum(num_cols, 1.0)
  for slot in range(slots):
    row = first_row + tf.floor(slot / safe_cols)
    col = first_col + (slot - tf.floor(slot / safe_cols) * safe_cols)
    inside, depth = _test_candidates(tests, row, col, settings)
    inside &= tested & (slot < box)
    key, pixel = _pack_keys(inside, depth, owners, row, col, settings)
    keys.append(key)
    pixels.append(pixel)
  return _nearest(tf.concat(keys, 0), tf.concat(pixels, 0), settings), box


def _first_tier(corners, corner_ids, settings: RasterSettings):
  """`_test_small_faces` at `_FIRST_SLOTS` over every face.

  Args:
    corners: 3 corners of [3 (u, v, z), B, F].
    corner_ids: 3 corners of [1 or B, F] int32 vertex ids.
  Returns:
    best: [B*H*W] int64 nearest keys among the faces tested;
    box: [B*F] float centres in each face's box (0: unusable).
  """
  num_faces = tf.shape(corners[0])[2]
  flat = lambda t: tf.reshape(t, [-1])
  xs, ys, zs = ([flat(c[k]) for c in corners] for k in range(3))
  ids = [flat(tf.broadcast_to(i, tf.shape(corners[0])[1:])) for i in corner_ids]
  index = tf.range(tf.size(xs[0]))
  owners = _Owners(index % num_faces, index // num_faces, tf.ones_like(xs[0], tf.bool))
  return _test_small_faces((xs, ys, zs), ids, owners, _FIRST_SLOTS, settings)


def _first_tier_grid(screen, settings: RasterSettings):
  """`_first_tier` for the grid mesh of an H x W map: corners by slicing."""
  height, width = settings.height, settings.width
  components = tf.transpose(tf.reshape(screen, [settings.batch, height, width, 3]),
                            [3, 0, 1, 2])
  vertex_ids = tf.reshape(tf.range(height * width), [1, 1, height, width])
  corners = _grid_corners(components)
  corner_ids = [c[0] for c in _grid_corners(vertex_ids)]
  return _first_tier(corners, corner_ids, settings)


def _first_tier_mesh(corners, faces, settings: RasterSettings):
  """`_first_tier` for arbitrary faces; corners from `_gather_corners`."""
  corner_ids = [faces[None, :, i] for i in range(3)]
  return _first_tier(tf.unstack(corners), corner_ids, settings)


def _second_tier(corners, corner_ids, owners: _Owners, settings: RasterSettings):
  """`_test_small_faces` at `_SECOND_SLOTS` over gathered faces.

  Args:
    corners: [3 corners, 3 (u, v, z), M]; corner_ids: [3, M] int32;
    owners: [M] each; `valid` False for padding.
  Returns:
    [num_pixels] int64 nearest keys.
  """
  xs, ys, zs = ([corners[i, k] for i in range(3)] for k in range(3))
  best, _ = _test_small_faces((xs, ys, zs), tf.unstack(corner_ids), owners,
                              _SECOND_SLOTS, settings)
  return best


def _large_face_table(corners, corner_ids, settings: RasterSettings):
  """Test constants and spanned rows of the large faces.

  Args:
    corners: [3 corners, 3 (u, v, z), L]; corner_ids: [3, L] int32.
  Returns:
    table: [L, len(_TABLE_ROWS)]; num_rows: [L] int32 rows of pixel centres.
  """
  xs, ys, zs = ([corners[i, k] for i in range(3)] for k in range(3))
  edges, area = _edge_table(xs, ys, tf.unstack(corner_ids))
  first_row, num_rows, _, _ = _bounds(xs, ys, settings)
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
    width: image width in pixels (python float).
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


def _candidate_stage(rows, row, col, owners: _Owners, settings: RasterSettings):
  """Tests the enumerated (face, pixel) candidates of the large faces.

  Args:
    rows: [P, len(_TABLE_ROWS)] the face table's row of each candidate's face.
    row, col: [P] float pixel centre; owners: [P] each, the candidate's face
      id within its mesh and image; `valid` False for padding.
  Returns:
    [num_pixels] int64 keys (depth bits << 32 | face id), int64 max if empty.
  """
  table = tf.unstack(rows, axis=1)
  get = lambda name: table[_ROW[name]]
  edges = [(get(f"sx{i}"), get(f"sy{i}"), get(f"ox{i}"), get(f"oy{i}")) for i in range(3)]
  tests = _FaceTests(edges, [get(f"iz{i}") for i in range(3)], get("area"))
  inside, depth = _test_candidates(tests, row, col, settings)
  key, pixel = _pack_keys(inside & owners.valid, depth, owners, row, col, settings)
  return _nearest(key, pixel, settings)


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


def _first_tier_keys(screen, faces, settings: RasterSettings, xla: bool):
  """The first tier over every face of the grid mesh (`faces` None) or a mesh.

  Returns:
    best: [num_pixels] int64 keys; box: [B*F] float centres in each face's
    box (0: unusable); faces: [F, 3] int32 (the grid mesh's when None).
  """
  if faces is None:
    best, box = _stage(_first_tier_grid, xla)(screen, settings)
    return best, box, mesh_lib.grid_faces(settings.height, settings.width)
  faces = tf.convert_to_tensor(faces, tf.int32)
  best, box = _stage(_first_tier_mesh, xla)(_gather_corners(screen, faces), faces,
                                            settings)
  return best, box, faces


def _gather_faces(screen, faces, selected):
  """Corners of the selected faces of every image, padded to a bucket size.

  The padding keeps the XLA stages to few shapes; it is face 0 of image 0,
  marked invalid.

  Args:
    screen: [B, N, 3] (u, v, z); faces: [F, 3] int32.
    selected: [B*F] bool, image-major.
  Returns:
    owners: [M] each; corners: [3 corners, 3 (u, v, z), M];
    vertex_ids: [3, M] int32.
  """
  num_faces = tf.shape(faces)[0]
  index = tf.cast(tf.where(selected)[:, 0], tf.int32)
  count = tf.size(index)
  index = tf.pad(index, [[0, _bucket(count) - count]])
  image = index // num_faces
  vertex_ids = tf.gather(faces, index % num_faces)                  # [M,3]
  corners = tf.gather(tf.reshape(screen, [-1, 3]),
                      vertex_ids + image[:, None] * tf.shape(screen)[1])
  owners = _Owners(index % num_faces, image, tf.range(tf.size(index)) < count)
  return owners, tf.transpose(corners, [1, 2, 0]), tf.transpose(vertex_ids)


def _large_face_keys(screen, faces, selected, settings: RasterSettings, xla: bool):
  """Nearest keys of the selected (large) faces: [num_pixels] int64.

  Enumerates (face, row) pairs, then the pixel centres of each pair's exact
  run (`_row_spans`), and tests those candidates.
  """
  owners, corners, vertex_ids = _gather_faces(screen, faces, selected)
  table, num_rows = _stage(_large_face_table, xla)(corners, vertex_ids, settings)
  num_rows = tf.where(owners.valid, num_rows, 0)

  face_of_pair, row_rank, pair_valid = _enumerate(num_rows)
  pair_rows = tf.gather(table, face_of_pair)
  row = pair_rows[:, _ROW["first_row"]] + tf.cast(row_rank, tf.float32)
  first_col, num_cols = _stage(_row_spans, xla)(pair_rows, row, float(settings.width))
  num_cols = tf.where(pair_valid, num_cols, 0)

  pair, col_rank, valid = _enumerate(num_cols)
  face = tf.gather(face_of_pair, pair)
  candidates = _Owners(tf.gather(owners.face, face), tf.gather(owners.image, face), valid)
  return _stage(_candidate_stage, xla)(
      tf.gather(pair_rows, pair), tf.gather(row, pair),
      tf.gather(first_col, pair) + tf.cast(col_rank, tf.float32), candidates, settings)


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
  settings = RasterSettings(tf.shape(screen)[0], height, width,
                            tf.constant(znear, tf.float32), tf.constant(zfar, tf.float32))
  best, box, faces = _first_tier_keys(screen, faces, settings, xla)
  owners, corners, vertex_ids = _gather_faces(
      screen, faces, (box > _FIRST_SLOTS) & (box <= _SECOND_SLOTS))
  best = tf.minimum(best, _stage(_second_tier, xla)(corners, vertex_ids, owners, settings))
  best = tf.minimum(best, _large_face_keys(screen, faces, box > _SECOND_SLOTS, settings,
                                           xla))
  face_id = tf.where(best == _NO_FACE_KEY, -1,
                     tf.cast(tf.bitwise.bitwise_and(best, 0xFFFFFFFF), tf.int32))
  return tf.reshape(face_id, [settings.batch, height, width])
