"""tfsym3d.convert: reference PyTorch checkpoints in, same outputs out.

PyTorch networks written from docs/method.md §7 (tests/torch_reference.py, reference
module names, so reference state-dict keys) are saved as a reference
checkpoint dict, converted, and compared network by network and on the
decomposition (docs/method.md §2) with the converted tfsym3d model.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip("torch", reason='torch is an optional extra: pip install -e ".[torch]"')

from absl import flags as absl_flags  # noqa: E402

from tfsym3d import convert  # noqa: E402
from tfsym3d import flags as tflags  # noqa: E402
from tfsym3d import runs  # noqa: E402
from tfsym3d.config import ModelConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import torch_reference as ref  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
SMALL = dict(nf=8, zdim=16, nf_encoder=8, nf_conf=8, zdim_conf=16)
# Model settings a reference checkpoint does not hold (cats' z translation,
# to exercise every term of the view); no VGG: it is not in checkpoints.
BASE = ModelConfig(vgg_weights="none", lam_perc=0.0, z_translation_range=0.1)


def _randomise(nets, seed=0):
  """He-normal convolutions and non-trivial GroupNorm affines, so every
  output is O(1) (PyTorch's default init leaves the encoders' tanh near 0)
  and a swapped gamma / beta could not go unnoticed."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for net in nets.values():
      for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
          w = module.weight
          fan_in = (w.shape[1] if isinstance(module, torch.nn.Conv2d) else w.shape[0]) \
              * w.shape[2] * w.shape[3]
          if isinstance(module, torch.nn.ConvTranspose2d):
            fan_in /= module.stride[0] * module.stride[1]
          w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        elif isinstance(module, torch.nn.GroupNorm):
          module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
          module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
  return nets


def _images(size, batch=3, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
  a = t.detach().numpy()
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _save(tmp_path, checkpoint, name="ref.pth"):
  path = str(tmp_path / name)
  torch.save(checkpoint, path)
  return path


def _small_checkpoint(tmp_path, conf=True, size=64, seed=0):
  torch.manual_seed(seed)
  nets = _randomise(ref.networks(k=size // 16, conf=conf, **SMALL), seed)
  return nets, _save(tmp_path, ref.checkpoint(nets))


def _config_from_flagfile(path):
  """The ModelConfig `--flagfile=path` gives the other commands."""
  try:
    absl_flags.FLAGS.unparse_flags()
    absl_flags.FLAGS(["prog", f"--flagfile={path}"])
    return tflags.model_config()
  finally:
    absl_flags.FLAGS.unparse_flags()


def _parity(nets, model, images):
  """Max abs differences of every network and of the decomposition."""
  x = _nchw(images)
  diffs, scales = {}, {}
  with torch.no_grad():
    for name, net in model.networks.items():
      expected, ours = nets[name](x), net(images)
      if name == "netC":
        for head, e, o in zip(("netC_full", "netC_quarter"), expected, ours):
          diffs[head] = float(np.abs(_nhwc(e) - o.numpy()).max())
          scales[head] = float(_nhwc(e).std())
      else:
        diffs[name] = float(np.abs(_nhwc(expected) - ours.numpy()).max())
        scales[name] = float(_nhwc(expected).std())
    depth, albedo, light, direction, view = ref.decompose(nets, x, model.config)
  out = model(images)
  for name, expected, ours in (
      ("canon_depth", depth, out.canon_depth), ("canon_albedo", albedo, out.canon_albedo),
      ("light", light, out.light), ("light_direction", direction, out.light_direction),
      ("view", view, out.view)):
    diffs[name] = float(np.abs(_nhwc(expected) - ours.numpy()).max())
  if "netC" in nets:
    diffs["conf_sigma_l1"] = float(np.abs(_nhwc(nets["netC"](x)[0].detach())
                                          - out.conf_sigma_l1.numpy()).max())
  return diffs, scales


def test_reference_widths_map_every_key_and_shape():
  """The full-size networks (37.1 M parameters): every reference key lands
  on the right variable with the right transposition (no convolutions run)."""
  torch.manual_seed(1)
  nets = ref.networks()
  state, ignored = convert.reference_state_dicts(ref.checkpoint(nets))
  assert ignored[0] == "epoch"
  config, notes = convert.config_for(state, BASE)
  assert config == BASE and notes == []   # the reference's widths are the defaults
  model = runs.build_model(config)
  assert convert.check_state(state, model) == []
  count = convert.load_into(model, state)
  assert count == model.count_params() == 37_119_744
  for name, params in convert.expected_parameters(model).items():
    assert sorted(params) == sorted(nets[name].state_dict()), name
    for key, (variable, torch_shape) in params.items():
      tensor = nets[name].state_dict()[key].numpy()
      assert tensor.shape == torch_shape, (name, key)
      if tensor.ndim == 4:   # conv (out, in, kh, kw) / transposed (in, out, kh, kw)
        np.testing.assert_array_equal(variable.numpy(), tensor.transpose(2, 3, 1, 0))
      else:
        np.testing.assert_array_equal(variable.numpy(), tensor)


def _convert_and_compare(tmp_path, widths, seed):
  """Converts random reference networks of `widths` through a .pth file and
  flags.txt, as a user would; returns the max abs diffs."""
  torch.manual_seed(seed)
  nets = _randomise(ref.networks(**widths), seed)
  path = _save(tmp_path, ref.checkpoint(nets))
  report = convert.convert(path, str(tmp_path / "out"), BASE)
  assert report["networks_converted"] == ["netD", "netA", "netL", "netV", "netC"]
  assert report["epoch"] == 30 and report["checkpoint"].endswith("ckpt-30")
  assert report["ignored_entries"] == ["epoch", "metrics_trace", "optimizerA",
                                       "optimizerC", "optimizerD", "optimizerL",
                                       "optimizerV"]
  assert report["parameters"] == sum(p.numel() for n in nets.values() for p in n.parameters())
  # The other commands read the model through flags.txt and runs.restore_weights.
  config = _config_from_flagfile(str(tmp_path / "out" / "flags.txt"))
  assert config == BASE.replace(**widths)
  model = runs.build_model(config)
  runs.restore_weights(model, str(tmp_path / "out"))
  diffs, scales = _parity(nets, model, _images(64, batch=2))
  assert all(s > 0.05 for s in scales.values()), scales  # outputs are not ~0
  return diffs


def test_converted_reference_model_matches_pytorch(tmp_path):
  """The reference widths (37.1 M parameters), as the published models."""
  diffs = _convert_and_compare(tmp_path, {}, seed=2)
  print("max abs diff (reference widths):", json.dumps(diffs))
  assert max(diffs.values()) <= TOL, diffs


@pytest.mark.slow
def test_converted_reduced_width_model_matches_pytorch(tmp_path):
  diffs = _convert_and_compare(tmp_path, SMALL, seed=0)
  print("max abs diff (reduced widths):", json.dumps(diffs))
  assert max(diffs.values()) <= TOL, diffs


def test_checkpoint_without_netc_converts_the_rest_and_says_so(tmp_path):
  nets, path = _small_checkpoint(tmp_path, conf=False, size=32)
  out = tmp_path / "out"
  report = convert.convert(path, str(out), BASE)
  assert report["networks_converted"] == ["netD", "netA", "netL", "netV"]
  assert report["networks_absent"] == ["netC"]
  assert any("netC" in note for note in report["notes"])
  config = _config_from_flagfile(str(out / "flags.txt"))
  assert not config.use_conf_map and config.image_size == 32
  model = runs.build_model(config)
  runs.restore_weights(model, str(out))
  x = _images(32)
  with torch.no_grad():
    depth = nets["netD"](_nchw(x))
  assert np.abs(_nhwc(depth) - model.net_depth(x).numpy()).max() <= TOL
  with open(out / "conversion.json") as f:
    assert json.load(f)["networks_absent"] == ["netC"]
  # Asking for a confidence network it does not have is an error.
  with pytest.raises(convert.ConversionError, match="use_conf_map"):
    convert.convert(path, str(tmp_path / "again"), BASE, explicit=["use_conf_map"])


def _state(size=16):
  torch.manual_seed(0)
  cp = ref.checkpoint(ref.networks(k=size // 16, **SMALL))
  return cp


def _convert_error(tmp_path, cp, name):
  path = _save(tmp_path, cp, name)
  with pytest.raises(convert.ConversionError) as info:
    convert.convert(path, str(tmp_path / name.replace(".pth", "")), BASE)
  assert not os.path.exists(tmp_path / name.replace(".pth", "") / "ckpt")
  return str(info.value)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
  cp = _state()
  del cp["netA"]["network.40.weight"], cp["netL"]["network.10.weight"]
  message = _convert_error(tmp_path, cp, "missing.pth")
  assert "netA: missing keys: network.40.weight" in message
  assert "netL: missing keys: network.10.weight" in message

  cp = _state()
  cp["netD"]["network.0.bias"] = torch.zeros(8)            # convs have no bias
  cp["netC"]["out_net3.0.weight"] = torch.zeros(2, 16, 3, 3)
  message = _convert_error(tmp_path, cp, "unexpected.pth")
  assert "netD: unexpected keys: network.0.bias" in message
  assert "netC: unexpected keys: out_net3.0.weight" in message

  cp = _state()
  cp["netV"]["network.10.weight"] = torch.zeros(5, 64, 1, 1)   # 6 outputs expected
  cp["netA"]["network.37.weight"] = torch.zeros(9)              # GroupNorm of 8
  # a transposed kernel stored as a conv kernel (in and out swapped)
  cp["netD"]["network.17.weight"] = cp["netD"]["network.17.weight"].transpose(0, 1)
  message = _convert_error(tmp_path, cp, "shapes.pth")
  assert "netV: mis-shaped: network.10.weight (5, 64, 1, 1) (expected (6, 64, 1, 1))" in message
  assert "netA: mis-shaped: network.37.weight (9,) (expected (8,))" in message
  assert "netD: mis-shaped: network.17.weight (32, 64, 4, 4) (expected (64, 32, 4, 4))" in message


def test_bad_checkpoint_layouts_are_clear_errors(tmp_path):
  cp = _state()
  del cp["netV"]
  assert "['netV'] are missing" in _convert_error(tmp_path, cp, "nonetv.pth")
  one = _state()["netD"]
  assert "single network's state dict" in _convert_error(tmp_path, dict(one), "one.pth")
  cp = _state()
  cp["netL"]["network.0.weight"] = cp["netL"]["network.0.weight"].long()
  assert "not floating-point tensors: ['netL.network.0.weight" in _convert_error(
      tmp_path, cp, "ints.pth")
  path = str(tmp_path / "junk.pth")
  with open(path, "wb") as f:
    f.write(b"not a checkpoint at all")
  with pytest.raises(convert.ConversionError, match="not a readable PyTorch checkpoint"):
    convert.load_torch_checkpoint(path)
  with pytest.raises(FileNotFoundError, match="no such file"):
    convert.load_torch_checkpoint(str(tmp_path / "absent.pth"))
  # Widths given on purpose must agree with the tensors'.
  path = _save(tmp_path, _state(), "widths.pth")
  with pytest.raises(convert.ConversionError, match="--nf=64 but the checkpoint has 8"):
    convert.convert(path, str(tmp_path / "w"), BASE, explicit=["nf"])
  # An existing checkpoint is never overwritten.
  convert.convert(path, str(tmp_path / "w"), BASE)
  with pytest.raises(convert.ConversionError, match="already holds a checkpoint"):
    convert.convert(path, str(tmp_path / "w"), BASE)


class _RunsCode:
  """Unpickling this would call os.system (what weights_only=True refuses)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
  marker = tmp_path / "ran"
  cp = _state()
  cp["metrics_trace"] = _RunsCode(marker)
  path = _save(tmp_path, cp, "evil.pth")
  with pytest.raises(convert.ConversionError, match="refused to load.*(system|posix)"):
    convert.convert(path, str(tmp_path / "evil"), BASE)
  assert not marker.exists()


def test_reference_metrics_trace_object_is_read_inertly(tmp_path, monkeypatch):
  """The reference's training checkpoints pickle unsup3d.meters.MetricsTrace."""
  import types
  package, meters = types.ModuleType("unsup3d"), types.ModuleType("unsup3d.meters")

  class MetricsTrace:
    def __init__(self):
      self.data = {"train": [{"loss": 0.5}]}

  MetricsTrace.__module__, MetricsTrace.__qualname__ = "unsup3d.meters", "MetricsTrace"
  meters.MetricsTrace = MetricsTrace
  package.meters = meters
  monkeypatch.setitem(sys.modules, "unsup3d", package)
  monkeypatch.setitem(sys.modules, "unsup3d.meters", meters)
  cp = _state()
  cp["metrics_trace"] = MetricsTrace()
  path = _save(tmp_path, cp, "trace.pth")
  monkeypatch.delitem(sys.modules, "unsup3d.meters")
  monkeypatch.delitem(sys.modules, "unsup3d")
  loaded = convert.load_torch_checkpoint(path)
  assert isinstance(loaded["metrics_trace"], convert.InertMetricsTrace)
  assert loaded["metrics_trace"].data == {"train": [{"loss": 0.5}]}


def test_without_torch_the_error_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError
  with pytest.raises(ImportError, match=r'pip install -e "\.\[torch\]"'):
    convert.load_torch_checkpoint("any.pth")


def test_command_line(tmp_path):
  _, path = _small_checkpoint(tmp_path, conf=False, size=16)
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-m", "tfsym3d.convert", f"--torch={path}",
                           f"--out={out}", "--vgg_weights=none", "--json"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["networks_absent"] == ["netC"] and report["config"]["image_size"] == 16
  assert tf.train.latest_checkpoint(str(out / "ckpt")).endswith("ckpt-30")
  assert "--nouse_conf_map" in (out / "flags.txt").read_text().split()
  # evaluate takes it as any run: --flagfile=<out>/flags.txt --checkpoint=<out>.
  result = subprocess.run([sys.executable, "-m", "tfsym3d.evaluate",
                           f"--flagfile={out / 'flags.txt'}", f"--checkpoint={out}",
                           "--vgg_weights=none", "--dataset=synfaces", "--eval_images=4",
                           "--json", "--noprogress"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["num_images"] == 4 and summary["checkpoint"].endswith("ckpt-30")
  assert np.isfinite(summary["side"]["mean"])


# -- torchvision's VGG16 -> Keras weights for the perceptual loss -----------

# torchvision's vgg16().features: 3x3 convs (padding 1) with ReLUs, 2x2
# max-pools ("M"); module indices as in its state dict (features.0, ...).
_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                 512, 512, 512, "M", 512, 512, 512, "M"]
_RELU3_3 = 15   # features[:16] ends with the ReLU after conv3_3
_TORCH_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_TORCH_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _torchvision_layout_vgg16_features(seed=0):
  torch.manual_seed(seed)
  layers, cin = [], 3
  for item in _VGG16_LAYOUT:
    if item == "M":
      layers.append(torch.nn.MaxPool2d(2, 2))
      continue
    conv = torch.nn.Conv2d(cin, item, 3, padding=1)
    torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    torch.nn.init.normal_(conv.bias, 0.0, 0.1)
    layers += [conv, torch.nn.ReLU(inplace=False)]
    cin = item
  return torch.nn.Sequential(*layers).eval()


def _torch_perceptual_loss(features, recon, target, mask, sigma):
  """The reference's perceptual loss, relu3_3 only, in PyTorch (NCHW input in
  [-1, 1], mask [B, H, W], sigma [B, 1, h, w])."""
  def relu3_3(images):
    return features[:_RELU3_3 + 1]((images / 2 + 0.5 - _TORCH_MEAN) / _TORCH_STD)
  f1, f2 = relu3_3(recon), relu3_3(target)
  loss = (f1 - f2) ** 2
  loss = loss / (2 * sigma ** 2 + 1e-7) + torch.log(sigma + 1e-7)
  h, w = f1.shape[2:]
  m = torch.nn.functional.avg_pool2d(mask[:, None], (mask.shape[1] // h,
                                                     mask.shape[2] // w))
  m = m.expand_as(loss)
  return (loss * m).sum() / m.sum()


def test_torchvision_vgg16_converts_to_the_same_relu3_3_and_perceptual_loss(tmp_path):
  from tfsym3d import losses
  features = _torchvision_layout_vgg16_features()
  state = {f"features.{k}": v for k, v in features.state_dict().items()}
  # A stand-in for the fully connected top (ignored, reported).
  state["classifier.0.weight"] = torch.zeros(4, 8)
  state["classifier.0.bias"] = torch.zeros(4)
  pth = tmp_path / "vgg16-397923af.pth"
  torch.save(state, pth)
  out = tmp_path / "vgg16_torchvision.weights.h5"
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-m", "tfsym3d.convert",
                           f"--torchvision_vgg16={pth}", f"--out={out}", "--json"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["convolutions"] == 13
  assert report["ignored_keys"] == ["classifier.0.bias", "classifier.0.weight"]

  perceptual = losses.PerceptualLoss(weights=str(out), input_mode="torch")
  rng = np.random.default_rng(0)
  recon = rng.uniform(-1, 1, [2, 32, 32, 3]).astype(np.float32)
  target = np.clip(recon + 0.3 * rng.standard_normal(recon.shape), -1, 1).astype(np.float32)
  mask = (rng.random([2, 32, 32]) > 0.3).astype(np.float32)
  sigma = rng.uniform(0.5, 2.0, [2, 8, 8, 1]).astype(np.float32)
  with torch.no_grad():
    want = features[:_RELU3_3 + 1]((_nchw(recon) / 2 + 0.5 - _TORCH_MEAN) / _TORCH_STD)
    want_loss = _torch_perceptual_loss(features, _nchw(recon), _nchw(target),
                                       torch.from_numpy(mask), _nchw(sigma))
  got = perceptual.features(recon).numpy()
  want = _nhwc(want)
  assert got.shape == want.shape == (2, 8, 8, 256)
  scale = float(np.abs(want).max())
  np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=1e-5)
  got_loss = float(perceptual(recon, target, mask, sigma))
  assert got_loss == pytest.approx(float(want_loss), rel=1e-5)


def test_torchvision_vgg16_bad_files_are_clear_errors(tmp_path):
  features = _torchvision_layout_vgg16_features()
  state = {f"features.{k}": v for k, v in features.state_dict().items()}
  good = tmp_path / "vgg16.pth"
  torch.save(state, good)
  out = str(tmp_path / "vgg.weights.h5")
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
  with pytest.raises(convert.ConversionError, match="truncated.pth: not a readable"):
    convert.convert_torchvision_vgg16(str(truncated), out)
  # A reference checkpoint is not a VGG16.
  _, ref_path = _small_checkpoint(tmp_path, conf=False, size=16)
  with pytest.raises(convert.ConversionError, match="ref.pth is not torchvision's VGG16"):
    convert.convert_torchvision_vgg16(ref_path, out)
  wrong = dict(state)
  wrong["features.14.weight"] = torch.zeros(256, 128, 3, 3)
  del wrong["features.28.bias"]
  torch.save(wrong, tmp_path / "wrong.pth")
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_torchvision_vgg16(str(tmp_path / "wrong.pth"), out)
  assert "features.28.bias" in str(error.value) and "features.14.weight" in str(error.value)
  with pytest.raises(FileNotFoundError, match="--torchvision_vgg16=.*missing.pth"):
    convert.convert_torchvision_vgg16(str(tmp_path / "missing.pth"), out)
  with pytest.raises(convert.ConversionError, match=r"\.weights\.h5"):
    convert.convert_torchvision_vgg16(str(good), str(tmp_path / "vgg.h5"))
  assert not os.path.exists(out)
