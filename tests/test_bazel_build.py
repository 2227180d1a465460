"""Bazel builds the rasterizer kernel offline, and that library passes parity.

Builds //tfsym3d/render:rasterizer_op of this checkout with a temporary output
root (no bazel-* symlinks are made in the checkout), then runs
tests/test_rasterizer_parity.py (the 'tf' rasterizer against the kernel) in a
fresh Python with $TFSYM3D_RASTERIZER_LIBRARY pointing at Bazel's library: a
process can load the op only once, and this one may have loaded another build.

Slow (a fresh Bazel server, C++ toolchain detection and compile: ~50 s, and
the parity scenes: ~40 s); run with `pytest -m slow tests/test_bazel_build.py`.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from tfsym3d.render import kernel_recipe

WORKSPACE = pathlib.Path(__file__).resolve().parents[1]
TARGET = "//tfsym3d/render:rasterizer_op"

# Runs the parity tests, then reports which library the backend loaded.
PARITY_SCRIPT = """
import sys
import pytest
from tfsym3d.render import tfg_backend
code = pytest.main(["-q", "-s", "tests/test_rasterizer_parity.py"])
print("LOADED", tfg_backend.loaded_library())
sys.exit(int(code))
"""


def _missing_overrides():
  """Rule-set directories that .bazelrc points Bazel at but do not exist."""
  text = (WORKSPACE / ".bazelrc").read_text()
  paths = set(re.findall(r"--override_repository=\w+=(\S+)", text))
  return sorted(p for p in paths if not pathlib.Path(p).is_dir())


def _bazel_skip_reason():
  if shutil.which("bazel") is None:
    return ("bazel is not installed (docs/rasterizer.md, 'Building the kernel with Bazel', "
            "says how to install it with apt); the on-first-use g++ "
            "build is tested by test_tfg_backend.py")
  missing = _missing_overrides()
  if missing:
    return (f"the local rule sets .bazelrc names are missing: {missing} "
            "(apt-get install bazel-rules-java bazel-platforms)")
  return None


@pytest.mark.slow
@pytest.mark.skipif(_bazel_skip_reason() is not None,
                    reason=str(_bazel_skip_reason()))
def test_bazel_build_passes_parity(tmp_path):
  root = tmp_path / "bazel_root"
  startup = ["bazel", f"--output_user_root={root}",
             "--max_idle_secs=60"]
  env = dict(os.environ, PYTHON_BIN_PATH=sys.executable)

  def bazel(*args):
    return subprocess.run(startup + list(args), cwd=WORKSPACE, env=env,
                          capture_output=True, text=True, check=False)

  links_before = sorted(WORKSPACE.glob("bazel-*"))
  try:
    try:
      start = time.perf_counter()
      build = bazel("build", "--symlink_prefix=/", TARGET)
      seconds = time.perf_counter() - start
      print(f"\nbazel build {TARGET} (fresh output root): {seconds:.0f} s\n"
            + "\n".join(build.stderr.splitlines()[-8:]))
      assert build.returncode == 0, build.stderr
      info = bazel("info", "bazel-bin")
      assert info.returncode == 0, info.stderr
    finally:
      bazel("shutdown")
    library = pathlib.Path(info.stdout.strip(), "tfsym3d", "render",
                           "rasterizer_op.so")
    assert library.is_file()
    key = library.with_name(library.name + ".key").read_text().strip()
    assert key == kernel_recipe.recipe_key()
    # --symlink_prefix=/: no bazel-* links were added to the checkout.
    assert sorted(WORKSPACE.glob("bazel-*")) == links_before
    parity = _run_parity(library)
  finally:
    # Bazel leaves its output tree read-only; it takes ~170 MB.
    subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
    shutil.rmtree(root, ignore_errors=True)
  print("\n".join(line for line in parity.stdout.splitlines()
                  if line.startswith(("S=", "LOADED")) or "passed" in line))
  assert parity.returncode == 0, parity.stdout[-3000:] + parity.stderr[-3000:]
  summary = [line for line in parity.stdout.splitlines()
             if re.match(r"\d+ passed", line)]
  assert summary and "skipped" not in summary[-1], parity.stdout[-3000:]
  assert f"LOADED {library}" in parity.stdout


def _run_parity(library):
  """Runs PARITY_SCRIPT in a fresh Python that loads `library`."""
  env = dict(os.environ, TFSYM3D_RASTERIZER_LIBRARY=str(library),
             PYTHONPATH=os.pathsep.join(
                 filter(None, [str(WORKSPACE), os.environ.get("PYTHONPATH")])),
             TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-c", PARITY_SCRIPT], cwd=WORKSPACE,
                        env=env, capture_output=True, text=True, check=False)
