"""--mixed_precision and --jit_compile: what stays float32, and that training
with each gives a finite, falling loss on a fixed batch (in process, a
reduced-width model)."""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import losses
from tfsym3d import runs
from tfsym3d.config import ModelConfig
from tfsym3d.data import synthetic
from tfsym3d.model import Unsup3D, make_training_optimizer
from tfsym3d.nets import EDDeconv

SIZE = 16
CONFIG = ModelConfig(image_size=SIZE, nf=8, zdim=32, nf_encoder=8, nf_conf=8,
                     zdim_conf=16, vgg_weights="none", lam_perc=0.0, learning_rate=1e-3)


def _faces(batch=8, size=SIZE):
  faces = synthetic.SynFaces(image_size=size, seed=0)
  return tf.constant(np.stack([faces.sample(i)["image"] for i in range(batch)])
                     .astype(np.float32) / 127.5 - 1.0)


def _model(precision, jit_compile=False):
  keras.utils.set_random_seed(0)
  model = runs.build_model(CONFIG, precision=precision, jit_compile=jit_compile)
  optimizer = make_training_optimizer(CONFIG, precision=precision)
  optimizer.build(model.trainable_variables)      # as tfsym3d.train does
  model.compile(optimizer=optimizer)
  return model


class _StepLogs(keras.callbacks.Callback):
  """Every step's logs (fit's History keeps one entry per epoch)."""

  def __init__(self):
    super().__init__()
    self.logs = {}

  def on_train_batch_end(self, batch, logs=None):
    for key, value in (logs or {}).items():
      self.logs.setdefault(key, []).append(float(value))


def _fit(model, images, steps):
  logs = _StepLogs()
  model.fit(tf.data.Dataset.from_tensors(images).repeat(steps), epochs=1, verbose=0,
            callbacks=[logs])
  return logs.logs


def _train_and_measure(model, images, steps):
  """(plain masked L1 before, after, every step's logs)."""
  def l1():
    out = model(images)
    return float(losses.photometric_loss(out.recon_image, images, out.mask))

  before = l1()
  history = _fit(model, images, steps)
  return before, l1(), history


def test_mixed_bfloat16_networks_in_16_bits_the_rest_in_float32():
  model = _model("mixed_bfloat16")
  convs = [layer for net in model.networks.values() for layer in net.network
           if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
  norms = [layer for net in model.networks.values() for layer in net.network
           if isinstance(layer, keras.layers.GroupNormalization)]
  assert convs and norms
  assert {layer.compute_dtype for layer in convs} == {"bfloat16"}
  assert {layer.compute_dtype for layer in norms} == {"float32"}
  assert {v.dtype for v in model.weights} <= {"float32", "int32"}   # weights stay 32-bit
  # Inside, the networks do compute in bfloat16 ...
  images = _faces(2)
  assert model.net_depth.network[0](images).dtype == tf.bfloat16
  # ... while every factor, the rasterized depth and the losses are float32.
  out = model(images)
  for name, value in out.as_dict().items():
    assert value.dtype == tf.float32, name
  assert model.compute_losses(images, out)["total"].dtype == tf.float32
  # The same weights in float32 give nearly the same decomposition.
  full = Unsup3D(CONFIG)
  full.build((None, SIZE, SIZE, 3))
  full.set_weights(model.get_weights())
  reference = full(images)
  diff = float(tf.reduce_max(tf.abs(out.canon_depth - reference.canon_depth)))
  print("bf16 vs f32 canonical depth max diff", diff)
  assert 0 < diff < 5e-3


def _check_training(precision, jit_compile, steps, batch, window):
  model = _model(precision, jit_compile)
  images = _faces(batch)
  if jit_compile:   # the networks are one XLA program
    hlo = model._networks_fn.experimental_get_compiler_ir(images)(stage="hlo")
    assert "HloModule" in hlo
  before, after, history = _train_and_measure(model, images, steps)
  totals = np.asarray(history["total"])
  print(f"{precision} jit={jit_compile} {steps} steps: L1 {before:.4f} -> {after:.4f}; "
        f"total {totals[:window].mean():.4f} (first {window}) -> "
        f"{totals[-window:].mean():.4f} (last {window})")
  assert len(totals) == steps and np.isfinite(totals).all()
  assert history["nonfinite_streak"][-1] == 0
  assert int(model.skipped_steps.numpy()) == 0
  assert after < 0.9 * before
  assert totals[-window:].mean() < totals[:window].mean()


def test_mixed_bfloat16_with_xla_loss_is_finite_and_falls():
  _check_training("mixed_bfloat16", True, steps=10, batch=4, window=3)


@pytest.mark.slow
@pytest.mark.parametrize("precision,jit_compile", [("mixed_bfloat16", False),
                                                   ("float32", True)])
def test_training_loss_is_finite_and_falls_over_40_steps(precision, jit_compile):
  _check_training(precision, jit_compile, steps=40, batch=8, window=5)


@pytest.mark.slow   # float16 is the GPU policy; CPUs run bfloat16 (tested above)
def test_mixed_float16_loss_scaling_steps_and_skips_overflows():
  model = _model("mixed_float16")
  optimizer = model.optimizer
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  images = _faces(4)
  before = [w.copy() for w in model.get_weights()]
  # At Keras' initial scale 2^15 this untrained model's float16 gradients
  # overflow: such steps are skipped and the scale halved (4096 -> 2048 for
  # this one) until steps go through; none counts as a non-finite step.
  history = _fit(model, images, 6)
  steps, skipped = int(optimizer.iterations.numpy()), int(model.skipped_steps.numpy())
  print("float16: steps", steps, "skipped for overflow", skipped, "scale",
        float(optimizer.dynamic_scale.numpy()))
  assert np.isfinite(history["total"]).all() and max(history["nonfinite_streak"]) == 0
  assert steps + skipped == 6 and steps >= 1
  assert float(optimizer.dynamic_scale.numpy()) == 32768.0 / 2 ** skipped
  moved = [w for w, b in zip(model.get_weights(), before) if not np.array_equal(w, b)]
  assert moved
  # A scale so large that the scaled gradients overflow: the step is skipped,
  # the scale halved, and the non-finite guard does not count it.
  optimizer.dynamic_scale.assign(3e38)
  weights = [w.copy() for w in model.get_weights()]
  history = _fit(model, images, 1)
  assert float(optimizer.dynamic_scale.numpy()) == pytest.approx(1.5e38, rel=1e-6)
  assert history["nonfinite_streak"][-1] == 0
  assert int(model.skipped_steps.numpy()) == skipped + 1
  assert int(optimizer.iterations.numpy()) == steps
  for a, b in zip(weights, model.get_weights()):
    np.testing.assert_array_equal(a, b)
  # With an ordinary scale it steps again.
  optimizer.dynamic_scale.assign(1024.0)
  _fit(model, images, 1)
  assert int(optimizer.iterations.numpy()) == steps + 1


def test_unknown_precision_is_refused():
  with pytest.raises(ValueError, match="mixed_bfloat16"):
    Unsup3D(CONFIG, precision="float16")
  with pytest.raises(ValueError, match="mixed_bfloat16"):
    EDDeconv(1, dtype="bfloat16")


@pytest.mark.slow
def test_train_cli_mixed_precision_and_xla_checkpoints_load_in_float32(tmp_path):
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(repo))
  result = subprocess.run(
      [sys.executable, "-m", "tfsym3d.train", f"--flagfile={repo / 'configs' / 'tiny.cfg'}",
       f"--run_dir={tmp_path}", "--epochs=1", "--steps_per_epoch=3", "--eval_images=0",
       "--val_images=0", "--images_every=0", "--noprogress", "--strategy=one_device",
       "--mixed_precision", "--jit_compile"],
      capture_output=True, text=True, env=env, cwd=repo, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "networks in mixed_bfloat16" in result.stderr
  # The checkpoint holds float32 weights that a float32 model loads.
  tiny = ModelConfig(image_size=32, nf=8, zdim=32, nf_encoder=8, nf_conf=8,
                     zdim_conf=16, vgg_weights="none", lam_perc=0.0)
  model = runs.build_model(tiny)
  assert runs.restore_weights(model, str(tmp_path)).endswith("ckpt-3")
  for weight in model.get_weights():
    assert weight.dtype == np.float32 and np.isfinite(weight).all()
