"""Every command-line flag of tfsym3d, defined once.

Model flags mirror `ModelConfig` field by field (same names, same defaults);
`model_config()` builds the frozen config from the parsed flags. configs/*.cfg
are absl flagfiles over these names: `--flagfile=configs/faces.cfg`.
"""

import dataclasses

from absl import flags

from tfsym3d.config import RASTERIZER_BACKENDS, ModelConfig

FLAGS = flags.FLAGS

_MODEL_HELP = {
    "image_size": "Images are resized to S x S (a multiple of 16; reference 64).",
    "fov": "Camera field of view in degrees.",
    "min_depth": "Smallest canonical depth.",
    "max_depth": "Largest canonical depth.",
    "min_amb_light": "Lower end of the ambient light range.",
    "max_amb_light": "Upper end of the ambient light range.",
    "min_diff_light": "Lower end of the diffuse light range.",
    "max_diff_light": "Upper end of the diffuse light range.",
    "xyz_rotation_range": "Largest rotation about each axis, degrees.",
    "xy_translation_range": "Largest x and y translation.",
    "z_translation_range": "Largest z translation (0 for faces, 0.1 for cats).",
    "rot_center_depth": "Depth of the centre the object rotates about.",
    "znear": "Rasterizer near plane.",
    "zfar": "Rasterizer far plane (uncovered pixels get this depth).",
    "nf": "Width of the depth and albedo networks (reference 64).",
    "zdim": "Bottleneck size of the depth and albedo networks (reference 256).",
    "nf_encoder": "Width of the light and view encoders (reference 32).",
    "nf_conf": "Width of the confidence network (reference 64).",
    "zdim_conf": "Bottleneck size of the confidence network (reference 128).",
    "use_conf_map": "Predict confidence maps and weight the losses with them.",
    "lam_perc": "Weight of the perceptual loss.",
    "lam_flip": "Weight of the flipped reconstruction's losses.",
    "lam_depth_sm": "Weight of the depth smoothness term (synthetic cars use it).",
    "vgg_weights": ("VGG16 weights for the perceptual loss: 'imagenet' (Keras "
                    "downloads them), 'none' (term off) or the path of a local "
                    "weights file (e.g. vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5)."),
    "vgg_input": ("VGG16 input normalisation: 'caffe' for Keras' ImageNet weights, "
                  "'torch' for weights converted from torchvision."),
    "learning_rate": "Adam learning rate.",
    "weight_decay": "Classic L2 weight decay added to every gradient.",
    "rasterizer": ("Rasterizer backend: 'tf' (pure TensorFlow, any device) or 'tfg' "
                   "(tensorflow-graphics' CPU kernel, compiled on first use)."),
}


def _define_model_flags():
  for field in dataclasses.fields(ModelConfig):
    name, default, help_text = field.name, field.default, _MODEL_HELP[field.name]
    if name == "rasterizer":
      flags.DEFINE_enum(name, default, RASTERIZER_BACKENDS, help_text)
    elif name == "vgg_input":
      flags.DEFINE_enum(name, default, ["caffe", "torch"], help_text)
    elif isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


_define_model_flags()


def model_config() -> ModelConfig:
  """The ModelConfig the parsed command line asks for."""
  values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(ModelConfig)}
  try:
    return ModelConfig(**values)
  except ValueError as error:
    raise flags.ValidationError(f"{error} (check the flags or the --flagfile)") from error
