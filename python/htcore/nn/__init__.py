"""Foundation: torch integration (the optional ``torch`` extra; importing this package imports torch).

- `SparseLinear`, `SparseConv2d`: inference drop-ins for ``nn.Linear`` and ``nn.Conv2d`` running
  htcore's CSR kernels.
- `sparsify_model`: swaps a model's ``nn.Linear`` and ``nn.Conv2d`` modules for top-k `SparseLinear`
  and `SparseConv2d` ones and returns a `SparsifyReport` of what changed.
- Conversion both ways between torch and the runtime: `to_runtime_layers` (torch -> runtime, what
  `htcore.runtime.CompressedModel.from_torch` runs) and `to_torch` (runtime -> ``nn.Sequential``),
  with the one activation mapping (`TORCH_ACTIVATIONS`, `activation_kind`).
- `lenet`, `vgg_small`, `resnet_small`: small seeded CNNs for tests, benchmarks and the demo.
"""
from __future__ import annotations

from ._convert import TORCH_ACTIVATIONS, activation_kind, to_runtime_graph, to_runtime_layers, to_torch
from ._models import lenet, resnet_small, vgg_small
from ._sparse_conv import SparseConv2d
from ._sparse_linear import SparseLinear
from ._sparsify import SparsifiedLayer, SparsifyReport, sparsify_model

__all__ = [
    "SparseConv2d",
    "SparseLinear",
    "SparsifiedLayer",
    "SparsifyReport",
    "TORCH_ACTIVATIONS",
    "activation_kind",
    "lenet",
    "resnet_small",
    "sparsify_model",
    "to_runtime_graph",
    "to_runtime_layers",
    "to_torch",
    "vgg_small",
]
