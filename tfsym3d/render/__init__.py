"""Differentiable rendering: rasterization, interpolation, sampling, warps."""
