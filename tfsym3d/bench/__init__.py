"""Speed benchmarks of tfsym3d, one module per benchmark:

  python -m tfsym3d.bench renderer    [--json] ...  (tfsym3d.bench.renderer)
  python -m tfsym3d.bench train_step  [--json] ...  (tfsym3d.bench.train_step)
  python -m tfsym3d.bench data        [--json] ...  (tfsym3d.bench.data)
  python -m tfsym3d.bench inference   [--json] ...  (tfsym3d.bench.inference)
  python -m tfsym3d.bench sharding    [--json] ...  (tfsym3d.bench.sharding)

They ship inside the installed package so that users can measure on their own
machine (absolute figures do not carry from one CPU to another; the ratios to
the anchors, measured in the same run, do). `machine` says where a benchmark
ran (every JSON carries it), `anchors` times the reference's PyTorch code
(`torch_reference`) as each benchmark's anchor, torch imported only then.

Benchmarks measure and report; they never assert. Figures go to stdout, as a
table or (--json) as exactly one JSON object; logs and progress bars go to
stderr. The benchmark functions return plain dicts, so tests and notebooks can
call them without flags.

Adding a benchmark: write a module here with
  DEFAULTS = {"batch_size": ..., "warmup": ..., "repeats": ...}
      (what 0 / an absent --batch_size, --warmup, --repeats mean for it),
  add_flags()            defines its own flags (prefix them with its name;
                         shared ones: tfsym3d.flags and tfsym3d.bench.__main__),
  run(FLAGS, settings)   -> a JSON-able dict with "benchmark": name and
                         `machine.environment()` in it; settings holds the
                         resolved batch_size, warmup and repeats,
  format(result)         -> the human-readable table (end with
                         `machine.format_environment(result)`),
and add `name: "tfsym3d.bench.<module>"` to BENCHMARKS below.
"""

import importlib

# Benchmark name on the command line -> its module.
BENCHMARKS = {
    "renderer": "tfsym3d.bench.renderer",
    "train_step": "tfsym3d.bench.train_step",
    "data": "tfsym3d.bench.data",
    "inference": "tfsym3d.bench.inference",
    "sharding": "tfsym3d.bench.sharding",
}


def module(name: str):
  """The module of benchmark `name` (imported on first use)."""
  if name not in BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}: choose from {', '.join(BENCHMARKS)}")
  return importlib.import_module(BENCHMARKS[name])


def format_table(result: dict) -> str:
  """The human-readable report of any benchmark's result."""
  return module(result["benchmark"]).format(result)
