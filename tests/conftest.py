"""Shared pytest set-up: quiet TensorFlow, fixed seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Before TensorFlow: tfsym3d sets the oneDNN default that users get.
import tfsym3d  # noqa: E402,F401
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
  np.random.seed(0)
  tf.random.set_seed(0)
