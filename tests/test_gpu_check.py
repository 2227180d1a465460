"""The GPU check script runs end to end on the CPU path (--cpu_ok --dry_run)."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # every part in a fresh process: about two minutes on 2 cores
def test_gpu_check_dry_run_writes_every_part(tmp_path):
  out = tmp_path / "gpu_check.json"
  run = subprocess.run([sys.executable, "-m", "tfsym3d.bench.gpu_check", "--cpu_ok",
                        "--dry_run", "--out", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=900, check=False)
  report = json.loads(out.read_text())
  names = [p["name"] for p in report["parts"]]
  assert names == ["tests", "mirrored_strategy_step", "train_step_float32",
                   "train_step_mixed_float16", "train_step_jit_compile", "inference"]
  assert run.returncode == 0 and report["ok"], [(p["name"], p.get("stderr_tail"))
                                                for p in report["parts"]]
  assert report["parts"][2]["json"]["benchmark"] == "train_step"
  assert report["parts"][5]["json"]["formats"]["keras"]["ms_1thread"] > 0


def test_gpu_check_one_part_on_the_cpu(tmp_path):
  out = tmp_path / "gpu_check.json"
  run = subprocess.run([sys.executable, "-m", "tfsym3d.bench.gpu_check", "--cpu_ok",
                        "--dry_run", "--only", "mirrored_strategy_step", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  report = json.loads(out.read_text())
  assert run.returncode == 0, report
  (part,) = report["parts"]
  assert part["name"] == "mirrored_strategy_step" and part["rc"] == 0
  assert report["dry_run"] is True and report["ok"] is True
