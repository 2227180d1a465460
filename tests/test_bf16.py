"""bfloat16 on the CPU: which layers compute in 16 bits under mixed_bfloat16
(the networks' convolutions and the frozen VGG16), that GroupNorm computes
Keras' function in float32 whatever its input, and that the bfloat16
perceptual loss stays within a tolerance of float32's on a fixed batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import losses
from tfsym3d import nets
from tfsym3d.config import ModelConfig
from tfsym3d.model import Unsup3D

SMALL = dict(image_size=16, nf=8, zdim=16, nf_encoder=8, nf_conf=8, zdim_conf=16)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
  """A random VGG16 (no top, no download) with non-zero biases."""
  keras.utils.set_random_seed(3)
  vgg = keras.applications.VGG16(include_top=False, weights=None,
                                 input_shape=(None, None, 3))
  for layer in vgg.layers:
    if layer.weights:
      layer.bias.assign(np.random.normal(0, 0.05, layer.bias.shape).astype(np.float32))
  path = str(tmp_path_factory.mktemp("vgg") / "vgg16_random.weights.h5")
  vgg.save_weights(path)
  return path


@pytest.mark.parametrize("shape, groups", [((3, 8, 8, 16), 4), ((2, 16, 16, 64), 16),
                                           ((2, 1, 1, 8), 2)])
def test_group_norm_is_keras_function_and_gradient(shape, groups):
  rng = np.random.default_rng(0)
  # An offset mean, so a one-pass variance would lose digits.
  x = tf.constant(rng.normal(3.0, 2.0, shape).astype(np.float32))
  upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
  gamma = rng.normal(size=shape[-1]).astype(np.float32)
  beta = rng.normal(size=shape[-1]).astype(np.float32)
  results = []
  for layer in (keras.layers.GroupNormalization(groups, epsilon=1e-5),
                nets.GroupNormalization(groups, epsilon=1e-5)):
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    results.append([y] + grads)
  for name, want, got in zip(("y", "dx", "dgamma", "dbeta"), *results):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4,
                               err_msg=name)


def test_group_norm_takes_bfloat16_computes_float32_returns_bfloat16():
  rng = np.random.default_rng(1)
  x = tf.constant(rng.normal(0.5, 1.5, (2, 8, 8, 16)).astype(np.float32))
  ours, ref = nets.GroupNormalization(4, epsilon=1e-5), keras.layers.GroupNormalization(
      4, epsilon=1e-5)
  ours.build(x.shape)
  ref.build(x.shape)
  assert ours.compute_dtype == "float32"
  x16 = tf.cast(x, tf.bfloat16)
  with tf.GradientTape() as tape:
    tape.watch(x16)
    y16 = ours(x16)
  assert y16.dtype == tf.bfloat16
  assert tape.gradient(y16, x16).dtype == tf.bfloat16
  # The float32 result of the same (rounded) input, rounded once.
  want = ref(tf.cast(x16, tf.float32))
  err = float(tf.reduce_max(tf.abs(tf.cast(y16, tf.float32) - want)))
  assert err <= 2 ** -8 * float(tf.reduce_max(tf.abs(want)))


def test_group_norm_refuses_other_layouts():
  with pytest.raises(ValueError, match="axis=-1"):
    nets.GroupNormalization(2).build((2, 8, 8))


def test_mixed_bfloat16_runs_the_vgg_in_bfloat16_the_loss_in_float32(vgg_file):
  config = ModelConfig(vgg_weights=vgg_file, **SMALL)
  expected = {"float32": "float32", "mixed_bfloat16": "bfloat16",
              "mixed_float16": "float32"}
  for precision, vgg_dtype in expected.items():
    model = Unsup3D(config, precision=precision)
    convs = [layer for layer in model.perceptual.features_model.layers
             if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 7
    assert {layer.compute_dtype for layer in convs} == {vgg_dtype}, precision
    assert {w.dtype for w in model.perceptual.features_model.weights} == {"float32"}
    images = tf.zeros((1, 16, 16, 3))
    assert model.perceptual.features(images).dtype == tf.float32
  with pytest.raises(ValueError, match="mixed_float16"):
    losses.PerceptualLoss(vgg_file, dtype="mixed_float16")


def test_bfloat16_perceptual_loss_and_gradient_near_float32(vgg_file):
  rng = np.random.default_rng(2)
  # Smooth images, and reconstructions near them (as late in training).
  target = tf.image.resize(rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32), (32, 32))
  recon = tf.clip_by_value(target + 0.1 * rng.normal(size=target.shape), -1, 1)
  recon = tf.cast(recon, tf.float32)
  mask = tf.constant((rng.uniform(size=(4, 32, 32)) > 0.2).astype(np.float32))
  values, grads = [], []
  for dtype in ("float32", "mixed_bfloat16"):
    perceptual = losses.PerceptualLoss(vgg_file, dtype=dtype)
    with tf.GradientTape() as tape:
      tape.watch(recon)
      value = perceptual(recon, target, mask)    # the feature term alone
    values.append(float(value))
    grads.append(tape.gradient(value, recon).numpy().ravel())
  cosine = np.dot(*grads) / np.linalg.norm(grads[0]) / np.linalg.norm(grads[1])
  print(f"perceptual float32 {values[0]:.6g} bfloat16 {values[1]:.6g}, "
        f"gradient cosine {cosine:.5f}")
  assert values[1] != values[0]                  # it did compute in bfloat16
  assert values[1] == pytest.approx(values[0], rel=0.01)
  assert cosine > 0.95
