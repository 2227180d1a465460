"""Synfaces: determinism, symmetry, ranges, files, tf.data, renderer agreement."""

import math
import os

import numpy as np
import pytest
from PIL import Image

from tfsym3d.data import synthetic

SIZE = 64


@pytest.fixture(scope="module")
def gen():
  return synthetic.SynFaces(image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def samples(gen):
  return [gen.sample(i) for i in range(40)]


def test_same_seed_and_index_gives_identical_arrays(gen):
  a = gen.sample(7)
  b = synthetic.SynFaces(image_size=SIZE, seed=3).sample(7)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  c = gen.sample(8)
  d = synthetic.SynFaces(image_size=SIZE, seed=4).sample(7)
  for other in (c, d):
    assert not np.array_equal(a["image"], other["image"])
    assert not np.array_equal(a["canon_depth"], other["canon_depth"])


def test_canonical_shape_and_albedo_are_probably_symmetric(samples):
  for s in samples[:10]:
    depth, albedo = s["canon_depth"], s["canon_albedo"] / 2 + 0.5
    # Removing the asymmetric parts leaves mirror images (float32 rounding).
    sym_depth = depth - s["canon_depth_asym"]
    sym_albedo = albedo - s["canon_albedo_asym"]
    np.testing.assert_allclose(sym_depth, sym_depth[:, ::-1], atol=1e-5)
    np.testing.assert_allclose(sym_albedo, sym_albedo[:, ::-1], atol=1e-5)
    # The asymmetric parts are small but present.
    depth_asym = np.abs(depth - depth[:, ::-1]).max()
    assert 1e-4 < depth_asym < 0.02
    albedo_asym = np.abs(albedo - albedo[:, ::-1]).mean()
    assert 1e-4 < albedo_asym < 0.05


def test_ranges(samples):
  yaws = []
  for s in samples:
    assert s["image"].dtype == np.uint8 and s["image"].shape == (SIZE, SIZE, 3)
    depth, mask = s["depth"], s["mask"]
    assert depth.dtype == np.float32 and depth.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(depth[~mask], np.float32(synthetic.FAR_DEPTH))
    assert depth[mask].min() >= synthetic.MIN_DEPTH
    assert depth[mask].max() < synthetic.FAR_DEPTH
    # docs/method.md §8's foreground is exactly the rendered object.
    np.testing.assert_array_equal(depth < depth.max(), mask)
    assert 0.05 < mask.mean() < 0.8
    canon = s["canon_depth"]
    assert canon.min() >= synthetic.MIN_DEPTH and canon.max() <= synthetic.MAX_DEPTH
    assert s["canon_albedo"].min() >= -1 and s["canon_albedo"].max() <= 1
    light = s["light"]
    assert 0 <= light[0] <= 1 and 0 <= light[1] <= 1 and np.all(np.abs(light[2:]) <= 1)
    yaws.append(math.degrees(s["view"][1]))
  yaws = np.array(yaws)
  assert yaws.min() < -40 and yaws.max() > 40 and np.all(np.abs(yaws) <= 60)


def test_depth_png_round_trip(tmp_path, samples):
  depth = samples[0]["depth"]
  path = str(tmp_path / "d.png")
  Image.fromarray(synthetic.encode_depth(depth)).save(path)
  values = np.array(Image.open(path))
  assert values.dtype == np.uint16
  # docs/method.md §8: g = value / max, d = depth_rescale((1 - g) * 2 - 1).
  g = values / 65535.0
  t = (1 - g) * 2 - 1
  decoded = (1 + t) / 2 * 1.1 + (1 - t) / 2 * 0.9
  assert np.abs(decoded - depth).max() < 1e-4
  assert np.abs(synthetic.decode_depth(values) - depth).max() < 1e-4
  # The foreground survives quantisation.
  np.testing.assert_array_equal(decoded < decoded.max(), samples[0]["mask"])


def test_writer_layout_and_resume(tmp_path, gen):
  out = str(tmp_path)
  assert synthetic.write_split(out, "val", 3, generator=gen, progress=False) == 3
  images = sorted(os.listdir(os.path.join(out, "val", "image")))
  depths = sorted(os.listdir(os.path.join(out, "val", "depth")))
  assert images == [f"{i:07d}_image.png" for i in range(3)]
  assert depths == [f"{i:07d}_depth.png" for i in range(3)]
  image = Image.open(os.path.join(out, "val", "image", images[1]))
  assert image.mode == "RGB" and image.size == (SIZE, SIZE)
  expected = gen.sample(synthetic.split_offset("val") + 1)
  np.testing.assert_array_equal(np.array(image), expected["image"])
  stamp = os.path.getmtime(os.path.join(out, "val", "depth", depths[0]))
  assert synthetic.write_split(out, "val", 3, generator=gen, progress=False) == 0
  assert os.path.getmtime(os.path.join(out, "val", "depth", depths[0])) == stamp
  # A missing file is rewritten, and more samples extend the split.
  os.remove(os.path.join(out, "val", "image", images[2]))
  assert synthetic.write_split(out, "val", 4, generator=gen, progress=False) == 2
  assert not [f for f in os.listdir(os.path.join(out, "val", "image")) if "tmp" in f]


def test_splits_are_disjoint(gen):
  train = gen.sample(synthetic.split_offset("train"))
  val = gen.sample(synthetic.split_offset("val"))
  assert not np.array_equal(train["image"], val["image"])
  with pytest.raises(ValueError, match="unknown split"):
    synthetic.split_offset("dev")


def test_tf_dataset_shapes_and_values(gen):
  import tensorflow as tf
  ds = gen.tf_dataset("test", num=3)
  items = list(ds)
  assert len(items) == 3
  image, depth = items[1]
  assert image.dtype == tf.float32 and image.shape == (SIZE, SIZE, 3)
  assert depth.dtype == tf.float32 and depth.shape == (SIZE, SIZE)
  expected = gen.sample(synthetic.split_offset("test") + 1)
  np.testing.assert_allclose(image.numpy(), expected["image"] / 255 * 2 - 1, atol=1e-6)
  np.testing.assert_array_equal(depth.numpy(), expected["depth"])
  assert ds.element_spec[0].shape == (SIZE, SIZE, 3)


def test_numpy_renderer_agrees_with_model_renderer(samples):
  """The same posed full grid mesh through both renderers (docs/method.md §5)."""
  from tfsym3d.config import ModelConfig
  from tfsym3d.render.warp import Renderer
  picks = [s for s in samples if abs(s["view"][1]) > math.radians(30)][:2]
  picks += samples[:2]
  canon = np.stack([s["canon_depth"] for s in picks])
  views = np.stack([s["view"] for s in picks])
  renderer = Renderer(ModelConfig(vgg_weights="none"))
  theirs = renderer.reconstructed_depth(canon, views).numpy()
  low, high = renderer.depth_clamp
  for k in range(len(picks)):
    mine = synthetic.render_depth(canon[k], views[k])   # all triangles
    mine = np.clip(np.where(np.isfinite(mine), mine, high), low, high)
    mine_cover, their_cover = mine < high, theirs[k] < high
    both = mine_cover & their_cover
    # The tilted background plane leaves the clamp range in places, but the
    # object itself is covered by both.
    assert both.mean() > 0.2
    assert both[picks[k]["mask"]].all()
    # Coverage agrees except at a few edge-grazing pixel centres.
    assert (mine_cover != their_cover).mean() < 0.01
    close = np.abs(mine - theirs[k]) < 1e-4
    assert close[both].mean() >= 0.99, (k, close[both].mean())


def test_candidate_pixels_are_exactly_the_bounding_boxes():
  """Both enumeration paths (per offset for small boxes, expanded for large
  ones) list every pixel centre of every box once, and nothing else."""
  rng = np.random.default_rng(0)
  faces = 300
  col0, row0 = rng.integers(0, 50, faces), rng.integers(0, 50, faces)
  ncol, nrow = rng.integers(1, 9, faces), rng.integers(1, 9, faces)
  assert ((ncol > synthetic._SMALL_BOX) | (nrow > synthetic._SMALL_BOX)).sum() > 50
  assert ((ncol <= synthetic._SMALL_BOX) & (nrow <= synthetic._SMALL_BOX)).sum() > 30
  face, px, py = synthetic._candidates(col0, row0, ncol, nrow)
  got = sorted(zip(face.tolist(), px.astype(int).tolist(), py.astype(int).tolist()))
  want = sorted((f, col0[f] + dx, row0[f] + dy) for f in range(faces)
                for dy in range(nrow[f]) for dx in range(ncol[f]))
  assert got == want
  empty = synthetic._candidates(*(np.zeros(0, np.int64),) * 4)
  assert all(len(a) == 0 for a in empty)


def test_depth_step_walls_agree_with_model_renderer():
  """A depth step seen from the side stretches its wall triangles over many
  pixels (the expanded path of `_candidates`): the walls leave no holes and
  the depth agrees with the model's rasterizer."""
  from tfsym3d.config import ModelConfig
  from tfsym3d.render.warp import Renderer
  size = 32
  canon = np.full((size, size), 1.06)
  canon[:, 10:22] = 0.94                      # a raised slab, 0.12 high
  view = np.array([0.0, math.radians(40), 0.0, 0.0, 0.0, 0.0])
  mine = synthetic.render_depth(canon, view)
  # The walls: grid cells across the step, projected, are wide boxes.
  points = synthetic.pose_points(
      synthetic.unproject_np(canon, synthetic.focal_length(size)), view)
  cols = points[..., 0] / points[..., 2] * synthetic.focal_length(size)
  assert np.abs(np.diff(cols, axis=1)).max() > synthetic._SMALL_BOX
  renderer = Renderer(ModelConfig(vgg_weights="none", image_size=size))
  theirs = renderer.reconstructed_depth(canon[None].astype(np.float32),
                                        view[None].astype(np.float32)).numpy()[0]
  low, high = renderer.depth_clamp
  mine = np.clip(np.where(np.isfinite(mine), mine, high), low, high)
  covered = mine < high
  np.testing.assert_array_equal(covered, theirs < high)
  for row in covered:                       # no holes: one run of covered pixels
    cols = np.flatnonzero(row)
    assert len(cols) > size // 2 and cols[-1] - cols[0] + 1 == len(cols)
  close = np.abs(mine - theirs) < 1e-4
  assert close.mean() >= 0.99, close.mean()


def test_prepare_cli_writes_splits_resumes_and_previews(tmp_path):
  import subprocess
  import sys
  from tfsym3d.data import prepare
  assert prepare.split_counts(10, ["0.8", "0.1", "0.1"]) == {"train": 8, "val": 1, "test": 1}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  command = [sys.executable, "-m", "tfsym3d.data.prepare", "synfaces",
             "--out", str(tmp_path / "ds"), "--num", "5", "--seed", "1",
             "--image_size", "32", "--split_fractions", "0.6,0.2,0.2"]
  first = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
  assert "train: 3 pairs, 3 newly written" in first.stdout
  counts = {s: len(os.listdir(tmp_path / "ds" / s / "depth")) for s in ("train", "val", "test")}
  assert counts == {"train": 3, "val": 1, "test": 1}
  image = Image.open(tmp_path / "ds" / "test" / "image" / "0000000_image.png")
  assert image.size == (32, 32)
  second = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
  assert "train: 3 pairs, 0 newly written" in second.stdout
  preview = tmp_path / "p.png"
  subprocess.run([sys.executable, "-m", "tfsym3d.data.prepare", "synfaces", "--preview",
                  str(preview), "--preview_num", "2", "--image_size", "32"],
                 env=env, capture_output=True, check=True)
  assert Image.open(preview).size == (2 * 32 * 2, 4 * 32 * 2)
  bad = subprocess.run([sys.executable, "-m", "tfsym3d.data.prepare", "celebA"], env=env,
                       capture_output=True, text=True)
  assert bad.returncode != 0 and "subcommand" in bad.stderr


def test_normals_and_pose_match_the_model_geometry(samples):
  """Shading uses docs/method.md §4's normals and the pose docs/method.md §5's transform."""
  from tfsym3d import geometry
  depth = samples[0]["canon_depth"]
  camera = geometry.Camera.from_fov(SIZE, 10.0)
  theirs = geometry.normals_from_depth(depth[None], camera)[0].numpy()
  mine = synthetic.normals_np(depth, synthetic.focal_length(SIZE))
  np.testing.assert_allclose(mine, theirs, atol=1e-4)
  points = np.random.default_rng(0).uniform(-0.1, 1.1, (5, 3))
  view = samples[1]["view"]
  theirs = geometry.rigid_transform(points[None].astype(np.float32), view[None]).numpy()[0]
  np.testing.assert_allclose(synthetic.pose_points(points, view), theirs, atol=1e-5)
  np.testing.assert_allclose(synthetic.unpose_points(synthetic.pose_points(points, view),
                                                     view), points, atol=1e-12)
