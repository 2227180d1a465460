"""Export of trained tfsym3d models for deployment.

SavedModel for TF Serving, TFLite for on-device depth and albedo, ONNX; see
`export.writers` for the layout and signatures, `export.runtime` to run
them, `export.cli` for the command:

  python -m export --checkpoint runs/x --format all --out exported/

This package sits at the top level of the repository, beside `tfsym3d/`.
It is never installed under the generic name `export`: setup.py installs
this directory as `tfsym3d_export` (with the `tfsym3d-export` console
script), so its modules import each other relatively.
"""
