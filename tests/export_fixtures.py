"""Tiny SavedModel and TFLite artefacts that follow the exporter's contract.

Used by the reconstruction tests until tfsym3d's exporter lands; the contract
(what `tfsym3d.predictors` reads):
- SavedModel `<out>/<name>/<version>/`, signature `serving_default`: input
  `images` uint8 [N, H, W, 3] (resized inside), float32 outputs `depth`
  [N, S, S], `albedo` [N, S, S, 3] in [0, 1], `normal`, `shading`,
  `canonical_image` in [0, 1], `light` [N, 4], `view` [N, 6];
- TFLite, signature `serving_default`: input `images` uint8 [1, S, S, 3],
  outputs `depth`, `albedo` in [0, 1], `light`, `view`;
- `tfsym3d_export.json` next to each with `image_size` and `config`.
"""

import dataclasses
import json
import os

import tensorflow as tf

from tfsym3d import model as model_lib


def _factors(model, images_uint8, resize=True):
  size = model.config.image_size
  x = tf.cast(images_uint8, tf.float32)
  if resize:  # (TFLite has no antialiased resize; its input is S x S already)
    x = tf.image.resize(x, [size, size], method="bilinear", antialias=True)
  x = x / 255.0 * 2 - 1
  depth = model.depth(x)
  albedo = model.net_albedo(x)
  light, direction = model.light(x)
  view = model.view(x)
  return depth, albedo, light, direction, view


class _Serving(tf.Module):

  def __init__(self, model):
    super().__init__()
    # Keras 3 variables are not found through the model by tf.saved_model
    # (and tracking the Keras model would add its own signature): list the
    # variables so the graph's captures are tracked.
    self.weights = [v.value for v in model.weights]


def _write_info(directory, config):
  with open(os.path.join(directory, "tfsym3d_export.json"), "w") as f:
    json.dump({"image_size": config.image_size, "config": dataclasses.asdict(config)}, f)


def make_saved_model(model, out_dir, name="tiny", version=1):
  """Writes `<out_dir>/<name>/<version>/` for `model`; returns that path."""
  module = _Serving(model)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                              name="images")])
  def serve(images):
    depth, albedo, light, direction, view = _factors(model, images)
    normal, _, shading, canon = model_lib.shade(depth, albedo, light, direction,
                                                model.renderer.camera)
    return {"depth": depth, "albedo": albedo / 2 + 0.5, "normal": normal,
            "shading": shading, "canonical_image": canon / 2 + 0.5, "light": light,
            "view": view}

  module.serve = serve
  path = os.path.join(out_dir, name, str(version))
  tf.saved_model.save(module, path, signatures={"serving_default": serve})
  _write_info(path, model.config)
  return path


def make_tflite(model, out_dir, name="tiny.tflite"):
  """Writes a TFLite file for `model` into `out_dir`; returns its path."""
  size = model.config.image_size
  module = _Serving(model)

  @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8,
                                              name="images")])
  def serve(images):
    depth, albedo, light, _, view = _factors(model, images, resize=False)
    return {"depth": depth, "albedo": albedo / 2 + 0.5, "light": light, "view": view}

  module.serve = serve
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [serve.get_concrete_function()], module)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, name)
  with open(path, "wb") as f:
    f.write(converter.convert())
  _write_info(out_dir, model.config)
  return path
