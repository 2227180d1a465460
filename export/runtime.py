"""Running exported models: one small runner per format, same call.

`runner(images)` takes uint8 images [N, H, W, 3] (numpy) and returns a dict
of float32 numpy outputs by name. Input checks happen here, before the
runtime sees the array, so a wrong dtype or rank gets an error that says
what was expected (the runtimes' own messages name internal tensors).
"""

import os
from typing import Dict, Optional

import numpy as np

from . import writers


def check_images(images, fixed_size: Optional[int] = None, batch: Optional[int] = None,
                 where: str = "images") -> np.ndarray:
  """Validates uint8 images [N, H, W, 3]; returns them as a numpy array.

  Raises ValueError naming the problem (dtype, rank, channels, size).
  """
  array = np.asarray(images)
  if array.dtype != np.uint8:
    raise ValueError(f"{where}: dtype {array.dtype}, expected uint8 RGB values "
                     "0..255 (convert with np.clip(x, 0, 255).astype(np.uint8))")
  if array.ndim != 4 or array.shape[-1] != 3:
    raise ValueError(f"{where}: shape {array.shape}, expected [N, H, W, 3] (a batch "
                     "of RGB images; add a batch axis with x[None])")
  if fixed_size is not None and array.shape[1:3] != (fixed_size, fixed_size):
    raise ValueError(f"{where}: images of {array.shape[1]}x{array.shape[2]}, this "
                     f"model takes {fixed_size}x{fixed_size} (resize first)")
  if batch is not None and array.shape[0] != batch:
    raise ValueError(f"{where}: batch of {array.shape[0]}, this model takes {batch} "
                     "image(s) per call")
  return array


class SavedModelRunner:
  """The SavedModel's serving_default (any image size, resized inside)."""

  def __init__(self, path: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.meta = writers.read_metadata(path)
    self.image_size = self.meta["image_size"]
    self._loaded = tf.saved_model.load(path)
    self._default = self._loaded.signatures["serving_default"]
    self._bytes = self._loaded.signatures["serving_bytes"]

  def __call__(self, images) -> Dict[str, np.ndarray]:
    images = check_images(images)
    return {k: v.numpy() for k, v in self._default(images=images).items()}

  def from_bytes(self, encoded) -> Dict[str, np.ndarray]:
    """Encoded JPEG / PNG images (a list of bytes)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return {k: v.numpy() for k, v in
            self._bytes(image_bytes=tf.constant(list(encoded), tf.string)).items()}


class TFLiteRunner:
  """A .tflite file's serving_default with ai-edge-litert (XNNPACK), batch 1;
  a batch of N images runs as N calls."""

  def __init__(self, path: str, num_threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no such TFLite file")
    self.meta = writers.read_metadata(path)
    self.image_size = self.meta["image_size"]
    self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
    self._runner = self._interpreter.get_signature_runner("serving_default")

  def __call__(self, images) -> Dict[str, np.ndarray]:
    images = check_images(images, self.image_size)
    outs = [self._runner(images=image[None]) for image in images]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


class OnnxRunner:
  """An .onnx file with onnxruntime's CPU provider."""

  def __init__(self, path: str, num_threads: int = 1):
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no such ONNX file")
    self.meta = writers.read_metadata(path)
    self.image_size = self.meta["image_size"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    self._names = [o.name for o in self._session.get_outputs()]

  def __call__(self, images) -> Dict[str, np.ndarray]:
    images = check_images(images, self.image_size)
    return dict(zip(self._names, self._session.run(None, {"images": images})))
