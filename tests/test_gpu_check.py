"""The GPU check script: its parts and their commands (fast), and a run end
to end on the CPU path (--cpu_ok --dry_run, slow)."""

import json
import pathlib
import shlex
import subprocess
import sys

import pytest

from tfsym3d.bench import gpu_check

REPO = pathlib.Path(__file__).resolve().parents[1]
PART_NAMES = ["tests", "mirrored_strategy_step", "train_step_float32",
              "train_step_mixed_float16", "train_step_jit_compile", "inference"]


def _listed(*flags):
  """{part name: argv} as `gpu_check --list` prints them."""
  run = subprocess.run([sys.executable, "-m", "tfsym3d.bench.gpu_check", "--list", *flags],
                       cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  # A part's command may span lines (the MirroredStrategy snippet): a new
  # part starts at a line "name<TAB>limit<TAB>...".
  entries, current = [], None
  for line in run.stdout.splitlines():
    fields = line.split("\t", 2)
    if len(fields) == 3 and fields[0] in PART_NAMES and fields[1].isdigit():
      current = [fields[0], int(fields[1]), fields[2]]
      entries.append(current)
    else:
      current[2] += "\n" + line
  return {name: (limit_s, shlex.split(command)) for name, limit_s, command in entries}


@pytest.mark.parametrize("dry_run", [False, True])
def test_gpu_check_lists_every_part_with_its_command(dry_run):
  listed = _listed(*(["--dry_run"] if dry_run else []))
  assert list(listed) == PART_NAMES
  expected = {name: (limit_s, dry if dry_run else full)
              for name, limit_s, full, dry in gpu_check.parts(sys.executable)}
  assert listed == expected
  argv = {name: command for name, (_, command) in listed.items()}
  # The tests part runs the model, rasterizer, training and export tests
  # (the dry run one existing test of each file).
  tests = argv["tests"]
  assert tests[:3] == [sys.executable, "-m", "pytest"]
  for path in gpu_check.TEST_FILES:
    chosen = [a for a in tests if a.split("::")[0] == path]
    assert len(chosen) == 1, (path, tests)
    if dry_run:
      file_name, test_name = chosen[0].split("::")
      assert f"def {test_name}(" in (REPO / file_name).read_text(), chosen[0]
    else:
      assert chosen == [path] and "not slow" in tests
  # Each train_step part asks for what its name says, full and dry alike.
  for name in ("train_step_float32", "train_step_mixed_float16", "train_step_jit_compile"):
    assert argv[name][1:4] == ["-m", "tfsym3d.bench", "train_step"] and "--json" in argv[name]
  assert "--mixed_precision" not in argv["train_step_float32"]
  assert "--jit_compile" not in argv["train_step_float32"]
  assert "--mixed_precision" in argv["train_step_mixed_float16"]
  assert "--jit_compile" in argv["train_step_jit_compile"]
  assert argv["inference"][1:4] == ["-m", "tfsym3d.bench", "inference"]
  assert "MirroredStrategy()" in argv["mirrored_strategy_step"][2]
  if not dry_run:
    for name in ("train_step_float32", "train_step_mixed_float16", "train_step_jit_compile"):
      assert "--flagfile=configs/reference_model.cfg" in argv[name]
    assert (REPO / "configs" / "reference_model.cfg").exists()


def test_gpu_check_refuses_an_unknown_part():
  run = subprocess.run([sys.executable, "-m", "tfsym3d.bench.gpu_check", "--list",
                        "--only", "tests,nope"], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 2 and "unknown part(s) nope" in run.stderr


@pytest.mark.slow  # every part in a fresh process: several minutes on 2 cores
def test_gpu_check_dry_run_writes_every_part(tmp_path):
  out = tmp_path / "gpu_check.json"
  run = subprocess.run([sys.executable, "-m", "tfsym3d.bench.gpu_check", "--cpu_ok",
                        "--dry_run", "--out", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=1800, check=False)
  report = json.loads(out.read_text())
  names = [p["name"] for p in report["parts"]]
  assert names == PART_NAMES
  assert run.returncode == 0 and report["ok"], [(p["name"], p.get("stderr_tail"))
                                                for p in report["parts"]]
  assert report["environment"]["cpu"]["logical_cores"] >= 1
  parts = {p["name"]: p for p in report["parts"]}
  assert "4 passed" in parts["tests"]["stdout_tail"]
  float32 = parts["train_step_float32"]["json"]
  assert float32["benchmark"] == "train_step" and float32["precision"] == "float32"
  assert float32["jit_compile"] is False and float32["images_per_s"] > 0
  # On the CPU --mixed_precision is bfloat16 (float16 on a GPU).
  assert parts["train_step_mixed_float16"]["json"]["precision"] == "mixed_bfloat16"
  assert parts["train_step_jit_compile"]["json"]["jit_compile"] is True
  assert parts["inference"]["json"]["formats"]["keras"]["ms_1thread"] > 0


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
