"""Where a training step's time and arithmetic go: FLOP counts of a traced
graph and a summary of a `tf.profiler` trace, for `tfsym3d.bench train_step`.

FLOPs are counted on the graph of one traced step with TensorFlow's per-op
`flops` statistics (Conv2D, MatMul, element-wise ops), except for the two
backward convolutions (also what a transposed convolution runs forward),
counted here as their forward convolution's 2 x MACs: TensorFlow's registry
counts them over the larger map, 16 times too many for the 4x4 'VALID'
layers at the bottlenecks. Forward and backward convolutions are both
counted; ops inside nested functions (e.g. an XLA-compiled block) are not
visible, so count on a model built without `jit_compile`.

A trace (`tf.profiler.experimental.start/stop`) is summarised from its
XSpace protobuf without TensorBoard: every op executed on TensorFlow's
compute threads, by op type and by part of the model (network, renderer,
losses, optimiser), forward and backward.
"""

import collections
import glob
import os
import re
from typing import Dict, List


# Parts of a step, recognised by the name scopes in an op's name; the first
# match wins (the update: decay, finiteness checks, Adam; then the frozen
# VGG, the five networks, the renderer and the losses).
_PARTS = (
    ("optimizer", re.compile(r"(^|/)(optimizer(_\d+)?/|adam/|cond/then/)")),
    ("vgg16", re.compile(r"(^|/)vgg16")),
    ("netD", re.compile(r"(^|/)netD(_\d+)?/")),
    ("netA", re.compile(r"(^|/)netA(_\d+)?/")),
    ("netL", re.compile(r"(^|/)netL(_\d+)?/")),
    ("netV", re.compile(r"(^|/)netV(_\d+)?/")),
    ("netC", re.compile(r"(^|/)netC(_\d+)?/")),
    ("render", re.compile(r"(^|/)render(_\d+)?/")),
    ("losses", re.compile(r"(^|/)losses(_\d+)?/")),
)
# The trace event of an XLA executable running on the CPU.
_XLA_RUN = "CpuExecutable::Execute"
# Ops that only wrap others (their time is their children's).
_CONTAINERS = {"StatefulPartitionedCall", "PartitionedCall", "If", "StatelessIf",
               "While", "StatelessWhile", "_XlaRun", "XlaLaunch", "_XlaCompile"}


_BACKWARD_CONVOLUTIONS = ("Conv2DBackpropInput", "Conv2DBackpropFilter")
# oneDNN's graph rewrite renames the kernels it takes over (Conv2D runs as
# _MklNativeConv2D, older builds _MklConv2D).
_ONEDNN_PREFIX = re.compile(r"^_Mkl(Native)?")
_INTERNAL_FUSED_OPS = {"_FusedConv2D", "_FusedMatMul", "_FusedDepthwiseConv2dNative",
                       "_FusedBatchMatMulV2", "_FusedConv3D"}


def graph_op_type(kernel_type: str) -> "tuple[str, bool]":
  """The graph's op type of a traced kernel, and whether oneDNN ran it.

  '_MklNativeConv2DBackpropFilter' -> ('Conv2DBackpropFilter', True);
  '_MklNativeFusedConv2D' -> ('_FusedConv2D', True); 'Mul' -> ('Mul', False).
  """
  stripped = _ONEDNN_PREFIX.sub("", kernel_type)
  if stripped == kernel_type:
    return kernel_type, False
  # oneDNN drops the leading underscore of Grappler's internal fused ops'
  # names; public ones such as FusedBatchNormV3 never had one.
  if "_" + stripped in _INTERNAL_FUSED_OPS:
    stripped = "_" + stripped
  return stripped, True


def _backward_convolution_flops(op) -> float:
  """2 x the MACs of the forward convolution a backward one belongs to:
  every element of the forward output's gradient (input 2) meets a
  kh x kw x C_in window of the filter."""
  grad_shape = op.inputs[2].shape
  filter_shape = (op.inputs[1].shape if op.type == "Conv2DBackpropInput"
                  else op.outputs[0].shape)
  if not (grad_shape.is_fully_defined() and filter_shape.is_fully_defined()):
    raise ValueError(f"{op.name}: shapes not known")
  kh, kw, c_in, _ = filter_shape.as_list()
  return 2.0 * grad_shape.num_elements() * kh * kw * c_in


def _ops_that_run(graph) -> List:
  """The ops the function's outputs and side effects depend on: a tape also
  builds gradients nobody asked for (e.g. with respect to the images), which
  TensorFlow prunes before running."""
  stack = [t.op for t in graph.outputs] + list(graph.control_outputs)
  seen = set()
  while stack:
    op = stack.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    stack.extend(t.op for t in op.inputs)
    stack.extend(op.control_inputs)
  return [op for op in graph.get_operations() if op.name in seen]


def graph_flops(concrete_function) -> Dict:
  """FLOPs of one call of a traced function, by op type.

  Args:
    concrete_function: a `tf.function(...).get_concrete_function(...)` whose
      inputs have fully known shapes.
  Returns:
    {"total": float FLOPs, "by_op_type": {type: FLOPs} (largest first),
     "ops_without_shapes": ops that could not be counted}, over the ops that
    run (those the outputs and the stateful ops depend on).
  """
  from tensorflow.python.framework import ops as ops_lib  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  graph = concrete_function.graph
  by_type = collections.Counter()
  unknown = 0
  for op in _ops_that_run(graph):
    try:
      if op.type in _BACKWARD_CONVOLUTIONS:
        flops = _backward_convolution_flops(op)
      else:
        flops = ops_lib.get_stats_for_node_def(graph, op.node_def, "flops").value
    except (ValueError, TypeError):
      unknown += 1   # a shape the statistic needs is not known
      continue
    if flops:
      by_type[op.type] += flops
  return {"total": float(sum(by_type.values())),
          "by_op_type": {k: float(v) for k, v in by_type.most_common()},
          "ops_without_shapes": unknown}


def part_of(op_name: str) -> str:
  """The part of the model an op belongs to, from its name scopes:
  'netD', ..., 'vgg16', 'render', 'losses', 'optimizer' or 'other', with
  ' (backward)' for gradient ops (the tape's `gradient_tape/` scope).
  (`summarize_trace` adds 'xla' for XLA-compiled clusters.)"""
  part = "other"
  for name, pattern in _PARTS:
    if pattern.search(op_name):
      part = name
      break
  if part != "optimizer" and "gradient_tape/" in op_name:
    part += " (backward)"
  return part


def _newest_xplane(log_dir: str) -> str:
  paths = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.xplane.pb"))
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb under {log_dir}/plugins/profile: was "
                            "tf.profiler.experimental.start/stop run with this log dir?")
  return max(paths, key=os.path.getmtime)


def summarize_trace(log_dir: str, steps: int, top: int = 15) -> Dict:
  """Op time of a traced run, per step: by op type and by model part.

  Times are the ops' durations on TensorFlow's compute threads (intra-op
  work an op hands to Eigen's pool is inside its duration), summed over
  threads: with inter-op parallelism the sum can exceed the wall time.

  Args:
    log_dir: the directory given to `tf.profiler.experimental.start`.
    steps: how many steps the trace holds (figures are divided by it).
    top: how many op types to list.
  Returns:
    {"op_ms_per_step": total, "top_op_types": [{"op_type", "ms_per_step",
     "share", "count_per_step"}] (graph op types: a oneDNN kernel counts
     under the op it replaces), "onednn_share": the share of op time in
     oneDNN kernels, "by_part": {part: ms_per_step} (largest first),
     "xplane": the file read}. XLA-compiled clusters (the
    rasterizer's face stage; with --jit_compile the networks too) count as
    op type 'XLA cluster', part 'xla'.
  """
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  path = _newest_xplane(log_dir)
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  by_type, counts, by_part = collections.Counter(), collections.Counter(), collections.Counter()
  onednn_ms = 0.0
  for plane in space.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if name.startswith(_XLA_RUN):
          # An XLA-compiled cluster runs as one executable: its ops do not
          # appear one by one (the op that launched it is a container).
          op_type, part = "XLA cluster", "xla"
        elif "::" in name or ":" not in name:
          continue                   # executor bookkeeping, not an op
        else:
          op_name, kernel_type = name.rsplit(":", 1)
          if kernel_type in _CONTAINERS:
            continue
          op_type, onednn = graph_op_type(kernel_type)
          if onednn:
            onednn_ms += event.duration_ps / 1e9
          part = part_of(op_name)
        ms = event.duration_ps / 1e9
        by_type[op_type] += ms
        counts[op_type] += 1
        by_part[part] += ms
  total = sum(by_type.values())
  steps = max(int(steps), 1)
  top_types: List[Dict] = [
      {"op_type": name, "ms_per_step": ms / steps,
       "share": ms / total if total else 0.0, "count_per_step": counts[name] / steps}
      for name, ms in by_type.most_common(top)]
  return {"op_ms_per_step": total / steps, "top_op_types": top_types,
          "onednn_share": onednn_ms / total if total else 0.0,
          "by_part": {k: v / steps for k, v in by_part.most_common()}, "xplane": path}
