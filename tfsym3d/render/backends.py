"""The rasterizer backends, named in one place.

`--rasterizer` (`ModelConfig.rasterizer`) holds one of `NAMES` as a plain
string, so configs and flagfiles stay readable; code that picks a backend
turns that string into a `Backend` with `parse`, whose error names the valid
choices. This module imports no TensorFlow: the config and the flags import
it before any model is built.
"""

import enum


class Backend(enum.Enum):
  """A rasterizer backend; its value is the name `--rasterizer` takes."""

  # Pure TensorFlow z-buffer (`rasterize.rasterize_tf`): any device, the
  # visibility stages optionally XLA-compiled.
  TF = "tf"
  # tensorflow-graphics' C++ CPU kernel (`tfg_backend.rasterize_tfg`),
  # compiled on first use: the reference the 'tf' backend is tested against.
  TFG = "tfg"


NAMES = tuple(backend.value for backend in Backend)


def parse(name) -> Backend:
  """The `Backend` called `name` ('tf' or 'tfg'; a `Backend` passes through).

  Raises:
    ValueError naming the valid choices and the flag that sets the backend.
  """
  if isinstance(name, Backend):
    return name
  try:
    return Backend(name)
  except ValueError:
    raise ValueError(f"Unknown rasterizer backend {name!r}: use one of "
                     f"{', '.join(repr(n) for n in NAMES)} (flag --rasterizer)") from None
