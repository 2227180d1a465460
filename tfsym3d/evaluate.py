"""Evaluation against ground-truth depth (docs/method.md §8):
`python -m tfsym3d.evaluate --checkpoint RUN_DIR [--dataset paired --data_dir DIR] [--json]`.

For every image of the split: SIDE (x 1e-2) and MAD (degrees) of the
model's depth in the input view, and of two baselines, "constant null
depth" (a flat plane facing the camera) and "average GT depth" (the mean
ground-truth depth map of the split). Writes a per-image CSV and a summary
JSON to --eval_dir and prints a table (or, with --json, one JSON object).
With --dump_images N, test mode also writes, for the first N images, the
pictures of `tfsym3d.visualize.dump_results` and their light and view.

With --diagnose it also reports where the error comes from (`diagnose`
below; the definitions are in `tfsym3d.metrics`): the depth error by ring
distance from the evaluation mask's rim, the best-fitting relief scale and
the SIDE after it (an oracle analysis: it uses the ground truth), the SIDE
when every image is given the split's average predicted canonical depth
(whether the per-image shape helps at all), and, on --dataset=synfaces, the
predicted viewpoint against the generator's own (pitch, yaw, roll of sample
(seed, index), regenerated exactly) and the SIDE with that viewpoint in
place of the predicted one (is the pose or the shape the limit?). The
diagnosis goes into the table, the summary JSON ("diagnosis"), per_image.csv
(extra columns) and diagnosis.csv.

The model's settings (image size, widths, ...) come from the flags, as for
training: the run's flags.txt is read first when --checkpoint names a run
and no --flagfile is given (`--flagfile=runs/x/flags.txt` otherwise).
"""

import csv
import dataclasses
import json
import os
import sys
from typing import Dict, Optional

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfsym3d import flags as tflags
from tfsym3d import metrics
from tfsym3d import runs
from tfsym3d import visualize
from tfsym3d.data import sources
from tfsym3d.data import synthetic
from tfsym3d.model import Decomposition

FLAGS = flags.FLAGS

# The rotation axes of a view [6] (docs/method.md §5: R = Rz Ry Rx), by their names.
AXES = (("pitch", 0), ("yaw", 1), ("roll", 2))
NO_POSE = ("no ground-truth viewpoint: --dataset={dataset} files hold image and "
           "depth only; the viewpoint analysis needs --dataset=synfaces, whose "
           "generator knows each sample's pose")


def _stats(values: np.ndarray) -> Dict[str, float]:
  finite = values[np.isfinite(values)]
  if finite.size == 0:
    return {"mean": float("nan"), "std": float("nan")}
  return {"mean": float(finite.mean()), "std": float(finite.std())}


def side_with_views(renderer, canon_depth, views, depth_gt):
  """SIDE of canonical depths posed by given views, with the evaluation's mask.

  The probe behind the diagnosis's "what if" figures: the model's own
  canonical depth under the true viewpoint, or one shared depth under the
  predicted viewpoints.

  Args:
    renderer: the model's `tfsym3d.render.warp.Renderer`.
    canon_depth: [B, S, S] canonical depth (border columns included).
    views: [B, 6] (rx, ry, rz radians; tx, ty, tz).
    depth_gt: [B, S, S] input-view ground truth.
  Returns:
    [B] float32 SIDE, not yet x 1e-2 (NaN for an empty mask).
  """
  recon = renderer.reconstructed_depth(canon_depth, views)
  mask = metrics.evaluation_mask(depth_gt, renderer.valid_mask(recon))
  return metrics.side(recon, depth_gt, mask)


def evaluate_model(model, data, split: str, num: Optional[int], out_dir: Optional[str],
                   dump_images: int = 0, progress: bool = True,
                   batch_size: int = 50, diagnose: bool = False) -> Dict:
  """SIDE and MAD of `model` on a ground-truth split, with both baselines.

  Args:
    model: an Unsup3D.
    data: a `tfsym3d.data.sources.DataSource` with ground truth.
    split: the split to evaluate; num: images (None: all; synfaces needs it).
    out_dir: where per_image.csv, summary.json and the dump go (None: nowhere).
    dump_images: test mode, pictures of the first N images.
    batch_size: evaluation batch.
    diagnose: add the diagnosis (`diagnosis`) as summary["diagnosis"].
  Returns:
    The summary dict (see the module docstring and `format_table`).
  """
  if not data.has_ground_truth:
    raise ValueError(f"--dataset={data.dataset} has no ground-truth depth; evaluate "
                     "on --dataset=synfaces or --dataset=paired")
  data.check((split,))
  dataset = data.eval_dataset(split, num, batch_size=batch_size)
  camera = model.renderer.camera

  # autograph=False: the model and metrics are plain TensorFlow, and
  # converting them costs seconds at every start.
  @tf.function(autograph=False)
  def infer(images, depth_gt):
    out = model(images, training=False)
    mask = metrics.evaluation_mask(depth_gt, out.recon_mask)
    return (metrics.side(out.recon_depth, depth_gt, mask),
            metrics.mad(out.recon_depth, depth_gt, mask, camera), out.as_dict())

  @tf.function(autograph=False)
  def diagnose_step(recon_depth, recon_mask, depth_gt):
    mask = metrics.evaluation_mask(depth_gt, recon_mask)
    return (metrics.relief_moments(recon_depth, depth_gt, mask),
            metrics.ring_error_sums(recon_depth, depth_gt, mask))

  @tf.function(autograph=False)
  def probe(canon_depth, views, depth_gt):
    return side_with_views(model.renderer, canon_depth, views, depth_gt)

  @tf.function(autograph=False)
  def baseline(depth, depth_gt):
    mask = metrics.evaluation_mask(depth_gt)
    return (metrics.side(depth, depth_gt, mask),
            metrics.mad(depth, depth_gt, mask, camera))

  side, mad, side_null, mad_null, gts = [], [], [], [], []
  moments, ring_sums, views, views_gt, side_true_view = [], [], [], [], []
  canon_depth_sum = None
  truth = (_SynfacesTruth(data, split) if diagnose and data.dataset == "synfaces"
           else None)
  dumped = 0
  bar = tqdm(total=num, unit="img", desc=f"evaluate {split}", disable=not progress,
             file=sys.stderr, dynamic_ncols=True)
  for images, depth_gt in dataset:
    s, m, fields = infer(images, depth_gt)
    out = Decomposition(**fields)
    side.append(s.numpy())
    mad.append(m.numpy())
    flat = tf.ones_like(depth_gt)  # any constant: SIDE is scale-invariant
    s0, m0 = baseline(flat, depth_gt)
    side_null.append(s0.numpy())
    mad_null.append(m0.numpy())
    gts.append(depth_gt.numpy())
    if diagnose:
      m_i, r_i = diagnose_step(out.recon_depth, out.recon_mask, depth_gt)
      moments.append(m_i.numpy())
      ring_sums.append(r_i.numpy())
      views.append(out.view.numpy())
      batch_sum = out.canon_depth.numpy().astype(np.float64).sum(0)
      canon_depth_sum = batch_sum if canon_depth_sum is None else canon_depth_sum + batch_sum
      if truth is not None:
        views_gt.append(truth.views(depth_gt.numpy()))
        side_true_view.append(probe(out.canon_depth, tf.constant(views_gt[-1], tf.float32),
                                    depth_gt).numpy())
    if out_dir and dumped < dump_images:
      take = min(dump_images - dumped, images.shape[0])
      names = [f"{i:06d}" for i in range(dumped, dumped + take)]
      sliced = _slice_decomposition(out, take)
      visualize.dump_results(images[:take], sliced, model.config, camera,
                             os.path.join(out_dir, "dump"), names)
      dumped += take
    bar.update(images.shape[0])
  bar.close()
  if not side:
    raise ValueError(f"{split}: no images to evaluate")

  # Average-GT baseline: the split's mean ground-truth map, for every image.
  gt_all = np.concatenate(gts)
  mean_map = tf.constant(np.broadcast_to(gt_all.mean(0), (batch_size,) + gt_all.shape[1:]))
  side_avg, mad_avg = [], []
  for start in range(0, len(gt_all), batch_size):
    chunk = tf.constant(gt_all[start:start + batch_size])
    s, m = baseline(mean_map[:chunk.shape[0]], chunk)
    side_avg.append(s.numpy())
    mad_avg.append(m.numpy())

  per_image = {name: np.concatenate(v) for name, v in [
      ("side", side), ("mad", mad), ("side_const_null", side_null),
      ("mad_const_null", mad_null), ("side_avg_gt", side_avg), ("mad_avg_gt", mad_avg)]}
  for key in per_image:
    if key.startswith("side"):
      per_image[key] = per_image[key] * 100.0  # reported x 1e-2
  n = len(per_image["side"])
  empty = int(np.sum(~np.isfinite(per_image["side"])))
  if empty:
    logging.warning("%d of %d images have an empty evaluation mask (no reconstructed "
                    "foreground) and are left out of the means", empty, n)
  summary = {
      "side": _stats(per_image["side"]), "mad": _stats(per_image["mad"]),
      "baselines": {
          "const_null": {"side": _stats(per_image["side_const_null"])["mean"],
                         "mad": _stats(per_image["mad_const_null"])["mean"]},
          "avg_gt": {"side": _stats(per_image["side_avg_gt"])["mean"],
                     "mad": _stats(per_image["mad_avg_gt"])["mean"]}},
      "num_images": n, "empty_masks": empty, "split": split,
      "dataset": data.dataset,
  }
  null = summary["baselines"]["const_null"]
  summary["ratio_to_const_null"] = {
      "side": summary["side"]["mean"] / null["side"],
      "mad": summary["mad"]["mean"] / null["mad"]}
  if diagnose:
    # Every image posed by its own predicted view, all with one shape: the
    # split's average predicted canonical depth.
    mean_depth = (canon_depth_sum / len(gt_all)).astype(np.float32)
    all_views = np.concatenate(views)
    side_mean_depth = []
    for start in range(0, len(gt_all), batch_size):
      chunk = gt_all[start:start + batch_size]
      shared = tf.constant(np.broadcast_to(mean_depth, chunk.shape))
      side_mean_depth.append(probe(shared, tf.constant(all_views[start:start + batch_size]),
                                   tf.constant(chunk)).numpy())
    probes = {"side_mean_canonical_depth": 100.0 * np.concatenate(side_mean_depth)}
    if side_true_view:
      probes["side_true_view"] = 100.0 * np.concatenate(side_true_view)
    summary["diagnosis"], extra_columns = diagnosis(
        np.concatenate(moments), np.concatenate(ring_sums), per_image["side"],
        all_views, np.concatenate(views_gt) if views_gt else None,
        dataset=data.dataset, probes=probes)
    per_image.update(extra_columns)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "per_image.csv"), "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["index"] + list(per_image))
      for i in range(n):
        writer.writerow([i] + [f"{per_image[k][i]:.6f}" for k in per_image])
    write_summary(summary, out_dir)
    summary["files"] = {"per_image_csv": os.path.join(out_dir, "per_image.csv"),
                        "summary_json": os.path.join(out_dir, "summary.json")}
    if diagnose:
      path = os.path.join(out_dir, "diagnosis.csv")
      write_diagnosis_csv(summary["diagnosis"], path)
      summary["files"]["diagnosis_csv"] = path
  return summary


def write_summary(summary: dict, out_dir: str) -> str:
  """Writes `summary` (less its "files" entry) as <out_dir>/summary.json;
  returns the path. Callers that add fields (the checkpoint, the training
  steps and minutes) write it again, so `tfsym3d.compare` finds them."""
  path = os.path.join(out_dir, "summary.json")
  with open(path, "w") as f:
    json.dump({k: v for k, v in summary.items() if k != "files"}, f, indent=2)
  return path


class _SynfacesTruth:
  """The generator's viewpoint of each evaluated synfaces image, in order.

  Regenerates sample (seed, split offset + i) as `DataSource.eval_dataset`
  does and checks that its depth is the batch's ground truth, so a pose can
  never be paired with another image.
  """

  def __init__(self, data, split: str):
    self.generator = synthetic.SynFaces(image_size=data.image_size, seed=data.seed)
    self.offset = synthetic.split_offset(split)
    self.next_index = 0

  def views(self, depth_gt: np.ndarray) -> np.ndarray:
    """depth_gt [B, S, S] of the next B images -> their views [B, 6]."""
    out = []
    for depth in depth_gt:
      sample = self.generator.sample(self.offset + self.next_index)
      if not np.array_equal(sample["depth"], depth):
        raise ValueError(f"--diagnose: synfaces sample {self.next_index} regenerated "
                         "with a different depth than the evaluated one; its "
                         "viewpoint cannot be trusted")
      out.append(sample["view"])
      self.next_index += 1
    return np.stack(out)


def diagnosis(moments: np.ndarray, ring_sums: np.ndarray, side_x100: np.ndarray,
              views: np.ndarray, views_gt: Optional[np.ndarray],
              dataset: str = "synfaces", probes: Optional[Dict[str, np.ndarray]] = None):
  """The diagnosis of an evaluation, from per-image quantities.

  Args:
    moments: [N, 3] `metrics.relief_moments` of each image.
    ring_sums: [N, R, 3] `metrics.ring_error_sums`.
    side_x100: [N] per-image SIDE x 1e-2 (NaN for an empty mask).
    views: [N, 6] predicted views (radians); views_gt: [N, 6] the true ones,
      or None when the data has none.
    dataset: for the message when views_gt is None.
    probes: optional per-image SIDE x 1e-2 [N] of the "what if" renderings
      (`side_with_views`): "side_mean_canonical_depth" (every image given
      the split's average predicted canonical depth, posed by its own
      predicted view) and, with a true viewpoint, "side_true_view" (the
      image's own canonical depth posed by the true view).
  Returns:
    (diagnosis dict, per-image columns {name: [N]} for per_image.csv).
    Angles in degrees, SIDE and ring errors x 1e-2.
  """
  per_scale, scale = metrics.best_relief_scale(moments)
  side_at_scale = 100 * metrics.side_at_relief_scale(moments, scale)
  side_at_own = 100 * metrics.side_at_relief_scale(moments, per_scale)
  finite = np.isfinite(per_scale)
  relief = {
      "scale": scale,
      "per_image_scale_median": float(np.median(per_scale[finite])) if finite.any()
                                else float("nan"),
      "side": _stats(side_x100)["mean"],
      "side_at_scale": _stats(side_at_scale)["mean"],
      "side_at_per_image_scale": _stats(side_at_own)["mean"],
  }
  rings = metrics.ring_table(ring_sums)
  for row in rings:
    row["rms"] *= 100
    row["mean"] *= 100
  columns = {"relief_scale": per_scale}
  viewpoint, note = None, None
  if views_gt is None:
    note = NO_POSE.format(dataset=dataset)
  else:
    viewpoint = {}
    for name, axis in AXES:
      predicted = np.degrees(views[:, axis].astype(np.float64))
      true = np.degrees(views_gt[:, axis].astype(np.float64))
      fit = metrics.linear_fit(predicted, true)
      fit["error_side_pearson"] = metrics.pearson(np.abs(predicted - true), side_x100)
      viewpoint[name] = fit
      columns[f"{name}_true_deg"] = true
      columns[f"{name}_pred_deg"] = predicted
  result = {"relief": relief, "rings": rings, "viewpoint": viewpoint}
  if probes:
    result["probes"] = {"side": relief["side"]}
    for name, values in probes.items():
      result["probes"][name] = _stats(values)["mean"]
      columns[name] = values
  if note:
    result["viewpoint_note"] = note
  return result, columns


def format_diagnosis(diag: Dict) -> str:
  """The diagnosis as text tables (angles degrees, SIDE and errors x1e-2)."""
  lines = []
  if diag["viewpoint"] is None:
    lines.append(diag.get("viewpoint_note", "no ground-truth viewpoint"))
  else:
    lines += ["viewpoint against the ground truth (degrees; fit predicted = slope * "
              "true + intercept)",
              f"{'':<8}{'slope':>8}{'intercept':>11}{'pearson':>9}{'rmse':>8}"
              f"{'r(|err|, SIDE)':>16}"]
    for name, _ in AXES:
      f = diag["viewpoint"][name]
      lines.append(f"{name:<8}{f['slope']:>8.3f}{f['intercept']:>11.2f}{f['pearson']:>9.3f}"
                   f"{f['rmse']:>8.2f}{f['error_side_pearson']:>16.3f}")
  r = diag["relief"]
  lines += [f"relief scale (oracle: fitted to the ground truth): best overall "
            f"{r['scale']:.3f} (per-image median {r['per_image_scale_median']:.3f}); "
            f"SIDE {r['side']:.3f} -> {r['side_at_scale']:.3f} at {r['scale']:.3f}, "
            f"{r['side_at_per_image_scale']:.3f} at each image's own",
            *_format_probes(diag.get("probes")),
            "error by distance from the mask's rim (centred log-depth error x1e-2)",
            f"{'ring':<8}{'fraction':>10}{'rms':>9}{'mean':>9}"]
  for row in diag["rings"]:
    lines.append(f"{row['ring']:<8}{row['fraction']:>10.3f}{row['rms']:>9.3f}"
                 f"{row['mean']:>9.3f}")
  return "\n".join(lines)


def _format_probes(probes: Optional[Dict]):
  """The "what if" lines of `format_diagnosis` (none without probes)."""
  if not probes:
    return []
  lines = [f"SIDE as predicted {probes['side']:.3f}; with the true viewpoint "
           + (f"{probes['side_true_view']:.3f} (oracle: the pose's share of the error)"
              if "side_true_view" in probes else "unknown (no ground-truth pose)")]
  mean_depth = probes["side_mean_canonical_depth"]
  verdict = ("lower: the per-image shape differences hurt more than they help"
             if mean_depth < probes["side"] else
             "higher: the per-image shape differences help")
  lines.append(f"SIDE with every image given the average predicted canonical depth "
               f"{mean_depth:.3f} ({verdict})")
  return lines


def write_diagnosis_csv(diag: Dict, path: str) -> None:
  """The diagnosis as rows (section, item, quantity, value)."""
  rows = []
  for name, fit in (diag["viewpoint"] or {}).items():
    rows += [("viewpoint", name, key, value) for key, value in fit.items()]
  rows += [("relief", "", key, value) for key, value in diag["relief"].items()]
  rows += [("probes", "", key, value) for key, value in (diag.get("probes") or {}).items()]
  for row in diag["rings"]:
    rows += [("rings", row["ring"], key, row[key])
             for key in ("pixels", "fraction", "rms", "mean")]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["section", "item", "quantity", "value"])
    writer.writerows(rows)


def _slice_decomposition(out, n):
  return dataclasses.replace(out, **{k: v[:n] for k, v in out.as_dict().items()})


def format_table(summary: Dict) -> str:
  """The evaluation as a small text table (SIDE x1e-2, MAD degrees)."""
  b = summary["baselines"]
  lines = [
      f"evaluation on {summary['dataset']} '{summary['split']}', "
      f"{summary['num_images']} images (SIDE x1e-2, MAD degrees; mean +- std)",
      f"{'':<24}{'SIDE':>16}{'MAD':>16}",
      f"{'tfsym3d':<24}{summary['side']['mean']:>9.3f} +- {summary['side']['std']:<4.3f}"
      f"{summary['mad']['mean']:>9.2f} +- {summary['mad']['std']:<4.2f}",
      f"{'constant null depth':<24}{b['const_null']['side']:>9.3f}{'':7}"
      f"{b['const_null']['mad']:>9.2f}",
      f"{'average GT depth':<24}{b['avg_gt']['side']:>9.3f}{'':7}{b['avg_gt']['mad']:>9.2f}",
      f"ratio to constant null depth: SIDE {summary['ratio_to_const_null']['side']:.3f}, "
      f"MAD {summary['ratio_to_const_null']['mad']:.3f}",
  ]
  for key, label in (("steps", "training steps"), ("train_minutes", "training minutes"),
                     ("wall_minutes", "wall minutes (train + evaluate)")):
    if key in summary:
      value = summary[key]
      lines.append(f"{label}: {value:.1f}" if isinstance(value, float) else
                   f"{label}: {value}")
  return "\n".join(lines)


def define_flags():
  """The evaluator's own flags (only when run as a program: `tfsym3d.train`
  imports this module and has no use for them); the rest are `tfsym3d.flags`."""
  flags.DEFINE_bool("diagnose", False, "Also report where the depth error comes "
                    "from: error by distance from the mask's rim, the best-fitting "
                    "relief scale (oracle) and, on --dataset=synfaces, the "
                    "predicted viewpoint against the generator's (slopes, "
                    "correlations).")
  flags.DEFINE_bool("weight_average", True, "For a run that keeps a moving average "
                    "of its weights (--weight_average_decay): evaluate the average "
                    "(the default, what export reads) or, with --noweight_average, "
                    "the raw weights of the same checkpoint.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.checkpoint:
    raise app.UsageError("set --checkpoint (a run directory or checkpoint prefix)")
  config = tflags.model_config()
  data = runs.data_source_from_flags(config.image_size)
  try:
    model = runs.build_model(config)
    prefix = runs.restore_weights(model, FLAGS.checkpoint, averaged=FLAGS.weight_average)
  except FileNotFoundError as error:
    raise app.UsageError(str(error)) from None
  logging.info("evaluating %s", prefix)
  run_dir = FLAGS.checkpoint if os.path.isdir(FLAGS.checkpoint) else os.path.dirname(
      os.path.dirname(prefix))
  out_dir = FLAGS.eval_dir or os.path.join(run_dir, "eval", FLAGS.eval_split)
  num = FLAGS.eval_images if (FLAGS.eval_images > 0 or data.dataset == "synfaces") else None
  try:
    summary = evaluate_model(model, data, FLAGS.eval_split, num, out_dir,
                             dump_images=FLAGS.dump_images,
                             progress=FLAGS.progress and not FLAGS.json,
                             diagnose="diagnose" in FLAGS and FLAGS.diagnose)
  except (sources.DataNotFoundError, ValueError) as error:
    raise app.UsageError(str(error)) from None
  summary["checkpoint"] = prefix
  summary["weights"] = ("moving average" if FLAGS.weight_average and
                        runs.has_weight_average(prefix) else "raw")
  write_summary(summary, out_dir)
  if FLAGS.json:
    sys.stdout.write(json.dumps(summary) + "\n")
  else:
    print(format_table(summary))
    print(f"weights: {summary['weights']} ({prefix})")
    if "diagnosis" in summary:
      print(format_diagnosis(summary["diagnosis"]))
    print(f"per-image CSV and summary in {out_dir}")


if __name__ == "__main__":
  define_flags()
  app.run(main, argv=runs.argv_with_run_flagfile(sys.argv, "checkpoint"))
