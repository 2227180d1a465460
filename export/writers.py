"""Writers of the export formats: SavedModel (TF Serving), TFLite, ONNX.

Layout under an output directory OUT (model name M, version V):
  OUT/M/V/                 SavedModel, what TF Serving serves as is, with
                           tfsym3d_export.json
  OUT/tflite/M_<variant>.tflite for the variants float32, float16,
                           int8_dynamic, int8_full, with tfsym3d_export.json
  OUT/onnx/M.onnx          with tfsym3d_export.json

Signatures (the interface `tfsym3d.reconstruct` loads):
  SavedModel serving_default: `images` uint8 [N, H, W, 3], any H, W;
    serving_bytes: `image_bytes` string [N] of encoded JPEG / PNG; both return
    the full output set of `graph.full_outputs` (float32).
  TFLite serving_default: `images` uint8 [1, S, S, 3]; float32 outputs depth,
    albedo, light, view (every variant, int8_full included: its depth head
    runs in float32, the other outputs are dequantised inside).
  ONNX: input `images` uint8 [N, S, S, 3]; outputs depth, albedo, light, view.
"""

import dataclasses
import json
import os
import tempfile
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import

from tfsym3d import runs

from . import graph

METADATA = "tfsym3d_export.json"
TFLITE_VARIANTS = ("float32", "float16", "int8_dynamic", "int8_full")


def _version() -> str:
  import tfsym3d  # pylint: disable=g-import-not-at-top
  return getattr(tfsym3d, "__version__", "unknown")


def write_metadata(directory: str, model, fmt: str, checkpoint: Optional[str],
                   **extra) -> str:
  """Writes `directory/tfsym3d_export.json` (image size, config, format,
  source checkpoint, tfsym3d version, `extra`); returns its path."""
  meta = {"format": fmt, "image_size": model.config.image_size,
          "config": dataclasses.asdict(model.config),
          "source_checkpoint": checkpoint, "tfsym3d_version": _version()}
  meta.update(extra)
  path = os.path.join(directory, METADATA)
  with open(path, "w") as f:
    json.dump(meta, f, indent=2)
  return path


def read_metadata(path: str) -> Dict:
  """The tfsym3d_export.json of an exported artefact (a file or a directory)."""
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  meta_path = os.path.join(directory, METADATA)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{meta_path}: missing; {path} was not written by "
                            "tfsym3d's export (python -m export)")
  with open(meta_path) as f:
    return json.load(f)


# -- SavedModel ----------------------------------------------------------------


def save_signatures(model, path: str, endpoints: Dict[str, tuple]) -> None:
  """Saves a SavedModel at `path` whose signatures are `endpoints`
  (name -> (function, input TensorSpec)) over the model's weights.

  A plain tf.Module holding the weights: the underlying tf.Variables
  (`keras.Variable.value`) by their checkpoint keys. Tracking the Keras
  variable wrappers instead left READ_VARIABLE ops that TFLite's int8
  calibration cannot run, and keras.export.ExportArchive took 7x longer
  here for the same graph. No AutoGraph: the graph has no Python control
  flow on tensors.
  """
  module = tf.Module()
  module.weights = {key: v.value for key, v in runs.weight_dict(model).items()}
  signatures = {name: tf.function(fn, input_signature=[spec], autograph=False)
                .get_concrete_function() for name, (fn, spec) in endpoints.items()}
  tf.saved_model.save(module, path, signatures=signatures)


def savedmodel_endpoints(model) -> Dict[str, tuple]:
  """serving_default (uint8 images of any size) and serving_bytes (encoded
  images): name -> (function, input TensorSpec)."""
  size = model.config.image_size

  def serve_images(images):
    return graph.full_outputs(model, graph.preprocess(images, size))

  def serve_bytes(image_bytes):
    return graph.full_outputs(model, graph.decode_images(image_bytes, size))

  return {
      "serving_default": (serve_images, tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                      name="images")),
      "serving_bytes": (serve_bytes, tf.TensorSpec([None], tf.string,
                                                   name="image_bytes")),
  }


def write_savedmodel(model, out: str, model_name: str = "tfsym3d", version: int = 1,
                     checkpoint: Optional[str] = None) -> str:
  """Writes the SavedModel to out/model_name/version/; returns that path."""
  if int(version) < 1:
    raise ValueError(f"--version={version}: TF Serving versions are integers >= 1")
  path = os.path.join(out, model_name, str(int(version)))
  if os.path.exists(os.path.join(path, "saved_model.pb")):
    raise FileExistsError(f"{path} already holds a SavedModel; choose another "
                          "--version or --out")
  save_signatures(model, path, savedmodel_endpoints(model))
  write_metadata(path, model, "savedmodel", checkpoint, model_name=model_name,
                 version=int(version),
                 signatures={"serving_default": {"images": "uint8 [N, H, W, 3]"},
                             "serving_bytes": {"image_bytes": "string [N]"}},
                 outputs=list(graph.output_names(model)))
  return path


# -- TFLite --------------------------------------------------------------------


def _lean_endpoint(model, batch: Optional[int]):
  size = model.config.image_size

  def serve(images):
    return graph.lean_outputs(model, graph.preprocess(images, size))

  return serve, tf.TensorSpec([batch, size, size, 3], tf.uint8, name="images")


def synthetic_images(num: int, image_size: int, seed: int = 0) -> np.ndarray:
  """uint8 [num, S, S, 3] smooth random images (a representative dataset and
  parity inputs without any data on disk)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (num, 5, 5, 3)).astype(np.float32)
  smooth = tf.image.resize(coarse, [image_size, image_size], method="bicubic").numpy()
  noise = rng.normal(0, 8, smooth.shape)
  return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def folder_images(directory: str, image_size: int, num: int) -> np.ndarray:
  """Up to `num` images of a folder (searched recursively), uint8 [n, S, S, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  names = sorted(
      os.path.join(root, name) for root, _, files in os.walk(directory)
      for name in files if name.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")))
  if not names:
    raise FileNotFoundError(f"--representative_dir={directory}: no .jpg/.jpeg/.png/"
                            ".bmp images in it")
  images = []
  for name in names[:num]:
    with Image.open(name) as im:
      x = np.asarray(im.convert("RGB"), np.float32)
    x = tf.image.resize(x, [image_size, image_size], method="bilinear", antialias=True)
    images.append(np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8))
  return np.stack(images)


def tflite_models(model, variants: Iterable[str] = TFLITE_VARIANTS,
                  representative: Optional[np.ndarray] = None,
                  log: Callable[[str], None] = lambda _: None) -> Dict[str, bytes]:
  """TFLite flatbuffers of the lean graph (batch 1), variant -> bytes.

  float32; float16 (weights stored in float16, computed in float32);
  int8_dynamic (int8 weights, activations quantised on the fly); int8_full
  (int8 weights and activations calibrated on `representative`, uint8
  [n, S, S, 3]; every network op int8, the depth head after netD float32
  (see graph.FLOAT_HEAD_SCOPE), uint8 input, float32 outputs).
  """
  variants = list(variants)
  for variant in variants:
    if variant not in TFLITE_VARIANTS:
      raise ValueError(f"TFLite variant {variant!r}: use one of {TFLITE_VARIANTS}")
  if "int8_full" in variants and (representative is None or len(representative) == 0):
    raise ValueError("int8_full needs representative images (synthetic or "
                     "--representative_dir)")
  models = {}
  with tempfile.TemporaryDirectory(prefix="tfsym3d_tflite_") as tmp:
    save_signatures(model, tmp, {"serving_default": _lean_endpoint(model, 1)})
    for variant in variants:
      log(f"converting TFLite {variant}")
      converter = tf.lite.TFLiteConverter.from_saved_model(
          tmp, signature_keys=["serving_default"])
      if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
      if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
      if variant == "int8_full":
        models[variant] = _full_int8(converter, tmp, representative)
        continue
      models[variant] = converter.convert()
  return models


def _float_head_nodes(saved_model_dir: str) -> List[str]:
  """Names of the TFLite tensors that full int8 leaves in float32: the depth
  computation after netD (graph.FLOAT_HEAD_SCOPE) and the depth output."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  flatbuffer = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=["serving_default"]).convert()
  interpreter = Interpreter(model_content=flatbuffer)
  names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
  depth = interpreter.get_signature_runner("serving_default").get_output_details()["depth"]
  prefix = graph.FLOAT_HEAD_SCOPE + "/"
  nodes = [n for n in names.values() if n.startswith(prefix) and "netD" not in n]
  if not nodes:
    raise RuntimeError(f"full int8: no tensor under {prefix!r} in the TFLite graph; "
                       "the depth head would be quantised")
  return nodes + [names[depth["index"]]]


def _full_int8(converter, saved_model_dir: str, representative: np.ndarray) -> bytes:
  """Full-integer conversion (int8 weights and activations calibrated on
  `representative`) except the float depth head (graph.FLOAT_HEAD_SCOPE),
  through TFLite's selective quantisation (QuantizationDebugger with
  denylisted nodes). The uint8 input stays uint8; outputs are float32."""
  def dataset():
    for image in representative:
      yield [image[None]]

  converter.representative_dataset = dataset
  options = tf.lite.experimental.QuantizationDebugOptions(
      denylisted_nodes=_float_head_nodes(saved_model_dir))
  debugger = tf.lite.experimental.QuantizationDebugger(
      converter=converter, debug_dataset=dataset, debug_options=options)
  return debugger.get_nondebug_quantized_model()


def write_tflite(model, out: str, model_name: str = "tfsym3d",
                 variants: Iterable[str] = TFLITE_VARIANTS,
                 representative: Optional[np.ndarray] = None,
                 representative_source: str = "synthetic",
                 checkpoint: Optional[str] = None,
                 log: Callable[[str], None] = lambda _: None) -> Dict[str, str]:
  """Writes out/tflite/<model_name>_<variant>.tflite; returns variant -> path."""
  directory = os.path.join(out, "tflite")
  os.makedirs(directory, exist_ok=True)
  files = {}
  for variant, flatbuffer in tflite_models(model, variants, representative, log).items():
    path = os.path.join(directory, f"{model_name}_{variant}.tflite")
    with open(path, "wb") as f:
      f.write(flatbuffer)
    files[variant] = path
  write_metadata(directory, model, "tflite", checkpoint, model_name=model_name,
                 files={v: os.path.basename(p) for v, p in files.items()},
                 signature={"serving_default": {"images": "uint8 [1, S, S, 3]"}},
                 outputs=list(graph.LEAN_OUTPUTS),
                 representative_dataset=representative_source
                 if "int8_full" in files else None)
  return files


# -- ONNX ----------------------------------------------------------------------


def write_onnx(model, out: str, model_name: str = "tfsym3d", opset: int = 17,
               checkpoint: Optional[str] = None) -> str:
  """Writes out/onnx/<model_name>.onnx (tf2onnx) of the lean graph with a
  dynamic batch; outputs renamed to depth, albedo, light, view."""
  import onnx  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top
  directory = os.path.join(out, "onnx")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{model_name}.onnx")
  fn, spec = _lean_endpoint(model, None)
  concrete = tf.function(fn, input_signature=[spec], autograph=False).get_concrete_function()
  # Freeze first: tf2onnx's from_function turns captured constant tensors
  # (e.g. the depth border mask) into extra graph inputs; frozen, every
  # capture is a constant and `images` the only input.
  frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
  inputs = [t.name for t in frozen.inputs]
  if len(inputs) != 1:
    raise RuntimeError(f"ONNX export: the frozen graph has inputs {inputs}, "
                       "expected only images")
  proto, _ = tf2onnx.convert.from_graph_def(
      frozen.graph.as_graph_def(), input_names=inputs,
      output_names=[t.name for t in frozen.outputs], opset=opset)
  # The flat outputs follow the structure's flattening (sorted keys).
  keys = tf.nest.flatten({k: k for k in concrete.structured_outputs})
  if len(proto.graph.output) != len(keys):
    raise RuntimeError(f"ONNX export: {len(proto.graph.output)} outputs for {keys}")
  renames = dict(zip([o.name for o in proto.graph.output], keys))
  renames[proto.graph.input[0].name] = "images"
  for node in proto.graph.node:
    node.output[:] = [renames.get(name, name) for name in node.output]
    node.input[:] = [renames.get(name, name) for name in node.input]
  for output in proto.graph.output:
    output.name = renames[output.name]
  proto.graph.input[0].name = "images"
  onnx.checker.check_model(proto)
  onnx.save(proto, path)
  write_metadata(directory, model, "onnx", checkpoint, model_name=model_name,
                 files={"onnx": os.path.basename(path)}, opset=opset,
                 inputs={"images": "uint8 [N, S, S, 3]"},
                 outputs=list(graph.LEAN_OUTPUTS))
  return path
