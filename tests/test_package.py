"""Importing tfsym3d turns TensorFlow's oneDNN CPU kernels on unless told not to."""

import os
import subprocess
import sys

import pytest

_PROBE = ("import tfsym3d, tensorflow as tf; "
          "print('onednn', tfsym3d.onednn_enabled(), tf.constant(1.0).numpy())")


def _probe(env_value):
  env = dict(os.environ)
  env.pop("TF_ENABLE_ONEDNN_OPTS", None)
  if env_value is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = env_value
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  line = [l for l in out.stdout.splitlines() if l.startswith("onednn")][-1]
  return line.split()[1] == "True"


@pytest.mark.parametrize("env_value, expected", [(None, True), ("1", True), ("0", False)])
def test_onednn_default_and_user_override(env_value, expected):
  assert _probe(env_value) is expected
