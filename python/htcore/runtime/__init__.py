"""Foundation: the torch-free runtime (numpy and htcore's kernels only) and its model file.

- `CompressedModel`: a sequence of `Linear` (sparse CSR or dense weight), `Activation` and `Flatten`
  layers, run in float32; activations after a sparse Linear are fused into its kernel.
- `save_compressed` / `load_compressed`: the model file (safetensors: CSR arrays as tensors,
  architecture and provenance as JSON metadata), validated in full before any kernel runs; loading
  never executes code from the file.
"""
from __future__ import annotations

from ._model import ACTIVATION_KINDS, Activation, CompressedModel, Flatten, Linear, RuntimeLayer
from ._model_file import FORMAT, FORMAT_VERSION, load_compressed, save_compressed

__all__ = [
    "ACTIVATION_KINDS",
    "Activation",
    "CompressedModel",
    "FORMAT",
    "FORMAT_VERSION",
    "Flatten",
    "Linear",
    "RuntimeLayer",
    "load_compressed",
    "save_compressed",
]
