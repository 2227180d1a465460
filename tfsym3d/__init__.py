"""tfsym3d: unsupervised 3D reconstruction of probably-symmetric objects."""

__version__ = "0.1.0"
