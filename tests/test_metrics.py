"""SIDE, MAD and the evaluation masks of docs/method.md §8, with hand-checked numbers."""

import math

import numpy as np
import tensorflow as tf

from tfsym3d import geometry
from tfsym3d import metrics

CAMERA = geometry.Camera.from_fov(32, 10.0)


def _blob(size=32, radius=10):
  """Depth [1, S, S]: a bump of radius `radius` px at 0.95-1.0, background 1.1."""
  v, u = np.mgrid[:size, :size] - (size - 1) / 2
  r2 = (u ** 2 + v ** 2) / radius ** 2
  depth = np.where(r2 < 1, 1.0 - 0.05 * np.sqrt(np.clip(1 - r2, 0, 1)), 1.1)
  return tf.constant(depth[None], tf.float32)


def test_erosion_removes_the_boundary_ring_and_the_image_border():
  mask = np.zeros([1, 8, 8], np.float32)
  mask[0, 2:6, 2:6] = 1
  eroded = metrics.erode(mask).numpy()[0]
  assert eroded.sum() == 4 and eroded[3:5, 3:5].all()
  full = metrics.erode(np.ones([1, 5, 5], np.float32)).numpy()[0]
  assert full.sum() == 9 and full[1:4, 1:4].all()  # zero padding erodes the border


def test_foreground_is_below_the_maximum_depth():
  gt = _blob()
  fg = metrics.foreground_mask(gt).numpy()[0]
  inside = (gt.numpy()[0] < 1.1)
  assert fg.sum() > 0 and fg.sum() < inside.sum()
  assert not (fg.astype(bool) & ~inside).any()


def test_side_is_zero_for_a_scaled_copy_and_the_log_std_otherwise():
  gt = _blob()
  mask = metrics.evaluation_mask(gt)
  assert metrics.side(gt * 1.37, gt, mask).numpy()[0] < 1e-6
  flat = tf.ones_like(gt)
  expected = np.std(np.log(gt.numpy()[0])[mask.numpy()[0] > 0])
  np.testing.assert_allclose(metrics.side(flat, gt, mask).numpy()[0], expected, rtol=1e-4)


def test_mad_is_zero_for_a_scaled_copy_and_the_tilt_for_planes():
  gt = _blob()
  mask = metrics.evaluation_mask(gt)
  assert metrics.mad(gt * 1.2, gt, mask, CAMERA).numpy()[0] < 0.05
  # Two planes (points z = c + t x in camera space) differ by a known angle.
  size = 32
  u = (np.arange(size) - (size - 1) / 2) / CAMERA.focal
  def plane(slope):
    depth = 1.0 / (1.0 - slope * u)      # z = 1 + slope * x with x = u z
    return tf.constant(np.tile(depth, [size, 1])[None], tf.float32)
  ones = tf.ones([1, size, size])
  inner = metrics.erode(ones)
  angle = metrics.mad(plane(0.0), plane(0.5), inner, CAMERA).numpy()[0]
  assert abs(angle - math.degrees(math.atan(0.5))) < 0.1


def test_empty_mask_gives_nan_not_a_crash():
  gt = tf.fill([1, 8, 8], 1.1)
  mask = metrics.evaluation_mask(gt)
  assert np.isnan(metrics.side(gt, gt, mask).numpy()[0])
  assert np.isnan(metrics.mad(gt, gt, mask, CAMERA).numpy()[0])
