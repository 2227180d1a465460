"""The kernel's one build recipe and how the backend picks a built library."""

import json
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from tfsym3d.render import kernel_recipe
from tfsym3d.render import tfg_backend

RECIPE_SCRIPT = pathlib.Path(kernel_recipe.__file__)


def test_tensorflow_flags_split_by_role():
  flags = kernel_recipe.tensorflow_flags(
      ["-I/tf/include", "-D_GLIBCXX_USE_CXX11_ABI=1", "--std=c++17"],
      ["-L/tf", "-l:libtensorflow_framework.so.2"])
  assert flags == {"include_dirs": ["/tf/include"],
                   "copts": ["-D_GLIBCXX_USE_CXX11_ABI=1", "--std=c++17"],
                   "library_dirs": ["/tf"],
                   "libraries": [":libtensorflow_framework.so.2"]}
  with pytest.raises(ValueError, match="kernel_recipe.py only knows -L and -l"):
    kernel_recipe.tensorflow_flags([], ["-Wl,-rpath,/tf"])


def test_gcc_command_is_the_recipe():
  flags = kernel_recipe.tensorflow_flags()
  argv = kernel_recipe.gcc_command("g++", ["a.cc"], "out.so", flags)
  # The recipe's compile flags, in its order, right after the shared flags.
  copts = kernel_recipe.compile_copts(flags)
  assert copts[:2] == ["-O2", "-w"]
  assert argv[:3 + len(copts)] == ["g++", "-shared", "-fPIC"] + copts
  # Exactly TensorFlow's flags and ours, the source and the output.
  assert sorted(argv[1:]) == sorted(
      ["-shared", "-fPIC", "-O2", "-w", "a.cc", "-o", "out.so"] +
      tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags())


def test_recipe_key_covers_tensorflow_flags_and_sources(tmp_path):
  flags = kernel_recipe.tensorflow_flags()
  key = kernel_recipe.recipe_key(None, flags, "2.21.0")
  assert len(key) == 16 and key == kernel_recipe.recipe_key(None, flags, "2.21.0")
  assert kernel_recipe.recipe_key(None, flags, "2.22.0") != key
  other_flags = dict(flags, copts=flags["copts"] + ["-DNDEBUG"])
  assert kernel_recipe.recipe_key(None, other_flags, "2.21.0") != key
  # Install locations are not part of it.
  moved = dict(flags, include_dirs=["/elsewhere"], library_dirs=["/elsewhere"])
  assert kernel_recipe.recipe_key(None, moved, "2.21.0") == key
  sources = tmp_path / "kernels"
  sources.mkdir()
  for name in kernel_recipe.KERNEL_FILES:
    (sources / name).write_bytes(
        (kernel_recipe.kernel_source_dir() / name).read_bytes())
  assert kernel_recipe.recipe_key(sources, flags, "2.21.0") == key
  with open(sources / kernel_recipe.KERNEL_HEADERS[0], "a") as header:
    header.write("\n// changed\n")
  assert kernel_recipe.recipe_key(sources, flags, "2.21.0") != key
  assert tfg_backend.library_name() == (
      f"rasterize_triangles_{kernel_recipe.recipe_key()}.so")


def test_bazel_recipe_script_prints_the_installed_packages():
  # What the Bazel repository rule runs.
  result = subprocess.run([sys.executable, str(RECIPE_SCRIPT), "--bazel"],
                          capture_output=True, text=True, check=True)
  recipe = json.loads(result.stdout)
  assert pathlib.Path(recipe["include_dir"], "tensorflow", "core", "framework",
                      "op_kernel.h").is_file()
  assert pathlib.Path(recipe["library"]).name == "libtensorflow_framework.so.2"
  assert pathlib.Path(recipe["library"]).is_file()
  for name in recipe["sources"] + recipe["headers"]:
    assert pathlib.Path(recipe["kernel_dir"], name).is_file()
  assert recipe["copts"] == kernel_recipe.compile_copts()
  assert recipe["key"] == kernel_recipe.recipe_key()
  assert recipe["tensorflow_version"] == tf.__version__
  bad = subprocess.run([sys.executable, str(RECIPE_SCRIPT)],
                       capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and "usage" in bad.stderr


def _fake_bazel_build(workspace, key):
  library = workspace / tfg_backend.BAZEL_LIBRARY
  library.parent.mkdir(parents=True)
  library.write_bytes(b"not loaded by these tests")
  if key is not None:
    library.with_name(library.name + ".key").write_text(key + "\n")
  return library


def test_bazel_library_is_used_only_when_current(tmp_path):
  current = kernel_recipe.recipe_key()
  assert tfg_backend.bazel_library(tmp_path / "none") is None
  library = _fake_bazel_build(tmp_path / "current", current)
  assert tfg_backend.bazel_library(tmp_path / "current") == library
  _fake_bazel_build(tmp_path / "stale", "0123456789abcdef")
  assert tfg_backend.bazel_library(tmp_path / "stale") is None
  _fake_bazel_build(tmp_path / "keyless", None)
  assert tfg_backend.bazel_library(tmp_path / "keyless") is None


def test_library_env_var(monkeypatch, tmp_path):
  monkeypatch.setenv(tfg_backend.LIBRARY_ENV, str(tmp_path / "missing.so"))
  with pytest.raises(RuntimeError, match="TFSYM3D_RASTERIZER_LIBRARY.*not a file"):
    tfg_backend.kernel_library()
  library = _fake_bazel_build(tmp_path, None)
  monkeypatch.setenv(tfg_backend.LIBRARY_ENV, str(library))
  assert tfg_backend.kernel_library() == library
  library.with_name(library.name + ".key").write_text(kernel_recipe.recipe_key())
  assert tfg_backend.kernel_library() == library
  library.with_name(library.name + ".key").write_text("0123456789abcdef\n")
  with pytest.raises(RuntimeError, match="another recipe.*0123456789abcdef"):
    tfg_backend.kernel_library()


def test_library_precedence(monkeypatch, tmp_path):
  monkeypatch.delenv(tfg_backend.LIBRARY_ENV, raising=False)
  cache = tmp_path / "cache"
  cache.mkdir()
  cached = cache / tfg_backend.library_name()
  cached.write_bytes(b"a cached on-first-use build")
  # A current Bazel build wins over the cache; a stale one or none does not.
  bazel = _fake_bazel_build(tmp_path / "current", kernel_recipe.recipe_key())
  assert tfg_backend.kernel_library(cache, tmp_path / "current") == bazel
  _fake_bazel_build(tmp_path / "stale", "0123456789abcdef")
  assert tfg_backend.kernel_library(cache, tmp_path / "stale") == cached
  assert tfg_backend.kernel_library(cache, tmp_path / "none") == cached
  # The environment variable wins over both.
  monkeypatch.setenv(tfg_backend.LIBRARY_ENV, str(tmp_path / "chosen.so"))
  (tmp_path / "chosen.so").write_bytes(b"chosen")
  assert tfg_backend.kernel_library(cache, tmp_path / "current") == (
      tmp_path / "chosen.so")
