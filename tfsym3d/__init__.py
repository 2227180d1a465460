"""tfsym3d: unsupervised 3D reconstruction of probably-symmetric objects."""

import os as _os

__version__ = "0.1.0"

# TensorFlow's oneDNN (MKL) CPU kernels are on by default only on x86 CPUs
# with AVX-512; on AVX2 CPUs it falls back to Eigen, whose convolutions are
# the slower ones there (docs/performance.md). TensorFlow reads the variable
# when it is first imported, so it is set here, before any of our modules imports TensorFlow; an explicit
# TF_ENABLE_ONEDNN_OPTS=0 (or =1) from the user always wins. GPUs ignore it.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def onednn_enabled() -> bool:
  """Whether TensorFlow's CPU ops run on oneDNN in this process.

  False also when TensorFlow was imported before tfsym3d without
  TF_ENABLE_ONEDNN_OPTS=1 on a CPU where it is off by default.
  """
  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  from tensorflow.python.util import _pywrap_util_port
  return bool(_pywrap_util_port.IsMklEnabled())
