"""The demo server (`tfsym3d.demo`) through real HTTP requests on loopback,
with a tiny random model; and reconstruct's viewer page and its link."""

import concurrent.futures
import io
import os
import re
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tfsym3d import demo
from tfsym3d import predictors
from tfsym3d import reconstruct
from tfsym3d import runs
from tfsym3d.config import ModelConfig
from tfsym3d.data.synthetic import SynFaces

CONFIG = ModelConfig(image_size=32, nf=8, zdim=32, nf_encoder=8, nf_conf=8, zdim_conf=16,
                     vgg_weights="none", lam_perc=0.0)
LIMITS = demo.DemoConfig(max_upload_bytes=200_000, max_pixels=1_000_000, max_requests=2,
                         keep_results=3)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
  root = tmp_path_factory.mktemp("model")
  runs.checkpoint_for(runs.build_model(CONFIG)).save(str(root / "run" / "ckpt" / "ckpt"))
  return predictors.load_predictor(str(root / "run"), CONFIG)


@pytest.fixture(scope="module")
def server(predictor):
  srv = demo.serve(predictor, reconstruct.parse_light_directions(["-1:0", "1:0"]), LIMITS)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield srv
  srv.shutdown()
  srv.server_close()
  thread.join(10)


def _url(server, path="/"):
  return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _encoded(fmt="JPEG", size=48):
  face = SynFaces(size, seed=1).sample(0)["image"]
  buffer = io.BytesIO()
  Image.fromarray(face).save(buffer, fmt)
  return buffer.getvalue()


def _form(data, filename="face.jpg", crop=False):
  boundary = "tfsym3dTestBoundary7"
  parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; '
           f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
           + data + b"\r\n"]
  if crop:
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="crop_faces"\r\n'
                 f'\r\n1\r\n'.encode())
  body = b"".join(parts) + f"--{boundary}--\r\n".encode()
  return body, f"multipart/form-data; boundary={boundary}"


def post(server, data, **kwargs):
  """(status, final URL, body) of uploading `data` (redirects followed)."""
  body, kind = _form(data, **kwargs)
  request = urllib.request.Request(_url(server, "/reconstruct"), body,
                                   {"Content-Type": kind}, method="POST")
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      return response.status, response.url, response.read().decode()
  except urllib.error.HTTPError as error:
    return error.code, None, error.read().decode()


def get(server, path):
  with urllib.request.urlopen(_url(server, path), timeout=30) as response:
    return response.status, response.headers, response.read()


def test_form_page(server):
  status, _, page = get(server, "/")
  assert status == 200 and b'type="file"' in page and b"crop_faces" in page


def test_good_upload_gives_the_viewer_and_downloads(server):
  status, url, page = post(server, _encoded("JPEG"))
  assert status == 200, page
  result = re.search(r"/r/([0-9a-f]{32})/$", url).group(1)
  assert "viewer.html" in page
  for name in ("depth16.png", "depth.png", "mesh.glb", "mesh.obj", "relit_0.png",
               "relit_1.png"):
    assert f'href="{name}"' in page
    code, _, data = get(server, f"/r/{result}/{name}")
    assert code == 200 and len(data) > 100
  code, headers, viewer_page = get(server, f"/r/{result}/viewer.html")
  assert headers["Content-Type"].startswith("text/html") and b"tfsym3d-data" in viewer_page
  with Image.open(io.BytesIO(get(server, f"/r/{result}/depth16.png")[2])) as im:
    assert im.size == (CONFIG.image_size, CONFIG.image_size)
  # Everything stays inside the server's own temporary directory.
  assert result in os.listdir(server.workdir)
  assert not [n for n in os.listdir(os.path.join(server.workdir, result))
              if n.startswith("upload")]


@pytest.mark.parametrize("case,status,message", [
    ("oversized", 413, "more than the limit"),
    ("not_an_image", 415, "not an image"),
    ("truncated_jpeg", 422, "cannot be used"),
    ("one_pixel", 422, "too small"),
    ("too_many_pixels", 413, "pixels, more than the limit"),
    ("gif", 415, "GIF images are not accepted"),
])
def test_bad_uploads_get_one_clear_error(server, case, status, message):
  jpeg = _encoded("JPEG")
  data = {
      "oversized": np.random.default_rng(0).bytes(LIMITS.max_upload_bytes + 1000),
      "not_an_image": b"%PDF-1.4 this is a document, not a photo\n" * 20,
      # Cut inside the scan data: the header reads, decoding fails.
      "truncated_jpeg": _encoded("JPEG", 128)[:-1500],
      "one_pixel": _png(np.zeros((1, 1, 3), np.uint8)),
      "too_many_pixels": _png(np.zeros((1100, 1000, 3), np.uint8)),
      "gif": _gif(),
  }[case]
  code, _, page = post(server, data)
  assert code == status, page
  assert message in page and page.count("<h1>") == 1
  assert get(server, "/")[0] == 200  # still up


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, "PNG", optimize=True)
  return buffer.getvalue()


def _gif():
  buffer = io.BytesIO()
  Image.fromarray(SynFaces(48, seed=1).sample(0)["image"]).save(buffer, "GIF")
  return buffer.getvalue()


def test_unknown_paths_and_traversal_are_404(server):
  for path in ("/r/../../etc/passwd", "/r/0123/viewer.html",
               "/r/" + "a" * 32 + "/viewer.html", "/nothing"):
    with pytest.raises(urllib.error.HTTPError) as error:
      get(server, path)
    assert error.value.code == 404


def test_burst_of_concurrent_uploads(server):
  jpeg = _encoded("JPEG")
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    codes = [c for c, _, _ in pool.map(lambda _: post(server, jpeg), range(8))]
  # Each is either reconstructed or told the demo is busy; none is lost.
  assert set(codes) <= {200, 503} and codes.count(200) >= 1, codes
  assert get(server, "/")[0] == 200
  assert len(os.listdir(server.workdir)) <= LIMITS.keep_results
  assert post(server, jpeg)[0] == 200  # and it serves again after the burst


def test_server_close_removes_its_directory(predictor):
  srv = demo.serve(predictor, reconstruct.parse_light_directions(["0:0"]), LIMITS)
  workdir = srv.workdir
  assert os.path.isdir(workdir)
  srv.server_close()
  assert not os.path.exists(workdir)


def test_reconstruct_writes_and_links_the_viewer(predictor, tmp_path):
  Image.fromarray(SynFaces(40, seed=2).sample(0)["image"]).save(tmp_path / "face.png")
  summary = reconstruct.run(predictor, [str(tmp_path / "face.png")], str(tmp_path / "out"),
                            reconstruct.parse_light_directions(["0:0"]), gif_frames=2,
                            progress=False)
  assert summary["written"]
  page = (tmp_path / "out" / "face" / "viewer.html").read_text()
  assert "tfsym3d-data" in page and 'href="mesh.glb"' in page
  assert 'href="face/viewer.html"' in (tmp_path / "out" / "index.html").read_text()
