"""--mixed_precision and --jit_compile: what stays float32, and that training
with each gives a finite, falling loss on a fixed batch (in process, a
reduced-width model)."""

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


@pytest.mark.parametrize("precision,jit_compile", [("mixed_bfloat16", False),
                                                   ("float32", True)])
def test_training_loss_is_finite_and_falls(precision, jit_compile):
  model = _model(precision, jit_compile)
  images = _faces()
  if jit_compile:   # the networks are one XLA program
    hlo = model._networks_fn.experimental_get_compiler_ir(images)(stage="hlo")
    assert "HloModule" in hlo
  before, after, history = _train_and_measure(model, images, steps=40)
  totals = np.asarray(history["total"])
  print(f"{precision} jit={jit_compile}: L1 {before:.4f} -> {after:.4f}; total "
        f"{totals[:5].mean():.4f} (first 5) -> {totals[-5:].mean():.4f} (last 5)")
  assert len(totals) == 40 and np.isfinite(totals).all()
  assert history["nonfinite_streak"][-1] == 0
  assert int(model.skipped_steps.numpy()) == 0
  assert after < 0.85 * before
  assert totals[-5:].mean() < totals[:5].mean()


def test_mixed_float16_loss_scaling_steps_and_skips_overflows():
  model = _model("mixed_float16")
  optimizer = model.optimizer
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  images = _faces(4)
  before = [w.copy() for w in model.get_weights()]
  history = _fit(model, images, 3)
  assert np.isfinite(history["total"]).all()
  assert int(optimizer.iterations.numpy()) == 3 and int(model.skipped_steps.numpy()) == 0
  moved = [w for w, b in zip(model.get_weights(), before) if not np.array_equal(w, b)]
  assert moved
  # A scale so large that the scaled gradients overflow: the step is skipped,
  # the scale halved, and the non-finite guard does not count it.
  optimizer.dynamic_scale.assign(3e38)
  weights = [w.copy() for w in model.get_weights()]
  history = _fit(model, images, 1)
  assert float(optimizer.dynamic_scale.numpy()) == pytest.approx(1.5e38, rel=1e-6)
  assert history["nonfinite_streak"][-1] == 0 and int(model.skipped_steps.numpy()) == 1
  assert int(optimizer.iterations.numpy()) == 3
  for a, b in zip(weights, model.get_weights()):
    np.testing.assert_array_equal(a, b)
  # With an ordinary scale it steps again.
  optimizer.dynamic_scale.assign(1024.0)
  _fit(model, images, 1)
  assert int(optimizer.iterations.numpy()) == 4


def test_unknown_precision_is_refused():
  with pytest.raises(ValueError, match="mixed_bfloat16"):
    Unsup3D(CONFIG, precision="float16")
  with pytest.raises(ValueError, match="mixed_bfloat16"):
    EDDeconv(1, dtype="bfloat16")
