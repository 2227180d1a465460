"""PyTorch networks written from docs/method.md §7, module by module, and docs/method.md §2's
post-processing, for the converter's parity tests.

Each network keeps its modules in an `nn.Sequential` named `network` (ConfNet
also `out_net1`, `out_net2`), activations and upsampling included, so the
state-dict keys are the reference checkpoints' (`network.<i>.weight`, ...).
GroupNorm has 4 channels per group (16 / 32 / 64 groups at nf = 64, as the
reference) so reduced widths stay comparable with tfsym3d. Inputs NCHW.
"""

import math

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


def checkpoint(nets, epoch=30):
  """A dict with the reference's top-level keys (optimiser states too)."""
  cp = {name: net.state_dict() for name, net in nets.items()}
  for name, net in nets.items():
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999),
                                 weight_decay=5e-4)
    cp["optimizer" + name[3:]] = optimizer.state_dict()
  cp["epoch"] = epoch
  cp["metrics_trace"] = {"train": [{"loss": 1.0}], "val": [{"loss": 1.1}]}
  return cp


def decompose(nets, images, cfg):
  """docs/method.md §2 on NCHW images in [-1, 1]: (depth [B,H,W], albedo [B,3,H,W],
  light [B,4] (ambient, diffuse, lx, ly), direction [B,3], view [B,6])."""
  raw = nets["netD"](images)[:, 0]
  raw = raw - raw.mean(dim=(1, 2), keepdim=True)
  t = raw.tanh()
  depth = (1 + t) / 2 * cfg.max_depth + (1 - t) / 2 * cfg.min_depth
  border = 0.7 * cfg.max_depth + 0.3 * cfg.min_depth
  depth = depth.clone()
  depth[:, :, :2] = border
  depth[:, :, -2:] = border
  albedo = nets["netA"](images)
  lt = nets["netL"](images)
  ambient = (1 + lt[:, :1]) / 2 * cfg.max_amb_light + (1 - lt[:, :1]) / 2 * cfg.min_amb_light
  diffuse = (1 + lt[:, 1:2]) / 2 * cfg.max_diff_light + (1 - lt[:, 1:2]) / 2 * cfg.min_diff_light
  direction = torch.cat([lt[:, 2:4], torch.ones_like(lt[:, :1])], 1)
  direction = direction / (direction ** 2).sum(1, keepdim=True).sqrt()
  light = torch.cat([ambient, diffuse, lt[:, 2:4]], 1)
  vw = nets["netV"](images)
  view = torch.cat([vw[:, :3] * cfg.xyz_rotation_range * math.pi / 180,
                    vw[:, 3:5] * cfg.xy_translation_range,
                    vw[:, 5:6] * cfg.z_translation_range], 1)
  return depth, albedo, light, direction, view
