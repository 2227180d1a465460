"""Flags: one per ModelConfig field, flagfiles, clear errors."""

import dataclasses

import pytest
from absl import flags as absl_flags

from tfsym3d import flags
from tfsym3d.config import ModelConfig


def test_every_model_field_has_a_flag_with_help_and_the_same_default():
  for field in dataclasses.fields(ModelConfig):
    flag = absl_flags.FLAGS[field.name]
    assert flag.help and len(flag.help) > 10, field.name
    assert flag.default == field.default, field.name


def test_flagfile_overrides_and_builds_config(tmp_path):
  cfg = tmp_path / "small.cfg"
  cfg.write_text("--image_size=32\n--nf=16\n--rasterizer=tfg\n--vgg_weights=none\n")
  try:
    absl_flags.FLAGS.unparse_flags()
    absl_flags.FLAGS(["prog", f"--flagfile={cfg}", "--nf=24"])
    config = flags.model_config()
    assert (config.image_size, config.nf, config.rasterizer, config.vgg_weights) == (32, 24, "tfg", "none")
    absl_flags.FLAGS.unparse_flags()
    absl_flags.FLAGS(["prog", "--image_size=40"])
    with pytest.raises(absl_flags.ValidationError, match="image_size=40"):
      flags.model_config()
  finally:
    absl_flags.FLAGS.unparse_flags()
