"""Foundation: reading and writing model files without executing code from them.

- `SafetensorsFile` / `save_safetensors`: a validating, memory-mapped safetensors reader and a writer
  (numpy only; malformed files raise `htcore.errors.SafetensorsError` before any tensor is read).
- `load_layers` / `Layer`: the weight tensors of a model (nn.Module, state_dict, or a .safetensors,
  .pt/.pth/.bin or .npz file), one at a time, each with the 2-D matrices its spectrum is taken from
  (`conv_slices` for convolution kernels).
"""
from __future__ import annotations

from ..errors import SafetensorsError
from ._layers import KINDS, Layer, conv_slices, load_layers
from ._safetensors import MAX_HEADER_BYTES, SafetensorsFile, TensorInfo, save_safetensors

__all__ = [
    "KINDS",
    "MAX_HEADER_BYTES",
    "Layer",
    "SafetensorsError",
    "SafetensorsFile",
    "TensorInfo",
    "conv_slices",
    "load_layers",
    "save_safetensors",
]
