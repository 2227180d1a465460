"""Input pipelines (tf.data) for training and evaluation.

`tfsym3d.data.folders`: image folders (CelebA-style, any nesting) and the
synthetic-face image/depth pairs of docs/method.md §8.
"""
