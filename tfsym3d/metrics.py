"""Depth metrics against ground truth (docs/method.md §8): masks, SIDE and MAD.

Pure functions of batched depth maps; `tfsym3d.evaluate` runs them over a
dataset and writes the tables.
"""

import math

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
