"""The five networks of docs/method.md §7 as Keras 3 models (NHWC).

Each network is a literal list of layers in the reference's order, with the
spatial size after each step in a comment, so it can be checked line by line
against the paper and the reference code.

Every network takes a Keras dtype policy `dtype` ("float32" by default, or
"mixed_bfloat16" / "mixed_float16" for mixed precision): convolutions then
compute in 16 bits with float32 variables, while GroupNorm and the output
activations (tanh, softplus) always compute in float32, and every network
returns float32.

Each network keeps its layers in `self.network`, a Python list whose index i is
the index of the same module in the reference PyTorch `nn.Sequential` named
`network` (activations and upsampling included, so the indices line up). A
reference checkpoint key `network.<i>.weight` (and `network.<i>.bias` for
GroupNorm) therefore belongs to `self.network[i]`; ConfNet's two heads are
`self.out_net1` and `self.out_net2` with keys `out_net1.<i>.*` and
`out_net2.<i>.*`. `reference_layers()` returns exactly the parametrised ones:

  {'network.0': Conv2D, 'network.1': GroupNormalization, ...}

Weight layouts (what a converter has to do):
  - Conv2D kernel (kh, kw, in, out) = torch (out, in, kh, kw).transpose(2, 3, 1, 0)
  - Conv2DTranspose kernel (kh, kw, out, in) = torch (in, out, kh, kw)
    .transpose(2, 3, 1, 0); both are the adjoint of a cross-correlation, so no
    spatial flip is needed.
  - GroupNormalization gamma / beta = torch weight / bias.

Padding equivalences (PyTorch -> Keras): k4 s2 p1, k3 s1 p1 and k5 s1 p2 are
'same' (even sizes); k4 s1 p0 is 'valid'; transposed t(4,2,1) is
Conv2DTranspose(k4, s2, 'same') and t(4,1,0) is Conv2DTranspose(k4, s1,
'valid'). For image sizes other than 64 (multiples of 16) the bottleneck conv
and the first transposed conv use kernel size S // 16 (4 at S = 64), so the
bottleneck is always 1 x 1.
"""

import keras

_PARAM_LAYERS = (keras.layers.Conv2D, keras.layers.Conv2DTranspose,
                 keras.layers.GroupNormalization)


def _check_image_size(image_size):
  if image_size < 16 or image_size % 16:
    raise ValueError(f"image_size={image_size}: must be a multiple of 16 and >= 16")
  return image_size // 16


def _torch_default_init():
  """PyTorch's default conv initialisation, which the reference trains from:
  kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)). Keras' glorot_uniform
  starts about 2.4x larger at the output layers (a noisy initial depth).
  Keras' fan_in of a transposed kernel (kh, kw, out, in) is kh*kw*out, as
  PyTorch's of (in, out, kh, kw)."""
  return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def check_precision(dtype):
  """Returns `dtype` if it is one of PRECISIONS, else raises ValueError."""
  if dtype not in PRECISIONS:
    raise ValueError(f"dtype={dtype!r}: use one of {PRECISIONS}")
  return dtype


# Each layer helper returns a maker `(name, dtype) -> layer`, so a network
# is a literal list of layers in reference order that `_numbered` names
# `<sequential>_<index>`: the names, hence the checkpoint keys, follow the
# reference's module indices.

def conv(ch, k, s=1, padding="same"):
  """Conv2D without bias, PyTorch's default initialisation."""
  return lambda name, dtype: keras.layers.Conv2D(
      ch, k, strides=s, padding=padding, use_bias=False,
      kernel_initializer=_torch_default_init(), name=name, dtype=dtype)


def tconv(ch, k, s=1, padding="same"):
  """Conv2DTranspose without bias, PyTorch's default initialisation."""
  return lambda name, dtype: keras.layers.Conv2DTranspose(
      ch, k, strides=s, padding=padding, use_bias=False,
      kernel_initializer=_torch_default_init(), name=name, dtype=dtype)


def group_norm(ch):
  """GroupNorm with 4 channels per group, always in float32."""
  # 16 / 32 / 64 groups at nf = 64 as in the reference, and still valid at
  # reduced widths. Keras' default eps is 1e-3; torch's 1e-5. Always float32:
  # the group variance of 16-bit activations loses most of its digits (and
  # overflows in float16); the layer casts its input up.
  return lambda name, dtype: keras.layers.GroupNormalization(
      groups=max(ch // 4, 1), epsilon=1e-5, name=name, dtype="float32")


def leaky_relu():
  """LeakyReLU with the reference's slope 0.2 (Keras' default is 0.3)."""
  return lambda name, dtype: keras.layers.LeakyReLU(negative_slope=0.2, name=name,
                                                    dtype=dtype)


def relu():
  """ReLU."""
  return lambda name, dtype: keras.layers.ReLU(name=name, dtype=dtype)


def upsample():
  """Nearest-neighbour x2 upsampling."""
  return lambda name, dtype: keras.layers.UpSampling2D(2, interpolation="nearest",
                                                       name=name, dtype=dtype)


def output_activation(kind):
  """An output activation ('tanh', 'softplus'), always in float32."""
  # tanh saturates and softplus gives the confidence sigma, whose log and
  # inverse enter the losses: neither is computed in 16 bits.
  return lambda name, dtype: keras.layers.Activation(kind, name=name, dtype="float32")


def _numbered(prefix, dtype, makers):
  """Builds the layers of a literal list, naming layer i `<prefix>_<i>`."""
  check_precision(dtype)
  return [make(f"{prefix}_{i}", dtype) for i, make in enumerate(makers)]


def _down_path(nf, zdim, k):
  """EDDeconv / ConfNet encoder, reference modules 0..12 (S -> 1 x 1)."""
  return [
      conv(nf, 4, 2), group_norm(nf), leaky_relu(),                  # 0-2   S -> S/2
      conv(2 * nf, 4, 2), group_norm(2 * nf), leaky_relu(),          # 3-5   -> S/4
      conv(4 * nf, 4, 2), group_norm(4 * nf), leaky_relu(),          # 6-8   -> S/8
      conv(8 * nf, 4, 2), leaky_relu(),                              # 9-10  -> S/16
      conv(zdim, k, 1, "valid"), relu(),                             # 11-12 -> 1x1
  ]


def _build_shapes(layers, shape):
  """Builds `layers` in sequence from an input shape; returns the output shape."""
  for layer in layers:
    if not layer.built:
      layer.build(shape)
    shape = layer.compute_output_shape(shape)
  return shape


def _run(layers, x):
  # No layer here behaves differently in training (GroupNorm has no running
  # statistics), so `training` is not threaded through.
  for layer in layers:
    x = layer(x)
  return x


def _float32(x):
  return keras.ops.cast(x, "float32")


class _ReferenceOrderMixin:
  """`reference_layers()` for networks that keep reference-ordered layer lists."""

  _SEQUENTIALS = ("network",)

  def reference_layers(self):
    """Maps reference module prefixes to parametrised Keras layers.

    Returns:
      dict like {'network.0': Conv2D, 'network.1': GroupNormalization, ...}
      (ConfNet adds 'out_net1.<i>' and 'out_net2.<i>'), in reference order.
      The PyTorch key `<prefix>.weight` maps to the layer's kernel (conv) or
      gamma (GroupNorm), `<prefix>.bias` to beta.
    """
    out = {}
    for seq in self._SEQUENTIALS:
      for i, layer in enumerate(getattr(self, seq)):
        if isinstance(layer, _PARAM_LAYERS):
          out[f"{seq}.{i}"] = layer
    return out


class Encoder(_ReferenceOrderMixin, keras.Model):
  """Image -> `cout` tanh values (netL: cout 4, netV: cout 6, both nf 32).

  Reference `network` indices: 0 conv(4,2,1,nf) 1 relu 2 conv(2nf) 3 relu
  4 conv(4nf) 5 relu 6 conv(8nf) 7 relu 8 conv(k=S/16,1,0,8nf) 9 relu
  10 conv(1,1,0,cout) 11 tanh.

  Input [B, S, S, 3]; output [B, cout].
  """

  def __init__(self, cout, nf=64, image_size=64, dtype="float32", **kwargs):
    super().__init__(dtype=check_precision(dtype), **kwargs)
    self.cout, self.nf, self.image_size = cout, nf, image_size
    k = _check_image_size(image_size)
    self.network = _numbered("network", dtype, [
        conv(nf, 4, 2), relu(),                       # 0-1   S -> S/2
        conv(2 * nf, 4, 2), relu(),                   # 2-3   -> S/4
        conv(4 * nf, 4, 2), relu(),                   # 4-5   -> S/8
        conv(8 * nf, 4, 2), relu(),                   # 6-7   -> S/16
        conv(8 * nf, k, 1, "valid"), relu(),          # 8-9   -> 1x1
        conv(cout, 1, 1, "valid"), output_activation("tanh"),  # 10-11 1x1 x cout
    ])

  def build(self, input_shape):
    _build_shapes(self.network, tuple(input_shape))
    self.built = True

  def call(self, x, training=None):
    x = _run(self.network, x)
    return _float32(keras.ops.reshape(x, (-1, self.cout)))


class EDDeconv(_ReferenceOrderMixin, keras.Model):
  """Encoder-decoder image -> map (netD: cout 1, no act; netA: cout 3, tanh).

  Reference `network` indices (zdim 256, nf 64 for netD / netA):
    down  0 conv(4,2,1,nf) 1 GN 2 lrelu 3 conv(2nf) 4 GN 5 lrelu
          6 conv(4nf) 7 GN 8 lrelu 9 conv(8nf) 10 lrelu
          11 conv(k=S/16,1,0,zdim) 12 relu
    up    13 tconv(k=S/16,1,0,8nf) 14 relu 15 conv(3,1,1,8nf) 16 relu
          17 tconv(4,2,1,4nf) 18 GN 19 relu 20 conv(3,1,1,4nf) 21 GN 22 relu
          23 tconv(4,2,1,2nf) 24 GN 25 relu 26 conv(3,1,1,2nf) 27 GN 28 relu
          29 tconv(4,2,1,nf) 30 GN 31 relu 32 conv(3,1,1,nf) 33 GN 34 relu
          35 upsample x2 (nearest) 36 conv(3,1,1,nf) 37 GN 38 relu
          39 conv(5,1,2,nf) 40 GN 41 relu 42 conv(5,1,2,cout) [43 tanh]

  Input [B, S, S, 3]; output [B, S, S, cout].
  """

  def __init__(self, cout, zdim=128, nf=64, activation=None, image_size=64,
               dtype="float32", **kwargs):
    super().__init__(dtype=check_precision(dtype), **kwargs)
    if activation not in (None, "tanh"):
      raise ValueError(f"activation={activation!r}: use None or 'tanh'")
    self.cout, self.zdim, self.nf = cout, zdim, nf
    self.activation, self.image_size = activation, image_size
    k = _check_image_size(image_size)
    up = [
        tconv(8 * nf, k, 1, "valid"), relu(),                     # 13-14 1x1 -> S/16
        conv(8 * nf, 3), relu(),                                  # 15-16
        tconv(4 * nf, 4, 2), group_norm(4 * nf), relu(),          # 17-19 -> S/8
        conv(4 * nf, 3), group_norm(4 * nf), relu(),              # 20-22
        tconv(2 * nf, 4, 2), group_norm(2 * nf), relu(),          # 23-25 -> S/4
        conv(2 * nf, 3), group_norm(2 * nf), relu(),              # 26-28
        tconv(nf, 4, 2), group_norm(nf), relu(),                  # 29-31 -> S/2
        conv(nf, 3), group_norm(nf), relu(),                      # 32-34
        upsample(),                                               # 35    -> S
        conv(nf, 3), group_norm(nf), relu(),                      # 36-38
        conv(nf, 5), group_norm(nf), relu(),                      # 39-41
        conv(cout, 5),                                            # 42    S x S x cout
    ] + ([output_activation(activation)] if activation else [])  # [43]
    self.network = _numbered("network", dtype, _down_path(nf, zdim, k) + up)

  def build(self, input_shape):
    _build_shapes(self.network, tuple(input_shape))
    self.built = True

  def call(self, x, training=None):
    return _float32(_run(self.network, x))


class ConfNet(_ReferenceOrderMixin, keras.Model):
  """Image -> two softplus confidence maps, 2 channels each (netC).

  Reference indices:
    network   0..12 as EDDeconv's down path (zdim 128),
              13 tconv(k=S/16,1,0,8nf) 14 relu 15 tconv(4,2,1,4nf) 16 GN 17 relu
              18 tconv(4,2,1,2nf) 19 GN 20 relu   -> shared S/4 features
    out_net1  0 tconv(4,2,1,nf) 1 GN 2 relu 3 tconv(4,2,1,nf) 4 GN 5 relu
              6 conv(5,1,2,2) 7 softplus           -> sigma at S x S
    out_net2  0 conv(3,1,1,2) 1 softplus           -> sigma at S/4 x S/4

  Input [B, S, S, 3]; output (sigma_full [B, S, S, 2],
  sigma_quarter [B, S/4, S/4, 2]).
  """

  _SEQUENTIALS = ("network", "out_net1", "out_net2")

  def __init__(self, zdim=128, nf=64, image_size=64, dtype="float32", **kwargs):
    super().__init__(dtype=check_precision(dtype), **kwargs)
    self.zdim, self.nf, self.image_size = zdim, nf, image_size
    k = _check_image_size(image_size)
    self.network = _numbered("network", dtype, _down_path(nf, zdim, k) + [
        tconv(8 * nf, k, 1, "valid"), relu(),                     # 13-14 1x1 -> S/16
        tconv(4 * nf, 4, 2), group_norm(4 * nf), relu(),          # 15-17 -> S/8
        tconv(2 * nf, 4, 2), group_norm(2 * nf), relu(),          # 18-20 -> S/4
    ])
    self.out_net1 = _numbered("out_net1", dtype, [
        tconv(nf, 4, 2), group_norm(nf), relu(),                  # 0-2   S/4 -> S/2
        tconv(nf, 4, 2), group_norm(nf), relu(),                  # 3-5   -> S
        conv(2, 5), output_activation("softplus"),            # 6-7   S x S x 2
    ])
    self.out_net2 = _numbered("out_net2", dtype, [
        conv(2, 3), output_activation("softplus"),            # 0-1   S/4 x S/4 x 2
    ])

  def build(self, input_shape):
    shared = _build_shapes(self.network, tuple(input_shape))
    _build_shapes(self.out_net1, shared)
    _build_shapes(self.out_net2, shared)
    self.built = True

  def call(self, x, training=None):
    features = _run(self.network, x)
    return (_float32(_run(self.out_net1, features)),
            _float32(_run(self.out_net2, features)))
