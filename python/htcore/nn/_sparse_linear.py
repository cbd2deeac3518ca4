"""`SparseLinear`: an inference drop-in for ``nn.Linear`` running htcore's CSR kernels."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..sparse import CSRMatrix, sparse_linear
from ._sparse_module import SparseModule


class SparseLinear(SparseModule):
    """y = x W^T + b with W a `CSRMatrix` of shape (out_features, in_features), for inference.

    Inputs of shape (..., in_features) in any float dtype; the product runs in float32 (float64
    for float64 weights) in htcore's kernels and is returned in the input's dtype. No autograd:
    outputs carry no gradient. ``bias`` (optional) is kept as a float32 buffer.
    """

    def __init__(self, weight: CSRMatrix, bias: Any = None):
        super().__init__(weight, bias)
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_dense(cls, linear: nn.Linear, keep: Optional[float] = None, *, k: Optional[int] = None,
                   mode: str = "matrix", value_dtype: Any = np.float32) -> "SparseLinear":
        """Keep the top-k |w| of ``linear.weight`` (see `htcore.topk_sparsify` for ``keep``, ``k``
        and ``mode``); values stored as ``value_dtype`` (float32, or float16 to halve them)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        return cls(cls._topk(linear.weight, keep, k, mode, value_dtype), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, expected {self.in_features}")
        lead = x.shape[:-1]
        y = sparse_linear(self._to_numpy(x.reshape(-1, self.in_features)), self.weight_csr, bias=self._bias_array())
        return self._like(y, x).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._csr_repr()}"
