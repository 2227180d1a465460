"""Shapes, parameter counts and reference layer order of tfsym3d.nets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsym3d import nets

S = 64


def _image(batch=2, size=S):
  return tf.random.uniform([batch, size, size, 3], -1.0, 1.0)


# Reference (PyTorch unsup3d) parameter counts at S = 64.
@pytest.mark.parametrize("name, make, expected", [
    ("netD", lambda: nets.EDDeconv(1, zdim=256, nf=64), 12_979_648),
    ("netA", lambda: nets.EDDeconv(3, zdim=256, nf=64, activation="tanh"),
     12_982_848),
    ("netL", lambda: nets.Encoder(4, nf=32), 1_739_264),
    ("netV", lambda: nets.Encoder(6, nf=32), 1_739_776),
    ("netC", lambda: nets.ConfNet(zdim=128, nf=64), 7_678_208),
])
def test_param_counts_match_reference(name, make, expected):
  model = make()
  model.build((None, S, S, 3))
  assert model.count_params() == expected, name


def test_encoder_shape_and_tanh_range():
  model = nets.Encoder(6, nf=16)
  out = model(_image() * 50.0)  # large inputs push tanh towards saturation
  assert out.shape == (2, 6)
  assert np.all(np.abs(out.numpy()) <= 1.0)


def test_eddeconv_shapes_and_activation():
  depth = nets.EDDeconv(1, zdim=32, nf=16)
  albedo = nets.EDDeconv(3, zdim=32, nf=16, activation="tanh")
  x = _image()
  assert depth(x).shape == (2, S, S, 1)
  a = albedo(x * 50.0).numpy()
  assert a.shape == (2, S, S, 3)
  assert np.all(np.abs(a) <= 1.0)
  with pytest.raises(ValueError):
    nets.EDDeconv(1, activation="relu")


def test_confnet_shapes_positive():
  full, quarter = nets.ConfNet(zdim=32, nf=16)(_image())
  assert full.shape == (2, S, S, 2)
  assert quarter.shape == (2, S // 4, S // 4, 2)
  assert np.all(full.numpy() > 0) and np.all(quarter.numpy() > 0)


@pytest.mark.parametrize("size", [32, 128])
def test_other_image_sizes(size):
  x = _image(1, size)
  assert nets.Encoder(4, nf=8, image_size=size)(x).shape == (1, 4)
  assert nets.EDDeconv(1, zdim=16, nf=8, image_size=size)(x).shape == (1, size, size, 1)
  full, quarter = nets.ConfNet(zdim=16, nf=8, image_size=size)(x)
  assert full.shape == (1, size, size, 2)
  assert quarter.shape == (1, size // 4, size // 4, 2)
  with pytest.raises(ValueError):
    nets.Encoder(4, image_size=40)


def test_reference_layer_order():
  """Indices in `network` are the reference nn.Sequential indices."""
  conv, tconv = keras.layers.Conv2D, keras.layers.Conv2DTranspose
  gn = keras.layers.GroupNormalization

  enc = nets.Encoder(4, nf=32)
  assert len(enc.network) == 12
  assert list(enc.reference_layers()) == [f"network.{i}" for i in (0, 2, 4, 6, 8, 10)]

  netd = nets.EDDeconv(1, zdim=256, nf=64)
  neta = nets.EDDeconv(3, zdim=256, nf=64, activation="tanh")
  assert len(netd.network) == 43 and len(neta.network) == 44
  params = netd.reference_layers()
  convs = (0, 3, 6, 9, 11, 15, 20, 26, 32, 36, 39, 42)
  tconvs = (13, 17, 23, 29)
  norms = (1, 4, 7, 18, 21, 24, 27, 30, 33, 37, 40)
  assert sorted(int(k.split(".")[1]) for k in params) == sorted(convs + tconvs + norms)
  for i in convs:
    assert type(params[f"network.{i}"]) is conv, i
  for i in tconvs:
    assert isinstance(params[f"network.{i}"], tconv), i
  for i in norms:
    assert isinstance(params[f"network.{i}"], gn), i
  assert isinstance(netd.network[35], keras.layers.UpSampling2D)
  # 4 channels per group: 16 / 32 / 64 groups at nf = 64.
  assert [netd.network[i].groups for i in (1, 4, 7)] == [16, 32, 64]
  assert netd.network[1].epsilon == 1e-5
  assert netd.network[2].negative_slope == pytest.approx(0.2)

  netc = nets.ConfNet(zdim=128, nf=64)
  assert (len(netc.network), len(netc.out_net1), len(netc.out_net2)) == (21, 8, 2)
  keys = list(netc.reference_layers())
  assert keys == ([f"network.{i}" for i in (0, 1, 3, 4, 6, 7, 9, 11, 13, 15, 16, 18, 19)]
                  + [f"out_net1.{i}" for i in (0, 1, 3, 4, 6)] + ["out_net2.0"])

  # Kernel shapes a converter relies on (conv: kh kw in out; tconv: kh kw out in).
  netd.build((None, S, S, 3))
  assert tuple(netd.network[11].kernel.shape) == (4, 4, 512, 256)
  assert tuple(netd.network[13].kernel.shape) == (4, 4, 512, 256)
  assert tuple(netd.network[17].kernel.shape) == (4, 4, 256, 512)


def _torch_conv1d(x, w, stride, pad):
  """PyTorch Conv (cross-correlation) along one axis with zero padding."""
  x = np.pad(x, pad)
  n_out = (len(x) - len(w)) // stride + 1
  return np.array([np.dot(x[j * stride:j * stride + len(w)], w) for j in range(n_out)])


def _torch_tconv1d(x, w, stride, pad):
  """PyTorch ConvTranspose along one axis: scatter, then crop `pad` each side."""
  out = np.zeros((len(x) - 1) * stride + len(w))
  for i, xi in enumerate(x):
    out[i * stride:i * stride + len(w)] += xi * w
  return out[pad:len(out) - pad]


@pytest.mark.parametrize("transposed, stride, pad, padding", [
    (False, 2, 1, "same"), (False, 1, 1, "same"),
    (True, 2, 1, "same"), (True, 1, 0, "valid")])
def test_padding_matches_pytorch(transposed, stride, pad, padding):
  """k4 s2 p1 / k3 s1 p1 convs and t(4,2,1) / t(4,1,0) match PyTorch (separable check)."""
  k = 3 if (not transposed and stride == 1) else 4
  rng = np.random.default_rng(0)
  n = 1 if (transposed and stride == 1) else 8
  x = rng.normal(size=(n, n)).astype(np.float32)
  wy, wx = rng.normal(size=k), rng.normal(size=k)
  layer_cls = keras.layers.Conv2DTranspose if transposed else keras.layers.Conv2D
  layer = layer_cls(1, k, strides=stride, padding=padding, use_bias=False)
  layer.build((1, n, n, 1))
  layer.kernel.assign(np.outer(wy, wx)[:, :, None, None].astype(np.float32))
  got = layer(x[None, :, :, None]).numpy()[0, :, :, 0]
  op = _torch_tconv1d if transposed else _torch_conv1d
  rows = np.stack([op(r, wx, stride, pad) for r in x])          # along width
  want = np.stack([op(c, wy, stride, pad) for c in rows.T]).T    # along height
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# Every layer of the four network kinds at nf 8 / 32 px, as the networks were
# before their definitions became literal layer lists: name, class, settings,
# dtype policy and variable paths with shapes. Checkpoint keys and converted
# reference weights depend on exactly these.
_LAYER_SPEC = """
netD
network_0 Conv2D 8 (4,4) (2,2) same float32 netD/network_0/kernel(4, 4, 3, 8)
network_1 GroupNormalization 2 1e-05 float32 netD/network_1/gamma(8,) netD/network_1/beta(8,)
network_2 LeakyReLU 0.2 float32
network_3 Conv2D 16 (4,4) (2,2) same float32 netD/network_3/kernel(4, 4, 8, 16)
network_4 GroupNormalization 4 1e-05 float32 netD/network_4/gamma(16,) netD/network_4/beta(16,)
network_5 LeakyReLU 0.2 float32
network_6 Conv2D 32 (4,4) (2,2) same float32 netD/network_6/kernel(4, 4, 16, 32)
network_7 GroupNormalization 8 1e-05 float32 netD/network_7/gamma(32,) netD/network_7/beta(32,)
network_8 LeakyReLU 0.2 float32
network_9 Conv2D 64 (4,4) (2,2) same float32 netD/network_9/kernel(4, 4, 32, 64)
network_10 LeakyReLU 0.2 float32
network_11 Conv2D 32 (2,2) (1,1) valid float32 netD/network_11/kernel(2, 2, 64, 32)
network_12 ReLU float32
network_13 Conv2DTranspose 64 (2,2) (1,1) valid float32 netD/network_13/kernel(2, 2, 64, 32)
network_14 ReLU float32
network_15 Conv2D 64 (3,3) (1,1) same float32 netD/network_15/kernel(3, 3, 64, 64)
network_16 ReLU float32
network_17 Conv2DTranspose 32 (4,4) (2,2) same float32 netD/network_17/kernel(4, 4, 32, 64)
network_18 GroupNormalization 8 1e-05 float32 netD/network_18/gamma(32,) netD/network_18/beta(32,)
network_19 ReLU float32
network_20 Conv2D 32 (3,3) (1,1) same float32 netD/network_20/kernel(3, 3, 32, 32)
network_21 GroupNormalization 8 1e-05 float32 netD/network_21/gamma(32,) netD/network_21/beta(32,)
network_22 ReLU float32
network_23 Conv2DTranspose 16 (4,4) (2,2) same float32 netD/network_23/kernel(4, 4, 16, 32)
network_24 GroupNormalization 4 1e-05 float32 netD/network_24/gamma(16,) netD/network_24/beta(16,)
network_25 ReLU float32
network_26 Conv2D 16 (3,3) (1,1) same float32 netD/network_26/kernel(3, 3, 16, 16)
network_27 GroupNormalization 4 1e-05 float32 netD/network_27/gamma(16,) netD/network_27/beta(16,)
network_28 ReLU float32
network_29 Conv2DTranspose 8 (4,4) (2,2) same float32 netD/network_29/kernel(4, 4, 8, 16)
network_30 GroupNormalization 2 1e-05 float32 netD/network_30/gamma(8,) netD/network_30/beta(8,)
network_31 ReLU float32
network_32 Conv2D 8 (3,3) (1,1) same float32 netD/network_32/kernel(3, 3, 8, 8)
network_33 GroupNormalization 2 1e-05 float32 netD/network_33/gamma(8,) netD/network_33/beta(8,)
network_34 ReLU float32
network_35 UpSampling2D (2,2) nearest float32
network_36 Conv2D 8 (3,3) (1,1) same float32 netD/network_36/kernel(3, 3, 8, 8)
network_37 GroupNormalization 2 1e-05 float32 netD/network_37/gamma(8,) netD/network_37/beta(8,)
network_38 ReLU float32
network_39 Conv2D 8 (5,5) (1,1) same float32 netD/network_39/kernel(5, 5, 8, 8)
network_40 GroupNormalization 2 1e-05 float32 netD/network_40/gamma(8,) netD/network_40/beta(8,)
network_41 ReLU float32
network_42 Conv2D 1 (5,5) (1,1) same float32 netD/network_42/kernel(5, 5, 8, 1)
netA
network_0 Conv2D 8 (4,4) (2,2) same float32 netA/network_0/kernel(4, 4, 3, 8)
network_1 GroupNormalization 2 1e-05 float32 netA/network_1/gamma(8,) netA/network_1/beta(8,)
network_2 LeakyReLU 0.2 float32
network_3 Conv2D 16 (4,4) (2,2) same float32 netA/network_3/kernel(4, 4, 8, 16)
network_4 GroupNormalization 4 1e-05 float32 netA/network_4/gamma(16,) netA/network_4/beta(16,)
network_5 LeakyReLU 0.2 float32
network_6 Conv2D 32 (4,4) (2,2) same float32 netA/network_6/kernel(4, 4, 16, 32)
network_7 GroupNormalization 8 1e-05 float32 netA/network_7/gamma(32,) netA/network_7/beta(32,)
network_8 LeakyReLU 0.2 float32
network_9 Conv2D 64 (4,4) (2,2) same float32 netA/network_9/kernel(4, 4, 32, 64)
network_10 LeakyReLU 0.2 float32
network_11 Conv2D 32 (2,2) (1,1) valid float32 netA/network_11/kernel(2, 2, 64, 32)
network_12 ReLU float32
network_13 Conv2DTranspose 64 (2,2) (1,1) valid float32 netA/network_13/kernel(2, 2, 64, 32)
network_14 ReLU float32
network_15 Conv2D 64 (3,3) (1,1) same float32 netA/network_15/kernel(3, 3, 64, 64)
network_16 ReLU float32
network_17 Conv2DTranspose 32 (4,4) (2,2) same float32 netA/network_17/kernel(4, 4, 32, 64)
network_18 GroupNormalization 8 1e-05 float32 netA/network_18/gamma(32,) netA/network_18/beta(32,)
network_19 ReLU float32
network_20 Conv2D 32 (3,3) (1,1) same float32 netA/network_20/kernel(3, 3, 32, 32)
network_21 GroupNormalization 8 1e-05 float32 netA/network_21/gamma(32,) netA/network_21/beta(32,)
network_22 ReLU float32
network_23 Conv2DTranspose 16 (4,4) (2,2) same float32 netA/network_23/kernel(4, 4, 16, 32)
network_24 GroupNormalization 4 1e-05 float32 netA/network_24/gamma(16,) netA/network_24/beta(16,)
network_25 ReLU float32
network_26 Conv2D 16 (3,3) (1,1) same float32 netA/network_26/kernel(3, 3, 16, 16)
network_27 GroupNormalization 4 1e-05 float32 netA/network_27/gamma(16,) netA/network_27/beta(16,)
network_28 ReLU float32
network_29 Conv2DTranspose 8 (4,4) (2,2) same float32 netA/network_29/kernel(4, 4, 8, 16)
network_30 GroupNormalization 2 1e-05 float32 netA/network_30/gamma(8,) netA/network_30/beta(8,)
network_31 ReLU float32
network_32 Conv2D 8 (3,3) (1,1) same float32 netA/network_32/kernel(3, 3, 8, 8)
network_33 GroupNormalization 2 1e-05 float32 netA/network_33/gamma(8,) netA/network_33/beta(8,)
network_34 ReLU float32
network_35 UpSampling2D (2,2) nearest float32
network_36 Conv2D 8 (3,3) (1,1) same float32 netA/network_36/kernel(3, 3, 8, 8)
network_37 GroupNormalization 2 1e-05 float32 netA/network_37/gamma(8,) netA/network_37/beta(8,)
network_38 ReLU float32
network_39 Conv2D 8 (5,5) (1,1) same float32 netA/network_39/kernel(5, 5, 8, 8)
network_40 GroupNormalization 2 1e-05 float32 netA/network_40/gamma(8,) netA/network_40/beta(8,)
network_41 ReLU float32
network_42 Conv2D 3 (5,5) (1,1) same float32 netA/network_42/kernel(5, 5, 8, 3)
network_43 Activation tanh float32
netL
network_0 Conv2D 8 (4,4) (2,2) same float32 netL/network_0/kernel(4, 4, 3, 8)
network_1 ReLU float32
network_2 Conv2D 16 (4,4) (2,2) same float32 netL/network_2/kernel(4, 4, 8, 16)
network_3 ReLU float32
network_4 Conv2D 32 (4,4) (2,2) same float32 netL/network_4/kernel(4, 4, 16, 32)
network_5 ReLU float32
network_6 Conv2D 64 (4,4) (2,2) same float32 netL/network_6/kernel(4, 4, 32, 64)
network_7 ReLU float32
network_8 Conv2D 64 (2,2) (1,1) valid float32 netL/network_8/kernel(2, 2, 64, 64)
network_9 ReLU float32
network_10 Conv2D 4 (1,1) (1,1) valid float32 netL/network_10/kernel(1, 1, 64, 4)
network_11 Activation tanh float32
netC
network_0 Conv2D 8 (4,4) (2,2) same float32 netC/network_0/kernel(4, 4, 3, 8)
network_1 GroupNormalization 2 1e-05 float32 netC/network_1/gamma(8,) netC/network_1/beta(8,)
network_2 LeakyReLU 0.2 float32
network_3 Conv2D 16 (4,4) (2,2) same float32 netC/network_3/kernel(4, 4, 8, 16)
network_4 GroupNormalization 4 1e-05 float32 netC/network_4/gamma(16,) netC/network_4/beta(16,)
network_5 LeakyReLU 0.2 float32
network_6 Conv2D 32 (4,4) (2,2) same float32 netC/network_6/kernel(4, 4, 16, 32)
network_7 GroupNormalization 8 1e-05 float32 netC/network_7/gamma(32,) netC/network_7/beta(32,)
network_8 LeakyReLU 0.2 float32
network_9 Conv2D 64 (4,4) (2,2) same float32 netC/network_9/kernel(4, 4, 32, 64)
network_10 LeakyReLU 0.2 float32
network_11 Conv2D 16 (2,2) (1,1) valid float32 netC/network_11/kernel(2, 2, 64, 16)
network_12 ReLU float32
network_13 Conv2DTranspose 64 (2,2) (1,1) valid float32 netC/network_13/kernel(2, 2, 64, 16)
network_14 ReLU float32
network_15 Conv2DTranspose 32 (4,4) (2,2) same float32 netC/network_15/kernel(4, 4, 32, 64)
network_16 GroupNormalization 8 1e-05 float32 netC/network_16/gamma(32,) netC/network_16/beta(32,)
network_17 ReLU float32
network_18 Conv2DTranspose 16 (4,4) (2,2) same float32 netC/network_18/kernel(4, 4, 16, 32)
network_19 GroupNormalization 4 1e-05 float32 netC/network_19/gamma(16,) netC/network_19/beta(16,)
network_20 ReLU float32
out_net1_0 Conv2DTranspose 8 (4,4) (2,2) same float32 netC/out_net1_0/kernel(4, 4, 8, 16)
out_net1_1 GroupNormalization 2 1e-05 float32 netC/out_net1_1/gamma(8,) netC/out_net1_1/beta(8,)
out_net1_2 ReLU float32
out_net1_3 Conv2DTranspose 8 (4,4) (2,2) same float32 netC/out_net1_3/kernel(4, 4, 8, 8)
out_net1_4 GroupNormalization 2 1e-05 float32 netC/out_net1_4/gamma(8,) netC/out_net1_4/beta(8,)
out_net1_5 ReLU float32
out_net1_6 Conv2D 2 (5,5) (1,1) same float32 netC/out_net1_6/kernel(5, 5, 8, 2)
out_net1_7 Activation softplus float32
out_net2_0 Conv2D 2 (3,3) (1,1) same float32 netC/out_net2_0/kernel(3, 3, 16, 2)
out_net2_1 Activation softplus float32
"""


def _layer_lines(net):
  lines = []
  for seq in net._SEQUENTIALS:
    for layer in getattr(net, seq):
      c, kind = layer.get_config(), type(layer).__name__
      keys = {"Conv2D": ("filters", "kernel_size", "strides", "padding"),
              "Conv2DTranspose": ("filters", "kernel_size", "strides", "padding"),
              "GroupNormalization": ("groups", "epsilon"), "LeakyReLU": ("negative_slope",),
              "Activation": ("activation",), "UpSampling2D": ("size", "interpolation"),
              "ReLU": ()}[kind]
      dtype = c["dtype"]["config"]["name"] if isinstance(c["dtype"], dict) else c["dtype"]
      line = " ".join([layer.name, kind] + [str(c[k]).replace(" ", "") for k in keys]
                      + [str(dtype)])
      lines.append(line + "".join(f" {w.path}{tuple(w.shape)}" for w in layer.weights))
  return lines


def test_layer_names_settings_and_variables_unchanged():
  built = {"netD": nets.EDDeconv(1, 32, 8, None, 32, name="netD"),
           "netA": nets.EDDeconv(3, 32, 8, "tanh", 32, name="netA"),
           "netL": nets.Encoder(4, 8, 32, name="netL"),
           "netC": nets.ConfNet(16, 8, 32, name="netC")}
  lines = []
  for name, net in built.items():
    net.build((None, 32, 32, 3))
    lines += [name] + _layer_lines(net)
  assert lines == _LAYER_SPEC.strip().splitlines()
