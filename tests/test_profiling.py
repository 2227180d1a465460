"""FLOP counts and trace summaries (tfsym3d.profiling) on small known graphs."""

import numpy as np
import pytest
import tensorflow as tf

import tfsym3d
from tfsym3d import profiling


def test_graph_flops_of_a_convolution_and_its_gradients_are_the_arithmetic():
  kernel = tf.constant(np.ones((3, 3, 4, 8), np.float32))

  @tf.function
  def forward(x):
    return tf.nn.conv2d(x, kernel, 1, "VALID")

  @tf.function
  def forward_backward(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      total = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "VALID"))
    return total, tape.gradient(total, x)

  spec = tf.TensorSpec([2, 10, 10, 4], tf.float32)
  macs = 2 * 8 * 8 * 3 * 3 * 4 * 8          # batch, output pixels, kernel, channels
  flops = profiling.graph_flops(forward.get_concrete_function(spec))
  assert flops["by_op_type"]["Conv2D"] == 2 * macs
  both = profiling.graph_flops(forward_backward.get_concrete_function(spec))
  assert both["by_op_type"]["Conv2D"] == 2 * macs
  assert both["by_op_type"]["Conv2DBackpropInput"] == 2 * macs
  assert both["total"] >= 4 * macs


def test_graph_flops_of_a_strided_transposed_convolution_and_a_filter_gradient():
  """A k4 s2 transposed convolution from 4x4 to 8x8 (the decoders' layer) and
  the filter gradient of a 4x4 'VALID' convolution to 1x1 (the bottleneck):
  both the MACs of the convolution they invert."""
  up = tf.constant(np.ones((4, 4, 6, 5), np.float32))      # [kh, kw, out, in]
  bottleneck = tf.Variable(np.ones((4, 4, 5, 7), np.float32))

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      y = tf.nn.conv2d_transpose(x, up, [3, 8, 8, 6], 2, "SAME")
      z = tf.nn.conv2d(x, bottleneck, 1, "VALID")            # 4x4 -> 1x1
      total = tf.reduce_sum(y) + tf.reduce_sum(z)
    return total, tape.gradient(total, bottleneck)

  flops = profiling.graph_flops(step.get_concrete_function(
      tf.TensorSpec([3, 4, 4, 5], tf.float32)))
  transposed_macs = 3 * 4 * 4 * 4 * 4 * 6 * 5   # its forward conv: 8x8x6 -> 4x4x5
  filter_macs = 3 * 1 * 1 * 4 * 4 * 5 * 7
  assert flops["by_op_type"]["Conv2DBackpropInput"] == 2 * transposed_macs
  assert flops["by_op_type"]["Conv2DBackpropFilter"] == 2 * filter_macs
  # The tape also builds the gradient with respect to x, which nothing uses:
  # it does not run and is not counted.
  assert len([op for op in step.get_concrete_function(
      tf.TensorSpec([3, 4, 4, 5], tf.float32)).graph.get_operations()
      if op.type == "Conv2DBackpropInput"]) == 2


@pytest.mark.parametrize("name, part", [
    ("StatefulPartitionedCall/unsup3d_1/netD_1/network_3_1/convolution", "netD"),
    ("StatefulPartitionedCall/gradient_tape/unsup3d_1/netA_1/network_7_1/mul_2/Mul",
     "netA (backward)"),
    ("StatefulPartitionedCall/unsup3d/render/GatherV2", "render"),
    ("StatefulPartitionedCall/gradient_tape/unsup3d/render/mul", "render (backward)"),
    ("StatefulPartitionedCall/losses/vgg16_relu3_3/block1_conv1/convolution", "vgg16"),
    ("StatefulPartitionedCall/losses/Mean", "losses"),
    ("StatefulPartitionedCall/cond/then/_353/cond/adam/Sqrt_184", "optimizer"),
    ("StatefulPartitionedCall/optimizer/IsFinite_63", "optimizer"),
    ("StatefulPartitionedCall/optimizer/mul_12", "optimizer"),
    ("StatefulPartitionedCall/IsFinite_63", "other"),
    ("StatefulPartitionedCall/unsup3d/network_netDx/add", "other"),
])
def test_ops_are_assigned_to_their_part(name, part):
  assert profiling.part_of(name) == part


def test_trace_summary_counts_the_ops_that_ran(tmp_path):
  x = tf.random.uniform([4, 32, 32, 8])
  kernel = tf.random.uniform([3, 3, 8, 8])

  @tf.function(jit_compile=True)
  def compiled(x):
    return tf.nn.relu(x) * 2.0 + 1.0

  @tf.function
  def step(x):
    with tf.name_scope("netD"):
      return compiled(tf.nn.conv2d(x, kernel, 1, "SAME"))

  step(x)
  tf.profiler.experimental.start(str(tmp_path))
  for _ in range(3):
    step(x).numpy()
  tf.profiler.experimental.stop()
  summary = profiling.summarize_trace(str(tmp_path), steps=3)
  convs = [e for e in summary["top_op_types"] if e["op_type"] == "Conv2D"]
  assert convs and convs[0]["count_per_step"] == pytest.approx(1.0)
  assert convs[0]["ms_per_step"] > 0
  assert summary["by_part"]["netD"] > 0
  # The XLA-compiled function runs as one cluster per call.
  clusters = [e for e in summary["top_op_types"] if e["op_type"] == "XLA cluster"]
  assert clusters and clusters[0]["count_per_step"] == pytest.approx(1.0)
  assert summary["by_part"]["xla"] > 0
  assert summary["op_ms_per_step"] >= convs[0]["ms_per_step"]
  # conftest imports tfsym3d first, so the convolution ran on oneDNN.
  assert tfsym3d.onednn_enabled()
  assert 0 < summary["onednn_share"] <= 1


@pytest.mark.parametrize("kernel, expected", [
    ("_MklNativeConv2DBackpropFilter", ("Conv2DBackpropFilter", True)),
    ("_MklConv2D", ("Conv2D", True)),
    ("_MklNativeFusedConv2D", ("_FusedConv2D", True)),
    ("_FusedConv2D", ("_FusedConv2D", False)),
    ("_MklNativeFusedBatchNormV3", ("FusedBatchNormV3", True)),
    ("Mul", ("Mul", False)),
])
def test_onednn_kernels_count_under_their_graph_op_type(kernel, expected):
  assert profiling.graph_op_type(kernel) == expected


def test_trace_summary_of_an_empty_directory_says_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="xplane"):
    profiling.summarize_trace(str(tmp_path), steps=1)
