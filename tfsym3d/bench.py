"""Speed benchmarks: the renderer's backends, one full training step, data input.

Usage:

  python -m tfsym3d.bench renderer [--json] [--batch_size 128] [--image_size 64]
      [--repeats 5] [--backends tf,tfg,tfg_own_bary]
  python -m tfsym3d.bench train_step [--json] [--batch_size 16] [--image_size 64]
      [--nf 64] [--steps 5] [--warmup 2] [--rasterizer tf] [--vgg_weights random]
      [--jit_compile] [--mixed_precision] [--profile_dir DIR] [--profile_steps 2]
  python -m tfsym3d.bench data [--json] [--batch_size 64] [--image_size 64]
      [--repeats 3] [--warmup 1] [--data_num_images 2000] [--data_num_pairs 1000]
      [--data_num_synthetic 500]
  python -m tfsym3d.bench inference [--json] [--image_size 64] [--nf 64]
      [--checkpoint RUN] [--repeats 50] [--warmup 5] [--threads 1,2]
      [--inference_formats keras,savedmodel,tflite_fp32,...]

`renderer` times what the model does to reproject a batch of canonical depth
maps into their views (docs/method.md §5): `Renderer.reconstructed_depth` (mesh,
rigid transform, rasterization, depth interpolation) followed by
`Renderer.canonical_grid` (the sampling grid), once per rasterizer backend.

`train_step` times the function Keras' `fit` runs for every batch
(`model.make_train_function()` over a `tf.data` iterator, which calls
`Unsup3D.train_step`): forward pass, every loss including the perceptual one,
gradients and the Adam update; it counts the step's FLOPs (GFLOP/s achieved)
and, with --profile_dir, traces a few steps and prints where the time goes
(by op type and by network, renderer, losses and optimiser).

`data` times the input pipelines of `tfsym3d.data` in images per second:
`image_folder_dataset` over generated JPEGs, `paired_dataset` over generated
image/depth PNG pairs (both in a temporary directory, full epochs after an
untimed warm-up epoch) and the synthetic-face generator `SynFaces`, directly
and through its `tf_dataset`.

`inference` exports the model (random weights, or --checkpoint's) with
`export.writers` and times one image per call (batch 1) for Keras,
SavedModel, TFLite float32 / float16 / int8 dynamic-range / full int8
(ai-edge-litert, XNNPACK) and ONNX (onnxruntime) on 1 and 2 threads, with
each file's size (`inference_benchmark`).

Benchmarks measure and report; they never assert. Figures go to stdout, as a
table or (--json) as exactly one JSON object; logs and progress bars go to
stderr. The benchmark functions return plain dicts, so tests and notebooks can
call them without flags.
"""

import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import tfsym3d
from tfsym3d.config import ModelConfig

BENCHMARKS = ("renderer", "train_step", "data", "inference")
# Settings of the reference run (64 px faces); 0 / None on the command line
# means "this benchmark's default".
DEFAULTS = {
    "renderer": {"batch_size": 128, "warmup": 2, "repeats": 5},
    "train_step": {"batch_size": 16, "warmup": 2},
    "data": {"batch_size": 64, "warmup": 1, "repeats": 3},
    "inference": {"batch_size": 1, "warmup": 5, "repeats": 50},
}
# Depth the synthetic canonical maps get on their 2 leftmost and rightmost
# columns, as the model writes a constant there (it uses config.border_depth,
# 1.04 at the default range: the cost does not depend on the exact value).
_BORDER_DEPTH = 1.05


# -- environment -------------------------------------------------------------


def device_description() -> str:
  """What the benchmark ran on: accelerators if any, else the CPU model."""
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    names = []
    for gpu in gpus:
      details = tf.config.experimental.get_device_details(gpu)
      names.append(details.get("device_name", gpu.name))
    return "GPU: " + ", ".join(names)
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"CPU: {cpu} ({os.cpu_count()} logical cores)"


def load_average() -> Optional[list]:
  """1, 5 and 15 minute load averages (other processes skew the figures)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _environment() -> dict:
  import keras  # pylint: disable=g-import-not-at-top
  return {"device": device_description(), "tensorflow": tf.__version__,
          "keras": keras.__version__, "onednn": tfsym3d.onednn_enabled(),
          "load_avg_before": load_average()}


def _median_ms(seconds: Sequence[float]) -> float:
  return statistics.median(seconds) * 1000.0


def _resolve(value, benchmark, name):
  """A flag value, or the benchmark's default when it is 0 / None."""
  return DEFAULTS[benchmark][name] if not value else value


# -- renderer ----------------------------------------------------------------


def renderer_inputs(batch_size: int, image_size: int, config: ModelConfig, seed: int = 0):
  """Random smooth canonical depth maps and views, reproducibly.

  Returns:
    depth [B, S, S] in [min_depth, max_depth] with constant border columns;
    view [B, 6]: rotations uniform within +-xyz_rotation_range (radians),
    x, y translations within +-xy_translation_range, no z translation.
  """
  rng = np.random.default_rng(seed)
  # Bilinear upsampling of coarse noise: smooth, and stays within [0, 1].
  coarse = rng.uniform(0.0, 1.0, (batch_size, 6, 6, 1)).astype(np.float32)
  smooth = tf.image.resize(coarse, [image_size, image_size], method="bilinear")[..., 0]
  depth = config.min_depth + (config.max_depth - config.min_depth) * smooth
  columns = np.zeros([image_size], np.float32)
  columns[:2] = columns[-2:] = 1.0
  depth = depth * (1 - columns) + _BORDER_DEPTH * columns
  max_angle = math.radians(config.xyz_rotation_range)
  rotation = rng.uniform(-max_angle, max_angle, (batch_size, 3))
  shift = rng.uniform(-config.xy_translation_range, config.xy_translation_range,
                      (batch_size, 2))
  view = np.concatenate([rotation, shift, np.zeros([batch_size, 1])], axis=1)
  return tf.constant(depth, tf.float32), tf.constant(view, tf.float32)


RENDERER_BACKENDS = ("tf", "tfg", "tfg_own_bary")


def _time_renderer_backend(backend, depth, view, image_size, repeats, warmup, progress,
                           backward=False):
  """(per-call seconds, first-call seconds, warm-up seconds) of one backend.

  The first call's and the warm-up's seconds include building or loading the
  tfg kernel.
  """
  from tfsym3d.render.warp import Renderer  # pylint: disable=g-import-not-at-top
  # 'tfg_own_bary' is the kernel with tensorflow-graphics' own differentiable
  # barycentrics (tensorflow-graphics' path as it ships); 'tfg' is what --rasterizer=tfg
  # runs: the kernel with our pixel-relative barycentrics.
  if backend not in RENDERER_BACKENDS:
    raise ValueError(f"unknown renderer backend {backend!r}: use one of "
                     f"{', '.join(RENDERER_BACKENDS)} (--backends)")
  renderer = Renderer(ModelConfig(image_size=image_size,
                                  rasterizer="tf" if backend == "tf" else "tfg",
                                  vgg_weights="none"))
  if backend == "tfg_own_bary":
    renderer.tfg_barycentrics = "tfg"

  @tf.function
  def reproject(canon_depth, views):
    if not backward:
      recon_depth = renderer.reconstructed_depth(canon_depth, views)
      return recon_depth, renderer.canonical_grid(recon_depth, views)
    # Forward and backward, as in training: gradients of both outputs with
    # respect to the canonical depth and the view.
    with tf.GradientTape() as tape:
      tape.watch([canon_depth, views])
      recon_depth = renderer.reconstructed_depth(canon_depth, views)
      grid = renderer.canonical_grid(recon_depth, views)
      total = tf.reduce_sum(recon_depth) + tf.reduce_sum(grid)
    return tape.gradient(total, [canon_depth, views])

  # Build or load the tfg kernel eagerly, not while tracing (where AutoGraph
  # would try to convert the compile and loading code); part of the warm-up.
  setup = 0.0
  if backend.startswith("tfg"):
    from tfsym3d.render import tfg_backend  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    tfg_backend.load_kernel()
    setup = time.perf_counter() - start
    logging.info("renderer[tfg]: kernel ready in %.1f s", setup)

  def call():
    start = time.perf_counter()
    outputs = reproject(depth, view)
    # Fetching the values waits for the computation to finish.
    _ = [t.numpy() for t in outputs]
    return time.perf_counter() - start

  logging.info("renderer[%s]: warming up (%d untimed calls; the first traces the "
               "function, compiles the XLA stages and, for 'tfg', builds or "
               "loads the kernel)", backend, warmup)
  warm = [call() for _ in range(warmup)]
  times = [call() for _ in tqdm(range(repeats), desc=f"renderer[{backend}]",
                                file=sys.stderr, disable=not progress, leave=False)]
  return times, setup + warm[0], setup + sum(warm)


def renderer_benchmark(batch_size: int = 128, image_size: int = 64, repeats: int = 5,
                       backends: Sequence[str] = ("tf", "tfg", "tfg_own_bary"), warmup: int = 2,
                       seed: int = 0, progress: bool = True, backward: bool = False
                       ) -> Dict:
  """Median time to reproject B depth maps of S x S through each backend.

  One call is `Renderer.reconstructed_depth` then `Renderer.canonical_grid`
  inside a `tf.function` (with `backward`, also the gradients with respect to
  the depth maps and views, as training needs). The first `warmup` calls (at least one: tracing,
  XLA and kernel compilation) are not timed; their seconds are reported.

  Returns:
    A dict: backend_ms (median per backend; None where the backend failed,
    with the reason in errors), times_ms (every timed call), speedup_vs_tfg
    (tfg ms / tf ms, None unless both ran), first_call_s and warmup_s per
    backend, batch_size, image_size, repeats and the environment.
  """
  warmup = max(int(warmup), 1)
  config = ModelConfig(image_size=image_size, vgg_weights="none")
  depth, view = renderer_inputs(batch_size, image_size, config, seed)
  result = {"benchmark": "renderer", "backward": backward,
            "batch_size": batch_size, "image_size": image_size,
            "repeats": repeats, "warmup_calls": warmup, "backend_ms": {},
            "times_ms": {}, "first_call_s": {}, "warmup_s": {}, "errors": {}}
  result.update(_environment())
  for backend in backends:
    try:
      times, first, warm = _time_renderer_backend(backend, depth, view, image_size,
                                                  repeats, warmup, progress, backward)
    except Exception as e:  # pylint: disable=broad-except
      # A missing compiler (tfg) must not stop the other backends.
      reason = f"{type(e).__name__}: {e}"
      logging.warning("renderer[%s] unavailable: %s", backend, reason)
      result["backend_ms"][backend] = None
      result["times_ms"][backend] = None
      result["first_call_s"][backend] = result["warmup_s"][backend] = None
      result["errors"][backend] = reason
      continue
    result["backend_ms"][backend] = _median_ms(times)
    result["times_ms"][backend] = [t * 1000.0 for t in times]
    result["first_call_s"][backend] = first
    result["warmup_s"][backend] = warm
  ms = result["backend_ms"]
  ratio = lambda other: ms[other] / ms["tf"] if ms.get("tf") and ms.get(other) else None
  # The issue's reference path: the kernel through tensorflow-graphics' own
  # differentiable barycentrics.
  result["speedup_vs_tfg"] = ratio("tfg_own_bary")
  result["speedup_vs_tfg_stable_barycentrics"] = ratio("tfg")
  result["load_avg_after"] = load_average()
  return result


# -- train_step --------------------------------------------------------------


def random_vgg16_weights(directory: str) -> str:
  """Saves a randomly initialised VGG16 (no top) and returns the file's path.

  Timing needs the perceptual loss's computation, not meaningful features;
  there is no download here.
  """
  import keras  # pylint: disable=g-import-not-at-top
  path = os.path.join(directory, "vgg16_random.weights.h5")
  keras.applications.VGG16(include_top=False, weights=None).save_weights(path)
  return path


def train_step_benchmark(batch_size: int = 16, image_size: int = 64, nf: int = 64,
                         steps: int = 5, warmup: int = 2, rasterizer: str = "tf",
                         vgg_weights: str = "random", seed: int = 0,
                         progress: bool = True, jit_compile: bool = False,
                         precision: str = "float32", profile_dir: Optional[str] = None,
                         profile_steps: int = 2, count_flops: bool = True,
                         **config_overrides) -> Dict:
  """Images per second of full training steps at a given configuration.

  Builds `Unsup3D(ModelConfig(...))`, compiles it with `make_optimizer` and
  runs the function `fit` runs per batch (`make_train_function`, fed from a
  `tf.data` iterator of one repeated batch), synchronising on the returned
  loss. The first `warmup` steps (at least one: tracing) are not timed.

  Args:
    vgg_weights: 'random' (a randomly initialised VGG16 saved to a temporary
      file: same cost, meaningless loss values), 'imagenet', 'none' (the
      perceptual term off) or a weights file path.
    jit_compile: the networks as one XLA program (train's --jit_compile).
    precision: the networks' dtype policy (train's --mixed_precision gives
      mixed_bfloat16 on CPU, mixed_float16 on GPU).
    profile_dir: if set, `profile_steps` more steps are traced with
      tf.profiler into this directory (TensorBoard's profile tab reads it)
      and summarised (`tfsym3d.profiling.summarize_trace`) under "profile".
    count_flops: count the step's FLOPs (`tfsym3d.profiling.graph_flops` on a
      float32 twin of the model without XLA, whose graph shows every op) and
      report GFLOP per step and the GFLOP/s achieved.
    config_overrides: further ModelConfig fields (e.g. zdim for tests).
  Returns:
    A dict: images_per_s and step_ms (median), step_times_ms, first_step_s and
    warmup_s, params per network (count_params) and their total, the settings,
    the last step's total loss and the environment; with count_flops
    gflop_per_step, gflop_per_image, gflop_per_s and flops_by_op_type; with
    profile_dir the profile summary.
  """
  import keras  # pylint: disable=g-import-not-at-top
  from tfsym3d.model import Unsup3D, make_training_optimizer  # pylint: disable=g-import-not-at-top

  warmup = max(int(warmup), 1)
  keras.utils.set_random_seed(seed)
  with tempfile.TemporaryDirectory(prefix="tfsym3d_bench_") as tmp:
    weights = vgg_weights
    if vgg_weights == "random":
      weights = random_vgg16_weights(tmp)
      logging.warning("train_step: VGG16 weights are RANDOM (--vgg_weights=random), "
                      "for timing only: the perceptual loss costs the same as with "
                      "ImageNet weights but its values mean nothing.")
    config = ModelConfig(image_size=image_size, nf=nf, rasterizer=rasterizer,
                         vgg_weights=weights, **config_overrides)
    # The weights are read here; the temporary file is not needed afterwards.
    model = Unsup3D(config, precision=precision, jit_compile=jit_compile)
    # FLOPs are counted on a float32 twin without XLA, built while the
    # weights file exists.
    twin = Unsup3D(config) if count_flops else None
  # As train does: XLA (if asked) for the networks only; the whole step
  # cannot be one XLA program (the rasterizer's shapes are dynamic).
  model.compile(optimizer=make_training_optimizer(config, precision=precision),
                jit_compile=False)
  model.build((None, image_size, image_size, 3))
  # fit() builds the optimizer before tracing; do the same.
  model.optimizer.build(model.trainable_variables)
  model.make_train_function()

  rng = np.random.default_rng(seed)
  images = tf.constant(rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)),
                       tf.float32)
  iterator = iter(tf.data.Dataset.from_tensors(images).repeat())

  def step():
    start = time.perf_counter()
    logs = model.train_function(iterator)
    total = float(logs["total"])  # waits for the step to finish
    return time.perf_counter() - start, total

  result = {"benchmark": "train_step", "batch_size": batch_size, "image_size": image_size,
            "nf": nf, "rasterizer": rasterizer, "vgg_weights": vgg_weights,
            "perceptual_loss": bool(model.perceptual.enabled), "steps": steps,
            "warmup_steps": warmup, "jit_compile": bool(model.jit_compile_networks),
            "precision": precision}
  result.update(_environment())
  result["params"] = {name: int(net.count_params()) for name, net in model.networks.items()}
  result["params_total"] = sum(result["params"].values())

  logging.info("train_step: warming up (%d untimed steps; the first traces the "
               "step)", warmup)
  warm = [step()[0] for _ in range(warmup)]
  timed = [step() for _ in tqdm(range(steps), desc="train_step", file=sys.stderr,
                                disable=not progress, leave=False)]
  times = [t for t, _ in timed]
  result["step_ms"] = _median_ms(times)
  result["images_per_s"] = batch_size / statistics.median(times)
  result["step_times_ms"] = [t * 1000.0 for t in times]
  result["first_step_s"] = warm[0]
  result["warmup_s"] = sum(warm)
  # None if the loss diverged: JSON has no NaN.
  result["last_total_loss"] = timed[-1][1] if math.isfinite(timed[-1][1]) else None
  if profile_dir:
    from tfsym3d import profiling  # pylint: disable=g-import-not-at-top
    logging.info("train_step: tracing %d steps into %s", profile_steps, profile_dir)
    tf.profiler.experimental.start(profile_dir)
    try:
      for _ in range(profile_steps):
        step()
    finally:
      tf.profiler.experimental.stop()
    result["profile"] = profiling.summarize_trace(profile_dir, profile_steps)
    result["profile_dir"] = profile_dir
  if count_flops:
    result.update(_train_step_flops(twin, batch_size, image_size))
    result["gflop_per_s"] = result["gflop_per_step"] / statistics.median(times)
  result["load_avg_after"] = load_average()
  return result


def _train_step_flops(twin, batch_size: int, image_size: int) -> Dict:
  """FLOPs of one `Unsup3D.train_step` of `twin`, a float32 Unsup3D without
  XLA (the arithmetic does not depend on either; its graph shows every op)."""
  from tfsym3d import profiling  # pylint: disable=g-import-not-at-top
  from tfsym3d.model import make_optimizer  # pylint: disable=g-import-not-at-top
  twin.compile(optimizer=make_optimizer(twin.config), jit_compile=False)
  twin.build((None, image_size, image_size, 3))
  twin.optimizer.build(twin.trainable_variables)
  traced = tf.function(twin.train_step).get_concrete_function(
      tf.TensorSpec([batch_size, image_size, image_size, 3], tf.float32))
  flops = profiling.graph_flops(traced)
  return {"gflop_per_step": flops["total"] / 1e9,
          "gflop_per_image": flops["total"] / 1e9 / batch_size,
          "flops_by_op_type": {k: v / 1e9 for k, v in list(flops["by_op_type"].items())[:8]}}


# -- data --------------------------------------------------------------------

# CelebA's aligned image size (width, height) and the paired layout's default
# centre crop (docs/method.md §8; the reference's synthetic faces are 256 x 256).
_FOLDER_WH = (178, 218)
_PAIRED_WH = (256, 256)
_PAIRED_CROP = 170


def _smooth_noise(rng, width: int, height: int, channels: int):
  """A random smooth uint8 image: coarse noise upsampled bicubically."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, channels), np.uint8)
  im = Image.fromarray(coarse[..., 0] if channels == 1 else coarse)
  return im.resize((width, height), Image.BICUBIC)


def write_image_folder(directory: str, num: int, seed: int = 0,
                       progress: bool = True) -> None:
  """Writes `num` random smooth 178 x 218 JPEGs (quality 90) to `directory`."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in tqdm(range(num), desc="writing JPEGs", file=sys.stderr,
                disable=not progress, leave=False):
    _smooth_noise(rng, *_FOLDER_WH, 3).save(
        os.path.join(directory, f"{i:06d}.jpg"), quality=90)


def write_pairs(directory: str, num: int, seed: int = 0, progress: bool = True) -> None:
  """Writes `num` pairs in docs/method.md §8's layout under `directory` (a split).

  `image/<name>_image.png`: random smooth 256 x 256 RGB; `depth/<name>_depth.png`:
  random smooth 8-bit grey of the same size.
  """
  image_dir = os.path.join(directory, "image")
  depth_dir = os.path.join(directory, "depth")
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(depth_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in tqdm(range(num), desc="writing pairs", file=sys.stderr,
                disable=not progress, leave=False):
    _smooth_noise(rng, *_PAIRED_WH, 3).save(os.path.join(image_dir, f"{i:06d}_image.png"))
    _smooth_noise(rng, *_PAIRED_WH, 1).save(os.path.join(depth_dir, f"{i:06d}_depth.png"))


def _time_epochs(make_dataset, repeats: int, warmup: int, desc: str, progress: bool):
  """Builds a dataset and times full passes over it.

  Returns:
    (images per timed epoch, per-epoch seconds, construction seconds (the file
    scan), seconds of the untimed warm-up epochs).
  """
  start = time.perf_counter()
  dataset = make_dataset()
  build = time.perf_counter() - start

  def epoch():
    count = 0
    start = time.perf_counter()
    for batch in dataset:
      # The image batch (paired datasets yield (image, depth)).
      images = batch[0] if isinstance(batch, tuple) else batch
      count += int(images.shape[0])
    return count, time.perf_counter() - start

  warm = sum(epoch()[1] for _ in range(warmup))
  timed = [epoch() for _ in tqdm(range(repeats), desc=desc, file=sys.stderr,
                                 disable=not progress, leave=False)]
  return timed[-1][0], [t for _, t in timed], build, warm


def data_benchmark(num_images: int = 2000, num_pairs: int = 1000, num_synthetic: int = 500,
                   batch_size: int = 64, image_size: int = 64, repeats: int = 3,
                   warmup: int = 1, seed: int = 0, progress: bool = True) -> Dict:
  """Images per second of the input pipelines (`tfsym3d.data`).

  * folder: `image_folder_dataset` (training: shuffle and flip, no crop) over
    `num_images` random smooth 178 x 218 JPEGs (CelebA's size, quality 90).
  * paired: `paired_dataset` (training, centre crop 170) over `num_pairs`
    random smooth 256 x 256 RGB PNGs with 8-bit grey depth PNGs (docs/method.md §8).
  * synthetic: `SynFaces.sample` called `num_synthetic` times, and the same
    samples through `SynFaces.tf_dataset`.

  The files are written to a temporary directory, untimed. For the folder
  datasets the construction (the file scan) and the first `warmup` epochs (at
  least one) are not timed; then `repeats` full epochs are, and the median is
  reported.

  Returns:
    A dict: folder_, paired_ and synthetic_images_per_s (median),
    synthetic_tf_dataset_images_per_s, per-epoch seconds, scan seconds, the
    settings and the environment.
  """
  from tfsym3d.data import folders, synthetic  # pylint: disable=g-import-not-at-top

  warmup = max(int(warmup), 1)
  repeats = max(int(repeats), 1)
  result = {"benchmark": "data", "batch_size": batch_size, "image_size": image_size,
            "repeats": repeats, "warmup_epochs": warmup,
            "folder_source": f"{num_images} random smooth {_FOLDER_WH[0]}x"
                             f"{_FOLDER_WH[1]} JPEGs (quality 90), no crop",
            "paired_source": f"{num_pairs} random smooth {_PAIRED_WH[0]}x{_PAIRED_WH[1]} "
                             f"RGB PNGs + 8-bit grey depth PNGs, centre crop {_PAIRED_CROP}",
            "synthetic_source": f"{num_synthetic} SynFaces samples"}
  result.update(_environment())
  with tempfile.TemporaryDirectory(prefix="tfsym3d_bench_data_") as tmp:
    logging.info("data: writing %d JPEGs and %d pairs to %s (untimed)",
                 num_images, num_pairs, tmp)
    write_image_folder(os.path.join(tmp, "folder", "train"), num_images, seed, progress)
    write_pairs(os.path.join(tmp, "paired", "train"), num_pairs, seed, progress)
    scan_progress = None if progress else False
    pipelines = {
        "folder": lambda: folders.image_folder_dataset(
            os.path.join(tmp, "folder"), "train", image_size=image_size,
            batch_size=batch_size, training=True, crop=None, seed=seed,
            progress=scan_progress),
        "paired": lambda: folders.paired_dataset(
            os.path.join(tmp, "paired"), "train", image_size=image_size,
            batch_size=batch_size, training=True, crop=_PAIRED_CROP, seed=seed,
            progress=scan_progress),
    }
    for name, make in pipelines.items():
      count, times, build, warm = _time_epochs(make, repeats, warmup, f"data[{name}]",
                                               progress)
      result[f"{name}_images_per_s"] = count / statistics.median(times)
      result[f"{name}_images_per_epoch"] = count
      result[f"{name}_epoch_s"] = times
      result[f"{name}_scan_s"] = build
      result[f"{name}_warmup_s"] = warm

  # Synthetic faces: the generator itself, then through tf.data (unbatched).
  gen = synthetic.SynFaces(image_size=image_size, seed=seed)
  gen.sample(0)  # untimed: first-call costs
  start = time.perf_counter()
  for i in tqdm(range(num_synthetic), desc="data[synthetic]", file=sys.stderr,
                disable=not progress, leave=False):
    gen.sample(i)
  seconds = time.perf_counter() - start
  result["synthetic_images_per_s"] = num_synthetic / seconds
  result["synthetic_s"] = seconds
  dataset = gen.tf_dataset("train", num=num_synthetic)
  start = time.perf_counter()
  count = sum(1 for _ in dataset)
  seconds = time.perf_counter() - start
  result["synthetic_tf_dataset_images_per_s"] = count / seconds
  result["synthetic_tf_dataset_s"] = seconds
  result["load_avg_after"] = load_average()
  return result


# -- inference ---------------------------------------------------------------

# Per-image latency of the reference PyTorch demo networks (netD, netA, netL,
# netV at 64 px, nf 64) on 1 thread, measured on the project's 2-core machine.
REFERENCE_TORCH_MS_1THREAD = 168.0
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
  sibling = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "export")
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
  return _median_ms(times)


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
                        progress: bool = True, **config_overrides) -> Dict:
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
    {"error": ...}}, speed-up of tflite_int8 over the reference PyTorch
    networks, settings, environment}.
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
            "threads": list(threads), "batch_size": 1,
            "reference_torch_ms_1thread": REFERENCE_TORCH_MS_1THREAD}
  result.update(_environment())
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
  int8 = table.get("tflite_int8", {}).get("ms_1thread")
  result["tflite_int8_speedup_vs_reference_torch"] = (
      REFERENCE_TORCH_MS_1THREAD / int8 if int8 else None)
  result["load_avg_after"] = load_average()
  return result


# -- command line ------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  """Defines the benchmark's own flags (only when run as a program). The model
  flags (--image_size, --nf, --rasterizer, --vgg_weights, ...) and --json,
  --batch_size, --seed, --progress are the shared ones of `tfsym3d.flags`;
  for train_step, --vgg_weights also takes 'random' (its default here: timing
  only, no download). Without --batch_size each benchmark uses its own
  default (renderer 128, train_step 16, data 64)."""
  flags.DEFINE_integer("repeats", 0, "renderer: timed calls per backend; data: timed "
                       "epochs per pipeline (median); 0: the benchmark's default "
                       "(renderer 5, data 3).")
  flags.DEFINE_list("backends", ["tf", "tfg", "tfg_own_bary"],
                    "renderer: backends to time: tf, tfg (kernel + our barycentrics, what "
                    "--rasterizer=tfg runs), tfg_own_bary (kernel + tensorflow-graphics' "
                    "differentiable barycentrics).")
  flags.DEFINE_bool("backward", False, "renderer: time forward and backward "
                    "(gradients to depth and view) instead of forward only.")
  flags.DEFINE_integer("steps", 5, "train_step: timed steps (median).")
  flags.DEFINE_string("profile_dir", None, "train_step: trace --profile_steps more steps "
                      "with tf.profiler into this directory (open it in TensorBoard's "
                      "profile tab) and print where the time goes.")
  flags.DEFINE_integer("profile_steps", 2, "train_step: steps traced with --profile_dir.")
  flags.DEFINE_integer("warmup", 0, "Untimed calls / steps / epochs before timing; "
                       "0: the benchmark's default (2; data 1 epoch). The first call "
                       "(tracing, compilation) is never timed.")
  flags.DEFINE_integer("data_num_images", 2000, "data: JPEGs in the image folder.")
  flags.DEFINE_integer("data_num_pairs", 1000, "data: image/depth pairs.")
  flags.DEFINE_integer("data_num_synthetic", 500, "data: SynFaces samples timed.")
  flags.DEFINE_list("threads", ["1", "2"], "inference: thread counts timed.")
  flags.DEFINE_list("inference_formats", list(INFERENCE_FORMATS),
                    "inference: formats timed.")


def _fmt(value, spec):
  return "n/a" if value is None else format(value, spec)


def format_table(result: Dict) -> str:
  """A human-readable report of a benchmark's result."""
  lines = []
  if result["benchmark"] == "renderer":
    passes = "forward and backward" if result.get("backward") else "forward"
    lines.append(f"renderer ({passes}): reconstructed_depth + canonical_grid of "
                 f"{result['batch_size']} depth maps of {result['image_size']}x"
                 f"{result['image_size']}, median of {result['repeats']} calls")
    lines.append(f"{'backend':<12} {'median ms':>10} {'min ms':>10} "
                 f"{'1st call s':>11} {'warm-up s':>10}")
    for backend, ms in result["backend_ms"].items():
      times = result["times_ms"][backend]
      lines.append(f"{backend:<12} {_fmt(ms, '10.1f')} "
                   f"{_fmt(min(times) if times else None, '10.1f')} "
                   f"{_fmt(result['first_call_s'][backend], '11.2f')} "
                   f"{_fmt(result['warmup_s'][backend], '10.2f')}")
    for backend, reason in result["errors"].items():
      lines.append(f"{backend} unavailable: {reason}")
    if result["speedup_vs_tfg"] is not None:
      lines.append(f"speed-up of tf over tfg_own_bary: {result['speedup_vs_tfg']:.2f}x")
    if result.get("speedup_vs_tfg_stable_barycentrics") is not None:
      lines.append(f"speed-up of tf over tfg: "
                   f"{result['speedup_vs_tfg_stable_barycentrics']:.2f}x")
  elif result["benchmark"] == "inference":
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
      lines.append(f"{name:<20}" + "".join(_fmt(entry.get(k), "11.2f") for k in keys)
                   + _fmt(entry.get("mb"), "9.2f"))
    if result["tflite_int8_speedup_vs_reference_torch"]:
      lines.append(f"tflite_int8 on 1 thread: "
                   f"{result['tflite_int8_speedup_vs_reference_torch']:.2f}x the reference "
                   f"PyTorch networks ({result['reference_torch_ms_1thread']:.0f} ms)")
  elif result["benchmark"] == "data":
    lines.append(f"data: batch {result['batch_size']}, {result['image_size']} px, "
                 f"median of {result['repeats']} epochs after {result['warmup_epochs']} "
                 "untimed")
    lines.append(f"{'pipeline':<22} {'images/s':>10}  source")
    for name in ("folder", "paired"):
      lines.append(f"{name:<22} {result[name + '_images_per_s']:10.1f}  "
                   f"{result[name + '_source']} (scan {result[name + '_scan_s']:.1f} s)")
    lines.append(f"{'synthetic':<22} {result['synthetic_images_per_s']:10.1f}  "
                 f"{result['synthetic_source']}, SynFaces.sample")
    lines.append(f"{'synthetic tf_dataset':<22} "
                 f"{result['synthetic_tf_dataset_images_per_s']:10.1f}  "
                 "the same through SynFaces.tf_dataset")
  else:
    lines.append(f"train_step: batch {result['batch_size']}, {result['image_size']} px, "
                 f"nf {result['nf']}, rasterizer {result['rasterizer']}, VGG weights "
                 f"{result['vgg_weights']} (perceptual loss "
                 f"{'on' if result['perceptual_loss'] else 'off'}), networks "
                 f"{result['precision']}{', XLA' if result['jit_compile'] else ''}")
    lines.append(f"  {result['images_per_s']:.2f} images/s, {result['step_ms']:.0f} ms "
                 f"per step (median of {result['steps']}; first step "
                 f"{result['first_step_s']:.1f} s)")
    params = ", ".join(f"{k} {v:,}" for k, v in result["params"].items())
    lines.append(f"  params: {params} (total {result['params_total']:,})")
    if "gflop_per_step" in result:
      lines.append(f"  {result['gflop_per_step']:.1f} GFLOP per step "
                   f"({result['gflop_per_image']:.2f} per image): "
                   f"{result['gflop_per_s']:.1f} GFLOP/s achieved")
    if "profile" in result:
      prof = result["profile"]
      lines.append(f"  profile ({prof['op_ms_per_step']:.0f} ms of op time per step, "
                   f"summed over threads, {prof['onednn_share']:.0%} in oneDNN kernels; "
                   f"trace in {result['profile_dir']}):")
      lines.append(f"    {'op type':<28}{'ms/step':>10}{'share':>8}{'ops/step':>10}")
      for entry in prof["top_op_types"]:
        lines.append(f"    {entry['op_type']:<28}{entry['ms_per_step']:10.1f}"
                     f"{entry['share']:8.1%}{entry['count_per_step']:10.0f}")
      parts = ", ".join(f"{k} {v:.0f}" for k, v in prof["by_part"].items())
      lines.append(f"    by part (ms/step): {parts}")
  onednn = "on" if result["onednn"] else "off"
  lines.append(f"device: {result['device']}; TF {result['tensorflow']}, Keras "
               f"{result['keras']}, oneDNN {onednn}; load average before "
               f"{result['load_avg_before']}, after {result['load_avg_after']}")
  return "\n".join(lines)


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise app.UsageError(f"Usage: python -m tfsym3d.bench {{{'|'.join(BENCHMARKS)}}} "
                         "[--json] [flags]")
  benchmark = argv[1]
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  batch_size = _resolve(FLAGS.batch_size if FLAGS["batch_size"].present else 0,
                        benchmark, "batch_size")
  warmup = _resolve(FLAGS.warmup, benchmark, "warmup")
  if benchmark == "data":
    result = data_benchmark(FLAGS.data_num_images, FLAGS.data_num_pairs,
                            FLAGS.data_num_synthetic, batch_size, FLAGS.image_size,
                            _resolve(FLAGS.repeats, benchmark, "repeats"), warmup,
                            FLAGS.seed, FLAGS.progress)
  elif benchmark == "inference":
    try:
      threads = [int(n) for n in FLAGS.threads]
    except ValueError:
      raise app.UsageError(f"--threads={','.join(FLAGS.threads)}: integers") from None
    explicit = ("image_size", "nf")
    overrides = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(ModelConfig)
                 if f.name not in explicit}
    try:
      result = inference_benchmark(FLAGS.image_size, FLAGS.nf, FLAGS.checkpoint,
                                   _resolve(FLAGS.repeats, benchmark, "repeats"), warmup,
                                   threads, FLAGS.inference_formats, FLAGS.seed,
                                   FLAGS.progress, **overrides)
    except (ValueError, FileNotFoundError) as error:
      raise app.UsageError(str(error)) from None
  elif benchmark == "renderer":
    result = renderer_benchmark(batch_size, FLAGS.image_size,
                                _resolve(FLAGS.repeats, benchmark, "repeats"),
                                FLAGS.backends, warmup, FLAGS.seed, FLAGS.progress,
                                FLAGS.backward)
  else:
    vgg_weights = FLAGS.vgg_weights if FLAGS["vgg_weights"].present else "random"
    explicit = ("image_size", "nf", "rasterizer", "vgg_weights")
    overrides = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(ModelConfig)
                 if f.name not in explicit}
    from tfsym3d.train import precision_for  # pylint: disable=g-import-not-at-top
    result = train_step_benchmark(batch_size, FLAGS.image_size, FLAGS.nf, FLAGS.steps,
                                  warmup, FLAGS.rasterizer, vgg_weights,
                                  FLAGS.seed, FLAGS.progress, FLAGS.jit_compile,
                                  precision_for(FLAGS.mixed_precision), FLAGS.profile_dir,
                                  FLAGS.profile_steps, **overrides)
  sys.stdout.write((json.dumps(result) if FLAGS.json else format_table(result)) + "\n")


if __name__ == "__main__":
  from tfsym3d import flags as _model_flags  # noqa: F401  pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
