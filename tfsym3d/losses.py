"""The training losses of docs/method.md §6: photometric, perceptual, depth smoothness.

All images are NHWC in [-1, 1]; masks are [B, H, W] in [0, 1] and are treated
as constants by the callers (no gradient flows through them here either way).
"""

import math
import os

from absl import logging
import keras
import tensorflow as tf

EPS = 1e-7

# ImageNet statistics of torchvision's VGG16 (RGB, images in [0, 1]).
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
# Mean pixel of the Caffe VGG16 that Keras' ImageNet weights come from (BGR,
# images in 0..255).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

FEATURE_LAYER = "block3_conv3"  # relu3_3: Keras' conv layers include the ReLU
OFFICIAL_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Where Keras itself downloads that file from (keras.applications.vgg16).
OFFICIAL_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/"
                      "keras-applications/vgg16/" + OFFICIAL_NOTOP_FILE)


def _replica_sum(x):
  """(sum of x over the replicas of a distributed step, replica count).

  Outside a multi-replica step: (x, 1).
  """
  if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
    return x, 1
  ctx = tf.distribute.get_replica_context()
  if ctx.num_replicas_in_sync == 1:
    return x, 1
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x), ctx.num_replicas_in_sync


def _masked_mean(loss, mask):
  """sum(loss * m) / sum(m) with m [B, h, w] broadcast over loss's channels.

  In a step split over R replicas, the denominator is the sum over the whole
  global batch and the result is scaled by R: the replicas' values then
  average to the global batch's masked mean, as on one device (a mean of
  per-replica ratios would weight images by their replica's mask size).
  """
  if mask is None:
    return tf.reduce_mean(loss)
  mask = tf.broadcast_to(tf.cast(mask, loss.dtype)[..., None], tf.shape(loss))
  total, replicas = _replica_sum(tf.stop_gradient(tf.reduce_sum(mask)))
  return replicas * tf.reduce_sum(loss * mask) / total


def photometric_loss(recon, target, mask=None, sigma=None):
  """Confidence-weighted L1 loss (docs/method.md §6).

  Per pixel and channel `l = |R - I| * sqrt(2) / (sigma + eps) +
  log(sigma + eps)`, or `|R - I|` without sigma; returns `sum(l * m) / sum(m)`
  with the mask broadcast over the 3 channels (plain mean without a mask).

  Args:
    recon: [B, H, W, 3] reconstruction R.
    target: [B, H, W, 3] input image I.
    mask: [B, H, W] weights, or None.
    sigma: [B, H, W, 1] positive confidence (std) map, or None.
  Returns:
    Scalar float32 tensor.
  """
  loss = tf.abs(recon - target)
  if sigma is not None:
    loss = loss * math.sqrt(2) / (sigma + EPS) + tf.math.log(sigma + EPS)
  return _masked_mean(loss, mask)


def depth_smoothness(depth, min_depth, max_depth):
  """Mean |difference| of neighbouring depths along x plus along y (docs/method.md §6).

  Args:
    depth: [B, H, W] canonical depth.
    min_depth, max_depth: the depth range; each term is divided by its width.
  Returns:
    Scalar float32 tensor.
  """
  dx = tf.reduce_mean(tf.abs(depth[:, :, 1:] - depth[:, :, :-1]))
  dy = tf.reduce_mean(tf.abs(depth[:, 1:, :] - depth[:, :-1, :]))
  return (dx + dy) / (max_depth - min_depth)


def _load_vgg16(weights):
  """A VGG16 (no top) with the requested weights; see PerceptualLoss."""
  if weights == "imagenet":
    # Keras downloads (or reuses from ~/.keras/models) the official notop file.
    logging.info("Perceptual loss: VGG16 ImageNet weights from Keras "
                 "(keras.applications, downloaded once to ~/.keras/models).")
    return keras.applications.VGG16(include_top=False, weights="imagenet",
                                    input_shape=(None, None, 3))
  path = os.fspath(weights)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"VGG16 weights file not found: {path!r}. Put Keras' official "
        f"notop file there ({OFFICIAL_NOTOP_URL}), or a keras.applications."
        "VGG16(include_top=False) saved with save_weights('x.weights.h5'); "
        "or pass 'imagenet' to let Keras download it, or 'none' to turn the "
        "perceptual loss off.")
  if not (path.endswith(".h5") or path.endswith(".hdf5")):
    raise ValueError(
        f"VGG16 weights file {path!r}: expected a legacy Keras '.h5' file such "
        f"as '{OFFICIAL_NOTOP_FILE}' or a Keras 3 '.weights.h5' file.")
  vgg = keras.applications.VGG16(include_top=False, weights=None,
                                 input_shape=(None, None, 3))
  before = [k.numpy() for k in _kernels(vgg)]
  try:
    # '.weights.h5' -> Keras 3 format; other '.h5' -> legacy, layer by layer in
    # order (the layout of Keras' official notop file).
    vgg.load_weights(path)
  except Exception as e:  # Keras raises several types for mismatched files.
    raise ValueError(
        f"Could not load VGG16 weights from {path!r}: {e}. The file must hold "
        "the weights of keras.applications.VGG16(include_top=False), e.g. "
        f"'{OFFICIAL_NOTOP_FILE}'.") from e
  # Keras 3 can skip unmatched objects with only a warning; refuse to go on
  # with randomly initialised convolutions.
  unchanged = [k.path for k, b in zip(_kernels(vgg), before)
               if (k.numpy() == b).all()]
  if unchanged:
    raise ValueError(f"VGG16 weights file {path!r} did not set {unchanged}.")
  logging.info("Perceptual loss: VGG16 weights loaded from %s.", path)
  return vgg


def _kernels(model):
  return [layer.kernel for layer in model.layers
          if isinstance(layer, keras.layers.Conv2D)]


class PerceptualLoss:
  """Confidence-weighted VGG16 relu3_3 feature loss (docs/method.md §6), frozen.

  Args:
    weights: 'imagenet' (Keras' own download), 'none' / None (term off: the
      call returns 0.0 and `enabled` is False), or the path of a local weights
      file of keras.applications.VGG16(include_top=False): Keras' official
      'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5' (legacy h5) or a
      Keras 3 '.weights.h5' file.
    input_mode: how [-1, 1] images are normalised before VGG. 'caffe' matches
      Keras' ImageNet weights; 'torch' matches weights converted from
      torchvision (the reference implementation).
  """

  def __init__(self, weights="imagenet", input_mode="caffe"):
    if input_mode not in ("caffe", "torch"):
      raise ValueError(f"input_mode={input_mode!r}: use 'caffe' or 'torch'")
    self.input_mode = input_mode
    self.weights = weights
    self.enabled = not (weights is None or str(weights).lower() == "none")
    self.features_model = None
    if not self.enabled:
      logging.info("Perceptual loss: off (vgg weights 'none').")
      return
    vgg = _load_vgg16(weights)
    self.features_model = keras.Model(
        vgg.input, vgg.get_layer(FEATURE_LAYER).output, name="vgg16_relu3_3")
    # Frozen: optimisers must never see these variables.
    vgg.trainable = False
    self.features_model.trainable = False

  def preprocess(self, images):
    """[B, H, W, 3] RGB in [-1, 1] -> VGG16 input for `input_mode`."""
    images = tf.convert_to_tensor(images, tf.float32)
    if self.input_mode == "torch":
      # docs/method.md §6 / the reference: torchvision's VGG expects RGB in [0, 1]
      # normalised by the ImageNet mean and std.
      return (images / 2 + 0.5 - _TORCH_MEAN) / _TORCH_STD
    # Keras' ImageNet VGG16 weights were converted from the original Caffe
    # model, trained on BGR 0..255 images minus the mean pixel; feeding them
    # torch-normalised input would give wrong features. This differs from
    # docs/method.md §6 only because the weights differ.
    bgr = (images[..., ::-1] + 1) * 127.5
    return bgr - _CAFFE_MEAN_BGR

  def features(self, images):
    """[B, H, W, 3] in [-1, 1] -> [B, H/4, W/4, 256] relu3_3 features."""
    return self.features_model(self.preprocess(images), training=False)

  def __call__(self, recon, target, mask=None, sigma=None):
    """The loss of R against I.

    `l = (f(R) - f(I))^2 / (2 sigma^2 + eps) + log(sigma + eps)` (only the
    squared difference without sigma), then `sum(l * m) / sum(m)` with the
    mask average-pooled to the feature size and broadcast over channels.

    Args:
      recon: [B, H, W, 3] reconstruction R in [-1, 1].
      target: [B, H, W, 3] input image I in [-1, 1].
      mask: [B, H, W] weights, or None (plain mean).
      sigma: [B, H/4, W/4, 1] positive confidence map, or None.
    Returns:
      Scalar float32 tensor (0.0 when disabled).
    """
    if not self.enabled:
      return tf.constant(0.0, tf.float32)
    batch = tf.shape(recon)[0]
    # One VGG pass over both images is faster than two.
    feats = self.features(tf.concat([recon, target], axis=0))
    return feature_loss(feats[:batch], feats[batch:], mask, sigma)


def feature_loss(f_recon, f_target, mask=None, sigma=None):
  """The perceptual loss given features already computed (docs/method.md §6).

  Args:
    f_recon, f_target: [B, h, w, C] features of R and I.
    mask: [B, H, W] image-size weights (average-pooled to h x w), or None.
    sigma: [B, h, w, 1] positive confidence, or None.
  Returns:
    Scalar.
  """
  loss = tf.square(f_recon - f_target)
  if sigma is not None:
    loss = loss / (2 * tf.square(sigma) + EPS) + tf.math.log(sigma + EPS)
  if mask is not None:
    mask = _pool_mask(tf.cast(mask, tf.float32), f_recon.shape)
  return _masked_mean(loss, mask)


def _pool_mask(mask, feature_shape):
  """Average-pools a [B, H, W] mask to the feature map's size (H/4 for relu3_3)."""
  factors = []
  for axis in (1, 2):
    size, fsize = mask.shape[axis], feature_shape[axis]
    # VGG's two 2x2 max-pools shrink by 4; fall back to that for dynamic shapes.
    factors.append(size // fsize if size and fsize else 4)
  pooled = tf.nn.avg_pool2d(mask[..., None], factors, factors, "VALID")
  return pooled[..., 0]
