"""Foundation: the torch-free runtime (numpy and htcore's kernels only) and its model file.

- `CompressedModel`: a sequence of `Linear` (sparse CSR or dense weight), `Activation`, `Flatten`,
  `Conv2d` (sparse CSR or dense weight), `MaxPool2d` and `AvgPool2d` layers, run in float32;
  activations after a sparse Linear or a Conv2d are fused into its kernel.
- `save_compressed` / `load_compressed`: the model file (safetensors: CSR arrays as tensors,
  architecture and provenance as JSON metadata), validated in full before any kernel runs; loading
  never executes code from the file.
"""
from __future__ import annotations

from ._model import (
    ACTIVATION_KINDS,
    Activation,
    AvgPool2d,
    CompressedModel,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    RuntimeLayer,
)
from ._model_file import FORMAT, FORMAT_VERSION, load_compressed, save_compressed

__all__ = [
    "ACTIVATION_KINDS",
    "Activation",
    "AvgPool2d",
    "CompressedModel",
    "Conv2d",
    "FORMAT",
    "FORMAT_VERSION",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "RuntimeLayer",
    "load_compressed",
    "save_compressed",
]
