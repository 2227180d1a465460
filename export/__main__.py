"""`python -m export ...` from the repository root (see export.cli)."""

from .cli import run

if __name__ == "__main__":
  run()
