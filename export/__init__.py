"""Export of trained tfsym3d models for deployment.

Writers for SavedModel (TF Serving), TFLite (on-device depth and albedo) and
ONNX, and their parity checks against the Keras model, arrive with issue 5.
This package sits at the top level of the repository, beside `tfsym3d/`, and
is not installed into site-packages under the generic name `export`.
"""
