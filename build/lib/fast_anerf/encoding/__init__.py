"""Encodings: tiny-cuda-nn-layout hash grids and MLPs."""
