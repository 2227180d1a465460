"""PyTorch networks written from docs/method.md §7 (in tfsym3d.bench.torch_reference,
shared with the benchmarks' speed anchors) and docs/method.md §2's post-processing,
for the converter's parity tests."""

import math

import torch

from tfsym3d.bench.torch_reference import ConfNet, EDDeconv, Encoder, networks  # noqa: F401


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
