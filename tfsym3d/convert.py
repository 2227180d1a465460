"""Reference (PyTorch unsup3d) checkpoints -> tfsym3d checkpoints.

  python -m tfsym3d.convert --torch checkpoint030.pth --out runs/celeba_ref \
      [--flagfile=configs/faces.cfg | --z_translation_range=0.1 ...]

writes a normal tfsym3d run directory:

  DIR/ckpt/ckpt-<epoch>   a tf.train checkpoint of the model's weights, the
                          one `runs.restore_weights` reads (evaluate
                          --checkpoint DIR, train --init_from DIR, ...).
  DIR/flags.txt           the model flags it was converted with (a flagfile:
                          pass --flagfile=DIR/flags.txt to the other commands).
  DIR/conversion.json     what was converted, what was absent or ignored.

The network widths and the image size are read from the tensors' shapes;
every other model setting (e.g. z_translation_range for cats) is not stored in
a reference checkpoint and comes from the model flags (defaults: faces).

  python -m tfsym3d.convert --torchvision_vgg16=vgg16-397923af.pth \
      --out=vgg16_torchvision.weights.h5

writes torchvision's ImageNet VGG16 (the perceptual network of the reference,
docs/method.md §6) as the Keras weights file of keras.applications.VGG16(include_top=
False), for `--vgg_weights=vgg16_torchvision.weights.h5 --vgg_input=torch`.

Loading uses `torch.load(..., weights_only=True)`, which unpickles tensors
and plain data only, never code. The reference's training checkpoints also
pickle its metrics history (`unsup3d.meters.MetricsTrace`); that one class is
read into an inert stand-in holding its data, anything else is refused.
torch is an optional extra: pip install -e ".[torch]".
"""

import hashlib
import json
import os
import pickle
import re
import sys
from typing import Dict, Iterable, List, Tuple

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from tfsym3d import flags as tflags
from tfsym3d import runs
from tfsym3d.config import ModelConfig
from tfsym3d.model import Unsup3D

FLAGS = flags.FLAGS

REQUIRED_NETWORKS = ("netD", "netA", "netL", "netV")
OPTIONAL_NETWORKS = ("netC",)
# Entries of a reference training checkpoint that hold no network weights.
REFERENCE_EXTRAS = ("optimizerD", "optimizerA", "optimizerL", "optimizerV",
                    "optimizerC", "epoch", "metrics_trace")
# The reference's fixed GroupNorm groups (16 / 32 / 64 for nf / 2nf / 4nf)
# equal tfsym3d's 4 channels per group only at these widths.
REFERENCE_WIDTHS = {"nf": 64, "zdim": 256, "nf_encoder": 32, "nf_conf": 64,
                    "zdim_conf": 128}

_TORCH_HINT = ('reading PyTorch checkpoints needs torch (the CPU build): '
               'pip install -e ".[torch]"')


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message says why and names it."""


def _import_torch():
  """torch, imported only when a checkpoint is read (it is an optional extra)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(_TORCH_HINT) from error
  return torch


class InertMetricsTrace:
  """Stands in for the reference's `unsup3d.meters.MetricsTrace` when a
  training checkpoint is unpickled: it receives the pickled attributes (a
  dict of per-epoch metric dicts in `data`) and has no behaviour."""


_ALLOWED_CLASSES = [(InertMetricsTrace, "unsup3d.meters.MetricsTrace")]


def load_torch_checkpoint(path: str, flag: str = "--torch") -> dict:
  """Reads a reference checkpoint file with weights_only=True, on the CPU.

  Returns:
    The unpickled top-level dict (tensors stay torch tensors).
  Raises:
    FileNotFoundError; ImportError without torch; ConversionError for a file
    that is not a PyTorch checkpoint or that would need to run code (a pickle
    holding anything but tensors, plain data and the reference's metrics).
  """
  torch = _import_torch()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{flag}={path}: no such file")
  try:
    with torch.serialization.safe_globals(_ALLOWED_CLASSES):
      loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as error:
    text = str(error)
    found = re.findall(r"unsupported global:? (?:GLOBAL )?([\w.]+)", text, re.IGNORECASE)
    if found:
      raise ConversionError(
          f"{path}: refused to load (it references {', '.join(sorted(set(found)))}): "
          "it holds Python objects other than tensors and plain data, and "
          "unpickling them could run code. tfsym3d reads checkpoints with "
          "torch.load(weights_only=True) only. Re-save the networks' state dicts "
          "as plain tensors (e.g. {'netD': netD.state_dict(), ...}) from a "
          "trusted environment.") from None
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = detail.group(1) if detail else (text.splitlines() or [type(error).__name__])[0]
    raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({detail.strip()})"
                          ) from None
  except (RuntimeError, EOFError, OSError, ValueError) as error:
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
  if not isinstance(loaded, dict):
    raise ConversionError(f"{path}: holds a {type(loaded).__name__}, not a dict "
                          + ("of tensors (a state dict)" if flag != "--torch" else
                             "(the reference's checkpoint: netD, netA, netL, netV, "
                             "[netC], ...)"))
  return loaded


def reference_state_dicts(checkpoint: dict, source: str = "checkpoint"
                          ) -> Tuple[Dict[str, Dict[str, np.ndarray]], List[str]]:
  """The networks' state dicts as float32 NumPy arrays, and the ignored keys.

  Args:
    checkpoint: a reference checkpoint dict: netD, netA, netL, netV (required),
      netC (optional), optimiser states, epoch, metrics_trace.
    source: what to call it in errors (the file name).
  Returns:
    ({'netD': {'network.0.weight': array, ...}, ...}, [ignored top-level keys]).
  Raises:
    ConversionError naming every missing network and non-tensor entry.
  """
  keys = [str(k) for k in checkpoint]
  if not any(k in checkpoint for k in REQUIRED_NETWORKS + OPTIONAL_NETWORKS):
    hint = (" (it looks like a single network's state dict: save the "
            "reference's dict {'netD': ..., 'netA': ..., ...} instead)"
            if any(k.startswith("network.") for k in keys) else "")
    raise ConversionError(f"{source}: none of the reference networks "
                          f"{REQUIRED_NETWORKS + OPTIONAL_NETWORKS} in its keys "
                          f"{sorted(keys)[:12]}{hint}")
  missing = [n for n in REQUIRED_NETWORKS if n not in checkpoint]
  if missing:
    raise ConversionError(f"{source}: networks {missing} are missing (found "
                          f"{[k for k in keys if k.startswith('net')]}); a "
                          "reference checkpoint holds netD, netA, netL, netV "
                          "(and optionally netC)")
  state, bad = {}, []
  for name in REQUIRED_NETWORKS + OPTIONAL_NETWORKS:
    if name not in checkpoint:
      continue
    entries = checkpoint[name]
    if not isinstance(entries, dict):
      raise ConversionError(f"{source}: '{name}' is a {type(entries).__name__}, "
                            "not a state dict")
    arrays = {}
    for key, value in entries.items():
      if not (hasattr(value, "is_floating_point") and value.is_floating_point()):
        bad.append(f"{name}.{key} ({type(value).__name__}"
                   f"{', ' + str(value.dtype) if hasattr(value, 'dtype') else ''})")
        continue
      arrays[str(key)] = value.detach().cpu().float().numpy()
    state[name] = arrays
  if bad:
    raise ConversionError(f"{source}: entries that are not floating-point tensors: "
                          f"{bad}")
  ignored = sorted(k for k in keys if k not in state)
  return state, ignored


def _shape(state, net, key):
  value = state.get(net, {}).get(key)
  return value.shape if value is not None and value.ndim == 4 else None


def inferred_settings(state: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, object]:
  """Model settings read from the tensors' shapes.

  netD's first conv gives nf and its bottleneck conv (network.11, kernel
  S/16) zdim and the image size S; netL's first conv nf_encoder; netC's nf_conf
  and zdim_conf; use_conf_map is whether netC is there. A key that is absent
  or not 4-D is skipped here (the key check reports it).
  """
  out = {"use_conf_map": "netC" in state}
  for net, widths in (("netD", ("nf", "zdim")), ("netL", ("nf_encoder", None)),
                      ("netC", ("nf_conf", "zdim_conf"))):
    first = _shape(state, net, "network.0.weight")
    if first is not None:
      out[widths[0]] = int(first[0])
    if widths[1]:
      bottleneck = _shape(state, net, "network.11.weight")
      if bottleneck is not None:
        out[widths[1]] = int(bottleneck[0])
        if net == "netD":
          out["image_size"] = 16 * int(bottleneck[2])
  return out


def config_for(state: Dict[str, Dict[str, np.ndarray]], base: ModelConfig,
               explicit: Iterable[str] = ()) -> Tuple[ModelConfig, List[str]]:
  """`base` with the settings the checkpoint fixes; (config, notes).

  Args:
    explicit: names of settings the user set on purpose; one that disagrees
      with the checkpoint is an error (except --nouse_conf_map, which leaves
      a present netC out).
  """
  explicit = set(explicit)
  inferred = inferred_settings(state)
  notes, conflicts = [], []
  if "use_conf_map" in explicit and not base.use_conf_map and inferred["use_conf_map"]:
    notes.append("netC is in the checkpoint but --nouse_conf_map: left out")
    inferred["use_conf_map"] = False
  for name, value in inferred.items():
    given = getattr(base, name)
    if name in explicit and given != value:
      conflicts.append(f"--{name}={given} but the checkpoint has {value}")
  if conflicts:
    raise ConversionError("model flags disagree with the checkpoint: "
                          + "; ".join(conflicts) + " (leave them out: the "
                          "converter reads them from the tensors' shapes)")
  if not inferred["use_conf_map"] and "netC" not in state:
    notes.append("netC (confidence) is not in the checkpoint: converted without a "
                 "confidence network (use_conf_map=false in flags.txt); give the "
                 "other commands --flagfile=<out>/flags.txt")
  odd = {k: inferred[k] for k in REFERENCE_WIDTHS
         if k in inferred and inferred[k] != REFERENCE_WIDTHS[k]}
  if odd:
    notes.append(f"widths {odd} differ from the reference's {REFERENCE_WIDTHS}: the "
                 "reference code uses 16/32/64 GroupNorm groups at any width, "
                 "tfsym3d 4 channels per group; outputs match only if the source "
                 "model used 4 channels per group too")
  try:
    return base.replace(**inferred), notes
  except ValueError as error:
    raise ConversionError(f"the checkpoint's shapes give an invalid model: {error}") from None


def expected_parameters(model: Unsup3D) -> Dict[str, Dict[str, Tuple[tf.Variable, tuple]]]:
  """Every reference state-dict key of the model's networks.

  Returns:
    {'netD': {'network.0.weight': (variable, torch shape), ...}, ...}. A conv
    or transposed conv kernel (kh, kw, a, b) is torch's (b, a, kh, kw); a
    GroupNorm's weight / bias are gamma / beta.
  """
  out = {}
  for name, net in model.networks.items():
    params = {}
    for prefix, layer in net.reference_layers().items():
      if isinstance(layer, keras.layers.GroupNormalization):
        params[f"{prefix}.weight"] = (layer.gamma, tuple(layer.gamma.shape))
        params[f"{prefix}.bias"] = (layer.beta, tuple(layer.beta.shape))
      else:
        kh, kw, a, b = layer.kernel.shape
        params[f"{prefix}.weight"] = (layer.kernel, (b, a, kh, kw))
    out[name] = params
  return out


def check_state(state: Dict[str, Dict[str, np.ndarray]], model: Unsup3D) -> List[str]:
  """Every mismatch between the state dicts and the model, as lines."""
  problems = []
  for name, params in expected_parameters(model).items():
    given = state.get(name)
    if given is None:
      problems.append(f"{name}: not in the checkpoint")
      continue
    missing = [k for k in params if k not in given]
    unexpected = sorted(k for k in given if k not in params)
    shaped = [f"{k} {tuple(given[k].shape)} (expected {params[k][1]})"
              for k in params if k in given and tuple(given[k].shape) != params[k][1]]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("mis-shaped", shaped)):
      if items:
        problems.append(f"{name}: {label}: {', '.join(items)}")
  return problems


def assign_state(state: Dict[str, Dict[str, np.ndarray]], model: Unsup3D) -> int:
  """Copies the (checked) state dicts into the model; returns the parameter count."""
  count = 0
  for name, params in expected_parameters(model).items():
    for key, (variable, _) in params.items():
      value = state[name][key]
      if value.ndim == 4:  # (out|in, in|out, kh, kw) -> (kh, kw, in|out, out|in)
        value = np.transpose(value, (2, 3, 1, 0))
      variable.assign(value)
      count += value.size
  return count


def load_into(model: Unsup3D, state: Dict[str, Dict[str, np.ndarray]],
              source: str = "checkpoint") -> int:
  """Checks the state dicts against `model` and copies them in.

  Raises ConversionError listing every missing, unexpected and mis-shaped key
  (nothing is assigned then).
  """
  problems = check_state(state, model)
  if problems:
    raise ConversionError(f"{source} does not fit the model "
                          f"(image_size {model.config.image_size}):\n  "
                          + "\n  ".join(problems))
  return assign_state(state, model)


def model_flagfile(config: ModelConfig) -> str:
  """The config as a flagfile of the model flags (tfsym3d.flags)."""
  lines = []
  for name, value in vars(config).items():
    if isinstance(value, bool):
      lines.append(f"--{name}" if value else f"--no{name}")
    else:
      lines.append(f"--{name}={value}")
  return "\n".join(lines) + "\n"


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def convert(torch_path: str, out_dir: str, base: ModelConfig = ModelConfig(),
            explicit: Iterable[str] = ()) -> Dict:
  """Converts a reference checkpoint file into the run directory `out_dir`.

  Args:
    torch_path: the reference's .pth file.
    out_dir: written as described in the module docstring; must not already
      hold a checkpoint.
    base: model settings the checkpoint does not fix (see `config_for`).
    explicit: names of the settings in `base` the user set on purpose.
  Returns:
    The report written to conversion.json (plus 'checkpoint', the prefix).
  """
  ckpt_dir = os.path.join(out_dir, "ckpt")
  if tf.train.latest_checkpoint(ckpt_dir):
    raise ConversionError(f"--out={out_dir}: already holds a checkpoint in {ckpt_dir}; "
                          "choose another --out or delete it")
  checkpoint = load_torch_checkpoint(torch_path)
  state, ignored = reference_state_dicts(checkpoint, torch_path)
  epoch = checkpoint.get("epoch")
  epoch = epoch if isinstance(epoch, int) and epoch >= 0 else None
  config, notes = config_for(state, base, explicit)
  # The perceptual loss' VGG is not part of the checkpoint: build without it.
  model = runs.build_model(config.replace(vgg_weights="none", lam_perc=0.0))
  converted = [n for n in model.networks]
  count = load_into(model, state, torch_path)
  left_out = [n for n in state if n not in converted]
  absent = [n for n in REQUIRED_NETWORKS + OPTIONAL_NETWORKS if n not in state]

  os.makedirs(out_dir, exist_ok=True)
  manager = tf.train.CheckpointManager(runs.checkpoint_for(model), ckpt_dir,
                                       max_to_keep=1)
  # Numbered by the reference's epoch (what the file name checkpoint030.pth says).
  prefix = manager.save(checkpoint_number=epoch or 0)
  with open(os.path.join(out_dir, "flags.txt"), "w") as f:
    f.write("# Model flags of a checkpoint converted from PyTorch by tfsym3d.convert\n")
    f.write(model_flagfile(config))
  report = {
      "source": os.path.abspath(torch_path), "sha256": _sha256(torch_path),
      "networks_converted": converted, "networks_absent": absent,
      "networks_left_out": left_out, "ignored_entries": ignored,
      "epoch": epoch, "parameters": count, "notes": notes,
      "config": {k: v for k, v in vars(config).items()},
  }
  with open(os.path.join(out_dir, "conversion.json"), "w") as f:
    json.dump(report, f, indent=2)
  report["checkpoint"] = prefix
  return report


# -- torchvision's VGG16 -> Keras -------------------------------------------

# torchvision's `vgg16().features` indices of the 13 convolutions (ReLUs and
# max-pools sit between them) and the keras.applications.VGG16 layer of each.
TORCHVISION_VGG16_CONVS = {
    0: "block1_conv1", 2: "block1_conv2",
    5: "block2_conv1", 7: "block2_conv2",
    10: "block3_conv1", 12: "block3_conv2", 14: "block3_conv3",
    17: "block4_conv1", 19: "block4_conv2", 21: "block4_conv3",
    24: "block5_conv1", 26: "block5_conv2", 28: "block5_conv3"}


def torchvision_vgg16_to_keras(state: Dict[str, object], source: str = "state dict"):
  """A keras.applications.VGG16(include_top=False) holding a torchvision VGG16.

  Args:
    state: torchvision's VGG16 state dict: features.<i>.weight [out, in, 3, 3]
      and features.<i>.bias [out] for i in TORCHVISION_VGG16_CONVS (torch
      tensors or arrays); classifier.* (the fully connected top) is ignored.
    source: what to call it in errors (the file name).
  Returns:
    (the Keras model, the ignored keys).
  Raises:
    ConversionError naming every missing, unexpected and mis-shaped key.
  """
  vgg = keras.applications.VGG16(include_top=False, weights=None,
                                 input_shape=(None, None, 3))
  expected = {}
  for index, name in TORCHVISION_VGG16_CONVS.items():
    layer = vgg.get_layer(name)
    kh, kw, cin, cout = layer.kernel.shape
    expected[f"features.{index}.weight"] = (layer.kernel, (cout, cin, kh, kw))
    expected[f"features.{index}.bias"] = (layer.bias, (cout,))
  keys = [str(k) for k in state]
  ignored = sorted(k for k in keys if k.startswith("classifier."))
  missing = [k for k in expected if k not in state]
  unexpected = sorted(k for k in keys if k not in expected and k not in ignored)
  shaped, arrays = [], {}
  for key, (_, shape) in expected.items():
    if key not in state:
      continue
    value = state[key]
    if hasattr(value, "detach"):
      value = value.detach().cpu().float().numpy()
    value = np.asarray(value, np.float32)
    if tuple(value.shape) != shape:
      shaped.append(f"{key} {tuple(value.shape)} (expected {shape})")
    arrays[key] = value
  problems = [f"{label}: {', '.join(items)}" for label, items in (
      ("missing keys", missing), ("unexpected keys", unexpected),
      ("mis-shaped", shaped)) if items]
  if problems:
    hint = (" (it looks like a checkpoint of a whole model, not torchvision's "
            "VGG16 state dict)" if not any(k.startswith("features.") for k in keys)
            else "")
    raise ConversionError(f"{source} is not torchvision's VGG16 state dict "
                          f"(vgg16-397923af.pth){hint}:\n  " + "\n  ".join(problems))
  for key, (variable, _) in expected.items():
    value = arrays[key]
    if value.ndim == 4:  # (out, in, kh, kw) -> (kh, kw, in, out)
      value = np.transpose(value, (2, 3, 1, 0))
    variable.assign(value)
  return vgg, ignored


def convert_torchvision_vgg16(torch_path: str, out_path: str) -> Dict:
  """Writes torchvision's VGG16 file `torch_path` as Keras weights `out_path`.

  The result loads into keras.applications.VGG16(include_top=False), i.e.
  `--vgg_weights=out_path`; use it with `--vgg_input=torch` (torchvision's
  [0, 1] RGB input normalised by the ImageNet mean and std).

  Returns:
    A report (source, sha256, out, convolutions, ignored keys).
  """
  if not out_path.endswith(".weights.h5"):
    raise ConversionError(f"--out={out_path}: name the Keras weights file "
                          "'<name>.weights.h5' (Keras 3 saves weights only under "
                          "that suffix)")
  state = load_torch_checkpoint(torch_path, flag="--torchvision_vgg16")
  vgg, ignored = torchvision_vgg16_to_keras(state, torch_path)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tmp = out_path[:-len(".weights.h5")] + ".tmp.weights.h5"
  vgg.save_weights(tmp)
  os.replace(tmp, out_path)  # no half-written file under the final name
  return {"source": os.path.abspath(torch_path), "sha256": _sha256(torch_path),
          "out": os.path.abspath(out_path),
          "convolutions": len(TORCHVISION_VGG16_CONVS), "ignored_keys": ignored}


# -- command line ------------------------------------------------------------

def define_flags():
  """The converter's own flags (only when run as a program); the model flags
  are the shared ones of `tfsym3d.flags`."""
  flags.DEFINE_string("torch", None, "The reference implementation's PyTorch "
                      "checkpoint (.pth) to convert.")
  flags.DEFINE_string("torchvision_vgg16", None, "torchvision's ImageNet VGG16 file "
                      "(vgg16-397923af.pth) to write as a Keras weights file "
                      "--out=NAME.weights.h5 for --vgg_weights (with "
                      "--vgg_input=torch).")


def _explicit_model_flags() -> List[str]:
  return [name for name in vars(ModelConfig()) if FLAGS[name].present]


def _run_or_exit(conversion):
  """Runs `conversion()` -> report dict; a conversion error ends the program
  with its message. With --json the report is printed and None returned (the
  caller prints nothing more), else the report is returned for the summary."""
  try:
    report = conversion()
  except (ConversionError, FileNotFoundError, ImportError) as error:
    sys.exit(f"tfsym3d.convert: {error}")
  if FLAGS.json:
    sys.stdout.write(json.dumps(report) + "\n")
    return None
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]} (flags start with --)")
  if FLAGS.torchvision_vgg16:
    if FLAGS.torch or not FLAGS.out:
      raise app.UsageError("give --torchvision_vgg16=vgg16-397923af.pth and "
                           "--out=NAME.weights.h5 (and no --torch)")
    _main_vgg16()
    return
  if not FLAGS.torch or not FLAGS.out:
    raise app.UsageError("give --torch=CHECKPOINT.pth and --out=DIR (or "
                         "--torchvision_vgg16=FILE.pth --out=NAME.weights.h5)")
  report = _run_or_exit(lambda: convert(FLAGS.torch, FLAGS.out, tflags.model_config(),
                                         _explicit_model_flags()))
  if report is None:
    return
  print(f"converted {', '.join(report['networks_converted'])} "
        f"({report['parameters']:,} parameters) -> {report['checkpoint']}")
  if report["networks_absent"]:
    print(f"not in the checkpoint: {', '.join(report['networks_absent'])}")
  if report["ignored_entries"]:
    print(f"ignored (no network weights): {', '.join(report['ignored_entries'])}")
  for note in report["notes"]:
    print(f"note: {note}")
  out = FLAGS.out
  print(f"use it with --flagfile={os.path.join(out, 'flags.txt')}, e.g.\n"
        f"  python -m tfsym3d.evaluate --flagfile={os.path.join(out, 'flags.txt')} "
        f"--checkpoint={out} ...\n"
        f"  python -m tfsym3d.train --flagfile={os.path.join(out, 'flags.txt')} "
        f"--init_from={out} --run_dir=<a new run dir> <data flags> ...")


def _main_vgg16():
  report = _run_or_exit(lambda: convert_torchvision_vgg16(FLAGS.torchvision_vgg16, FLAGS.out))
  if report is None:
    return
  print(f"converted torchvision's VGG16 ({report['convolutions']} convolutions) -> "
        f"{report['out']}")
  if report["ignored_keys"]:
    print(f"ignored (the fully connected top): {', '.join(report['ignored_keys'])}")
  print(f"use it with --vgg_weights={FLAGS.out} --vgg_input=torch")


if __name__ == "__main__":
  define_flags()
  logging.set_verbosity(logging.WARNING)
  app.run(main)
