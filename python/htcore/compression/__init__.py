"""Stage: compress a trained network into a runtime model.

- `compress`: top-k per weight matrix (per-layer keep fractions), optional masked fine-tuning, an
  optional r-level k-means codebook (`kmeans_1d`) with shared-weight fine-tuning, float16 biases.
- `compress_grid`: the same over a grid of settings, sharing the pruning and fine-tuning between
  settings that differ only in codebook levels or bias precision.
- `linear_names`: the layer names `compress`'s ``per_layer`` takes.
"""
from __future__ import annotations

from ._codebook import kmeans_1d
from ._compress import compress, compress_grid, linear_names

__all__ = ["compress", "compress_grid", "kmeans_1d", "linear_names"]
