"""Stage: compress a trained network into a runtime model.

- `compress`: top-k per weight matrix (Linear, or Conv2d as (out, in/groups*kh*kw)) (per-layer keep fractions), optional masked fine-tuning, an
  optional r-level k-means codebook (`kmeans_1d`) with shared-weight fine-tuning, float16 biases.
- `compress_grid`: the same over a grid of settings, sharing the pruning and fine-tuning between
  settings that differ only in codebook levels or bias precision.
- `allocate`: per-layer keep fractions under one total budget (nnz, bits or a relative error),
  optimal for the summed squared pruning error, with "global", "uniform" and "tail" baselines.
- `output_sensitivity`: each layer's output error per unit weight error on calibration inputs, the
  per-layer weights of `allocate(sensitivity=...)`.
- `layer_names`: the Linear and Conv2d layer names `compress`'s ``per_layer`` takes.
"""
from __future__ import annotations

from ._allocate import METHODS, Allocation, allocate, weight_layers
from ._codebook import kmeans_1d
from ._compress import compress, compress_grid, layer_names
from ._sensitivity import output_sensitivity

__all__ = ["METHODS", "Allocation", "allocate", "weight_layers", "compress", "compress_grid", "kmeans_1d", "layer_names",
           "output_sensitivity"]
