"""The five networks of docs/method.md §7 as Keras 3 models (NHWC).

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


def _conv(ch, k, s, padding, name, dtype):
  return keras.layers.Conv2D(ch, k, strides=s, padding=padding, use_bias=False,
                             kernel_initializer=_torch_default_init(), name=name,
                             dtype=dtype)


def _tconv(ch, k, s, padding, name, dtype):
  return keras.layers.Conv2DTranspose(ch, k, strides=s, padding=padding,
                                      use_bias=False,
                                      kernel_initializer=_torch_default_init(),
                                      name=name, dtype=dtype)


def _gn(ch, name, dtype):
  # 4 channels per group: 16 / 32 / 64 groups at nf = 64 as in the reference,
  # and still valid at reduced widths. Keras' default eps is 1e-3; torch's 1e-5.
  # Always float32: the group variance of 16-bit activations loses most of
  # its digits (and overflows in float16); the layer casts its input up.
  del dtype
  return keras.layers.GroupNormalization(groups=max(ch // 4, 1), epsilon=1e-5,
                                         name=name, dtype="float32")


def _lrelu(name, dtype):
  # Keras' default slope is 0.3; the reference uses 0.2.
  return keras.layers.LeakyReLU(negative_slope=0.2, name=name, dtype=dtype)


def _relu(name, dtype):
  return keras.layers.ReLU(name=name, dtype=dtype)


def _upsample(name, dtype):
  return keras.layers.UpSampling2D(2, interpolation="nearest", name=name, dtype=dtype)


def _act(kind, name, dtype):
  # Output activations in float32: tanh saturates and softplus gives the
  # confidence sigma, whose log and inverse enter the losses.
  del dtype
  return keras.layers.Activation(kind, name=name, dtype="float32")


class _Builder:
  """Collects layers in reference order and names them `<prefix>_<index>`."""

  def __init__(self, prefix, dtype="float32"):
    self.prefix, self.dtype = prefix, check_precision(dtype)
    self.layers = []

  def add(self, *specs):
    """Appends one layer per spec `(factory, *args)`, in order."""
    for make, *args in specs:
      self.layers.append(make(*args, name=f"{self.prefix}_{len(self.layers)}",
                              dtype=self.dtype))


def _add_down_path(b, nf, zdim, bottleneck_kernel):
  """EDDeconv / ConfNet encoder, reference modules 0..12."""
  b.add((_conv, nf, 4, 2, "same"), (_gn, nf), (_lrelu,))  # 0-2
  b.add((_conv, 2 * nf, 4, 2, "same"), (_gn, 2 * nf), (_lrelu,))  # 3-5
  b.add((_conv, 4 * nf, 4, 2, "same"), (_gn, 4 * nf), (_lrelu,))  # 6-8
  b.add((_conv, 8 * nf, 4, 2, "same"), (_lrelu,))  # 9-10
  b.add((_conv, zdim, bottleneck_kernel, 1, "valid"), (_relu,))  # 11-12


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
    b = _Builder("network", dtype)
    b.add((_conv, nf, 4, 2, "same"), (_relu,))  # 0-1
    b.add((_conv, 2 * nf, 4, 2, "same"), (_relu,))  # 2-3
    b.add((_conv, 4 * nf, 4, 2, "same"), (_relu,))  # 4-5
    b.add((_conv, 8 * nf, 4, 2, "same"), (_relu,))  # 6-7
    b.add((_conv, 8 * nf, k, 1, "valid"), (_relu,))  # 8-9
    b.add((_conv, cout, 1, 1, "valid"), (_act, "tanh"))  # 10-11
    self.network = b.layers

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
    b = _Builder("network", dtype)
    _add_down_path(b, nf, zdim, k)  # 0-12
    b.add((_tconv, 8 * nf, k, 1, "valid"), (_relu,))  # 13-14
    b.add((_conv, 8 * nf, 3, 1, "same"), (_relu,))  # 15-16
    for ch in (4 * nf, 2 * nf, nf):  # 17-34
      b.add((_tconv, ch, 4, 2, "same"), (_gn, ch), (_relu,))
      b.add((_conv, ch, 3, 1, "same"), (_gn, ch), (_relu,))
    b.add((_upsample,))  # 35
    b.add((_conv, nf, 3, 1, "same"), (_gn, nf), (_relu,))  # 36-38
    b.add((_conv, nf, 5, 1, "same"), (_gn, nf), (_relu,))  # 39-41
    b.add((_conv, cout, 5, 1, "same"))  # 42
    if activation is not None:
      b.add((_act, activation))  # 43
    self.network = b.layers

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
    b = _Builder("network", dtype)
    _add_down_path(b, nf, zdim, k)  # 0-12
    b.add((_tconv, 8 * nf, k, 1, "valid"), (_relu,))  # 13-14
    b.add((_tconv, 4 * nf, 4, 2, "same"), (_gn, 4 * nf), (_relu,))  # 15-17
    b.add((_tconv, 2 * nf, 4, 2, "same"), (_gn, 2 * nf), (_relu,))  # 18-20
    self.network = b.layers
    b1 = _Builder("out_net1", dtype)
    b1.add((_tconv, nf, 4, 2, "same"), (_gn, nf), (_relu,))  # 0-2
    b1.add((_tconv, nf, 4, 2, "same"), (_gn, nf), (_relu,))  # 3-5
    b1.add((_conv, 2, 5, 1, "same"), (_act, "softplus"))  # 6-7
    self.out_net1 = b1.layers
    b2 = _Builder("out_net2", dtype)
    b2.add((_conv, 2, 3, 1, "same"), (_act, "softplus"))  # 0-1
    self.out_net2 = b2.layers

  def build(self, input_shape):
    shared = _build_shapes(self.network, tuple(input_shape))
    _build_shapes(self.out_net1, shared)
    _build_shapes(self.out_net2, shared)
    self.built = True

  def call(self, x, training=None):
    features = _run(self.network, x)
    return (_float32(_run(self.out_net1, features)),
            _float32(_run(self.out_net2, features)))
