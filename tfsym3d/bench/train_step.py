"""Training-step benchmark: the function Keras' `fit` runs for every batch
(`model.make_train_function()` over a `tf.data` iterator, which calls
`Unsup3D.train_step`): forward pass, every loss including the perceptual one,
gradients and the Adam update. It counts the step's FLOPs (GFLOP/s achieved),
with --profile_dir traces a few steps and prints where the time goes (by op
type and by network, renderer, losses and optimiser), and times the PyTorch
reference step in the same run as its anchor (torch installed).

  python -m tfsym3d.bench train_step [--json] [--batch_size 16] [--image_size 64]
      [--nf 64] [--steps 5] [--warmup 2] [--rasterizer tf] [--vgg_weights random]
      [--jit_compile] [--mixed_precision] [--profile_dir DIR] [--profile_steps 2]
      [--noanchor]
"""

import math
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, Optional

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfsym3d.bench import anchors
from tfsym3d.bench import machine
from tfsym3d.config import ModelConfig

DEFAULTS = {"batch_size": 16, "warmup": 2, "repeats": 0}


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
                         anchor: bool = True,
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
    anchor: also time the PyTorch reference step in this run
      (`torch_reference.ReferenceTrainStep`, the same batch, sizes and
      losses, the rasterization replaced by an identity warp): anchor_torch
      and speedup_vs_torch (ours / its images per second); "not measured"
      without torch.
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
  result.update(machine.environment())
  # On a CPU without bfloat16 units, say so before the slow steps start.
  result["bfloat16_warning"] = (None if tf.config.list_logical_devices("GPU")
                                else machine.warn_if_bfloat16_slow(precision))
  result["params"] = {name: int(net.count_params()) for name, net in model.networks.items()}
  result["params_total"] = sum(result["params"].values())

  logging.info("train_step: warming up (%d untimed steps; the first traces the "
               "step)", warmup)
  warm = [step()[0] for _ in range(warmup)]
  timed = [step() for _ in tqdm(range(steps), desc="train_step", file=sys.stderr,
                                disable=not progress, leave=False)]
  times = [t for t, _ in timed]
  result["step_ms"] = machine.median_ms(times)
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
  if anchor:
    logging.info("train_step: timing the PyTorch reference step (the anchor)")
    result["anchor_torch"] = anchors.torch_train_step(
        batch_size, image_size, nf, config.zdim, config.nf_encoder, config.nf_conf,
        config.zdim_conf, bool(model.perceptual.enabled), steps, warmup, seed)
    torch_rate = (result["anchor_torch"]["images_per_s"]
                  if isinstance(result["anchor_torch"], dict) else None)
    result["speedup_vs_torch"] = anchors.ratio(result["images_per_s"], torch_rate)
  else:
    result["anchor_torch"] = "not measured (anchor=False)"
    result["speedup_vs_torch"] = None
  result["load_avg_after"] = machine.load_average()
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


def add_flags():
  """This benchmark's own flags (the shared ones are in tfsym3d.bench.__main__)."""
  flags.DEFINE_integer("steps", 5, "train_step: timed steps (median).")
  flags.DEFINE_string("profile_dir", None, "train_step: trace --profile_steps more steps "
                      "with tf.profiler into this directory (open it in TensorBoard's "
                      "profile tab) and print where the time goes.")
  flags.DEFINE_integer("profile_steps", 2, "train_step: steps traced with --profile_dir.")


def run(FLAGS, settings) -> Dict:  # pylint: disable=invalid-name
  """The benchmark from parsed flags; settings: batch_size, warmup, repeats.
  --vgg_weights defaults to 'random' here (timing only, no download)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from tfsym3d.train import precision_for  # pylint: disable=g-import-not-at-top
  vgg_weights = FLAGS.vgg_weights if FLAGS["vgg_weights"].present else "random"
  explicit = ("image_size", "nf", "rasterizer", "vgg_weights")
  overrides = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(ModelConfig)
               if f.name not in explicit}
  return train_step_benchmark(settings["batch_size"], FLAGS.image_size, FLAGS.nf,
                              FLAGS.steps, settings["warmup"], FLAGS.rasterizer, vgg_weights,
                              FLAGS.seed, FLAGS.progress, FLAGS.jit_compile,
                              precision_for(FLAGS.mixed_precision), FLAGS.profile_dir,
                              FLAGS.profile_steps, anchor=FLAGS.anchor, **overrides)


def format(result: Dict) -> str:  # pylint: disable=redefined-builtin
  """A human-readable report of `train_step_benchmark`'s result."""
  lines = []
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
  line = anchors.describe(
      result.get("anchor_torch"),
      lambda step: (f"  anchor, PyTorch {step['torch']} reference step (identity warp, "
                    f"{step['threads']} threads): {step['images_per_s']:.2f} images/s; "
                    f"ours {result['speedup_vs_torch']:.2f}x"),
      "  anchor, PyTorch reference step")
  lines += [line] if line else []
  if result.get("bfloat16_warning"):
    lines.append(f"  warning: {result['bfloat16_warning']}")
  lines.append(machine.format_environment(result))
  return "\n".join(lines)
