"""Renderer benchmark: what the model does to reproject a batch of canonical
depth maps into their views (docs/method.md §5), `Renderer.reconstructed_depth`
(mesh, rigid transform, rasterization, depth interpolation) then
`Renderer.canonical_grid` (the sampling grid), once per rasterizer backend.

  python -m tfsym3d.bench renderer [--json] [--batch_size 128] [--image_size 64]
      [--repeats 5] [--backends tf,tfg,tfg_own_bary] [--backward]

Its anchor is the tfg kernel, timed in the same run (speedup_vs_tfg).
"""

import math
import sys
import time
from typing import Dict, Sequence

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfsym3d.bench import machine
from tfsym3d.config import ModelConfig
from tfsym3d.render.backends import Backend

DEFAULTS = {"batch_size": 128, "warmup": 2, "repeats": 5}


def renderer_inputs(batch_size: int, image_size: int, config: ModelConfig, seed: int = 0):
  """Random smooth canonical depth maps and views, reproducibly.

  Returns:
    depth [B, S, S] in [min_depth, max_depth] with border columns at
    config.border_depth (what the model writes there);
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
  depth = depth * (1 - columns) + config.border_depth * columns
  max_angle = math.radians(config.xyz_rotation_range)
  rotation = rng.uniform(-max_angle, max_angle, (batch_size, 3))
  shift = rng.uniform(-config.xy_translation_range, config.xy_translation_range,
                      (batch_size, 2))
  view = np.concatenate([rotation, shift, np.zeros([batch_size, 1])], axis=1)
  return tf.constant(depth, tf.float32), tf.constant(view, tf.float32)


# Each timed variant: its rasterizer backend and the 'tfg' kernel's barycentrics.
_VARIANTS = {"tf": (Backend.TF, "stable"), "tfg": (Backend.TFG, "stable"),
             "tfg_own_bary": (Backend.TFG, "tfg")}
RENDERER_BACKENDS = tuple(_VARIANTS)


def _time_renderer_backend(backend, depth, view, image_size, repeats, warmup, progress,
                           backward=False):
  """(per-call seconds, first-call seconds, warm-up seconds) of one backend.

  The first call's and the warm-up's seconds include building or loading the
  tfg kernel.
  """
  from tfsym3d.render.warp import Renderer  # pylint: disable=g-import-not-at-top
  # 'tfg_own_bary' is the kernel with tensorflow-graphics' own differentiable
  # barycentrics (the path the issue measured); 'tfg' is what --rasterizer=tfg
  # runs: the kernel with our pixel-relative barycentrics.
  if backend not in RENDERER_BACKENDS:
    raise ValueError(f"unknown renderer backend {backend!r}: use one of "
                     f"{', '.join(RENDERER_BACKENDS)} (--backends)")
  rasterizer, barycentrics = _VARIANTS[backend]
  renderer = Renderer(ModelConfig(image_size=image_size, rasterizer=rasterizer.value,
                                  vgg_weights="none"))
  renderer.tfg_barycentrics = barycentrics

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
  if rasterizer is Backend.TFG:
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
  result.update(machine.environment())
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
    result["backend_ms"][backend] = machine.median_ms(times)
    result["times_ms"][backend] = [t * 1000.0 for t in times]
    result["first_call_s"][backend] = first
    result["warmup_s"][backend] = warm
  ms = result["backend_ms"]
  ratio = lambda other: ms[other] / ms["tf"] if ms.get("tf") and ms.get(other) else None
  # The issue's reference path: the kernel through tensorflow-graphics' own
  # differentiable barycentrics.
  result["speedup_vs_tfg"] = ratio("tfg_own_bary")
  result["speedup_vs_tfg_stable_barycentrics"] = ratio("tfg")
  result["load_avg_after"] = machine.load_average()
  return result


def add_flags():
  """This benchmark's own flags (the shared ones are in tfsym3d.bench.__main__)."""
  flags.DEFINE_list("backends", ["tf", "tfg", "tfg_own_bary"],
                    "renderer: backends to time: tf, tfg (kernel + our barycentrics, what "
                    "--rasterizer=tfg runs), tfg_own_bary (kernel + tensorflow-graphics' "
                    "differentiable barycentrics).")
  flags.DEFINE_bool("backward", False, "renderer: time forward and backward "
                    "(gradients to depth and view) instead of forward only.")


def run(FLAGS, settings) -> Dict:  # pylint: disable=invalid-name
  """The benchmark from parsed flags; settings: batch_size, warmup, repeats."""
  return renderer_benchmark(settings["batch_size"], FLAGS.image_size, settings["repeats"],
                            FLAGS.backends, settings["warmup"], FLAGS.seed, FLAGS.progress,
                            FLAGS.backward)


def format(result: Dict) -> str:  # pylint: disable=redefined-builtin
  """A human-readable report of `renderer_benchmark`'s result."""
  lines = []
  passes = "forward and backward" if result.get("backward") else "forward"
  lines.append(f"renderer ({passes}): reconstructed_depth + canonical_grid of "
               f"{result['batch_size']} depth maps of {result['image_size']}x"
               f"{result['image_size']}, median of {result['repeats']} calls")
  lines.append(f"{'backend':<12} {'median ms':>10} {'min ms':>10} "
               f"{'1st call s':>11} {'warm-up s':>10}")
  for backend, ms in result["backend_ms"].items():
    times = result["times_ms"][backend]
    lines.append(f"{backend:<12} {machine.fmt(ms, '10.1f')} "
                 f"{machine.fmt(min(times) if times else None, '10.1f')} "
                 f"{machine.fmt(result['first_call_s'][backend], '11.2f')} "
                 f"{machine.fmt(result['warmup_s'][backend], '10.2f')}")
  for backend, reason in result["errors"].items():
    lines.append(f"{backend} unavailable: {reason}")
  if result["speedup_vs_tfg"] is not None:
    lines.append(f"speed-up of tf over tfg_own_bary: {result['speedup_vs_tfg']:.2f}x")
  if result.get("speedup_vs_tfg_stable_barycentrics") is not None:
    lines.append(f"speed-up of tf over tfg: "
                 f"{result['speedup_vs_tfg_stable_barycentrics']:.2f}x")
  lines.append(machine.format_environment(result))
  return "\n".join(lines)
