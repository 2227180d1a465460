"""Predictors (checkpoint, SavedModel, TFLite) and `tfsym3d.reconstruct`.

The SavedModel and TFLite artefacts are written by the real exporter
(export.writers), so the predictors are tested against what users load.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfsym3d import geometry
from tfsym3d import model as model_lib
from tfsym3d import predictors
from tfsym3d import reconstruct
from tfsym3d import runs
from tfsym3d import visualize
from tfsym3d.config import ModelConfig
from tfsym3d.data.synthetic import SynFaces

from export import writers

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ModelConfig(image_size=32, nf=8, zdim=32, nf_encoder=8, nf_conf=8, zdim_conf=16,
                     vgg_weights="none", lam_perc=0.0)
XLA_CACHE = pathlib.Path(tempfile.gettempdir()) / "tfsym3d-tests-xla-cache"


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
  """One tiny random model as a checkpoint, a SavedModel and a TFLite file."""
  root = tmp_path_factory.mktemp("models")
  model = runs.build_model(CONFIG)
  runs.checkpoint_for(model).save(str(root / "run" / "ckpt" / "ckpt"))
  saved = writers.write_savedmodel(model, str(root / "export"), model_name="tiny")
  tflite = writers.write_tflite(model, str(root), model_name="tiny",
                                variants=["float32"])["float32"]
  return {"model": model, "checkpoint": str(root / "run"), "saved_model": saved,
          "saved_model_parent": str(root / "export" / "tiny"), "tflite": tflite,
          "root": root}


def _faces(n, size=CONFIG.image_size):
  return np.stack([SynFaces(size, seed=3).sample(i)["image"] for i in range(n)])


def test_three_forms_give_the_same_factors(artefacts):
  images = _faces(2)
  forms = {
      "checkpoint": predictors.load_predictor(artefacts["checkpoint"], CONFIG),
      # A model directory: its newest version is used.
      "saved_model": predictors.load_predictor(artefacts["saved_model_parent"]),
      "tflite": predictors.load_predictor(artefacts["tflite"]),
  }
  assert {k: p.kind for k, p in forms.items()} == {k: k for k in forms}
  assert forms["saved_model"].source == artefacts["saved_model"]
  for predictor in forms.values():
    assert predictor.config == CONFIG
  results = {k: p(images) for k, p in forms.items()}
  x = images.astype(np.float32) / 255 * 2 - 1
  reference = artefacts["model"].depth(x).numpy()
  for kind, r in results.items():
    assert r.depth.shape == (2, 32, 32) and r.albedo.shape == (2, 32, 32, 3)
    assert r.light.shape == (2, 4) and r.view.shape == (2, 6)
    np.testing.assert_allclose(r.depth, reference, atol=2e-5, err_msg=kind)
    for field in ("albedo", "light", "view"):
      np.testing.assert_allclose(getattr(r, field), getattr(results["checkpoint"], field),
                                 atol=2e-5, err_msg=f"{kind} {field}")
  # Any input size: resized to S (inside the SavedModel, by us for the others).
  big = _faces(1, size=48)
  for predictor in forms.values():
    assert predictor(big).depth.shape == (1, 32, 32)


def test_pure_shading_is_the_models(artefacts):
  """What reconstruct computes from the four factors equals the model's
  own Decomposition (shared code, `model.shade` / `model.light_direction`)."""
  model = artefacts["model"]
  images = _faces(2)
  out = model(images.astype(np.float32) / 255 * 2 - 1)
  direction = model_lib.light_direction(out.light)
  np.testing.assert_allclose(direction, out.light_direction, atol=1e-7)
  normal, diffuse, shading, canon = model_lib.shade(
      out.canon_depth, out.canon_albedo, out.light, direction, model.renderer.camera)
  for mine, theirs in ((normal, out.canon_normal), (diffuse, out.canon_diffuse_shading),
                       (shading, out.canon_shading), (canon, out.canon_image)):
    np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_load_predictor_errors(artefacts, tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file"):
    predictors.load_predictor(str(tmp_path / "nothing"))
  lonely = tmp_path / "model.tflite"
  shutil.copy(artefacts["tflite"], lonely)
  with pytest.raises(FileNotFoundError, match="tfsym3d_export.json"):
    predictors.load_predictor(str(lonely))
  with pytest.raises(ValueError, match="flagfile"):
    predictors.load_predictor(artefacts["checkpoint"], CONFIG.replace(nf=16))


def test_light_directions():
  d = reconstruct.parse_light_directions(["-1:0", "0:0"])
  np.testing.assert_allclose(d, [[-2 ** -0.5, 0, 2 ** -0.5], [0, 0, 1]], atol=1e-6)
  with pytest.raises(ValueError, match="lx:ly"):
    reconstruct.parse_light_directions(["left"])


def test_relighting_sides():
  """What the default directions light, on a dome facing the camera."""
  size = 32
  v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  dome = 1.0 - 0.08 * np.exp(-((u - 15.5) ** 2 + (v - 15.5) ** 2) / 60.0)
  directions = reconstruct.parse_light_directions(["-1:0", "1:0", "0:-1", "0:1"])
  camera = geometry.Camera.from_fov(size, 10.0)
  k = len(directions)
  _, diffuse, _, _ = model_lib.shade(
      tf.constant(np.repeat(dome[None], k, 0), tf.float32), tf.zeros([k, size, size, 3]),
      tf.constant([[0.0, 1.0, 0, 0]] * k), tf.constant(directions), camera)
  d = diffuse.numpy()[..., 0]
  left, right = d[:, 8:24, 4:14].mean((1, 2)), d[:, 8:24, 18:28].mean((1, 2))
  top, bottom = d[:, 4:14, 8:24].mean((1, 2)), d[:, 18:28, 8:24].mean((1, 2))
  assert right[0] > left[0] + 0.1 and left[1] > right[1] + 0.1
  assert bottom[2] > top[2] + 0.1 and top[3] > bottom[3] + 0.1


def test_run_writes_everything_and_skips_bad_files(artefacts, tmp_path):
  inputs = tmp_path / "in"
  (inputs / "sub").mkdir(parents=True)
  faces = _faces(2, size=40)
  Image.fromarray(faces[0]).save(inputs / "a.png")
  # Not square: the centre square is used.
  wide = np.concatenate([faces[1][:, :8] * 0, faces[1], faces[1][:, :8] * 0], 1)
  Image.fromarray(wide).save(inputs / "sub" / "b.jpg", quality=95)
  (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
  (inputs / "notes.txt").write_text("not an image, not listed")
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(inputs / "tiny.png")
  predictor = predictors.load_predictor(artefacts["tflite"])
  out = tmp_path / "out"
  summary = reconstruct.run(predictor, [str(inputs), str(tmp_path / "missing.png")],
                            str(out), reconstruct.parse_light_directions(["-1:0", "1:0"]),
                            gif_frames=3, sheet_cell=64, progress=False)
  assert [name for name, _ in summary["written"]] == ["a", "b"]
  skipped = dict(summary["skipped"])
  assert set(skipped) == {str(tmp_path / "missing.png"), str(inputs / "broken.png"),
                          str(inputs / "tiny.png")}
  assert skipped[str(inputs / "broken.png")].startswith("unreadable")
  assert skipped[str(inputs / "tiny.png")].startswith("too small")

  size = CONFIG.image_size
  for name in ("a", "b"):
    d = out / name
    for stem in ("input", "depth", "albedo", "normal", "shading", "canonical_image",
                 "relit_0", "relit_1", "mesh_texture"):
      with Image.open(d / f"{stem}.png") as im:
        assert im.size == (size, size) and im.mode == "RGB", stem
    for gif in ("yaw_textured", "yaw_shape"):
      with Image.open(d / f"{gif}.gif") as im:
        assert im.size == (size, size) and im.n_frames == 3 + 1  # there and back
    # The 16-bit depth is the predictor's depth of the saved input, quantised.
    with Image.open(d / "input.png") as im:
      factors = predictor(np.asarray(im)[None])
    raw = visualize.load_png16(str(d / "depth16.png"))
    assert raw.dtype == np.uint16 and raw.shape == (size, size)
    step = (CONFIG.max_depth - CONFIG.min_depth) / 65535
    np.testing.assert_allclose(
        visualize.uint16_to_depth(raw, CONFIG.min_depth, CONFIG.max_depth),
        factors.depth[0], atol=step / 2 + 1e-6)
    assert raw.max() > raw.min()
    info = json.loads((d / "factors.json").read_text())
    np.testing.assert_allclose(info["light"]["ambient"], factors.light[0, 0], atol=1e-5)
    assert info["depth16"] == {"min_depth": 0.9, "max_depth": 1.1}
    assert (d / "mesh.mtl").read_text().endswith("map_Kd mesh_texture.png\n")
    trimesh = pytest.importorskip("trimesh")
    for mesh_file in ("mesh.glb", "mesh.obj"):
      loaded = trimesh.load(str(d / mesh_file), process=False, force="mesh")
      assert loaded.vertices.shape == (size * size, 3), mesh_file
      assert loaded.faces.shape == (2 * (size - 1) ** 2, 3), mesh_file
  with Image.open(out / "contact_sheet.png") as sheet:
    # 2 rows; input, depth, albedo, normal, shading and 2 relit columns.
    assert sheet.size == (7 * 66 + 2, 2 * 66 + 2)
  page = (out / "index.html").read_text()
  assert 'src="a/depth.png"' in page and 'href="b/mesh.glb"' in page


def test_cli_with_saved_model_and_faces(artefacts, tmp_path):
  pytest.importorskip("ai_edge_litert", reason="--crop_faces runs a TFLite detector")
  from tfsym3d import face_crop
  try:
    face_crop.find_model()
  except RuntimeError as error:
    pytest.skip(str(error))
  canvas = np.full((160, 200, 3), 90, np.uint8)
  canvas[20:148, 50:178] = SynFaces(128, seed=0).sample(0)["image"]
  inputs = tmp_path / "in"
  inputs.mkdir()
  Image.fromarray(canvas).save(inputs / "face.png")
  (inputs / "zero.png").write_bytes(b"")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO),
             TF_XLA_FLAGS=(os.environ.get("TF_XLA_FLAGS", "") +
                           f" --tf_xla_persistent_cache_directory={XLA_CACHE}").strip())
  result = subprocess.run(
      [sys.executable, "-m", "tfsym3d.reconstruct", f"--input={inputs}",
       f"--output={tmp_path / 'out'}", f"--model={artefacts['saved_model']}",
       "--crop_faces", "--gif_frames=3", "--json"],
      capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["model_kind"] == "saved_model"
  assert [w[0] for w in summary["written"]] == ["face"]
  assert [s[0] for s in summary["skipped"]] == [str(inputs / "zero.png")]
  assert summary["no_face"] == []
  assert (tmp_path / "out" / "face" / "mesh.glb").exists()
  # The crop is the face's square, not the whole canvas: the canvas' grey
  # border fills at most a thin margin of the model's input.
  with Image.open(tmp_path / "out" / "face" / "input.png") as im:
    seen = np.asarray(im).astype(int)
  assert np.mean(np.all(np.abs(seen - 90) <= 2, axis=-1)) < 0.3
