"""The model's constants (docs/method.md §1-7) as one frozen dataclass.

`ModelConfig()` is the reference implementation's setting for faces; flags
(`tfsym3d.flags`) build one from the command line. Nothing in the model reads
absl flags directly, so the model can be built in tests and notebooks alone.
"""

import dataclasses
from typing import Optional

from tfsym3d.render import backends


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes what the model computes.

  Angles are in degrees here (as in the reference configs); the model converts.
  """
  image_size: int = 64            # S: images are S x S
  fov: float = 10.0               # field of view, degrees
  min_depth: float = 0.9
  max_depth: float = 1.1
  min_amb_light: float = 0.0
  max_amb_light: float = 1.0
  min_diff_light: float = 0.0
  max_diff_light: float = 1.0
  xyz_rotation_range: float = 60.0   # degrees, for each of rx, ry, rz
  xy_translation_range: float = 0.1
  z_translation_range: float = 0.0   # 0.1 for cats
  rot_center_depth: float = 1.0
  znear: float = 0.1
  zfar: float = 10.0
  # Network widths (reference: 64/256 for depth and albedo, 32 for light and
  # view, 64/128 for confidence). Tests use narrower ones.
  nf: int = 64
  zdim: int = 256
  nf_encoder: int = 32
  nf_conf: int = 64
  zdim_conf: int = 128
  use_conf_map: bool = True
  # Loss weights (docs/method.md §6).
  lam_perc: float = 1.0
  lam_flip: float = 0.5
  lam_depth_sm: float = 0.0
  # 'imagenet' (Keras download), 'none' (perceptual term off) or a path to a
  # local VGG16 weights file (.h5 / .weights.h5).
  vgg_weights: str = "imagenet"
  # 'caffe' for Keras' ImageNet weights (BGR, mean pixel subtracted: what they
  # were trained with); 'torch' for weights converted from torchvision, with
  # docs/method.md §6's mean/std normalisation.
  vgg_input: str = "caffe"
  # Optimiser (docs/method.md §6): Adam with classic L2 weight decay on the gradient.
  learning_rate: float = 1e-4
  weight_decay: float = 5e-4
  rasterizer: str = "tf"          # one of backends.NAMES: 'tf' (pure TensorFlow) or 'tfg'
  # The 'tf' renderer's stages XLA-compiled (faster steps, a compile per
  # shape at start) or run as plain TensorFlow ops. Not a model constant:
  # results agree to float rounding either way.
  renderer_xla: bool = True

  def __post_init__(self):
    if self.image_size < 16 or self.image_size % 16:
      raise ValueError(
          f"image_size={self.image_size}: must be a multiple of 16 and at "
          "least 16 (the encoders downsample by 16); set --image_size to e.g. 64")
    if not self.min_depth < self.max_depth:
      raise ValueError(f"min_depth={self.min_depth} must be < max_depth={self.max_depth}")
    if self.vgg_input not in ("caffe", "torch"):
      raise ValueError(f"vgg_input={self.vgg_input!r}: use 'caffe' or 'torch'")
    backends.parse(self.rasterizer)  # a ValueError naming the choices

  @property
  def border_depth(self) -> float:
    """Depth written into the 2 leftmost and rightmost columns (docs/method.md §2)."""
    return 0.7 * self.max_depth + 0.3 * self.min_depth

  @property
  def depth_margin(self) -> float:
    """m in docs/method.md §5: reconstructed depth is clamped to [min - m, max + m]."""
    return (self.max_depth - self.min_depth) / 2

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How a run trains, as opposed to what the model computes (`ModelConfig`).

  `tfsym3d.flags.train_config()` builds one from the command line, once, in
  `tfsym3d.train.main`; `tfsym3d.train.train` reads only this and the model
  config, so a run can be driven in-process (tests, notebooks). The learning
  rate itself is `ModelConfig.learning_rate`.
  """
  run_dir: str = "runs/default"
  epochs: int = 30
  steps_per_epoch: int = 0          # 0: one pass over the training split
  seed: int = 0
  lr_schedule: str = "constant"     # 'constant' or 'cosine' (to lr * lr_final_fraction)
  lr_final_fraction: float = 0.1
  # > 0: the learning rate rises linearly from 0 over this many first steps,
  # then follows lr_schedule over the rest.
  lr_warmup_steps: int = 0
  adam_epsilon: float = 1e-8
  # > 0: keep an exponential moving average of the weights with this decay
  # per step; a finished run is evaluated and exported with it.
  weight_average_decay: float = 0.0
  # lam_flip is 1.0 for the first lam_flip_start_epoch epochs (docs/method.md §6).
  lam_flip_start_epoch: int = 0
  # None: a constant depth smoothness weight; else linear to this in the last epoch.
  lam_depth_sm_final: Optional[float] = None
  jit_compile: bool = False
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  init_from: str = ""
  val_images: int = 512
  log_every: int = 50
  images_every: int = 500
  max_nonfinite_steps: int = 5
  progress: bool = True
  # Written to <run_dir>/flags.txt (a flagfile that restarts the run); empty: none.
  flagfile_text: str = ""

  def __post_init__(self):
    if self.epochs < 1:
      raise ValueError(f"epochs={self.epochs}: must be >= 1 (--epochs)")
    if not 0.0 <= self.weight_average_decay < 1.0:
      raise ValueError(f"weight_average_decay={self.weight_average_decay}: use 0 "
                       "(off) or a decay in (0, 1), e.g. 0.999 (--weight_average_decay)")
    if self.lr_schedule not in ("constant", "cosine"):
      raise ValueError(f"lr_schedule={self.lr_schedule!r}: use 'constant' or 'cosine'")
    if self.lr_warmup_steps < 0:
      raise ValueError(f"lr_warmup_steps={self.lr_warmup_steps}: must be >= 0 "
                       "(--lr_warmup_steps; 0: no warm-up)")

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)
