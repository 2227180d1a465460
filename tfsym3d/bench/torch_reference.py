"""The reference's networks (docs/method.md §7) in PyTorch, for the speed
anchors of `tfsym3d.bench` (measured in the same run as ours) and the
converter's parity tests (tests/torch_reference.py).

Import only when torch is installed (the `test` extra): the benchmarks import
this module lazily and report "not measured" without it.

Each network keeps its modules in an `nn.Sequential` named `network` (ConfNet
also `out_net1`, `out_net2`), activations and upsampling included, so the
state-dict keys are the reference checkpoints' (`network.<i>.weight`, ...).
GroupNorm has 4 channels per group (16 / 32 / 64 groups at nf = 64, as the
reference) so reduced widths stay comparable with tfsym3d. Inputs NCHW.
"""

import torch
from torch import nn


def _c(cin, cout, k, s, p):
  return nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)


def _t(cin, cout, k, s, p):
  return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, bias=False)


def _gn(ch):
  return nn.GroupNorm(max(ch // 4, 1), ch, eps=1e-5, affine=True)


def _lrelu():
  return nn.LeakyReLU(0.2)


def _down(nf, zdim, k):
  """c(4,2,1,nf) GN lrelu, c(2nf) GN lrelu, c(4nf) GN lrelu, c(8nf) lrelu,
  c(k,1,0,zdim) relu (k = 4 at 64 px)."""
  return [_c(3, nf, 4, 2, 1), _gn(nf), _lrelu(),
          _c(nf, 2 * nf, 4, 2, 1), _gn(2 * nf), _lrelu(),
          _c(2 * nf, 4 * nf, 4, 2, 1), _gn(4 * nf), _lrelu(),
          _c(4 * nf, 8 * nf, 4, 2, 1), _lrelu(),
          _c(8 * nf, zdim, k, 1, 0), nn.ReLU()]


class Encoder(nn.Module):

  def __init__(self, cout, nf=32, k=4):
    super().__init__()
    self.network = nn.Sequential(
        _c(3, nf, 4, 2, 1), nn.ReLU(),
        _c(nf, 2 * nf, 4, 2, 1), nn.ReLU(),
        _c(2 * nf, 4 * nf, 4, 2, 1), nn.ReLU(),
        _c(4 * nf, 8 * nf, 4, 2, 1), nn.ReLU(),
        _c(8 * nf, 8 * nf, k, 1, 0), nn.ReLU(),
        _c(8 * nf, cout, 1, 1, 0), nn.Tanh())

  def forward(self, x):
    return self.network(x).reshape(x.shape[0], -1)


class EDDeconv(nn.Module):

  def __init__(self, cout, zdim=256, nf=64, tanh=False, k=4):
    super().__init__()
    up = [_t(zdim, 8 * nf, k, 1, 0), nn.ReLU(),
          _c(8 * nf, 8 * nf, 3, 1, 1), nn.ReLU()]
    cin = 8 * nf
    for ch in (4 * nf, 2 * nf, nf):
      up += [_t(cin, ch, 4, 2, 1), _gn(ch), nn.ReLU(),
             _c(ch, ch, 3, 1, 1), _gn(ch), nn.ReLU()]
      cin = ch
    up += [nn.Upsample(scale_factor=2, mode="nearest"),
           _c(nf, nf, 3, 1, 1), _gn(nf), nn.ReLU(),
           _c(nf, nf, 5, 1, 2), _gn(nf), nn.ReLU(),
           _c(nf, cout, 5, 1, 2)]
    if tanh:
      up.append(nn.Tanh())
    self.network = nn.Sequential(*(_down(nf, zdim, k) + up))

  def forward(self, x):
    return self.network(x)


class ConfNet(nn.Module):

  def __init__(self, zdim=128, nf=64, k=4):
    super().__init__()
    self.network = nn.Sequential(*(_down(nf, zdim, k) + [
        _t(zdim, 8 * nf, k, 1, 0), nn.ReLU(),
        _t(8 * nf, 4 * nf, 4, 2, 1), _gn(4 * nf), nn.ReLU(),
        _t(4 * nf, 2 * nf, 4, 2, 1), _gn(2 * nf), nn.ReLU()]))
    self.out_net1 = nn.Sequential(
        _t(2 * nf, nf, 4, 2, 1), _gn(nf), nn.ReLU(),
        _t(nf, nf, 4, 2, 1), _gn(nf), nn.ReLU(),
        _c(nf, 2, 5, 1, 2), nn.Softplus())
    self.out_net2 = nn.Sequential(_c(2 * nf, 2, 3, 1, 1), nn.Softplus())

  def forward(self, x):
    features = self.network(x)
    return self.out_net1(features), self.out_net2(features)


def networks(nf=64, zdim=256, nf_encoder=32, nf_conf=64, zdim_conf=128, k=4,
             conf=True):
  """The reference's five networks by name (k = image_size / 16), seeded
  by the caller's torch.manual_seed."""
  nets = {"netD": EDDeconv(1, zdim, nf, tanh=False, k=k),
          "netA": EDDeconv(3, zdim, nf, tanh=True, k=k),
          "netL": Encoder(4, nf_encoder, k), "netV": Encoder(6, nf_encoder, k)}
  if conf:
    nets["netC"] = ConfNet(zdim_conf, nf_conf, k)
  for net in nets.values():
    net.eval()
  return nets


# -- the speed anchors --------------------------------------------------------

# VGG16's convolutions up to relu3_3 (the perceptual loss's features, §6):
# (channels, then 'M' for a 2x2 max-pool).
_VGG16_TO_RELU3_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256)


def vgg16_relu3_3():
  """VGG16's first seven convolutions (to relu3_3), random weights, frozen:
  the perceptual loss costs the same whatever the weights."""
  layers, cin = [], 3
  for item in _VGG16_TO_RELU3_3:
    if item == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU()]
      cin = item
  vgg = nn.Sequential(*layers)
  for p in vgg.parameters():
    p.requires_grad_(False)
  return vgg


def _nll(error, sigma):
  """§6's confidence-weighted loss: error / sigma + log sigma, averaged."""
  return (error / sigma + torch.log(sigma)).mean()


def _shade(depth, albedo, light):
  """Lambertian shading of [B, 3, H, W] albedo in [-1, 1] by normals from
  [B, H, W] depth (finite differences); light [B, 4] as netL gives it."""
  dx = depth[:, 1:-1, 2:] - depth[:, 1:-1, :-2]
  dy = depth[:, 2:, 1:-1] - depth[:, :-2, 1:-1]
  normal = torch.stack([-dx, -dy, torch.ones_like(dx)], 1)
  normal = nn.functional.pad(normal, (1, 1, 1, 1), mode="replicate")
  normal = normal / normal.norm(dim=1, keepdim=True)
  ambient = (1 + light[:, :1]) / 2
  diffuse = (1 + light[:, 1:2]) / 2
  direction = torch.cat([light[:, 2:4], torch.ones_like(light[:, :1])], 1)
  direction = direction / direction.norm(dim=1, keepdim=True)
  cos = (normal * direction[:, :, None, None]).sum(1, keepdim=True).clamp(min=0)
  shading = ambient[:, :, None, None] + diffuse[:, :, None, None] * cos
  return ((albedo + 1) / 2 * shading) * 2 - 1


class ReferenceTrainStep:
  """One training step of the reference (§2-§7) with the rasterization
  replaced by an identity warp: the five networks, the depth and light
  post-processing, shading, the flipped reconstruction, the confidence-
  weighted photometric and VGG16 relu3_3 perceptual losses (λ_flip 0.5,
  λ_perc 1), backward and Adam. Without the renderer it is a lower bound of
  the reference's cost. Images [B, 3, S, S] in [-1, 1]."""

  def __init__(self, image_size=64, nf=64, zdim=256, nf_encoder=32, nf_conf=64,
               zdim_conf=128, perceptual=True):
    self.nets = networks(nf, zdim, nf_encoder, nf_conf, zdim_conf, k=image_size // 16)
    for net in self.nets.values():
      net.train()
    self.vgg = vgg16_relu3_3() if perceptual else None
    params = [p for net in self.nets.values() for p in net.parameters()]
    self.optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999),
                                      weight_decay=5e-4)

  def losses(self, images):
    n = self.nets
    raw = n["netD"](images)[:, 0]
    depth = 1.0 + 0.1 * torch.tanh(raw - raw.mean(dim=(1, 2), keepdim=True))
    albedo = n["netA"](images)
    light = n["netL"](images)
    view = n["netV"](images)
    conf, conf_features = n["netC"](images)
    conf, conf_features = conf + 1e-7, conf_features + 1e-7
    recon = _shade(depth, albedo, light)
    recon_flip = _shade(depth.flip(2), albedo.flip(3), light)
    total = (_nll((recon - images).abs().mean(1), conf[:, 0]) +
             0.5 * _nll((recon_flip - images).abs().mean(1), conf[:, 1]))
    if self.vgg is not None:
      target = self.vgg(images)
      for weight, image, sigma in ((1.0, recon, conf_features[:, 0]),
                                   (0.5, recon_flip, conf_features[:, 1])):
        error = ((self.vgg(image) - target) ** 2).mean(1)
        total = total + weight * _nll(error, sigma)
    # The view only moves the warp, which the identity replaces; keep netV in
    # the backward pass at no effect on the loss.
    return total + 0.0 * view.sum()

  def __call__(self, images):
    self.optimizer.zero_grad(set_to_none=True)
    total = self.losses(images)
    total.backward()
    self.optimizer.step()
    return float(total)


def inference_networks(image_size=64, nf=64, zdim=256, nf_encoder=32):
  """netD, netA, netL, netV in eval mode: what the reference's demo runs."""
  nets = networks(nf, zdim, nf_encoder, k=image_size // 16, conf=False)
  def infer(images):
    with torch.inference_mode():
      return [net(images) for net in nets.values()]
  return infer
