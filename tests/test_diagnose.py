"""`tfsym3d.evaluate --diagnose`: its pure statistics on data whose answers
are known exactly, and the diagnosis of an evaluation end to end."""

import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import evaluate
from tfsym3d import metrics


def _square_mask(size=12, lo=1, hi=11):
  mask = np.zeros([1, size, size], np.float32)
  mask[0, lo:hi, lo:hi] = 1
  return mask


def test_rim_distance_labels_concentric_square_rings():
  # A 10 x 10 square: rings of 36, 28, 20, 12 pixels and a 2 x 2 core.
  ring = metrics.rim_distance(_square_mask()).numpy()[0]
  assert ring[0].sum() == 0 and ring[:, 0].sum() == 0         # outside: 0
  counts = [int((ring == k).sum()) for k in range(1, 6)]
  assert counts == [36, 28, 20, 12, 4]
  assert ring[1, 1] == 1 and ring[2, 5] == 2 and ring[4, 4] == 4
  assert (ring[5:7, 5:7] == 5).all()
  # The image border counts as outside, as in the evaluation's erosion.
  full = metrics.rim_distance(np.ones([1, 6, 6], np.float32), num_rings=3).numpy()[0]
  assert [int((full == k).sum()) for k in (1, 2, 3)] == [20, 12, 4]


def test_ring_errors_are_the_centred_log_error_per_ring():
  mask = _square_mask()
  ring = metrics.rim_distance(mask).numpy()
  depth_gt = np.full(mask.shape, 1.0, np.float32)
  # log error +a on ring 1, 0 elsewhere: centred by its mean over the mask.
  a = 0.02
  depth = depth_gt * np.exp(np.where(ring == 1, a, 0.0)).astype(np.float32)
  sums = metrics.ring_error_sums(tf.constant(depth), tf.constant(depth_gt),
                                 tf.constant(mask)).numpy()
  rows = metrics.ring_table(sums)
  mean_e = a * 36 / 100
  assert [r["ring"] for r in rows] == ["1", "2", "3", "4", ">=5"]
  assert [r["pixels"] for r in rows] == [36, 28, 20, 12, 4]
  assert rows[0]["fraction"] == pytest.approx(0.36)
  assert rows[0]["mean"] == pytest.approx(a - mean_e, abs=1e-6)
  assert rows[0]["rms"] == pytest.approx(a - mean_e, abs=1e-6)
  for row in rows[1:]:
    assert row["mean"] == pytest.approx(-mean_e, abs=1e-6)
    assert row["rms"] == pytest.approx(mean_e, abs=1e-6)
  # Pooled over the rings, the squared errors are SIDE's.
  side = metrics.side(tf.constant(depth), tf.constant(depth_gt), tf.constant(mask))
  total = sum(r["rms"] ** 2 * r["pixels"] for r in rows) / 100
  assert np.sqrt(total) == pytest.approx(float(side[0]), rel=1e-4)


def _relief_pair(scale, size=16, seed=0):
  """(depth, depth_gt, mask) with log(depth) - mean = scale * (log(gt) - mean)."""
  rng = np.random.default_rng(seed)
  mask = _square_mask(size, 2, size - 2)
  log_gt = np.log(1.0 + 0.05 * rng.standard_normal(mask.shape))
  mean = (log_gt * mask).sum() / mask.sum()
  depth = np.exp(0.02 + mean + scale * (log_gt - mean))      # any constant factor
  return (tf.constant(depth, tf.float32), tf.constant(np.exp(log_gt), tf.float32),
          tf.constant(mask))


def test_relief_scaled_by_two_has_best_scale_one_half():
  moments = np.concatenate([metrics.relief_moments(*_relief_pair(2.0, seed=0)).numpy(),
                            metrics.relief_moments(*_relief_pair(0.5, seed=1)).numpy()])
  per_image, overall = metrics.best_relief_scale(moments)
  np.testing.assert_allclose(per_image, [0.5, 2.0], rtol=1e-4)
  # At its own scale each image's SIDE vanishes; at no scaling it is SIDE.
  np.testing.assert_allclose(metrics.side_at_relief_scale(moments, per_image), 0, atol=1e-4)
  side = np.concatenate([metrics.side(*_relief_pair(s, seed=i)).numpy()
                         for i, s in enumerate((2.0, 0.5))])
  np.testing.assert_allclose(metrics.side_at_relief_scale(moments, 1.0), side, rtol=1e-4)
  # The overall scale minimises the mean squared SIDE over the images.
  grid = np.linspace(0.2, 3, 2801)
  mean_sq = [np.mean(metrics.side_at_relief_scale(moments, s) ** 2) for s in grid]
  assert overall == pytest.approx(grid[int(np.argmin(mean_sq))], abs=1e-3)


def test_linear_fit_and_pearson():
  true = np.linspace(-30, 30, 61)
  fit = metrics.linear_fit(0.5 * true + 2.0, true)
  assert fit["slope"] == pytest.approx(0.5) and fit["intercept"] == pytest.approx(2.0)
  assert fit["pearson"] == pytest.approx(1.0) and fit["count"] == 61
  assert fit["rmse"] == pytest.approx(np.sqrt(np.mean((2.0 - 0.5 * true) ** 2)))
  assert metrics.pearson(true, -true) == pytest.approx(-1.0)
  # Orthogonal signals: no correlation; NaN pairs are skipped.
  a = np.array([1.0, -1.0, 1.0, -1.0, np.nan])
  b = np.array([1.0, 1.0, -1.0, -1.0, 5.0])
  assert metrics.pearson(a, b) == pytest.approx(0.0)
  assert np.isnan(metrics.linear_fit(np.ones(3), np.ones(3))["slope"])   # constant truth


def test_diagnosis_of_constructed_views_and_the_no_pose_case():
  rng = np.random.default_rng(0)
  n = 40
  views_gt = np.zeros([n, 6])
  views_gt[:, :3] = np.radians(rng.uniform(-30, 30, [n, 3]))
  views = views_gt.copy()
  views[:, 1] *= 0.5                                  # yaw half learnt
  views[:, 2] = 0.0                                   # roll not at all
  side = np.degrees(np.abs(views[:, 1] - views_gt[:, 1])) * 0.1 + 1.0
  moments = np.tile([[1e-4, 1e-4 / 1.2, 1e-4 / 1.2 ** 2 + 1e-6]], [n, 1])
  sums = np.tile([[[10, 0, 1e-4]] * metrics.NUM_RINGS], [n, 1, 1]).astype(float)
  diag, columns = evaluate.diagnosis(moments, sums, side, views, views_gt)
  vp = diag["viewpoint"]
  assert vp["pitch"]["slope"] == pytest.approx(1.0) and vp["pitch"]["rmse"] < 1e-9
  assert vp["yaw"]["slope"] == pytest.approx(0.5)
  assert vp["yaw"]["error_side_pearson"] == pytest.approx(1.0)
  assert vp["roll"]["slope"] == pytest.approx(0.0, abs=1e-12)
  assert diag["relief"]["scale"] == pytest.approx(1 / 1.2)
  assert diag["rings"][0]["fraction"] == pytest.approx(0.2)
  np.testing.assert_allclose(columns["yaw_pred_deg"], 0.5 * columns["yaw_true_deg"])
  text = evaluate.format_diagnosis(diag)
  assert "yaw" in text and "0.500" in text and "oracle" in text
  assert "average predicted canonical depth" not in text      # no probes given
  probes = {"side_mean_canonical_depth": side - 0.2, "side_true_view": side - 0.5}
  with_probes, columns = evaluate.diagnosis(moments, sums, side, views, views_gt,
                                            probes=probes)
  assert with_probes["probes"]["side"] == pytest.approx(side.mean())
  assert with_probes["probes"]["side_true_view"] == pytest.approx(side.mean() - 0.5)
  np.testing.assert_allclose(columns["side_mean_canonical_depth"], side - 0.2)
  text = evaluate.format_diagnosis(with_probes)
  assert f"with the true viewpoint {side.mean() - 0.5:.3f}" in text
  assert "hurt more than they help" in text
  paired, columns = evaluate.diagnosis(moments, sums, side, views, None, dataset="paired")
  assert paired["viewpoint"] is None and "yaw_true_deg" not in columns
  assert "--dataset=synfaces" in evaluate.format_diagnosis(paired)


def test_side_with_views_is_the_evaluation_on_the_true_shape_and_pose():
  # The generator's own canonical depth posed by its own view reproduces its
  # input-view depth: SIDE ~ 0 (grid-mesh vs. z-buffer differences only);
  # a yaw off by 10 degrees is a large error.
  from tfsym3d.config import ModelConfig
  from tfsym3d.data import synthetic
  from tfsym3d.render.warp import Renderer
  renderer = Renderer(ModelConfig(image_size=32, renderer_xla=False))
  generator = synthetic.SynFaces(32, seed=5)
  samples = [generator.sample(synthetic.split_offset("test") + i) for i in range(6)]
  canon = tf.constant(np.stack([s["canon_depth"] for s in samples]))
  views = np.stack([s["view"] for s in samples]).astype(np.float32)
  depth_gt = tf.constant(np.stack([s["depth"] for s in samples]))
  exact = evaluate.side_with_views(renderer, canon, tf.constant(views), depth_gt).numpy()
  assert np.all(exact < 2e-4), exact
  wrong = views.copy()
  wrong[:, 1] += np.radians(10.0)
  off = evaluate.side_with_views(renderer, canon, tf.constant(wrong), depth_gt).numpy()
  assert np.all(off > 20 * np.maximum(exact, 1e-5)) and np.all(off > 2e-3), off


def test_side_with_views_matches_the_models_own_reconstruction():
  from tfsym3d import runs
  from tfsym3d.config import ModelConfig
  from tfsym3d.data import synthetic
  config = ModelConfig(image_size=16, nf=8, zdim=16, nf_encoder=8, nf_conf=8,
                       zdim_conf=16, vgg_weights="none", lam_perc=0.0,
                       renderer_xla=False)
  model = runs.build_model(config)
  generator = synthetic.SynFaces(16, seed=2)
  samples = [generator.sample(i) for i in range(4)]
  images = np.stack([s["image"] for s in samples]).astype(np.float32) / 127.5 - 1
  depth_gt = tf.constant(np.stack([s["depth"] for s in samples]))
  out = model(images, training=False)
  mask = metrics.evaluation_mask(depth_gt, out.recon_mask)
  np.testing.assert_allclose(
      evaluate.side_with_views(model.renderer, out.canon_depth, out.view, depth_gt).numpy(),
      metrics.side(out.recon_depth, depth_gt, mask).numpy(), rtol=1e-5)


def test_evaluate_model_with_diagnose_on_synfaces(tmp_path):
  # An untrained 16 px model: the numbers are meaningless, the plumbing is
  # real (generator poses regenerated and checked, CSVs, JSON).
  import csv
  import json
  from tfsym3d import runs
  from tfsym3d.config import ModelConfig
  from tfsym3d.data import sources
  config = ModelConfig(image_size=16, nf=8, zdim=16, nf_encoder=8, nf_conf=8,
                       zdim_conf=16, vgg_weights="none", lam_perc=0.0,
                       renderer_xla=False)
  model = runs.build_model(config)
  data = sources.DataSource(dataset="synfaces", image_size=16, batch_size=4, seed=3)
  summary = evaluate.evaluate_model(model, data, "test", 6, str(tmp_path), progress=False,
                                    batch_size=4, diagnose=True)
  diag = summary["diagnosis"]
  assert set(diag["viewpoint"]) == {"pitch", "yaw", "roll"}
  assert diag["viewpoint"]["yaw"]["count"] == 6
  assert sum(r["fraction"] for r in diag["rings"]) == pytest.approx(1.0)
  assert np.isfinite(diag["relief"]["scale"])
  # The relief scale can only lower SIDE (it is fitted to the ground truth).
  assert diag["relief"]["side_at_per_image_scale"] <= diag["relief"]["side"] + 1e-6
  assert set(diag["probes"]) == {"side", "side_true_view", "side_mean_canonical_depth"}
  assert all(np.isfinite(v) for v in diag["probes"].values())
  with open(tmp_path / "per_image.csv") as f:
    rows = list(csv.DictReader(f))
  from tfsym3d.data import synthetic
  truth = synthetic.SynFaces(16, seed=3).sample(synthetic.split_offset("test") + 5)
  assert float(rows[5]["yaw_true_deg"]) == pytest.approx(np.degrees(truth["view"][1]),
                                                         abs=1e-4)
  with open(tmp_path / "diagnosis.csv") as f:
    table = list(csv.DictReader(f))
  assert {"viewpoint", "relief", "probes", "rings"} == {r["section"] for r in table}
  assert "side_true_view" in rows[0] and "side_mean_canonical_depth" in rows[0]
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["diagnosis"]["rings"][0]["ring"] == "1"
