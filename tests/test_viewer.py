"""The viewer page (`tfsym3d.viewer`) in a real browser: headless Chromium.

The page is made from a known surface (a SynFaces canonical depth and
albedo) so the shading has relief to compare; its pictures are compared with
`model.shade` computed in Python for the same depth and light. Without
Chromium the browser tests skip, saying how to install it.
"""

import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfsym3d import geometry
from tfsym3d import model as model_lib
from tfsym3d import viewer
from tfsym3d.config import ModelConfig
from tfsym3d.data.synthetic import SynFaces

SIZE = 32
CONFIG = ModelConfig(image_size=SIZE)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed: on Debian/Ubuntu "
    "`apt-get install -y chromium` (CI installs it)")


def _surface():
  sample = SynFaces(SIZE, seed=3).sample(1)
  depth = sample["canon_depth"].astype(np.float32)
  albedo = (np.clip(sample["canon_albedo"] / 2 + 0.5, 0, 1) * 255 + 0.5).astype(np.uint8)
  return depth, albedo


def _camera():
  return geometry.Camera.from_fov(SIZE, CONFIG.fov)


def python_shape(depth, lx, ly, ambient, diffuse):
  """What the page's 'shape' mode draws at yaw 0: model.shade with a grey
  (zero, in [-1, 1]) albedo, as [S, S] values in [0, 1]."""
  light = tf.constant([[ambient, diffuse, lx, ly]], tf.float32)
  _, _, _, image = model_lib.shade(tf.constant(depth[None]), tf.zeros([1, SIZE, SIZE, 3]),
                                   light, model_lib.light_direction(light), _camera())
  return np.clip(image[0, ..., 0].numpy() / 2 + 0.5, 0, 1)


def screenshot(page, fragment, directory, name):
  """The surface canvas of `page#fragment` as uint8 [D, D, 3] (headless Chromium)."""
  scale = viewer.display_scale(SIZE)
  side = SIZE * scale
  out = os.path.join(directory, f"{name}.png")
  subprocess.run(
      [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
       "--disable-background-networking", "--disable-component-update", "--disable-sync",
       "--disable-quic", "--hide-scrollbars", f"--user-data-dir={directory}/profile",
       f"--window-size={side + 300},{side}", "--virtual-time-budget=3000",
       f"--screenshot={out}", f"file://{page}#{fragment}"],
      check=True, capture_output=True, timeout=90)
  return np.asarray(Image.open(out).convert("RGB"))[:side, :side]


def to_map(picture):
  """Canvas picture -> [S, S] grey values in [0, 1]: the mean of each map
  pixel's block of canvas pixels."""
  scale = picture.shape[0] // SIZE
  grey = picture[..., 0].astype(np.float64) / 255
  return grey.reshape(SIZE, scale, SIZE, scale).mean(axis=(1, 3))


def test_page_is_self_contained_and_small(tmp_path):
  depth, albedo = _surface()
  text = viewer.page_html(depth, albedo, [0.5, 0.5, 0.1, -0.2], _camera(), title="a</script>b")
  assert "http://" not in text and "https://" not in text  # no network
  assert "<script src" not in text and "<link" not in text  # nothing beside it
  assert "a</script>b" not in text
  assert len(text.encode()) < 40_000
  data = viewer.page_data(depth, albedo, [0.5, 0.5, 0.1, -0.2], _camera())
  assert data["size"] == SIZE and data["light"]["ly"] == pytest.approx(-0.2)
  with pytest.raises(ValueError, match="albedo"):
    viewer.page_html(depth, albedo[:-1], [0.5, 0.5, 0, 0], _camera())


@needs_chromium
def test_page_shading_matches_model_shade_and_turns(tmp_path):
  depth, albedo = _surface()
  ambient, diffuse = 0.3, 0.7
  page = viewer.write_page(str(tmp_path / "viewer.html"), depth, albedo,
                           [ambient, diffuse, 0.0, 0.0], _camera(),
                           CONFIG.rot_center_depth, title="synthetic face")
  lights = [(-0.8, 0.1), (0.6, -0.5)]
  shots = [screenshot(page, f"light={lx},{ly}&yaw=0&mode=shape", str(tmp_path), f"light{i}")
           for i, (lx, ly) in enumerate(lights)]
  turned = screenshot(page, f"light={lights[0][0]},{lights[0][1]}&yaw=35&mode=shape",
                      str(tmp_path), "turned")
  # Pixels of the surface away from its border (whose normals are the
  # model's (0, 0, 1) and whose canvas blocks are half background).
  interior = (slice(2, SIZE - 2), slice(2, SIZE - 2))
  expected = [python_shape(depth, lx, ly, ambient, diffuse)[interior] for lx, ly in lights]
  drawn = [to_map(s)[interior] for s in shots]
  for got, want in zip(drawn, expected):
    assert want.std() > 0.03  # the surface has relief: the test has signal
    assert np.abs(got - want).mean() < 0.02
    assert np.percentile(np.abs(got - want), 95) < 0.06
  change, want_change = drawn[1] - drawn[0], expected[1] - expected[0]
  assert np.abs(want_change).mean() > 0.05
  assert np.corrcoef(change.ravel(), want_change.ravel())[0, 1] > 0.95
  # The background is not the surface; turning the surface changes the view.
  assert (shots[0][:, :, 0] == 32).mean() < 0.2
  assert np.abs(turned.astype(float) - shots[0].astype(float)).mean() > 5
