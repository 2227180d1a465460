"""A local web page that reconstructs the photo a user picks or drops:
`python -m tfsym3d.demo --model=RUN_OR_EXPORT [--port=8000]`.

The photo goes through the same loading and reconstruction as
`tfsym3d.reconstruct` (its `read_image` and `Reconstructor`), and the answer
is that reconstruction in the viewer (`tfsym3d.viewer`) with its downloads
(depth PNGs, meshes, relit images). It binds 127.0.0.1 unless told otherwise.

What a browser can send is bounded: uploads larger than --max_upload_mb are
refused from their Content-Length before any byte is read; only the image
formats we decode are accepted, and their header's pixel count must be under
--max_pixels before they are decoded; at most --max_requests uploads are
handled at once (the rest get 503 at once) and one reconstruction runs at a
time; every bad input gets one error page saying what was wrong. Results live
in one temporary directory, addressed by random ids, the oldest dropped past
--keep_results, and the directory is removed when the server stops.
"""

import dataclasses
import html
import io
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
from PIL import Image

from tfsym3d import face_crop
from tfsym3d import flags as tflags
from tfsym3d import predictors
from tfsym3d import reconstruct
from tfsym3d import runs

FLAGS = flags.FLAGS

# --model, --crop_faces, --face_margin and --light_directions are
# reconstruct's flags (defined once, there).
flags.DEFINE_string("host", "127.0.0.1", "Address to bind; the default serves this "
                    "machine only.")
flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).")
flags.DEFINE_float("max_upload_mb", 10.0, "Largest upload accepted, in MB.")
flags.DEFINE_integer("max_pixels", 40_000_000, "Largest image accepted, in pixels "
                     "(width x height from its header, checked before decoding).")
flags.DEFINE_integer("max_requests", 4, "Uploads handled at once; more get 503.")
flags.DEFINE_integer("keep_results", 20, "Results kept; older ones are deleted.")

# Pillow format names of the files reconstruct reads (tfsym3d.data.folders).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
_DRAIN_FACTOR = 4
_RESULT_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png",
                  ".gif": "image/gif", ".json": "application/json",
                  ".obj": "text/plain; charset=utf-8", ".mtl": "text/plain; charset=utf-8",
                  ".glb": "model/gltf-binary"}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Limits of the demo server (see the module docstring)."""
  max_upload_bytes: int = 10_000_000
  max_pixels: int = 40_000_000
  max_requests: int = 4
  keep_results: int = 20
  face_margin: float = 0.4


class BadInput(Exception):
  """An upload we refuse: `status` and a message for the user."""

  def __init__(self, status: HTTPStatus, message: str):
    super().__init__(message)
    self.status = status


def parse_multipart(body: bytes, content_type: str) -> Dict[str, Tuple[Optional[str], bytes]]:
  """The parts of a multipart/form-data body: name -> (filename, bytes).

  Raises BadInput for anything that is not well-formed form data.
  """
  match = re.search(r'boundary="?([^";]+)"?', content_type or "")
  if not content_type or not content_type.startswith("multipart/form-data") or not match:
    raise BadInput(HTTPStatus.BAD_REQUEST, "expected a form upload (multipart/form-data)")
  delimiter = b"--" + match.group(1).encode("latin-1")
  parts = {}
  chunks = body.split(delimiter)
  if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
    raise BadInput(HTTPStatus.BAD_REQUEST, "the form upload is incomplete")
  for chunk in chunks[1:-1]:
    if not chunk.startswith(b"\r\n") or b"\r\n\r\n" not in chunk:
      raise BadInput(HTTPStatus.BAD_REQUEST, "the form upload is malformed")
    head, content = chunk[2:].split(b"\r\n\r\n", 1)
    if content.endswith(b"\r\n"):
      content = content[:-2]
    disposition = ""
    for line in head.decode("utf-8", "replace").split("\r\n"):
      if line.lower().startswith("content-disposition:"):
        disposition = line
    name = re.search(r'\bname="([^"]*)"', disposition)
    if not name:
      raise BadInput(HTTPStatus.BAD_REQUEST, "a form field has no name")
    filename = re.search(r'\bfilename="([^"]*)"', disposition)
    parts[name.group(1)] = (filename.group(1) if filename else None, content)
  return parts


def check_image(data: bytes, max_pixels: int) -> str:
  """The image's Pillow format, after checking its header (not decoding it):
  a format we decode, at most `max_pixels` pixels. Raises BadInput."""
  if not data:
    raise BadInput(HTTPStatus.BAD_REQUEST, "no photo was sent: pick or drop an image file")
  try:
    with Image.open(io.BytesIO(data)) as im:
      fmt, (width, height) = im.format, im.size
  except Exception:  # pylint: disable=broad-except
    # Pillow raises several types for files that are not images.
    raise BadInput(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "this file is not an image we "
                   f"read (accepted: {', '.join(IMAGE_FORMATS)})") from None
  if fmt not in IMAGE_FORMATS:
    raise BadInput(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"{fmt} images are not accepted "
                   f"(accepted: {', '.join(IMAGE_FORMATS)})")
  if width * height > max_pixels:
    raise BadInput(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the image has {width} x {height}"
                   f" pixels, more than the limit of {max_pixels}")
  return fmt


def _page(title: str, body: str) -> bytes:
  return ("<!doctype html><html lang='en'><meta charset='utf-8'>"
          f"<title>{html.escape(title)} - tfsym3d demo</title><style>"
          "body{font:15px sans-serif;margin:24px;background:#202020;color:#ddd}"
          "a{color:#8cf}#drop{border:2px dashed #777;padding:40px;text-align:center;"
          "max-width:420px}#drop.over{border-color:#8cf}iframe{border:0;width:700px;"
          f"height:420px}}</style><h1>{html.escape(title)}</h1>{body}</html>").encode()


UPLOAD_FORM = """
<form id="form" method="post" action="/reconstruct" enctype="multipart/form-data">
<div id="drop">Drop a photo here, or <input type="file" name="photo" id="photo"
 accept="image/jpeg,image/png,image/bmp,image/webp,image/tiff"></div>
<p><label><input type="checkbox" name="crop_faces" value="1"> crop to the face</label></p>
<p><button type="submit">Reconstruct</button> (up to MAX_MB MB)</p>
</form>
<script>
var drop = document.getElementById("drop"), input = document.getElementById("photo");
["dragenter", "dragover"].forEach(function (t) { drop.addEventListener(t, function (e) {
  e.preventDefault(); drop.className = "over"; }); });
drop.addEventListener("dragleave", function () { drop.className = ""; });
drop.addEventListener("drop", function (e) {
  e.preventDefault(); drop.className = "";
  if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files;
    document.getElementById("form").submit(); }
});
input.addEventListener("change", function () { document.getElementById("form").submit(); });
</script>
"""


class DemoServer(ThreadingHTTPServer):
  """The demo's HTTP server; its results live in `self.workdir` (removed by
  `server_close`)."""

  daemon_threads = True

  def __init__(self, address, predictor, light_directions, config: DemoConfig,
               face_detector=None):
    self.config = config
    self.reconstructor = reconstruct.Reconstructor(predictor, light_directions)
    self.face_detector = face_detector
    self._tmp = tempfile.TemporaryDirectory(prefix="tfsym3d-demo-")
    self.workdir = self._tmp.name
    self.uploads = threading.BoundedSemaphore(config.max_requests)
    self.model_lock = threading.Lock()  # one reconstruction at a time
    self.results = OrderedDict()
    self.results_lock = threading.Lock()
    super().__init__(address, DemoHandler)

  def server_close(self):
    super().server_close()
    self._tmp.cleanup()

  def new_result(self) -> Tuple[str, str]:
    """(id, directory) of a new result; drops the oldest past keep_results."""
    result_id = secrets.token_hex(16)
    directory = os.path.join(self.workdir, result_id)
    os.makedirs(directory)
    with self.results_lock:
      self.results[result_id] = directory
      while len(self.results) > self.config.keep_results:
        _, old = self.results.popitem(last=False)
        shutil.rmtree(old, ignore_errors=True)
    return result_id, directory

  def reconstruct_upload(self, data: bytes, filename: str, crop_faces: bool) -> str:
    """Reconstructs one checked upload; returns its result id. Raises BadInput."""
    fmt = check_image(data, self.config.max_pixels)
    result_id, directory = self.new_result()
    path = os.path.join(directory, "upload." + fmt.lower())
    with open(path, "wb") as f:
      f.write(data)
    try:
      image = reconstruct.read_image(path)
    except ValueError as error:
      raise BadInput(HTTPStatus.UNPROCESSABLE_ENTITY, f"the image cannot be used: {error}")
    finally:
      os.remove(path)
    with self.model_lock:
      crop = None
      if crop_faces:
        if self.face_detector is None:
          try:
            self.face_detector = face_crop.FaceDetector()
          except RuntimeError as error:
            raise BadInput(HTTPStatus.NOT_IMPLEMENTED, f"face cropping is unavailable: {error}")
        faces = self.face_detector.detect(image)
        if len(faces):
          crop = face_crop.crop_square(image, faces[0, 1:], self.config.face_margin)
      image = crop if crop is not None else reconstruct.centre_square(image)
      result = self.reconstructor.compute(image)
      self.reconstructor.write(result, directory, os.path.basename(filename or "photo"))
    return result_id


class DemoHandler(BaseHTTPRequestHandler):
  """GET /: the upload form; POST /reconstruct; GET /r/<id>/[file]."""

  server: DemoServer
  timeout = 30  # a client that stops sending does not hold a thread for long
  protocol_version = "HTTP/1.1"

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.info("%s %s", self.address_string(), format % args)

  def _send(self, status: HTTPStatus, body: bytes, content_type="text/html; charset=utf-8",
            extra=None):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("X-Content-Type-Options", "nosniff")
    self.send_header("Cache-Control", "no-store")
    for key, value in (extra or {}).items():
      self.send_header(key, value)
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _error(self, status: HTTPStatus, message: str, extra=None):
    body = _page(f"{status.value} {status.phrase}",
                 f"<p>{html.escape(message)}</p><p><a href='/'>Try another photo</a></p>")
    self._send(status, body, extra=extra)

  def do_GET(self):  # pylint: disable=invalid-name
    path = self.path.split("?", 1)[0]
    if path == "/":
      self._send(HTTPStatus.OK, _page("Photo to 3D (tfsym3d)", UPLOAD_FORM.replace(
          "MAX_MB", f"{self.server.config.max_upload_bytes / 1e6:g}")))
      return
    match = re.match(r"^/r/([^/]+)/([^/]*)$", path)
    if not match or not _RESULT_ID.match(match.group(1)):
      self._error(HTTPStatus.NOT_FOUND, f"nothing at {path}")
      return
    with self.server.results_lock:
      directory = self.server.results.get(match.group(1))
    name = match.group(2)
    if directory is None:
      self._error(HTTPStatus.NOT_FOUND, "this result is gone (results are kept only "
                  "while the demo runs, the newest few)")
    elif name == "":
      self._send(HTTPStatus.OK, self._result_page(directory))
    elif not _FILE_NAME.match(name) or name.startswith(".") or not os.path.isfile(
        os.path.join(directory, name)):
      self._error(HTTPStatus.NOT_FOUND, f"no file {name!r} in this result")
    else:
      with open(os.path.join(directory, name), "rb") as f:
        data = f.read()
      kind = _CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
      extra = {} if kind.startswith(("text/html", "image/")) else {
          "Content-Disposition": f'attachment; filename="{name}"'}
      self._send(HTTPStatus.OK, data, kind, extra)

  do_HEAD = do_GET

  def _result_page(self, directory: str) -> bytes:
    names = sorted(os.listdir(directory))
    downloads = [("depth (16-bit PNG)", "depth16.png"), ("depth (colour)", "depth.png"),
                 ("mesh (glb)", "mesh.glb"), ("mesh (obj)", "mesh.obj"),
                 ("mesh texture", "mesh_texture.png"), ("mesh material", "mesh.mtl")]
    downloads += [(f"relit {n[6:-4]}", n) for n in names if n.startswith("relit_")]
    downloads += [("factors", "factors.json"), ("turning (textured)", "yaw_textured.gif")]
    links = "".join(f'<li><a href="{n}" download>{html.escape(label)}</a></li>'
                    for label, n in downloads if n in names)
    return _page("Your photo in 3D", f'<iframe src="{reconstruct.VIEWER_PAGE}" '
                 f'title="viewer"></iframe><p><a href="{reconstruct.VIEWER_PAGE}">open the '
                 f"viewer on its own</a></p><ul>{links}</ul><p><a href='/'>Another photo</a></p>")

  def do_POST(self):  # pylint: disable=invalid-name
    if self.path.split("?", 1)[0] != "/reconstruct":
      self._error(HTTPStatus.NOT_FOUND, f"nothing to post to at {self.path}")
      return
    try:
      length = int(self.headers.get("Content-Length", ""))
    except ValueError:
      self.close_connection = True
      self._error(HTTPStatus.LENGTH_REQUIRED, "the upload has no Content-Length")
      return
    limit = self.server.config.max_upload_bytes
    if length < 0 or length > limit:
      # Refused before reading it into memory. The body is drained in small
      # chunks (up to a bound) so that the browser, still sending, gets this
      # answer instead of a reset connection; the connection then closes.
      self.close_connection = True
      left = min(length, _DRAIN_FACTOR * limit)
      try:
        while left > 0:
          chunk = self.rfile.read(min(left, 65536))
          if not chunk:
            break
          left -= len(chunk)
      except OSError:
        return
      self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the upload is {length} bytes, more "
                  f"than the limit of {limit} bytes ({limit / 1e6:.1f} MB)")
      return
    if not self.server.uploads.acquire(blocking=False):
      self.close_connection = True
      self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the demo is busy with other photos; "
                  "try again in a moment", {"Retry-After": "5"})
      return
    try:
      body = self.rfile.read(length)
      if len(body) < length:
        raise BadInput(HTTPStatus.BAD_REQUEST, "the upload ended early")
      parts = parse_multipart(body, self.headers.get("Content-Type", ""))
      if "photo" not in parts:
        raise BadInput(HTTPStatus.BAD_REQUEST, "no photo was sent: pick or drop an image file")
      filename, data = parts["photo"]
      crop_faces = "crop_faces" in parts
      del body, parts
      result_id = self.server.reconstruct_upload(data, filename, crop_faces)
      self.send_response(HTTPStatus.SEE_OTHER)
      self.send_header("Location", f"/r/{result_id}/")
      self.send_header("Content-Length", "0")
      self.end_headers()
    except BadInput as error:
      self._error(error.status, str(error))
    except Exception as error:  # pylint: disable=broad-except
      logging.exception("reconstruction failed")
      self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"the reconstruction failed "
                  f"({type(error).__name__}); the server log has the details")
    finally:
      self.server.uploads.release()


def serve(predictor, light_directions, config: DemoConfig, host: str = "127.0.0.1",
          port: int = 0, face_detector=None) -> DemoServer:
  """A started-up DemoServer (call `serve_forever`, then `shutdown` and
  `server_close`, which removes its temporary directory)."""
  return DemoServer((host, port), predictor, light_directions, config, face_detector)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.model:
    raise app.UsageError("set --model (a run directory, checkpoint, SavedModel or .tflite)")
  if FLAGS.max_upload_mb <= 0 or FLAGS.max_pixels <= 0 or FLAGS.max_requests < 1 \
      or FLAGS.keep_results < 1:
    raise app.UsageError("--max_upload_mb, --max_pixels, --max_requests and "
                         "--keep_results must be positive")
  try:
    directions = reconstruct.parse_light_directions(FLAGS.light_directions)
    predictor = predictors.load_predictor(FLAGS.model, tflags.model_config())
  except (FileNotFoundError, ValueError, ImportError) as error:
    raise app.UsageError(str(error)) from None
  config = DemoConfig(max_upload_bytes=int(FLAGS.max_upload_mb * 1e6),
                      max_pixels=FLAGS.max_pixels, max_requests=FLAGS.max_requests,
                      keep_results=FLAGS.keep_results, face_margin=FLAGS.face_margin)
  try:
    server = serve(predictor, directions, config, FLAGS.host, FLAGS.port)
  except OSError as error:
    raise app.UsageError(f"cannot listen on {FLAGS.host}:{FLAGS.port} ({error}); "
                         "pick another --port") from None
  host, port = server.server_address[:2]
  print(f"tfsym3d demo: open http://{host}:{port}/ (model {predictor.source}, "
        f"{predictor.kind}); Ctrl-C stops it", flush=True)
  def stop(signum, frame):  # pylint: disable=unused-argument
    raise KeyboardInterrupt
  # A plain `kill` stops it as Ctrl-C does: its temporary directory is removed.
  signal.signal(signal.SIGTERM, stop)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  app.run(main, argv=runs.argv_with_run_flagfile(sys.argv, "model"))
