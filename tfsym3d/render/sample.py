"""Bilinear image sampling with an align-corners grid and zero padding.

This is the `bilinear_sample(J, grid)` of docs/method.md §5: the same numbers as
PyTorch's `grid_sample(mode='bilinear', padding_mode='zeros',
align_corners=True)`, in NHWC.
"""

import tensorflow as tf


def bilinear_sample(image, grid) -> tf.Tensor:
  """Samples `image` at the points of `grid` with bilinear interpolation.

  A grid point (x, y) in [-1, 1] maps to the pixel coordinates
  `u = (x + 1) / 2 * (W - 1)`, `v = (y + 1) / 2 * (H - 1)`: -1 and +1 are the
  centres of the first and last pixels (align corners). Each of the four
  bilinear corners that falls outside the image contributes 0 (zero padding),
  so points more than one pixel outside sample 0.

  Differentiable with respect to `image` and `grid` (the gradient with respect
  to the grid is that of the bilinear weights; it is discontinuous at integer
  pixel positions, like PyTorch's). Shapes may be static or dynamic; works
  inside tf.function and XLA.

  Args:
    image: [B, H, W, C] float tensor.
    grid: [B, Ho, Wo, 2] float tensor of (x, y) sampling positions.

  Returns:
    [B, Ho, Wo, C] tensor of the dtype of `image`.
  """
  image = tf.convert_to_tensor(image)
  grid = tf.cast(tf.convert_to_tensor(grid), image.dtype)
  shape = tf.shape(image)
  batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
  width_f = tf.cast(width, image.dtype)
  height_f = tf.cast(height, image.dtype)

  # Pixel coordinates. Clipping only keeps huge/far values from overflowing
  # the int cast: past 1 pixel outside every corner is padding anyway.
  x = (grid[..., 0] + 1) * 0.5 * (width_f - 1)
  y = (grid[..., 1] + 1) * 0.5 * (height_f - 1)
  x = tf.clip_by_value(x, -2.0, width_f + 1)
  y = tf.clip_by_value(y, -2.0, height_f + 1)

  x0f = tf.floor(x)
  y0f = tf.floor(y)
  wx1 = x - x0f                      # weight of the right column
  wy1 = y - y0f                      # weight of the bottom row
  wx0 = 1 - wx1
  wy0 = 1 - wy1
  x0 = tf.cast(x0f, tf.int32)
  y0 = tf.cast(y0f, tf.int32)
  x1 = x0 + 1
  y1 = y0 + 1

  # The 4 corners, stacked on a last axis: (y0,x0), (y0,x1), (y1,x0), (y1,x1).
  xs = tf.stack([x0, x1, x0, x1], axis=-1)                     # [B,Ho,Wo,4]
  ys = tf.stack([y0, y0, y1, y1], axis=-1)
  weights = tf.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], axis=-1)
  inside = ((xs >= 0) & (xs < width) & (ys >= 0) & (ys < height))
  weights = weights * tf.cast(inside, weights.dtype)
  # Outside corners read a valid (clamped) pixel with weight 0.
  xs = tf.clip_by_value(xs, 0, width - 1)
  ys = tf.clip_by_value(ys, 0, height - 1)

  # One flat gather of all corners of all points of all images.
  batch_offset = tf.reshape(tf.range(batch) * (height * width), [-1, 1, 1, 1])
  flat_index = batch_offset + ys * width + xs                   # [B,Ho,Wo,4]
  flat_image = tf.reshape(image, [-1, channels])                # [B*H*W, C]
  corners = tf.gather(flat_image, flat_index)                   # [B,Ho,Wo,4,C]
  return tf.reduce_sum(corners * weights[..., None], axis=-2)
