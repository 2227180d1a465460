"""The benchmarks run end to end at tiny sizes and report sane figures."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from tfsym3d import bench
from tfsym3d.bench import anchors
from tfsym3d.bench import data as data_bench
from tfsym3d.bench import inference as inference_bench
from tfsym3d.bench import machine
from tfsym3d.bench import renderer as renderer_bench
from tfsym3d.bench import train_step as train_step_bench

REPO = pathlib.Path(__file__).resolve().parents[1]
ENVIRONMENT_KEYS = {"device", "cpu", "gpus", "tensorflow", "keras", "onednn",
                    "load_avg_before", "load_avg_after"}


def _positive(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_renderer_command_line_prints_one_json_object():
  env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             TF_CPP_MIN_LOG_LEVEL="2")
  run = subprocess.run(
      [sys.executable, "-m", "tfsym3d.bench", "renderer", "--json", "--batch_size", "2",
       "--image_size", "16", "--repeats", "2", "--warmup", "1", "--backends", "tf"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout)  # the whole of stdout: one object, nothing else
  assert {"backend_ms", "speedup_vs_tfg", "batch_size", "image_size", "warmup_s",
          "first_call_s", "times_ms", "errors"} <= result.keys()
  assert ENVIRONMENT_KEYS <= result.keys()
  assert result["batch_size"] == 2 and result["image_size"] == 16
  assert list(result["backend_ms"]) == ["tf"] and result["errors"] == {}
  assert _positive(result["backend_ms"]["tf"])
  assert _positive(result["warmup_s"]["tf"]) and _positive(result["first_call_s"]["tf"])
  assert len(result["times_ms"]["tf"]) == 2 and all(map(_positive, result["times_ms"]["tf"]))
  # Only one backend ran: no ratio.
  assert result["speedup_vs_tfg"] is None
  assert "tf " in bench.format_table(result)


def test_renderer_reports_a_failing_backend_as_null_and_goes_on():
  # An unknown backend fails when the Renderer is built, before any tracing.
  result = renderer_bench.renderer_benchmark(batch_size=1, image_size=16, repeats=1,
                                    backends=("nope",), progress=False)
  assert result["backend_ms"] == {"nope": None}
  assert "nope" in result["errors"]["nope"]
  assert result["speedup_vs_tfg"] is None
  json.dumps(result, allow_nan=False)
  assert "nope unavailable" in bench.format_table(result)


def test_renderer_inputs_ranges():
  config = renderer_bench.ModelConfig(image_size=16)
  depth, view = renderer_bench.renderer_inputs(4, 16, config, seed=1)
  assert depth.shape == (4, 16, 16) and view.shape == (4, 6)
  inner = depth.numpy()[:, :, 2:-2]
  assert inner.min() >= config.min_depth and inner.max() <= config.max_depth
  # The border columns hold what the model writes there.
  assert (depth.numpy()[:, :, :2] == config.border_depth).all()
  assert abs(view.numpy()[:, :3]).max() <= math.radians(config.xyz_rotation_range)
  assert abs(view.numpy()[:, 3:5]).max() <= config.xy_translation_range
  assert (view.numpy()[:, 5] == 0).all()


def test_train_step_benchmark_tiny(tmp_path):
  result = train_step_bench.train_step_benchmark(batch_size=2, image_size=16, nf=8, steps=1, warmup=1,
                                      vgg_weights="none", progress=False,
                                      profile_dir=str(tmp_path / "trace"), profile_steps=1)
  json.dumps(result, allow_nan=False)
  assert {"images_per_s", "step_ms", "batch_size", "image_size", "params", "rasterizer",
          "first_step_s", "warmup_s", "step_times_ms"} <= result.keys()
  assert ENVIRONMENT_KEYS <= result.keys()
  assert result["batch_size"] == 2 and result["image_size"] == 16 and result["nf"] == 8
  assert result["rasterizer"] == "tf" and result["perceptual_loss"] is False
  assert result["jit_compile"] is False and result["precision"] == "float32"
  assert _positive(result["images_per_s"]) and _positive(result["step_ms"])
  assert _positive(result["first_step_s"])
  assert set(result["params"]) == {"netD", "netA", "netL", "netV", "netC"}
  assert all(map(_positive, result["params"].values()))
  assert result["params_total"] == sum(result["params"].values())
  assert math.isfinite(result["last_total_loss"])
  assert "images/s" in bench.format_table(result)
  # Forward convolutions, and both backward passes of the trained networks.
  assert result["flops_by_op_type"]["Conv2D"] > 0
  assert result["flops_by_op_type"]["Conv2DBackpropFilter"] > 0
  assert _positive(result["gflop_per_s"])
  assert result["gflop_per_image"] == pytest.approx(result["gflop_per_step"] / 2)
  profile = result["profile"]
  assert os.path.exists(profile["xplane"])
  types = [e["op_type"] for e in profile["top_op_types"]]
  assert "Conv2D" in types
  assert sum(e["share"] for e in profile["top_op_types"]) <= 1.0 + 1e-9
  # Every network, the renderer, the losses and the optimiser show up, and
  # backward passes are told apart.
  parts = set(profile["by_part"])
  assert {"netD", "netA", "netL", "netV", "netC", "render", "losses",
          "optimizer"} <= parts, parts
  assert "netD (backward)" in parts and "render (backward)" in parts
  assert "GFLOP/s" in bench.format_table(result) and "by part" in bench.format_table(result)
  # The anchor: the PyTorch reference step at the same sizes, in this run.
  torch_step = result["anchor_torch"]
  assert _positive(torch_step["images_per_s"]) and torch_step["perceptual_loss"] is False
  assert result["speedup_vs_torch"] == pytest.approx(result["images_per_s"]
                                                     / torch_step["images_per_s"])
  assert "anchor, PyTorch" in bench.format_table(result)


@pytest.mark.slow   # long XLA compilation; test_precision covers both paths in training
def test_train_step_benchmark_runs_what_jit_compile_and_mixed_precision_ask():
  result = train_step_bench.train_step_benchmark(batch_size=2, image_size=16, nf=8, steps=1, warmup=1,
                                      vgg_weights="none", progress=False, jit_compile=True,
                                      precision="mixed_bfloat16", count_flops=False)
  assert result["jit_compile"] is True and result["precision"] == "mixed_bfloat16"
  assert math.isfinite(result["last_total_loss"])
  assert "mixed_bfloat16, XLA" in bench.format_table(result)


def test_data_benchmark_tiny():
  result = data_bench.data_benchmark(num_images=64, num_pairs=32, num_synthetic=16,
                                     batch_size=8, image_size=32, repeats=1, warmup=1,
                                     progress=False, anchor_workers=1)
  json.dumps(result, allow_nan=False)
  rates = ("folder_images_per_s", "paired_images_per_s", "synthetic_images_per_s",
           "synthetic_tf_dataset_images_per_s")
  assert set(rates) <= result.keys() and ENVIRONMENT_KEYS <= result.keys()
  assert all(_positive(result[k]) for k in rates)
  # Training drops the last partial batch: whole batches only.
  assert result["folder_images_per_epoch"] == 64 and result["paired_images_per_epoch"] == 32
  assert result["batch_size"] == 8 and result["image_size"] == 32
  assert len(result["folder_epoch_s"]) == 1 and _positive(result["paired_scan_s"])
  assert "paired_source" in result
  table = bench.format_table(result)
  assert "folder" in table and "synthetic tf_dataset" in table
  # The anchor read the same JPEGs, whole batches only.
  loader = result["anchor_torch"]
  assert _positive(loader["images_per_s"]) and loader["workers"] == 1
  assert result["folder_speedup_vs_torch"] == pytest.approx(
      result["folder_images_per_s"] / loader["images_per_s"])
  assert "anchor: PIL + workers" in table


def test_anchors_without_torch_say_not_measured(monkeypatch):
  monkeypatch.setattr(anchors, "torch_available", lambda: False)
  assert anchors.torch_train_step(2, 16, 8, 8, 4, 4, 8, False, 1, 1) == anchors.NOT_MEASURED
  assert anchors.torch_inference_ms(16, 8, 8, 4, (1,), 1, 1) == anchors.NOT_MEASURED
  assert anchors.torch_folder_loader([], 16, 2, 1, 1, 1) == anchors.NOT_MEASURED
  assert "not measured" in anchors.NOT_MEASURED
  assert anchors.ratio(3.0, anchors.NOT_MEASURED) is None
  assert anchors.ratio(3.0, 2.0) == 1.5


def test_anchor_figures_are_never_constants_in_the_code():
  # Every anchor is measured in the run: no module of the package carries a
  # latency or rate of the reference as a number.
  source = "".join(p.read_text() for p in (REPO / "tfsym3d" / "bench").glob("*.py"))
  for needle in ("REFERENCE_TORCH", "reference_torch_ms", "168.0", "58.4", "37.0", "6.66"):
    assert needle not in source, needle


AVX512_BF16_NO_AMX = ("processor\t: 0\nmodel name\t: AMD EPYC 9B14\n"
                      "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n")
AVX2_ONLY = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 fma\n"
AMX = ("model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f "
       "avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n")


def test_cpu_description_reads_the_features_that_matter():
  cpu = machine.cpu_description(AMX)
  assert cpu["model"] == "Intel(R) Xeon(R) Platinum 8481C"
  assert cpu["features"] == {f: True for f in machine.CPU_FEATURES}
  cpu = machine.cpu_description(AVX2_ONLY)
  assert cpu["features"]["avx2"] and not cpu["features"]["avx512f"]
  assert not cpu["features"]["amx_bf16"]
  assert "avx2" in machine.device_description(cpu, gpus=[])
  assert machine.device_description(cpu, gpus=["NVIDIA H200"]) == "GPU: NVIDIA H200"
  # No /proc/cpuinfo (another OS): unknown, not absent.
  assert machine.cpu_description("")["features"]["avx2"] is None


class _Log:
  def __init__(self):
    self.messages = []

  def warning(self, message):
    self.messages.append(message)


def test_mixed_bfloat16_warns_on_a_cpu_without_bfloat16_units():
  log = _Log()
  message = machine.warn_if_bfloat16_slow("mixed_bfloat16", AVX2_ONLY, log)
  assert "AVX512_BF16" in message and "AMX-BF16" in message and "SLOWER" in message
  message = machine.warn_if_bfloat16_slow("mixed_bfloat16", AVX512_BF16_NO_AMX, log)
  assert "no AMX-BF16" in message
  assert log.messages == [machine.warn_if_bfloat16_slow("mixed_bfloat16", AVX2_ONLY),
                          message]
  # AMX-BF16 pays; float32 never warns; an unknown CPU makes no claim.
  assert machine.warn_if_bfloat16_slow("mixed_bfloat16", AMX, log) is None
  assert machine.warn_if_bfloat16_slow("float32", AVX2_ONLY, log) is None
  assert machine.warn_if_bfloat16_slow("mixed_bfloat16", "", log) is None
  assert len(log.messages) == 2


TINY_MODEL = ["--nf", "4", "--zdim", "8", "--nf_encoder", "4", "--nf_conf", "4",
              "--zdim_conf", "8"]


def _inference(formats, threads="1,2"):
  env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             TF_CPP_MIN_LOG_LEVEL="2")
  run = subprocess.run(
      [sys.executable, "-m", "tfsym3d.bench", "inference", "--json", "--image_size", "16",
       *TINY_MODEL, "--repeats", "3", "--warmup", "1", "--threads", threads,
       "--inference_formats", formats], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=900, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout)


def test_inference_command_line_reports_latency_and_size():
  result = _inference("tflite_fp16,tflite_int8,onnx")
  assert ENVIRONMENT_KEYS <= result.keys()
  assert list(result["formats"]) == ["tflite_fp16", "tflite_int8", "onnx"]
  for name, entry in result["formats"].items():
    assert "error" not in entry, (name, entry)
    assert _positive(entry["ms_1thread"]) and _positive(entry["ms_2threads"]), name
    assert _positive(entry["mb"]), name
  # int8 weights: about a quarter of float32's; float16 about half.
  assert result["formats"]["tflite_int8"]["mb"] < result["formats"]["tflite_fp16"]["mb"]
  # The anchor: the PyTorch networks timed in this run, on both thread counts.
  assert _positive(result["anchor_torch"]["ms_1thread"])
  assert _positive(result["anchor_torch"]["ms_2threads"])
  speedup = result["speedup_vs_torch"]["tflite_int8"]["ms_1thread"]
  assert speedup == pytest.approx(result["anchor_torch"]["ms_1thread"]
                                  / result["formats"]["tflite_int8"]["ms_1thread"])
  assert "anchor: PyTorch" in bench.format_table(result)
  assert "tflite_int8" in bench.format_table(result)


@pytest.mark.slow
def test_inference_command_line_every_format():
  result = _inference(",".join(inference_bench.INFERENCE_FORMATS))
  assert list(result["formats"]) == list(inference_bench.INFERENCE_FORMATS)
  for name, entry in result["formats"].items():
    assert "error" not in entry, (name, entry)
    assert _positive(entry["ms_1thread"]) and _positive(entry["ms_2threads"]), name
    assert _positive(entry["mb"]), name
