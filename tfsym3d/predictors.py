"""One interface over the three forms a trained model comes in.

`load_predictor(path)` recognises
- a TFLite file (`*.tflite`), run with ai_edge_litert's interpreter;
- a SavedModel directory (holding `saved_model.pb`, or a model directory
  whose numbered version sub-directories hold one: the newest is used);
- otherwise a tfsym3d checkpoint (run directory, ckpt/ directory or
  checkpoint prefix), restored as `tfsym3d.evaluate` does (`tfsym3d.runs`).

Each predictor maps uint8 images [N, H, W, 3] to the four factors as NumPy
(a `Factors`); everything else (normals, shading, relighting, meshes) is
computed from those by the caller, so all three forms give the same pictures.
Exported artefacts carry a `tfsym3d_export.json` (`image_size`, `config`)
next to them; a checkpoint's ModelConfig comes from the caller (the flags).
"""

import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from tfsym3d import runs
from tfsym3d.config import ModelConfig

EXPORT_INFO = "tfsym3d_export.json"


@dataclasses.dataclass
class Factors:
  """The model's four factors for N images of size S, as NumPy float32.

  depth: [N, S, S] canonical depth; albedo: [N, S, S, 3] in [-1, 1] (the
  model's convention); light: [N, 4] (ambient, diffuse, lx, ly); view:
  [N, 6] (rx, ry, rz radians; tx, ty, tz).
  """
  depth: np.ndarray
  albedo: np.ndarray
  light: np.ndarray
  view: np.ndarray


def resize_images(images, size: int) -> np.ndarray:
  """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3] (bilinear, antialiased as
  the training data pipeline resizes; unchanged when already that size)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
  if images.shape[1:3] == (size, size):
    return images.astype(np.uint8)
  x = tf.image.resize(tf.cast(images, tf.float32), [size, size], method="bilinear",
                      antialias=True)
  return np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8)


def _read_export_info(directory: str) -> ModelConfig:
  path = os.path.join(directory, EXPORT_INFO)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: an exported model needs it "
                            "(image_size and config); re-export the model with tfsym3d")
  with open(path) as f:
    info = json.load(f)
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  config = ModelConfig(**{k: v for k, v in info.get("config", {}).items() if k in known})
  if "image_size" in info and int(info["image_size"]) != config.image_size:
    raise ValueError(f"{path}: image_size {info['image_size']} differs from its "
                     f"config's {config.image_size}")
  return config


class CheckpointPredictor:
  """A tfsym3d checkpoint restored into an Unsup3D built from `config`."""

  kind = "checkpoint"

  def __init__(self, path: str, config: ModelConfig):
    self.config = config
    # Inference needs no VGG16 (the perceptual loss): never load or download it.
    self.model = runs.build_model(config.replace(vgg_weights="none", lam_perc=0.0))
    try:
      self.source = runs.restore_weights(self.model, path)
    except (AssertionError, ValueError) as error:
      # Shapes or names that do not match: most often the model flags differ.
      raise ValueError(f"{path}: the checkpoint does not fit a model with "
                       f"image_size={config.image_size}, nf={config.nf}, ...; pass "
                       "the run's flags, e.g. --flagfile=RUN_DIR/flags.txt "
                       f"({error})") from None
    model = self.model

    @tf.function
    def factors(images):
      x = tf.cast(images, tf.float32) / 255.0 * 2 - 1
      factors = model.factors(x, confidence=False)
      return factors.depth, factors.albedo, factors.light, factors.view

    self._factors = factors

  def __call__(self, images) -> Factors:
    images = resize_images(images, self.config.image_size)
    depth, albedo, light, view = self._factors(tf.constant(images))
    return Factors(depth.numpy(), albedo.numpy(), light.numpy(), view.numpy())


class SavedModelPredictor:
  """A SavedModel with the tfsym3d `serving_default` signature."""

  kind = "saved_model"

  def __init__(self, directory: str):
    self.source = directory
    self.config = _read_export_info(directory)
    loaded = tf.saved_model.load(directory)
    if "serving_default" not in loaded.signatures:
      raise ValueError(f"{directory}: no 'serving_default' signature (has "
                       f"{list(loaded.signatures)}); re-export the model with tfsym3d")
    self._loaded = loaded  # keeps the variables alive
    self._serve = loaded.signatures["serving_default"]
    missing = {"depth", "albedo", "light", "view"} - set(self._serve.structured_outputs)
    if missing:
      raise ValueError(f"{directory}: 'serving_default' lacks outputs {sorted(missing)}")

  def __call__(self, images) -> Factors:
    images = np.asarray(images, np.uint8)
    out = self._serve(images=tf.constant(images))
    return Factors(out["depth"].numpy(), out["albedo"].numpy() * 2 - 1,
                   out["light"].numpy(), out["view"].numpy())


class TFLitePredictor:
  """A TFLite file with the tfsym3d `serving_default` signature ([1, S, S, 3])."""

  kind = "tflite"

  def __init__(self, path: str):
    try:
      from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    except ImportError as error:
      raise ImportError("running a .tflite model needs ai-edge-litert: "
                        "pip install 'ai-edge-litert>=2.0,<3'") from error
    self.source = path
    self.config = _read_export_info(os.path.dirname(os.path.abspath(path)))
    interpreter = Interpreter(model_path=path)
    signatures = interpreter.get_signature_list()
    if "serving_default" not in signatures:
      raise ValueError(f"{path}: no 'serving_default' signature (has "
                       f"{list(signatures)}); re-export the model with tfsym3d")
    self._runner = interpreter.get_signature_runner("serving_default")
    self._interpreter = interpreter

  def __call__(self, images) -> Factors:
    images = resize_images(images, self.config.image_size)
    outs = [self._runner(images=images[i:i + 1]) for i in range(images.shape[0])]
    stack = lambda key: np.concatenate([o[key] for o in outs]).astype(np.float32)
    return Factors(stack("depth"), stack("albedo") * 2 - 1, stack("light"), stack("view"))


def _saved_model_dir(path: str) -> Optional[str]:
  """path itself, or its newest numbered version sub-directory, if it holds a
  saved_model.pb; None otherwise."""
  if os.path.exists(os.path.join(path, "saved_model.pb")):
    return path
  versions = [d for d in os.listdir(path) if d.isdigit()
              and os.path.exists(os.path.join(path, d, "saved_model.pb"))]
  if versions:
    return os.path.join(path, max(versions, key=int))
  return None


def load_predictor(path: str, config: Optional[ModelConfig] = None):
  """The predictor for a .tflite file, a SavedModel or a checkpoint.

  Args:
    path: see the module docstring.
    config: the ModelConfig of a checkpoint (exports carry their own).
  Returns:
    An object with `kind`, `config`, `source` and `__call__(uint8 images
    [N, H, W, 3]) -> Factors`.
  """
  if not path or not os.path.exists(path) and not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"--model {path!r}: no such file, directory or "
                            "checkpoint prefix")
  if path.endswith(".tflite"):
    return TFLitePredictor(path)
  if os.path.isdir(path):
    saved = _saved_model_dir(path)
    if saved:
      return SavedModelPredictor(saved)
  return CheckpointPredictor(path, config or ModelConfig())
