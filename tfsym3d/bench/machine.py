"""Where a benchmark ran: the CPU (model, cores, the instruction-set features
that decide its speed) or the GPU, TensorFlow's versions and oneDNN state,
and the machine's load; and whether bfloat16 can pay on this CPU.

Absolute figures only compare on the same machine: every benchmark's JSON
carries `environment()`, and its ratios are measured side by side in one run.
"""

import os
import platform
import statistics
from typing import Dict, Optional, Sequence

# The CPU flags (as /proc/cpuinfo spells them) that change our figures:
# vector width, int8 dot products (TFLite int8, oneDNN), bfloat16 arithmetic
# (AVX512_BF16: conversions and dot products; AMX: matrix tiles).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
  """The text of /proc/cpuinfo, or '' where there is none (macOS, Windows)."""
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return ""


def cpu_description(cpuinfo: Optional[str] = None) -> Dict:
  """{"model", "logical_cores", "features": {flag: bool}} of this CPU, from
  `cpuinfo` (the text of /proc/cpuinfo; read when None). Features are None
  when unknown (no /proc/cpuinfo)."""
  text = read_cpuinfo() if cpuinfo is None else cpuinfo
  model, flags = platform.processor() or platform.machine(), None
  for line in text.splitlines():
    key, _, value = line.partition(":")
    key = key.strip()
    if key == "model name" and model != value.strip():
      model = value.strip()
    elif key in ("flags", "Features") and flags is None:
      flags = set(value.split())
  features = {f: (None if flags is None else f in flags) for f in CPU_FEATURES}
  return {"model": model, "logical_cores": os.cpu_count(), "features": features}


def gpu_descriptions() -> list:
  """Names of the GPUs TensorFlow sees (empty on a CPU-only machine)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  names = []
  for gpu in tf.config.list_physical_devices("GPU"):
    details = tf.config.experimental.get_device_details(gpu)
    names.append(details.get("device_name", gpu.name))
  return names


def device_description(cpu: Optional[Dict] = None, gpus: Optional[Sequence[str]] = None
                       ) -> str:
  """One line: the GPUs if any, else the CPU model, cores and features."""
  gpus = gpu_descriptions() if gpus is None else gpus
  if gpus:
    return "GPU: " + ", ".join(gpus)
  cpu = cpu_description() if cpu is None else cpu
  present = [f for f, on in cpu["features"].items() if on]
  return (f"CPU: {cpu['model']} ({cpu['logical_cores']} logical cores; "
          f"{' '.join(present) or 'no AVX2'})")


def bfloat16_slowdown_reason(features: Dict) -> Optional[str]:
  """Why mixed_bfloat16 would be slower than float32 on a CPU with these
  features ({flag: bool} as `cpu_description` gives), or None if it can pay.

  Without AVX512_BF16 or AMX-BF16 every bfloat16 op is emulated. With
  AVX512_BF16 but no AMX (e.g. AMD Zen 4), oneDNN has bfloat16 dot products
  but not the tile units: measured with `tfsym3d.bench train_step
  --mixed_precision`, the training step was several times slower than
  float32 there (the casts and the ops without a bfloat16 kernel cost more
  than the narrower convolutions save). Only AMX-BF16 made it pay.
  """
  if features.get("amx_bf16"):
    return None
  if features.get("amx_bf16") is None and features.get("avx512_bf16") is None:
    return None  # unknown CPU (no /proc/cpuinfo): no claim either way
  if not features.get("avx512_bf16"):
    return ("this CPU has neither AVX512_BF16 nor AMX-BF16: every bfloat16 op is "
            "emulated in float32")
  return ("this CPU has AVX512_BF16 but no AMX-BF16 (the matrix tiles that make "
          "bfloat16 convolutions fast)")


def warn_if_bfloat16_slow(precision: str, cpuinfo: Optional[str] = None,
                          log=None) -> Optional[str]:
  """Logs a warning at start when `precision` is mixed_bfloat16 on a CPU where
  it will be slower than float32; returns the message (None: no warning)."""
  if precision != "mixed_bfloat16":
    return None
  reason = bfloat16_slowdown_reason(cpu_description(cpuinfo)["features"])
  if reason is None:
    return None
  message = (f"--mixed_precision on the CPU runs the networks in bfloat16, but {reason}: "
             "expect it to be SLOWER than float32 (measure with `python -m tfsym3d.bench "
             "train_step --mixed_precision`); drop --mixed_precision here.")
  if log is None:
    from absl import logging as log  # pylint: disable=g-import-not-at-top
  log.warning(message)
  return message


def load_average() -> Optional[list]:
  """1, 5 and 15 minute load averages (other processes skew the figures)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def environment() -> Dict:
  """What every benchmark's JSON records about where it ran."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tfsym3d  # pylint: disable=g-import-not-at-top
  cpu, gpus = cpu_description(), gpu_descriptions()
  return {"device": device_description(cpu, gpus), "cpu": cpu, "gpus": gpus,
          "tensorflow": tf.__version__, "keras": keras.__version__,
          "onednn": tfsym3d.onednn_enabled(), "load_avg_before": load_average()}


def median_ms(seconds: Sequence[float]) -> float:
  return statistics.median(seconds) * 1000.0


def fmt(value, spec: str) -> str:
  """`value` formatted, 'n/a' for None."""
  return "n/a" if value is None else format(value, spec)


def format_environment(result: Dict) -> str:
  """The table's last line: where it ran."""
  onednn = "on" if result["onednn"] else "off"
  return (f"device: {result['device']}; TF {result['tensorflow']}, Keras "
          f"{result['keras']}, oneDNN {onednn}; load average before "
          f"{result['load_avg_before']}, after {result.get('load_avg_after')}")
