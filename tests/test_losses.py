"""Losses of docs/method.md §6 against NumPy, and PerceptualLoss weight loading."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import losses

EPS = 1e-7


def _rand(*shape, low=-1.0, high=1.0):
  return np.random.uniform(low, high, shape).astype(np.float32)


def _partial_mask(b, h, w):
  mask = np.zeros((b, h, w), np.float32)
  mask[:, 2:h - 1, 3:] = 1.0
  mask[0, 0, 0] = 0.5
  return mask


# --- photometric ------------------------------------------------------------

@pytest.mark.parametrize("use_sigma", [False, True])
def test_photometric_matches_numpy(use_sigma):
  b, h, w = 2, 8, 10
  recon, target = _rand(b, h, w, 3), _rand(b, h, w, 3)
  mask = _partial_mask(b, h, w)
  sigma = _rand(b, h, w, 1, low=0.05, high=2.0) if use_sigma else None
  l = np.abs(recon - target)
  if use_sigma:
    l = l * np.sqrt(2) / (sigma + EPS) + np.log(sigma + EPS)
  m = np.broadcast_to(mask[..., None], l.shape)
  want = (l * m).sum() / m.sum()
  got = losses.photometric_loss(recon, target, mask, sigma)
  assert got.shape == ()
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_photometric_without_mask_is_mean():
  recon, target = _rand(2, 4, 4, 3), _rand(2, 4, 4, 3)
  np.testing.assert_allclose(losses.photometric_loss(recon, target).numpy(),
                             np.abs(recon - target).mean(), rtol=1e-6)


def test_photometric_equal_images_give_log_sigma():
  img = _rand(1, 4, 4, 3)
  sigma = np.full((1, 4, 4, 1), 0.5, np.float32)
  got = losses.photometric_loss(img, img, np.ones((1, 4, 4), np.float32), sigma)
  np.testing.assert_allclose(got.numpy(), np.log(0.5 + EPS), rtol=1e-6)


# --- depth smoothness ---------------------------------------------------------

def test_depth_smoothness_ramp():
  # d = 0.9 + 0.01 u + 0.02 v: |dx| = 0.01, |dy| = 0.02 everywhere, range 0.2.
  v, u = np.mgrid[0:5, 0:7].astype(np.float32)
  depth = (0.9 + 0.01 * u + 0.02 * v)[None]
  got = losses.depth_smoothness(depth, 0.9, 1.1)
  np.testing.assert_allclose(got.numpy(), (0.01 + 0.02) / 0.2, rtol=1e-4)


def test_depth_smoothness_single_bump():
  # One pixel of +0.1 in a 3x3 flat map: 2 of 6 horizontal and 2 of 6 vertical
  # differences are 0.1, so each mean is 0.1/3; range 1.
  depth = np.ones((1, 3, 3), np.float32)
  depth[0, 1, 1] += 0.1
  got = losses.depth_smoothness(depth, 0.0, 1.0)
  np.testing.assert_allclose(got.numpy(), 2 * 0.1 / 3, rtol=1e-4)


# --- perceptual -----------------------------------------------------------------

def test_perceptual_none_is_off():
  for weights in ("none", None):
    loss = losses.PerceptualLoss(weights)
    assert not loss.enabled
    img = _rand(1, 16, 16, 3)
    assert float(loss(img, -img)) == 0.0


def test_perceptual_missing_file_is_clear(tmp_path):
  path = str(tmp_path / "nowhere" / "vgg16.h5")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    losses.PerceptualLoss(path)


def test_perceptual_bad_mode():
  with pytest.raises(ValueError):
    losses.PerceptualLoss("none", input_mode="rgb")


def test_preprocess_modes():
  loss = losses.PerceptualLoss("none", input_mode="caffe")
  x = np.zeros((1, 1, 1, 3), np.float32)
  x[..., 0] = 1.0   # R = 255
  x[..., 2] = -1.0  # B = 0
  np.testing.assert_allclose(loss.preprocess(x).numpy()[0, 0, 0],
                             [-103.939, 127.5 - 116.779, 255 - 123.68], rtol=1e-5)
  loss = losses.PerceptualLoss("none", input_mode="torch")
  np.testing.assert_allclose(
      loss.preprocess(x).numpy()[0, 0, 0],
      [(1 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0 - 0.406) / 0.225], rtol=1e-5)


def _save_legacy_h5(model, path):
  """Writes weights in the layout of Keras' official VGG16 notop .h5 file."""
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([l.name.encode() for l in model.layers])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for layer in model.layers:
      g = f.create_group(layer.name)
      names = [f"{layer.name}_{s}_1:0" for s in ("W", "b")][:len(layer.weights)]
      g.attrs["weight_names"] = np.array([n.encode() for n in names])
      for name, var in zip(names, layer.weights):
        g.create_dataset(name, data=var.numpy())


@pytest.fixture(scope="module")
def saved_vgg(tmp_path_factory):
  """A random VGG16 (no download) saved in both supported file formats."""
  np.random.seed(1)
  vgg = keras.applications.VGG16(include_top=False, weights=None,
                                 input_shape=(None, None, 3))
  # Non-zero biases so a load that skipped them would be noticed.
  for layer in vgg.layers:
    if layer.weights:
      layer.bias.assign(np.random.normal(0, 0.05, layer.bias.shape).astype(np.float32))
  root = tmp_path_factory.mktemp("vgg")
  keras3 = str(root / "vgg16_random.weights.h5")
  legacy = str(root / "vgg16_random_notop.h5")
  vgg.save_weights(keras3)
  _save_legacy_h5(vgg, legacy)
  features = keras.Model(vgg.input, vgg.get_layer("block3_conv3").output)
  return features, {"keras3": keras3, "legacy": legacy}


@pytest.mark.parametrize("fmt", ["keras3", "legacy"])
def test_perceptual_loads_local_weights(saved_vgg, fmt):
  reference, paths = saved_vgg
  loss = losses.PerceptualLoss(paths[fmt], input_mode="torch")
  assert loss.enabled
  assert loss.features_model.trainable_variables == []
  img = _rand(2, 16, 16, 3)
  want = reference(loss.preprocess(img)).numpy()
  got = loss.features(img).numpy()
  assert got.shape == (2, 4, 4, 256)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_perceptual_rejects_wrong_file(tmp_path):
  """Keras 3 only warns for unmatched layers; the loader must refuse."""
  path = str(tmp_path / "other.weights.h5")
  keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(path)
  with pytest.raises(ValueError, match="other.weights.h5"):
    losses.PerceptualLoss(path)


@pytest.fixture(scope="module")
def perceptual(saved_vgg):
  return losses.PerceptualLoss(saved_vgg[1]["keras3"], input_mode="caffe")


@pytest.mark.parametrize("use_sigma", [False, True])
def test_perceptual_matches_formula(perceptual, use_sigma):
  b, s = 2, 16
  recon, target = _rand(b, s, s, 3), _rand(b, s, s, 3)
  mask = _partial_mask(b, s, s)
  sigma = _rand(b, s // 4, s // 4, 1, low=0.2, high=2.0) if use_sigma else None
  f_r = perceptual.features(recon).numpy()
  f_t = perceptual.features(target).numpy()
  l = (f_r - f_t) ** 2
  if use_sigma:
    l = l / (2 * sigma ** 2 + EPS) + np.log(sigma + EPS)
  m = mask.reshape(b, s // 4, 4, s // 4, 4).mean(axis=(2, 4))  # avg-pool 4x4
  m = np.broadcast_to(m[..., None], l.shape)
  want = (l * m).sum() / m.sum()
  got = perceptual(recon, target, mask, sigma)
  assert got.shape == ()
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-4)
  # Without a mask: the plain mean.
  np.testing.assert_allclose(perceptual(recon, target, None, sigma).numpy(),
                             l.mean(), rtol=1e-4)


def test_perceptual_equal_images_give_log_sigma(perceptual):
  b, s = 2, 16
  img = _rand(b, s, s, 3)
  sigma = _rand(b, s // 4, s // 4, 1, low=0.2, high=2.0)
  mask = np.zeros((b, s, s), np.float32)
  mask[:, :8, :] = 1.0  # whole 4x4 blocks: pooled mask is 1 on the top 2 rows
  got = perceptual(img, img, mask, sigma)
  np.testing.assert_allclose(got.numpy(), np.log(sigma[:, :2] + EPS).mean(), rtol=1e-5)


def test_perceptual_gradient_reaches_recon_only(perceptual):
  recon = tf.Variable(_rand(1, 16, 16, 3))
  target = _rand(1, 16, 16, 3)
  with tf.GradientTape() as tape:
    value = perceptual(recon, target, np.ones((1, 16, 16), np.float32))
  grads = tape.gradient(value, [recon] + perceptual.features_model.variables)
  assert grads[0] is not None and np.abs(grads[0].numpy()).sum() > 0
  assert not perceptual.features_model.trainable_weights
