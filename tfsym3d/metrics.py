"""Depth metrics against ground truth (docs/method.md §8): masks, SIDE and MAD, and
the diagnosis of `tfsym3d.evaluate --diagnose`.

Pure functions of batched depth maps; `tfsym3d.evaluate` runs them over a
dataset and writes the tables.
"""

import math

import numpy as np
import tensorflow as tf

from tfsym3d import geometry


def erode(mask):
  """docs/method.md §8's erosion: 3x3 mean (zero padded) > 0.99.

  Args:
    mask: [B, H, W] in {0, 1}.
  Returns:
    [B, H, W] float32: pixels whose 3x3 neighbourhood is entirely inside;
    the image border is always eroded (the padding counts as outside).
  """
  m = tf.pad(tf.cast(mask, tf.float32)[..., None], [[0, 0], [1, 1], [1, 1], [0, 0]])
  mean = tf.nn.avg_pool2d(m, 3, 1, "VALID")[..., 0]
  return tf.cast(mean > 0.99, tf.float32)


def foreground_mask(depth_gt):
  """[B, H, W] -> eroded foreground `d_gt < max(d_gt)` per image (docs/method.md §8)."""
  far = tf.reduce_max(depth_gt, axis=[1, 2], keepdims=True)
  return erode(tf.cast(depth_gt < far, tf.float32))


def evaluation_mask(depth_gt, recon_valid=None):
  """The mask SIDE and MAD average over: eroded GT foreground, times the
  eroded valid mask of the reconstruction when there is one.

  Args:
    depth_gt: [B, H, W] ground-truth depth.
    recon_valid: None or [B, H, W] valid mask of the reconstructed depth.
  Returns:
    [B, H, W] float32 in {0, 1}.
  """
  mask = foreground_mask(depth_gt)
  if recon_valid is not None:
    mask *= erode(recon_valid)
  return mask


def side(depth, depth_gt, mask):
  """Scale-invariant depth error per image (docs/method.md §8), not yet x 1e-2.

  With e = log(depth) - log(depth_gt) on the mask: sqrt(mean((e - mean e)^2)).

  Args:
    depth, depth_gt: [B, H, W] positive depths.
    mask: [B, H, W] float32 weights in {0, 1}.
  Returns:
    [B] float32; NaN for an image whose mask is empty.
  """
  e = tf.math.log(depth) - tf.math.log(depth_gt)
  count = tf.reduce_sum(mask, axis=[1, 2])
  mean = tf.reduce_sum(e * mask, axis=[1, 2]) / count
  var = tf.reduce_sum(tf.square(e - mean[:, None, None]) * mask, axis=[1, 2]) / count
  return tf.sqrt(var)


def mad(depth, depth_gt, mask, camera: geometry.Camera):
  """Mean angle deviation between the normals of two depth maps, degrees.

  Normals follow docs/method.md §4 (`geometry.normals_from_depth`) for both maps.
  The angle is that between their directions, atan2(|n x m|, n . m): docs/method.md
  §4's normals are a little shorter than unit (the 1e-7 in their norm is not
  small next to |t_u x t_v| ~ 1e-4 at these focal lengths), so acos(n . m)
  would add a bias of several degrees even for identical shapes.

  Args:
    depth, depth_gt: [B, H, W].
    mask: [B, H, W] float32.
    camera: the model's camera (intrinsics for the normals).
  Returns:
    [B] float32; NaN for an image whose mask is empty.
  """
  n = geometry.normals_from_depth(depth, camera)
  n_gt = geometry.normals_from_depth(depth_gt, camera)
  sine = tf.norm(tf.linalg.cross(n, n_gt), axis=-1)
  cosine = tf.reduce_sum(n * n_gt, axis=-1)
  angle = tf.atan2(sine, cosine) * (180.0 / math.pi)
  return tf.reduce_sum(angle * mask, axis=[1, 2]) / tf.reduce_sum(mask, axis=[1, 2])


# ------------------------------------------------------------ diagnosis ----
# What `tfsym3d.evaluate --diagnose` reports besides SIDE and MAD: where the
# depth error sits (by distance from the mask's rim), how much of it a wrong
# relief depth explains, and how well the viewpoint is recovered. Per-image
# maps are reduced in TensorFlow (inside the evaluation step); statistics over
# the images are NumPy.

NUM_RINGS = 5  # rings 1, 2, 3, 4 and ">= 5" pixels from the rim


def rim_distance(mask, num_rings: int = NUM_RINGS):
  """Chessboard distance of every mask pixel from the mask's rim, capped.

  Ring k holds the pixels removed by the k-th application of `erode` (3x3,
  zero padded): ring 1 are the mask pixels with a neighbour (8-connected)
  outside the mask or beyond the image border, ring 2 those one further in,
  and so on; pixels that survive `num_rings - 1` erosions get `num_rings`.

  Args:
    mask: [B, H, W] in {0, 1}.
    num_rings: the last, open-ended ring (>= 1).
  Returns:
    [B, H, W] int32: 0 outside the mask, else the ring 1 .. num_rings.
  """
  current = tf.cast(mask, tf.float32)
  ring = tf.zeros_like(current, tf.int32)
  for k in range(1, num_rings):
    inner = erode(current)
    ring += tf.cast(current - inner > 0.5, tf.int32) * k
    current = inner
  return ring + tf.cast(current > 0.5, tf.int32) * num_rings


def _centred_log_error(depth, depth_gt, mask):
  """e - mean(e) on the mask, e = log(depth) - log(depth_gt): [B, H, W]."""
  e = tf.math.log(depth) - tf.math.log(depth_gt)
  mean = tf.reduce_sum(e * mask, axis=[1, 2]) / tf.reduce_sum(mask, axis=[1, 2])
  return (e - mean[:, None, None]) * mask


def ring_error_sums(depth, depth_gt, mask, num_rings: int = NUM_RINGS):
  """Per image and ring: pixel count, sum and sum of squares of the centred
  log-depth error (`e - mean(e)` over the whole mask, the residual SIDE
  measures: summed over the rings, sqrt(sum of squares / count) is SIDE).

  Args:
    depth, depth_gt: [B, H, W] positive depths; mask: [B, H, W] in {0, 1}.
  Returns:
    [B, num_rings, 3] float32 (count, sum, sum of squares); ring k at index
    k - 1. An image with an empty mask gives NaN sums.
  """
  ring = rim_distance(mask, num_rings)
  error = _centred_log_error(depth, depth_gt, mask)
  sums = []
  for k in range(1, num_rings + 1):
    in_ring = tf.cast(tf.equal(ring, k), tf.float32)
    sums.append(tf.stack([tf.reduce_sum(in_ring, axis=[1, 2]),
                          tf.reduce_sum(error * in_ring, axis=[1, 2]),
                          tf.reduce_sum(tf.square(error) * in_ring, axis=[1, 2])], -1))
  return tf.stack(sums, axis=1)


def relief_moments(depth, depth_gt, mask):
  """Second moments of the log depths on the mask, for the relief scale.

  With p = log(depth) and g = log(depth_gt) centred on their masked means:
  (mean(p^2), mean(p g), mean(g^2)). SIDE^2 = mean(p^2) - 2 mean(p g) +
  mean(g^2), and for the depth depth^s (its log relief scaled by s),
  SIDE(s)^2 = s^2 mean(p^2) - 2 s mean(p g) + mean(g^2).

  Args:
    depth, depth_gt: [B, H, W] positive depths; mask: [B, H, W] in {0, 1}.
  Returns:
    [B, 3] float32; NaN for an empty mask.
  """
  count = tf.reduce_sum(mask, axis=[1, 2])

  def centred(x):
    log = tf.math.log(x)
    mean = tf.reduce_sum(log * mask, axis=[1, 2]) / count
    return (log - mean[:, None, None]) * mask

  p, g = centred(depth), centred(depth_gt)
  return tf.stack([tf.reduce_sum(p * p, axis=[1, 2]), tf.reduce_sum(p * g, axis=[1, 2]),
                   tf.reduce_sum(g * g, axis=[1, 2])], -1) / count[:, None]


def best_relief_scale(moments):
  """The relief scale s that best fits the ground truth, per image and overall.

  s scales the predicted log-depth's deviation from its masked mean
  (equivalently, the depth d becomes d^s up to a constant factor, which SIDE
  ignores). Per image, s_i = mean(p g) / mean(p^2) minimises SIDE_i(s); the
  overall s = sum_i mean(p g)_i / sum_i mean(p^2)_i minimises the mean over
  images of SIDE_i(s)^2. s < 1: the prediction's relief is too deep.

  Args:
    moments: [N, 3] from `relief_moments` (rows with NaN are skipped).
  Returns:
    (per_image [N] float64, NaN where undefined; overall float).
  """
  m = np.asarray(moments, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    per_image = m[:, 1] / m[:, 0]
  ok = np.isfinite(m).all(axis=1) & (m[:, 0] > 0)
  overall = float(m[ok, 1].sum() / m[ok, 0].sum()) if ok.any() else float("nan")
  return np.where(ok, per_image, np.nan), overall


def side_at_relief_scale(moments, scale):
  """SIDE (not x 1e-2) of each image after scaling its log relief by `scale`.

  Args:
    moments: [N, 3] from `relief_moments`; scale: a float or [N].
  Returns:
    [N] float64 sqrt(s^2 mean(p^2) - 2 s mean(p g) + mean(g^2)).
  """
  m = np.asarray(moments, np.float64)
  s = np.asarray(scale, np.float64)
  return np.sqrt(np.maximum(s * s * m[:, 0] - 2 * s * m[:, 1] + m[:, 2], 0.0))


def linear_fit(predicted, true):
  """Least-squares line predicted = slope * true + intercept, and Pearson's r.

  Args:
    predicted, true: [N] (pairs with a non-finite value are skipped).
  Returns:
    dict(slope, intercept, pearson, rmse (of predicted - true), count); NaN
    for fewer than two pairs or a constant `true`.
  """
  p, t = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
  ok = np.isfinite(p) & np.isfinite(t)
  p, t = p[ok], t[ok]
  nan = float("nan")
  out = {"slope": nan, "intercept": nan, "pearson": nan,
         "rmse": float(np.sqrt(np.mean((p - t) ** 2))) if len(p) else nan,
         "count": int(len(p))}
  if len(p) < 2:
    return out
  dt, dp = t - t.mean(), p - p.mean()
  var_t, var_p = float((dt * dt).sum()), float((dp * dp).sum())
  if var_t > 0:
    out["slope"] = float((dt * dp).sum() / var_t)
    out["intercept"] = float(p.mean() - out["slope"] * t.mean())
  out["pearson"] = pearson(p, t)
  return out


def pearson(a, b) -> float:
  """Pearson's correlation of [N] arrays over their finite pairs (NaN if a
  side is constant or fewer than two pairs)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  ok = np.isfinite(a) & np.isfinite(b)
  if ok.sum() < 2:
    return float("nan")
  a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
  denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
  return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def ring_table(sums):
  """Pools `ring_error_sums` over images: per ring the fraction of the mask's
  pixels, RMS and signed mean of the centred log-depth error.

  Args:
    sums: [N, R, 3] (images with an empty mask, NaN, are skipped).
  Returns:
    list of R dicts: ring (1-based; the last is ">= R"), pixels, fraction,
    rms, mean (not x 1e-2; NaN for a ring without pixels).
  """
  s = np.asarray(sums, np.float64)
  s = s[np.isfinite(s).all(axis=(1, 2))]
  count, first, second = (s[..., i].sum(axis=0) for i in range(3))  # [R] each
  all_pixels = count.sum()
  rows = []
  for k in range(s.shape[1]):
    n = count[k]
    rows.append({"ring": f">={k + 1}" if k == s.shape[1] - 1 else str(k + 1),
                 "pixels": int(n),
                 "fraction": float(n / all_pixels) if all_pixels else float("nan"),
                 "rms": float(math.sqrt(second[k] / n)) if n else float("nan"),
                 "mean": float(first[k] / n) if n else float("nan")})
  return rows
