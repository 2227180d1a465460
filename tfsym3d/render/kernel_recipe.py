"""The one build recipe of tensorflow-graphics' rasterizer kernel.

Two builds read it, so their flags cannot drift apart:
- `tfg_backend` compiles the kernel with g++ on first use (`gcc_command`);
- Bazel's repository rule (third_party/tf_kernel_repository.bzl) runs this
  file as a script with the Python in use and turns the JSON it prints
  (`bazel_recipe`) into an external repository and the copts of
  //tfsym3d/render:rasterizer_op.

It is plain Python rather than a JSON or .bzl file because half of the
recipe (TensorFlow's include/link flags, the tensorflow-graphics sources) must
be asked of the installed packages anyway. It imports nothing of tfsym3d, so
Bazel can run it without the package on sys.path.

Both builds are keyed by `recipe_key` (kernel sources, TensorFlow version,
flags): the on-first-use cache names its file by it, and the Bazel build
writes it next to the library so the backend can tell a current Bazel build
from a stale one.
"""

import hashlib
import importlib.util
import json
import pathlib
import sys

# Translation units of the op, and every file whose content the build depends
# on (the header is included by both).
KERNEL_SOURCES = ("rasterize_triangles_op.cc", "rasterize_triangles_impl.cc")
KERNEL_HEADERS = ("rasterize_triangles_impl.h",)
KERNEL_FILES = KERNEL_SOURCES + KERNEL_HEADERS
# Our own flags, added to TensorFlow's: optimise, and silence the warnings of
# code we do not maintain.
OWN_COPTS = ("-O2", "-w")
# Flags of a shared library; Bazel's cc_binary(linkshared = True) adds these.
SHARED_FLAGS = ("-shared", "-fPIC")


def kernel_source_dir() -> pathlib.Path:
  """The directory of tensorflow-graphics' rasterizer kernel sources.

  Raises:
    RuntimeError: tensorflow-graphics is missing or lacks the sources.
  """
  # Only the package's location is needed: importing it would try to load the
  # ABI-broken .so it ships.
  spec = importlib.util.find_spec("tensorflow_graphics")
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError(
        "tensorflow-graphics is not installed; the 'tfg' rasterizer backend "
        "needs its kernel sources: pip install tensorflow-graphics==2021.12.3")
  root = pathlib.Path(list(spec.submodule_search_locations)[0])
  kernel_dir = root / "rendering" / "kernels"
  missing = [name for name in KERNEL_FILES if not (kernel_dir / name).is_file()]
  if missing:
    raise RuntimeError(
        f"tensorflow-graphics at {root} lacks the rasterizer sources {missing}; "
        "reinstall it: pip install --force-reinstall tensorflow-graphics==2021.12.3")
  return kernel_dir


def tensorflow_flags(compile_flags=None, link_flags=None) -> dict:
  """TensorFlow's custom-op flags, split by role.

  Args:
    compile_flags, link_flags: default tf.sysconfig.get_compile_flags() /
      get_link_flags().
  Returns:
    dict with include_dirs (from -I), copts (every other compile flag, e.g.
    the ABI and C++ standard), library_dirs (from -L) and libraries (from -l,
    as written after it, e.g. ':libtensorflow_framework.so.2').
  Raises:
    ValueError: a link flag this recipe does not know how to carry over.
  """
  if compile_flags is None or link_flags is None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if compile_flags is None:
      compile_flags = tf.sysconfig.get_compile_flags()
    if link_flags is None:
      link_flags = tf.sysconfig.get_link_flags()
  flags = {"include_dirs": [], "copts": [], "library_dirs": [], "libraries": []}
  for flag in compile_flags:
    if flag.startswith("-I"):
      flags["include_dirs"].append(flag[2:])
    else:
      flags["copts"].append(flag)
  for flag in link_flags:
    if flag.startswith("-L"):
      flags["library_dirs"].append(flag[2:])
    elif flag.startswith("-l"):
      flags["libraries"].append(flag[2:])
    else:
      raise ValueError(
          f"tf.sysconfig.get_link_flags() returned {flag!r}; "
          "tfsym3d/render/kernel_recipe.py only knows -L and -l flags: add a "
          "case for it there")
  return flags


def compile_copts(flags=None) -> list:
  """The compile flags shared by both builds, without include directories."""
  flags = flags or tensorflow_flags()
  return list(OWN_COPTS) + flags["copts"]


def gcc_command(compiler, sources, output, flags=None) -> list:
  """The argv that compiles the op into a shared library with g++/clang++.

  Args:
    compiler: path or name of the C++ compiler.
    sources: paths of the .cc files (KERNEL_SOURCES); the header is found next
      to them through the quoted #include.
    output: path of the .so to write.
    flags: tensorflow_flags(); default from tf.sysconfig.
  Returns:
    A list of strings.
  """
  flags = flags or tensorflow_flags()
  return ([str(compiler)] + list(SHARED_FLAGS) + compile_copts(flags) +
          [str(s) for s in sources] + ["-o", str(output)] +
          ["-I" + d for d in flags["include_dirs"]] +
          ["-L" + d for d in flags["library_dirs"]] +
          ["-l" + lib for lib in flags["libraries"]])


def recipe_key(source_dir=None, flags=None, tf_version=None) -> str:
  """16 hex digits naming a build: kernel sources, TensorFlow version, flags.

  Paths (compiler, output, install locations) are left out: the same recipe
  gives the same key wherever it is built.
  """
  source_dir = pathlib.Path(source_dir or kernel_source_dir())
  flags = flags or tensorflow_flags()
  if tf_version is None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf_version = tf.__version__
  digest = hashlib.sha256()
  for name in KERNEL_FILES:
    digest.update(name.encode())
    digest.update((source_dir / name).read_bytes())
  digest.update(tf_version.encode())
  digest.update("\0".join(list(SHARED_FLAGS) + compile_copts(flags) +
                          flags["libraries"]).encode())
  return digest.hexdigest()[:16]


def bazel_recipe() -> dict:
  """What the Bazel repository rule needs, from the installed packages.

  Returns:
    dict: kernel_dir, sources, headers, include_dir (TensorFlow's headers),
    library (absolute path of the TensorFlow library to link), copts and key.
  Raises:
    ValueError: TensorFlow's flags name several include or library
      directories, or a library that is not a plain file name.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  flags = tensorflow_flags()
  if len(flags["include_dirs"]) != 1 or len(flags["library_dirs"]) != 1:
    raise ValueError(
        f"expected one -I and one -L flag from tf.sysconfig, got {flags}; "
        "extend tfsym3d/render/kernel_recipe.py:bazel_recipe")
  libraries = []
  for lib in flags["libraries"]:
    name = lib[1:] if lib.startswith(":") else f"lib{lib}.so"
    path = pathlib.Path(flags["library_dirs"][0]) / name
    if not path.is_file():
      raise ValueError(f"tf.sysconfig names the library {lib!r} but {path} "
                       "does not exist; reinstall tensorflow")
    libraries.append(str(path))
  if len(libraries) != 1:
    raise ValueError(f"expected one TensorFlow library, got {libraries}")
  source_dir = kernel_source_dir()
  return {
      "kernel_dir": str(source_dir),
      "sources": list(KERNEL_SOURCES),
      "headers": list(KERNEL_HEADERS),
      "include_dir": flags["include_dirs"][0],
      "library": libraries[0],
      "copts": compile_copts(flags),
      "key": recipe_key(source_dir, flags, tf.__version__),
      "tensorflow_version": tf.__version__,
  }


if __name__ == "__main__":
  # The Bazel repository rule's entry point: the recipe as JSON on stdout.
  if len(sys.argv) != 2 or sys.argv[1] != "--bazel":
    sys.exit(f"usage: {sys.argv[0]} --bazel  (prints the recipe as JSON)")
  print(json.dumps(bazel_recipe(), indent=1))
