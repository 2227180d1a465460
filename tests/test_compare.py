"""tfsym3d.compare: rows from run directories, the table and the plot."""

import json
import subprocess
import sys
import pathlib

import numpy as np
import pytest
from PIL import Image

from tfsym3d import compare

REPO = pathlib.Path(__file__).resolve().parents[1]


def _fake_run(root: pathlib.Path, name: str, batch: int, steps, side: float, mad: float,
              checkpoint_step: int = 0):
  run = root / name
  (run / "eval" / "test").mkdir(parents=True)
  (run / "flags.txt").write_text(f"--dataset=synfaces\n--batch_size={batch}\n"
                                 "--image_size=32\n--seed=3\n")
  summary = {"side": {"mean": side}, "mad": {"mean": mad},
             "baselines": {"const_null": {"side": 1.2, "mad": 36.0}},
             "ratio_to_const_null": {"side": side / 1.2, "mad": mad / 36.0},
             "num_images": 100}
  if steps is not None:
    summary.update(steps=steps, train_minutes=2.5)
  else:
    summary["checkpoint"] = str(run / "ckpt" / f"ckpt-{checkpoint_step}")
  (run / "eval" / "test" / "summary.json").write_text(json.dumps(summary))
  return run


def test_rows_table_and_plot(tmp_path):
  small = _fake_run(tmp_path, "small", 16, 1000, side=0.72, mad=18.0)
  # No steps in the summary (written by tfsym3d.evaluate): the checkpoint's.
  large = _fake_run(tmp_path, "large", 16, None, side=0.48, mad=12.6, checkpoint_step=4000)
  row = compare.run_row(str(large))
  assert (row["steps"], row["images"], row["seed"]) == (4000, 64000, 3)
  assert row["side_ratio"] == pytest.approx(0.4) and row["mad_ratio"] == pytest.approx(0.35)
  table = compare.format_table([compare.run_row(str(small)), row])
  assert "| small | 3 | 16,000 | 1,000 x 16 | 0.720 | 18.00 | 0.600 | 0.500 | 2.5 |" in table
  path = tmp_path / "curve.png"
  compare.plot([compare.run_row(str(small)), row], str(path),
               compare.parse_references("0.29:paper SIDE"))
  pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
  blue = np.all(np.abs(pixels - [31, 119, 180]) < 10, axis=-1)
  orange = np.all(np.abs(pixels - [214, 96, 39]) < 10, axis=-1)
  # Both series are drawn; the SIDE ratio falls from 0.6 to 0.4, so its
  # right-hand points sit lower (larger row index) than its left-hand ones.
  assert blue.sum() > 50 and orange.sum() > 50
  rows, cols = np.nonzero(blue[:, 120:560])   # right of the legend
  assert rows[cols > cols.max() - 10].mean() > rows[cols < cols.min() + 10].mean() + 30


def test_cli_names_a_missing_evaluation(tmp_path):
  run = tmp_path / "unevaluated"
  run.mkdir()
  (run / "flags.txt").write_text("--batch_size=16\n")
  result = subprocess.run([sys.executable, "-m", "tfsym3d.compare", str(run)],
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0
  assert "summary.json is missing" in result.stderr
  assert "tfsym3d.evaluate --checkpoint=" in result.stderr
  with pytest.raises(ValueError, match="VALUE:LABEL"):
    compare.parse_references("paper")
