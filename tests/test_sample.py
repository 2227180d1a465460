"""Tests for tfsym3d.render.sample.bilinear_sample."""

import numpy as np
import pytest
import tensorflow as tf

from tfsym3d.render.sample import bilinear_sample


def _reference_sample(image, grid):
  """Per-point NumPy loop: PyTorch grid_sample(bilinear, zeros, align_corners)."""
  batch, height, width, channels = image.shape
  _, out_h, out_w, _ = grid.shape
  out = np.zeros((batch, out_h, out_w, channels), np.float64)
  for b in range(batch):
    for i in range(out_h):
      for j in range(out_w):
        gx, gy = grid[b, i, j]
        x = (gx + 1) / 2 * (width - 1)
        y = (gy + 1) / 2 * (height - 1)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
          for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < width and 0 <= yy < height:
              out[b, i, j] += wy * wx * image[b, yy, xx]
  return out


def _identity_grid(batch, height, width):
  x = np.linspace(-1, 1, width)
  y = np.linspace(-1, 1, height)
  gx, gy = np.meshgrid(x, y)
  grid = np.stack([gx, gy], -1)
  return np.broadcast_to(grid, (batch, height, width, 2)).copy()


def test_matches_numpy_reference_including_outside_and_borders():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
  # Well outside [-1, 1] so every padding case occurs (fully and partly out).
  grid = rng.uniform(-1.4, 1.4, size=(2, 6, 11, 2)).astype(np.float32)
  # Exact borders, exact pixel centres, just inside/outside the borders.
  special = np.array([-1, 1, 0, -1.0001, 1.0001, -0.9999, 0.9999,
                      -1 - 1 / 8, 1 + 1 / 8, 0.25, -1 - 2 / 8, 5.0, -7.0])
  grid[0, 0, :, 0] = special[:11]
  grid[0, 1, :, 1] = special[2:13]
  grid[1, 2, :, :] = special[:11, None]
  got = bilinear_sample(image, grid).numpy()
  want = _reference_sample(image.astype(np.float64), grid.astype(np.float64))
  assert got.shape == (2, 6, 11, 3)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert np.max(np.abs(got - want)) < 1e-5


def test_identity_grid_reproduces_image():
  rng = np.random.default_rng(2)
  image = rng.normal(size=(3, 8, 5, 4)).astype(np.float32)
  grid = _identity_grid(3, 8, 5).astype(np.float32)
  got = bilinear_sample(image, grid).numpy()
  np.testing.assert_allclose(got, image, atol=1e-6, rtol=0)


def test_identity_grid_exact_for_power_of_two_plus_one():
  # With W - 1 a power of two the grid maps to integers exactly in float.
  rng = np.random.default_rng(3)
  image = rng.normal(size=(1, 9, 17, 2)).astype(np.float32)
  grid = _identity_grid(1, 9, 17).astype(np.float32)
  got = bilinear_sample(image, grid).numpy()
  np.testing.assert_array_equal(got, image)


def test_different_output_size_and_dtype():
  image = np.arange(2 * 4 * 4 * 1, dtype=np.float64).reshape(2, 4, 4, 1)
  grid = np.zeros((2, 1, 1, 2))                # the image centre
  got = bilinear_sample(image, grid).numpy()
  assert got.dtype == np.float64
  np.testing.assert_allclose(got[:, 0, 0, 0], image[:, 1:3, 1:3, 0].mean((1, 2)))


def test_tf_function_and_xla():
  rng = np.random.default_rng(4)
  image = tf.constant(rng.normal(size=(2, 6, 6, 3)), tf.float32)
  grid = tf.constant(rng.uniform(-1.2, 1.2, size=(2, 5, 4, 2)), tf.float32)
  eager = bilinear_sample(image, grid)
  graph = tf.function(bilinear_sample)(image, grid)
  xla = tf.function(bilinear_sample, jit_compile=True)(image, grid)
  np.testing.assert_allclose(graph.numpy(), eager.numpy(), atol=1e-6)
  np.testing.assert_allclose(xla.numpy(), eager.numpy(), atol=1e-5)


def _off_integer_grid(rng, batch, out_h, out_w, height, width):
  """Grid points at least 0.1 pixel from any integer pixel coordinate,
  some of them within one pixel outside the image."""
  u = rng.integers(-1, width, size=(batch, out_h, out_w)) + rng.uniform(
      0.1, 0.9, size=(batch, out_h, out_w))
  v = rng.integers(-1, height, size=(batch, out_h, out_w)) + rng.uniform(
      0.1, 0.9, size=(batch, out_h, out_w))
  return np.stack([u / (width - 1) * 2 - 1, v / (height - 1) * 2 - 1], -1)


@pytest.mark.parametrize("dtype, delta, tolerance", [
    (tf.float64, 1e-6, dict(atol=1e-6, rtol=1e-6)),
    # float32 finite differences are coarse: a loose bound, still failing on
    # a wrong formula (gradients are O(1)).
    (tf.float32, 1e-3, dict(atol=2e-2, rtol=0)),
])
def test_gradients_match_finite_differences(dtype, delta, tolerance):
  rng = np.random.default_rng(5)
  image = tf.constant(rng.normal(size=(2, 5, 6, 2)), dtype)
  grid = tf.constant(_off_integer_grid(rng, 2, 3, 4, 5, 6), dtype)
  theoretical, numerical = tf.test.compute_gradient(
      bilinear_sample, [image, grid], delta=delta)
  for t, n in zip(theoretical, numerical):
    assert np.abs(t).max() > 0
    np.testing.assert_allclose(t, n, **tolerance)
