"""Foundation: the torch-free runtime (numpy and htcore's kernels only) and its model file.

- `CompressedModel`: a sequence of layers, or a graph of `Node`s (named layers with named inputs,
  e.g. a ResNet's residual `Add`s), run in float32. Layers: `Linear` (sparse CSR or dense weight),
  `Activation`, `Flatten`, `Conv2d` (sparse CSR or dense weight), `MaxPool2d`, `AvgPool2d`,
  `AdaptiveAvgPool2d`, `BatchNorm2d` (per-channel scale and shift) and `Add`; activations after a
  sparse Linear or a Conv2d are fused into its kernel.
- `save_compressed` / `load_compressed`: the model file (safetensors: CSR arrays as tensors,
  architecture and provenance as JSON metadata), validated in full before any kernel runs; loading
  never executes code from the file.
"""
from __future__ import annotations

from ._model import (
    ACTIVATION_KINDS,
    INPUT,
    Activation,
    AdaptiveAvgPool2d,
    Add,
    AvgPool2d,
    BatchNorm2d,
    CompressedModel,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Node,
    RuntimeLayer,
)
from ._model_file import FORMAT, FORMAT_VERSION, load_compressed, save_compressed

__all__ = [
    "ACTIVATION_KINDS",
    "INPUT",
    "Activation",
    "AdaptiveAvgPool2d",
    "Add",
    "AvgPool2d",
    "BatchNorm2d",
    "CompressedModel",
    "Conv2d",
    "FORMAT",
    "FORMAT_VERSION",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Node",
    "RuntimeLayer",
    "load_compressed",
    "save_compressed",
]
