"""Compares finished runs: SIDE and MAD, as ratios to the flat-plane
baseline (docs/method.md §8), against the number of training images seen.

    python -m tfsym3d.compare runs/a runs/b ... [--plot=curve.png] [--json]

Each argument is a run directory holding `flags.txt` and an evaluation
summary (`eval/<split>/summary.json`, written by the training job's final
evaluation or by `tfsym3d.evaluate`). Training images are the evaluated
checkpoint's step times the run's batch size. It prints a Markdown table, one
row per run sorted by training images, and with --plot draws both ratios
against the training images (log scale) with the mean over the runs at each
size joined by a line, so a compute curve (the same recipe run for more or
fewer steps) reads at a glance. --json prints the rows instead.
"""

import collections
import json
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
from PIL import Image, ImageDraw, ImageFont

FLAGS = flags.FLAGS


class RunNotEvaluated(ValueError):
  """A run directory without the files a comparison needs."""


def _flag_values(path: str) -> Dict[str, str]:
  """--name=value lines of a flagfile, by name (the last one wins)."""
  values = {}
  with open(path) as f:
    for line in f:
      match = re.match(r"\s*--([A-Za-z_0-9]+)=(.*)$", line.rstrip("\n"))
      if match:
        values[match.group(1)] = match.group(2)
  return values


def run_row(run_dir: str, split: str = "test") -> Dict:
  """One run's row: name, steps, batch, training images, SIDE and MAD
  (x1e-2, degrees), their ratios to the constant-null baseline, training
  minutes (when the training job wrote them) and the weights evaluated.

  Raises RunNotEvaluated naming the missing file and the command that makes it.
  """
  summary_path = os.path.join(run_dir, "eval", split, "summary.json")
  flags_path = os.path.join(run_dir, "flags.txt")
  if not os.path.exists(flags_path):
    raise RunNotEvaluated(f"{flags_path} is missing: {run_dir} is not a training run "
                          "directory (tfsym3d.train writes flags.txt)")
  if not os.path.exists(summary_path):
    raise RunNotEvaluated(
        f"{summary_path} is missing: evaluate the run first with "
        f"python -m tfsym3d.evaluate --checkpoint={run_dir} --eval_split={split}")
  with open(summary_path) as f:
    summary = json.load(f)
  run_flags = _flag_values(flags_path)
  batch = int(run_flags.get("batch_size", 64))
  steps = summary.get("steps")
  if steps is None:
    match = re.search(r"ckpt-(\d+)$", summary.get("checkpoint", ""))
    if match is None:
      raise RunNotEvaluated(f"{summary_path} names no step or checkpoint: re-run "
                            f"python -m tfsym3d.evaluate --checkpoint={run_dir}")
    steps = int(match.group(1))
  ratios = summary["ratio_to_const_null"]
  return {
      "run": os.path.basename(os.path.normpath(run_dir)), "path": run_dir,
      "steps": int(steps), "batch_size": batch, "images": int(steps) * batch,
      "image_size": int(run_flags.get("image_size", 64)),
      "seed": int(run_flags.get("seed", 0)),
      "side": summary["side"]["mean"], "mad": summary["mad"]["mean"],
      "side_ratio": ratios["side"], "mad_ratio": ratios["mad"],
      "num_images": summary.get("num_images"),
      "train_minutes": summary.get("train_minutes"),
      "weights": summary.get("weights", "as trained"),
  }


def format_table(rows: Sequence[Dict]) -> str:
  """The rows as a Markdown table."""
  lines = ["| run | seed | training images | steps x batch | SIDE (x1e-2) | MAD (deg) "
           "| SIDE / null | MAD / null | training minutes |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    minutes = "" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}"
    lines.append(f"| {r['run']} | {r['seed']} | {r['images']:,} | {r['steps']:,} x "
                 f"{r['batch_size']} | {r['side']:.3f} | {r['mad']:.2f} | "
                 f"{r['side_ratio']:.3f} | {r['mad_ratio']:.3f} | {minutes} |")
  return "\n".join(lines)


# ------------------------------------------------------------------ plot ----

_SERIES = (("side_ratio", "SIDE / null", (31, 119, 180)),
           ("mad_ratio", "MAD / null", (214, 96, 39)))


def _nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
  """About `count` round values covering [low, high]."""
  span = max(high - low, 1e-9)
  step = 10 ** math.floor(math.log10(span / count))
  for factor in (1, 2, 5, 10):
    if span / (step * factor) <= count:
      step *= factor
      break
  first = math.floor(low / step) * step
  return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _log_ticks(low: float, high: float) -> List[float]:
  """1, 2, 5 x 10^k values in [low, high] (ticks of a log axis)."""
  ticks = []
  for power in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
    ticks += [m * 10 ** power for m in (1, 2, 5) if low <= m * 10 ** power <= high]
  return ticks


def plot(rows: Sequence[Dict], path: str, references: Sequence = (),
         title: str = "", size=(720, 440)) -> None:
  """Draws both ratios against training images (log2 axis) into a PNG.

  Args:
    rows: `run_row` dicts (at least one).
    path: the PNG to write.
    references: (value, label) horizontal dashed lines, e.g. targets.
    title: the plot's title.
  """
  if not rows:
    raise ValueError("nothing to plot: no runs")
  width, height = size
  left, right, top, bottom = 70, 170, 40, 60
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default(size=13)
  xs = [math.log2(r["images"]) for r in rows]
  x_low, x_high = min(xs) - 0.3, max(xs) + 0.3
  values = [r[key] for r in rows for key, _, _ in _SERIES] + [v for v, _ in references]
  y_ticks = _nice_ticks(min(values) * 0.95, max(values) * 1.05)
  y_low, y_high = y_ticks[0], y_ticks[-1]

  def to_px(x, y):
    px = left + (x - x_low) / (x_high - x_low) * (width - left - right)
    py = height - bottom - (y - y_low) / (y_high - y_low) * (height - top - bottom)
    return px, py

  for y in y_ticks:
    _, py = to_px(x_low, y)
    draw.line([left, py, width - right, py], fill=(230, 230, 230))
    draw.text((left - 8, py), f"{y:.2f}", fill="black", font=font, anchor="rm")
  draw.rectangle([left, top, width - right, height - bottom], outline=(90, 90, 90))
  for images in _log_ticks(2 ** x_low, 2 ** x_high):
    px, _ = to_px(math.log2(images), y_low)
    draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
    label = f"{images / 1e6:g}M" if images >= 1e6 else f"{images / 1e3:g}k"
    draw.text((px, height - bottom + 8), label, fill="black", font=font, anchor="mt")
  draw.text(((left + width - right) / 2, height - 22), "training images (log scale)",
            fill="black", font=font, anchor="mm")
  if title:
    draw.text((width / 2, 16), title, fill="black", font=font, anchor="mm")
  for value, label in references:
    _, py = to_px(x_low, value)
    for x0 in range(left, width - right, 12):
      draw.line([x0, py, min(x0 + 6, width - right), py], fill=(120, 120, 120))
    draw.text((width - right + 6, py), label, fill=(80, 80, 80), font=font, anchor="lm")
  for n, (key, label, colour) in enumerate(_SERIES):
    by_size = collections.defaultdict(list)
    for r in rows:
      by_size[r["images"]].append(r[key])
    means = [to_px(math.log2(k), sum(v) / len(v)) for k, v in sorted(by_size.items())]
    if len(means) > 1:
      draw.line(means, fill=colour, width=2)
    for r in rows:
      px, py = to_px(math.log2(r["images"]), r[key])
      draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
    # Legend, bottom left inside the frame (ratios fall with more images, so
    # that corner is usually empty).
    ly = height - bottom - 14 - 16 * (len(_SERIES) - 1 - n)
    draw.line([left + 10, ly, left + 30, ly], fill=colour, width=2)
    draw.ellipse([left + 16, ly - 4, left + 24, ly + 4], fill=colour)
    draw.text((left + 36, ly), label, fill="black", font=font, anchor="lm")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image.save(path)


def parse_references(text: str) -> List:
  """'0.29:paper SIDE,0.40:target' -> [(0.29, 'paper SIDE'), (0.40, 'target')]."""
  references = []
  for item in filter(None, (t.strip() for t in (text or "").split(","))):
    value, _, label = item.partition(":")
    try:
      references.append((float(value), label.strip() or value))
    except ValueError:
      raise ValueError(f"--references item {item!r}: write VALUE:LABEL, e.g. "
                       "0.29:paper SIDE") from None
  return references


def define_flags():
  """This command's own flags (only when run as a program)."""
  flags.DEFINE_string("plot", None, "Also draw the ratios against training images "
                      "into this PNG.")
  flags.DEFINE_string("split", "test", "The evaluated split whose summary is read.")
  flags.DEFINE_string("references", "", "Dashed horizontal lines on the plot, "
                      "VALUE:LABEL items separated by commas.")
  flags.DEFINE_string("title", "", "The plot's title.")
  flags.DEFINE_bool("json", False, "Print the rows as one JSON list.")


def main(argv: List[str]) -> Optional[int]:
  run_dirs = argv[1:]
  if not run_dirs:
    raise app.UsageError("name one or more run directories, e.g. "
                         "python -m tfsym3d.compare runs/synfaces runs/longer")
  try:
    rows = sorted((run_row(d, FLAGS.split) for d in run_dirs),
                  key=lambda r: (r["images"], r["run"]))
    references = parse_references(FLAGS.references)
  except (RunNotEvaluated, ValueError) as error:
    raise app.UsageError(str(error)) from None
  if FLAGS.json:
    sys.stdout.write(json.dumps(rows) + "\n")
  else:
    print(format_table(rows))
  if FLAGS.plot:
    plot(rows, FLAGS.plot, references, FLAGS.title)
    if not FLAGS.json:
      print(f"plot: {FLAGS.plot}")
  return None


if __name__ == "__main__":
  define_flags()
  app.run(main)
