"""The inference graphs that every export format serialises.

Only what inference needs runs here: the canonical factors from
`Unsup3D.factors` (the confidence maps only for the full set) and the
canonical shading of docs/method.md §4 through `Unsup3D.shade`. No reprojection, no
rasterisation, no flipped half: those exist for the training losses.

Two output sets:
  full (SavedModel): depth [N, S, S], albedo [N, S, S, 3] in [0, 1],
    normal [N, S, S, 3], shading [N, S, S, 1] (diffuse shading max(0, <n, l>)),
    canonical_image [N, S, S, 3] in [0, 1] (clipped: ambient + diffuse light
    may exceed 1), light [N, 4], view [N, 6], and with a confidence network
    conf_sigma_l1 [N, S, S, 2] and conf_sigma_percl [N, S/4, S/4, 2].
  lean (TFLite, ONNX): depth, albedo, light, view.
"""

from typing import Dict

import tensorflow as tf

LEAN_OUTPUTS = ("depth", "albedo", "light", "view")
FULL_OUTPUTS = ("depth", "albedo", "normal", "shading", "canonical_image", "light",
                "view")
CONF_OUTPUTS = ("conf_sigma_l1", "conf_sigma_percl")
# Name scope of the depth computation in the lean graph: full-int8 TFLite
# keeps its ops after netD (mean subtraction, tanh, rescaling to
# [min_depth, max_depth], border) in float32. An int8 tensor's range must
# contain 0, so int8 depth near 1.0 has steps of ~1.1 / 255 = 0.0043 in model
# units, on its own about twice the parity budget (1% of the 0.2 range).
FLOAT_HEAD_SCOPE = "float_head"


def output_names(model, lean: bool = False):
  """The output names of a model's full (or lean) inference set, in order."""
  if lean:
    return LEAN_OUTPUTS
  return FULL_OUTPUTS + (CONF_OUTPUTS if model.has_confidence else ())


def preprocess(images: tf.Tensor, image_size: int) -> tf.Tensor:
  """uint8 images [N, H, W, 3] -> float32 [N, S, S, 3] in [-1, 1] (docs/method.md §1).

  Resizes only when the static size differs from S (TFLite's fixed S x S
  input skips the op). Bilinear with antialiasing when shrinking, as the
  training data pipeline resizes (tfsym3d.data.folders._resize).
  """
  x = tf.cast(images, tf.float32)
  if x.shape[1] != image_size or x.shape[2] != image_size:
    x = tf.image.resize(x, [image_size, image_size], method="bilinear", antialias=True)
  return x * (2.0 / 255.0) - 1.0


def decode_images(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """Encoded JPEG / PNG strings [N] -> float32 [N, S, S, 3] in [-1, 1].

  Each image is decoded (3 channels; PNG with alpha or grey is converted) and
  resized on its own, so the images of a batch may have different sizes.
  """
  def one(contents):
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    return preprocess(image[None], image_size)[0]

  return tf.map_fn(one, image_bytes,
                   fn_output_signature=tf.TensorSpec([image_size, image_size, 3],
                                                     tf.float32))


def lean_outputs(model, x: tf.Tensor) -> Dict[str, tf.Tensor]:
  """depth, albedo in [0, 1], light, view of images x [N, S, S, 3] in [-1, 1]."""
  factors = model.factors(x, confidence=False, depth_scope=FLOAT_HEAD_SCOPE)
  return {"depth": factors.depth, "albedo": factors.albedo / 2 + 0.5,
          "light": factors.light, "view": factors.view}


def full_outputs(model, x: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Every output of the full set (module docstring) for x in [-1, 1]."""
  factors = model.factors(x)
  normal, diffuse_shading, _, canonical = model.shade(
      factors.depth, factors.albedo, factors.light, factors.light_direction)
  out = {"depth": factors.depth, "albedo": factors.albedo / 2 + 0.5, "normal": normal,
         "shading": diffuse_shading,
         "canonical_image": tf.clip_by_value(canonical / 2 + 0.5, 0.0, 1.0),
         "light": factors.light, "view": factors.view}
  if factors.confidence is not None:
    out["conf_sigma_l1"], out["conf_sigma_percl"] = factors.confidence
  return out


def reference_outputs(model, x: tf.Tensor, lean: bool = False) -> Dict[str, tf.Tensor]:
  """The same outputs taken from the Keras model's own forward pass
  (`Unsup3D.call`, the Decomposition), for parity checks of the exports."""
  out = model(x, training=False)
  ref = {"depth": out.canon_depth, "albedo": out.canon_albedo / 2 + 0.5,
         "normal": out.canon_normal, "shading": out.canon_diffuse_shading,
         "canonical_image": tf.clip_by_value(out.canon_image / 2 + 0.5, 0.0, 1.0),
         "light": out.light, "view": out.view,
         "conf_sigma_l1": out.conf_sigma_l1, "conf_sigma_percl": out.conf_sigma_percl}
  return {k: ref[k] for k in output_names(model, lean)}
