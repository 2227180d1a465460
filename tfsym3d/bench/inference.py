"""Inference benchmark: exports the model (random weights, or --checkpoint's)
with `export.writers` and times one image per call (batch 1) for Keras,
SavedModel, TFLite float32 / float16 / int8 dynamic-range / full int8
(ai-edge-litert, XNNPACK) and ONNX (onnxruntime) on 1 and 2 threads, with
each file's size; its anchor, the reference's PyTorch networks, is timed in the
same run on the same thread counts (torch installed).

  python -m tfsym3d.bench inference [--json] [--image_size 64] [--nf 64]
      [--checkpoint RUN] [--repeats 50] [--warmup 5] [--threads 1,2]
      [--inference_formats keras,savedmodel,tflite_fp32,...] [--noanchor]
"""

import os
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
from tqdm import tqdm

from tfsym3d.bench import anchors
from tfsym3d.bench import machine
from tfsym3d.config import ModelConfig

DEFAULTS = {"batch_size": 1, "warmup": 5, "repeats": 50}

# Result key -> TFLite variant (export.writers.TFLITE_VARIANTS).
_TFLITE_KEYS = {"tflite_fp32": "float32", "tflite_fp16": "float16",
                "tflite_int8_dynamic": "int8_dynamic", "tflite_int8": "int8_full"}
INFERENCE_FORMATS = ("keras", "savedmodel") + tuple(_TFLITE_KEYS) + ("onnx",)


def _export_package():
  """(writers, runtime, graph) of the export package that sits beside this
  tfsym3d: export/ of the same checkout when it is importable as `export`
  (running from the repository), else the installed tfsym3d_export."""
  import importlib  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sibling = os.path.join(checkout, "export")
  spec = importlib.util.find_spec("export")
  same_checkout = bool(spec and spec.origin and
                       os.path.dirname(os.path.abspath(spec.origin)) == sibling)
  name = "export" if same_checkout else "tfsym3d_export"
  return tuple(importlib.import_module(f"{name}.{module}")
               for module in ("writers", "runtime", "graph"))


def _megabytes(path: str) -> float:
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names) / 1e6
  return os.path.getsize(path) / 1e6


def _time_calls(call, image, repeats: int, warmup: int) -> float:
  for _ in range(max(warmup, 1)):
    call(image)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call(image)
    times.append(time.perf_counter() - start)
  return machine.median_ms(times)


def _tf_latency_worker(kind, path, config, threads, repeats, warmup, queue):
  """Child process: TF's thread pools are fixed once TF starts, so each TF
  thread count is timed in a fresh process. kind: 'keras' (the lean graph of
  the Keras model restored from `path`, under tf.function) or 'savedmodel'."""
  try:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    writers, runtime, graph = _export_package()
    size = config.image_size
    image = writers.synthetic_images(1, size)
    if kind == "keras":
      from tfsym3d import runs  # pylint: disable=g-import-not-at-top
      model = runs.build_model(config)
      runs.restore_weights(model, path)
      infer = tf.function(lambda x: graph.lean_outputs(model, graph.preprocess(x, size)),
                          autograph=False)
      call = lambda x: {k: v.numpy() for k, v in infer(tf.constant(x)).items()}
    else:
      call = runtime.SavedModelRunner(path)
    queue.put(_time_calls(call, image, repeats, warmup))
  except Exception as error:  # pylint: disable=broad-except
    queue.put(f"{type(error).__name__}: {error}")


def _tf_latency(kind, path, config, threads, repeats, warmup):
  import multiprocessing  # pylint: disable=g-import-not-at-top
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  process = context.Process(target=_tf_latency_worker,
                            args=(kind, path, config, threads, repeats, warmup, queue))
  process.start()
  result = queue.get(timeout=1800)
  process.join()
  if isinstance(result, str):
    raise RuntimeError(result)
  return result


def inference_benchmark(image_size: int = 64, nf: int = 64, checkpoint: Optional[str] = None,
                        repeats: int = 50, warmup: int = 5, threads: Sequence[int] = (1, 2),
                        formats: Sequence[str] = INFERENCE_FORMATS, seed: int = 0,
                        progress: bool = True, anchor: bool = True,
                        **config_overrides) -> Dict:
  """Per-image latency (batch 1) and file size of every export format.

  Exports the model (random weights at ModelConfig(image_size, nf, ...), or
  `checkpoint`'s, built from the same config) to a temporary directory with
  `export.writers`, then times one uint8 image per call, `repeats` calls
  after `warmup` untimed ones, median, on each thread count:
    keras: the Keras model's lean inference graph (depth, albedo, light,
      view) under tf.function, in TensorFlow; savedmodel: serving_default
      (the full output set, confidence included) loaded in TensorFlow; both
      in a fresh process per thread count (TF fixes its pools at start);
    tflite_fp32 / fp16 / int8_dynamic / int8 (full integer): ai-edge-litert's
      interpreter with XNNPACK, `num_threads`;
    onnx: onnxruntime CPU, `intra_op_num_threads`.
  mb: the file (the SavedModel directory; for keras the float32 weights of
  the four inference networks).

  Returns:
    {"formats": {name: {"ms_1thread", "ms_2threads", ..., "mb"} or
    {"error": ...}}, anchor_torch (the reference's PyTorch netD, netA, netL,
    netV timed in this run on the same thread counts; "not measured" without
    torch or with anchor=False), speedup_vs_torch[format][ms key] (its ms /
    ours), settings, environment}.
  """
  from tfsym3d import runs  # pylint: disable=g-import-not-at-top
  writers, runtime, _ = _export_package()
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  # Inference never runs the perceptual loss: no VGG16 weights are read.
  config_overrides = dict(config_overrides, vgg_weights="none")
  config = ModelConfig(image_size=image_size, nf=nf, **config_overrides)
  unknown = set(formats) - set(INFERENCE_FORMATS)
  if unknown:
    raise ValueError(f"inference formats {sorted(unknown)}: choose from "
                     f"{list(INFERENCE_FORMATS)}")
  result = {"benchmark": "inference", "image_size": image_size, "nf": nf,
            "checkpoint": checkpoint, "repeats": repeats, "warmup": warmup,
            "threads": list(threads), "batch_size": 1}
  result.update(machine.environment())
  model = runs.build_model(config)
  with tempfile.TemporaryDirectory(prefix="tfsym3d_bench_inference_") as tmp:
    if checkpoint:
      runs.restore_weights(model, checkpoint)
    # The Keras worker restores from here (random weights included).
    ckpt = tf.train.CheckpointManager(runs.checkpoint_for(model), os.path.join(tmp, "ckpt"),
                                      max_to_keep=1).save()
    inference_params = sum(int(model.networks[n].count_params())
                           for n in ("netD", "netA", "netL", "netV"))
    result["inference_params"] = inference_params
    paths = {}
    start = time.perf_counter()
    if "savedmodel" in formats:
      paths["savedmodel"] = writers.write_savedmodel(model, tmp)
    variants = [_TFLITE_KEYS[k] for k in _TFLITE_KEYS if k in formats]
    if variants:
      tflite = writers.write_tflite(model, tmp, variants=variants,
                                    representative=writers.synthetic_images(
                                        64, image_size, seed))
      paths.update({k: tflite[v] for k, v in _TFLITE_KEYS.items() if v in tflite})
    if "onnx" in formats:
      paths["onnx"] = writers.write_onnx(model, tmp)
    result["export_s"] = time.perf_counter() - start
    image = writers.synthetic_images(1, image_size, seed)
    table = {}
    for name in tqdm(formats, desc="inference", file=sys.stderr, disable=not progress,
                     leave=False):
      entry = {}
      try:
        for n in threads:
          key = "ms_1thread" if n == 1 else f"ms_{n}threads"
          if name in ("keras", "savedmodel"):
            source = ckpt if name == "keras" else paths[name]
            entry[key] = _tf_latency(name, source, config, n, repeats, warmup)
          elif name == "onnx":
            entry[key] = _time_calls(runtime.OnnxRunner(paths[name], n), image, repeats,
                                     warmup)
          else:
            entry[key] = _time_calls(runtime.TFLiteRunner(paths[name], n), image,
                                     repeats, warmup)
        entry["mb"] = (inference_params * 4 / 1e6 if name == "keras"
                       else _megabytes(paths[name]))
      except Exception as error:  # pylint: disable=broad-except
        logging.warning("inference[%s] failed: %s", name, error)
        entry = {"error": f"{type(error).__name__}: {error}"}
      table[name] = entry
  result["formats"] = table
  if anchor:
    logging.info("inference: timing the PyTorch reference networks (the anchor)")
    result["anchor_torch"] = anchors.torch_inference_ms(
        image_size, nf, config.zdim, config.nf_encoder, threads, repeats, warmup, seed)
  else:
    result["anchor_torch"] = "not measured (anchor=False)"
  # Speed-up of each format over the PyTorch networks on the same thread
  # count (their ms / ours): None where either side has no figure.
  torch_ms = result["anchor_torch"] if isinstance(result["anchor_torch"], dict) else {}
  result["speedup_vs_torch"] = {
      name: {key: anchors.ratio(torch_ms.get(key), entry.get(key)) for key in
             ("ms_1thread" if n == 1 else f"ms_{n}threads" for n in threads)}
      for name, entry in table.items()}
  result["load_avg_after"] = machine.load_average()
  return result


def add_flags():
  """This benchmark's own flags (the shared ones are in tfsym3d.bench.__main__)."""
  flags.DEFINE_list("threads", ["1", "2"], "inference: thread counts timed.")
  flags.DEFINE_list("inference_formats", list(INFERENCE_FORMATS),
                    "inference: formats timed.")


def run(FLAGS, settings) -> Dict:  # pylint: disable=invalid-name
  """The benchmark from parsed flags; settings: batch_size, warmup, repeats."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  try:
    threads = [int(n) for n in FLAGS.threads]
  except ValueError:
    raise app.UsageError(f"--threads={','.join(FLAGS.threads)}: integers") from None
  explicit = ("image_size", "nf")
  overrides = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(ModelConfig)
               if f.name not in explicit}
  try:
    return inference_benchmark(FLAGS.image_size, FLAGS.nf, FLAGS.checkpoint,
                               settings["repeats"], settings["warmup"], threads,
                               FLAGS.inference_formats, FLAGS.seed, FLAGS.progress,
                               FLAGS.anchor, **overrides)
  except (ValueError, FileNotFoundError) as error:
    raise app.UsageError(str(error)) from None


def format(result: Dict) -> str:  # pylint: disable=redefined-builtin
  """A human-readable report of `inference_benchmark`'s result."""
  lines = []
  lines.append(f"inference: batch 1, {result['image_size']} px, nf {result['nf']}, "
               f"median of {result['repeats']} calls after {result['warmup']} untimed "
               f"({result['inference_params']:,} parameters in netD, netA, netL, netV)")
  threads = result["threads"]
  keys = ["ms_1thread" if n == 1 else f"ms_{n}threads" for n in threads]
  lines.append(f"{'format':<20}" + "".join(f"{f'ms {n} thr':>11}" for n in threads)
               + f"{'MB':>9}")
  for name, entry in result["formats"].items():
    if "error" in entry:
      lines.append(f"{name:<20} failed: {entry['error']}")
      continue
    lines.append(f"{name:<20}" + "".join(machine.fmt(entry.get(k), "11.2f") for k in keys)
                 + machine.fmt(entry.get("mb"), "9.2f"))

  def measured(torch_ms):
    rows = [f"{'anchor: PyTorch ' + torch_ms['torch']:<20}"
            + "".join(machine.fmt(torch_ms.get(k), "11.2f") for k in keys),
            "speed-up over the PyTorch networks, same run and thread count:"]
    for name, ratios in result["speedup_vs_torch"].items():
      rows.append(f"  {name:<18}" + "".join(
          f"{machine.fmt(ratios.get(k), '10.2f')}x" for k in keys))
    return "\n".join(rows)

  line = anchors.describe(result.get("anchor_torch"), measured, "anchor, PyTorch networks")
  lines += [line] if line else []
  lines.append(machine.format_environment(result))
  return "\n".join(lines)
