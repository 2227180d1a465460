"""The GPU check: on a machine with an NVIDIA GPU, runs the tests of the model,
rasterizer, training and export on the GPU, a MirroredStrategy training step,
and the train_step (float32, mixed_float16, --jit_compile) and inference
benchmarks, each time-boxed (the limits add up to 16 minutes), and writes
every part's outcome and JSON to one file.

  python -m tfsym3d.bench.gpu_check --out gpu_check.json
  python -m tfsym3d.bench.gpu_check --cpu_ok --dry_run --out x.json   # CPU smoke
  python -m tfsym3d.bench.gpu_check --list [--dry_run]     # the parts' commands

--dry_run runs each part at tiny sizes (one test per file, tiny configs),
--cpu_ok lets it run without a GPU (the JSON then says so): together they
check the script itself on any machine. Run from the repository root (the
tests live there).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

# (name, seconds allowed, full argv, dry-run argv). Benchmarks print one JSON
# object on stdout; pytest parts are judged by their exit status.
_TINY = ["--image_size", "16", "--nf", "4", "--zdim", "8", "--nf_encoder", "4",
         "--nf_conf", "4", "--zdim_conf", "8"]
TEST_FILES = ["tests/test_model.py", "tests/test_rasterizer.py", "tests/test_train.py",
              "tests/test_export.py"]
# The dry run's tests: one quick test of each of TEST_FILES, same order.
DRY_RUN_TESTS = ["tests/test_model.py::test_decomposition_fields_ranges_and_formulas",
                 "tests/test_rasterizer.py::test_canonical_view_renders_input_depth_back",
                 "tests/test_train.py::test_missing_dataset_fails_at_once_saying_how_to_prepare",
                 "tests/test_export.py::test_representative_folder_images"]


def parts(python: str):
  """The check's parts: (name, time limit s, argv, dry-run argv). The dry run
  runs every part as the full one does, at tiny sizes."""
  bench = [python, "-m", "tfsym3d.bench"]
  train = bench + ["train_step", "--json", "--flagfile=configs/reference_model.cfg",
                   "--steps", "5", "--warmup", "2"]
  tiny_train = bench + ["train_step", "--json", "--batch_size", "2", *_TINY, "--steps", "1",
                        "--warmup", "1", "--vgg_weights", "none"]
  # The anchor (PyTorch on the CPU) is timed once, with float32.
  return [
      ("tests", 300, [python, "-m", "pytest", "-q", "-x", "-m", "not slow", *TEST_FILES],
       [python, "-m", "pytest", "-q", "-x", *DRY_RUN_TESTS]),
      ("mirrored_strategy_step", 120,
       [python, "-c", _MIRRORED_SNIPPET, "64", "64"],
       [python, "-c", _MIRRORED_SNIPPET, "16", "4"]),
      ("train_step_float32", 120, train, tiny_train),
      ("train_step_mixed_float16", 120, train + ["--mixed_precision", "--noanchor"],
       tiny_train + ["--mixed_precision", "--noanchor"]),
      ("train_step_jit_compile", 150, train + ["--jit_compile", "--noanchor"],
       tiny_train + ["--jit_compile", "--noanchor"]),
      ("inference", 150, bench + ["inference", "--json", "--repeats", "30"],
       bench + ["inference", "--json", *_TINY, "--repeats", "2", "--warmup", "1",
                "--threads", "1", "--inference_formats", "keras"]),
  ]


# One Unsup3D training step (fit, one batch) under MirroredStrategy over
# every visible GPU (or the CPU), at a size given by argv[1:3].
_MIRRORED_SNIPPET = """
import sys
import numpy as np
import tensorflow as tf
from tfsym3d.config import ModelConfig
from tfsym3d.model import Unsup3D, make_training_optimizer
size, nf = int(sys.argv[1]), int(sys.argv[2])
strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
  config = ModelConfig(image_size=size, nf=nf, zdim=8, nf_encoder=4, nf_conf=4,
                       zdim_conf=8, vgg_weights="none")
  model = Unsup3D(config)
  model.compile(optimizer=make_training_optimizer(config))
images = np.random.default_rng(0).uniform(-1, 1, (4, size, size, 3)).astype("float32")
history = model.fit(tf.data.Dataset.from_tensors(images), epochs=1, verbose=0)
print(strategy.num_replicas_in_sync, history.history["total"][-1])
"""


def run_part(name, limit_s, argv, env):
  """Runs one part under its time limit: {name, rc, seconds, json | tail}."""
  start = time.perf_counter()
  try:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=limit_s,
                          check=False)
    rc, out, err = done.returncode, done.stdout, done.stderr
  except subprocess.TimeoutExpired as expired:
    rc, out, err = "timeout", expired.stdout or "", expired.stderr or ""
    out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
  entry = {"name": name, "rc": rc, "seconds": round(time.perf_counter() - start, 1),
           "limit_s": limit_s, "argv": argv}
  try:
    entry["json"] = json.loads(out)
  except ValueError:
    entry["stdout_tail"] = out[-2000:]
  if rc != 0:
    entry["stderr_tail"] = err[-3000:]
  return entry


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help="JSON file written (all parts); required unless --list.")
  parser.add_argument("--dry_run", action="store_true", help="Tiny sizes: checks the "
                      "script itself, not the GPU's speed.")
  parser.add_argument("--cpu_ok", action="store_true", help="Run even without a GPU.")
  parser.add_argument("--only", default="", help="Comma-separated part names to run.")
  parser.add_argument("--list", action="store_true", help="Print each part's name, "
                      "time limit and command (the dry run's with --dry_run) and exit.")
  args = parser.parse_args(argv)
  only = {n for n in args.only.split(",") if n}
  chosen = [(name, limit_s, dry if args.dry_run else full)
            for name, limit_s, full, dry in parts(sys.executable)
            if not only or name in only]
  known = [name for name, *_ in parts(sys.executable)]
  if only - set(known):
    parser.error(f"--only: unknown part(s) {', '.join(sorted(only - set(known)))}; "
                 f"choose from {', '.join(known)}")
  if args.list:
    for name, limit_s, command in chosen:
      print(f"{name}\t{limit_s}\t{shlex.join(command)}")
    return 0
  if not args.out:
    parser.error("--out is required (the JSON file the check writes)")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = [g.name for g in tf.config.list_physical_devices("GPU")]
  if not gpus and not args.cpu_ok:
    sys.exit("gpu_check: TensorFlow sees no GPU (nvidia-smi? a CUDA build of "
             "TensorFlow?); pass --cpu_ok to run the parts on the CPU anyway.")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  from tfsym3d.bench import machine  # pylint: disable=g-import-not-at-top
  report = {"gpus": gpus, "dry_run": args.dry_run, "environment": machine.environment(),
            "parts": []}
  for name, limit_s, command in chosen:
    print(f"gpu_check: {name} (at most {limit_s} s)", file=sys.stderr, flush=True)
    entry = run_part(name, limit_s, command, env)
    report["parts"].append(entry)
    with open(args.out, "w") as f:  # after every part: a timeout keeps the rest
      json.dump(report, f, indent=1)
    print(f"gpu_check: {name}: rc {entry['rc']} in {entry['seconds']} s", file=sys.stderr)
  report["ok"] = all(p["rc"] == 0 for p in report["parts"])
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  return 0 if report["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
