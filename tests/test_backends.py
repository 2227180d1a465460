"""The rasterizer backends are named in one place: tfsym3d.render.backends."""

from absl import flags
import pytest

from tfsym3d import flags as tflags  # noqa: F401  (defines --rasterizer)
from tfsym3d.config import ModelConfig
from tfsym3d.render import backends


def test_names_parse_to_their_backends():
  assert backends.NAMES == ("tf", "tfg")
  assert [backends.parse(name) for name in backends.NAMES] == [
      backends.Backend.TF, backends.Backend.TFG]
  assert backends.parse(backends.Backend.TFG) is backends.Backend.TFG


@pytest.mark.parametrize("name", ["opengl", "TF", "", None])
def test_unknown_name_is_an_error_naming_the_choices(name):
  with pytest.raises(ValueError) as error:
    backends.parse(name)
  message = str(error.value)
  assert repr(name) in message and "'tf', 'tfg'" in message and "--rasterizer" in message


def test_config_and_flag_take_exactly_the_registry_names():
  for name in backends.NAMES:
    assert ModelConfig(rasterizer=name).rasterizer == name
  with pytest.raises(ValueError, match="'tf', 'tfg'"):
    ModelConfig(rasterizer="opengl")
  assert tuple(flags.FLAGS["rasterizer"].parser.enum_values) == backends.NAMES
