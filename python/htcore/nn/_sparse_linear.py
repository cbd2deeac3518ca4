"""`SparseLinear`: an inference drop-in for ``nn.Linear`` running htcore's CSR kernels."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..sparse import CSRMatrix, sparse_linear, topk_sparsify


class SparseLinear(nn.Module):
    """y = x W^T + b with W a `CSRMatrix` of shape (out_features, in_features), for inference.

    Inputs of shape (..., in_features) in any float dtype; the product runs in float32 (float64
    for float64 weights) in htcore's kernels and is returned in the input's dtype. No autograd:
    outputs carry no gradient. ``bias`` (optional) is kept as a float32 buffer.
    """

    bias: Optional[torch.Tensor]

    def __init__(self, weight: CSRMatrix, bias: Any = None):
        super().__init__()
        if not isinstance(weight, CSRMatrix):
            raise TypeError(f"weight must be a CSRMatrix, got {type(weight).__name__}")
        self.weight_csr = weight
        self.out_features, self.in_features = weight.shape
        if bias is not None:
            bias = torch.as_tensor(bias).detach().to("cpu", torch.float32).reshape(-1)
            if bias.shape[0] != self.out_features:
                raise ValueError(f"bias has {bias.shape[0]} entries but weight has {self.out_features} rows")
        self.register_buffer("bias", bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, keep: Optional[float] = None, *, k: Optional[int] = None,
                   mode: str = "matrix", value_dtype: Any = np.float32) -> "SparseLinear":
        """Keep the top-k |w| of ``linear.weight`` (see `htcore.topk_sparsify` for ``keep``, ``k``
        and ``mode``); values stored as ``value_dtype`` (float32, or float16 to halve them)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().to("cpu", torch.float32).numpy()
        csr = topk_sparsify(w, keep, k=k, mode=mode).astype(value_dtype=value_dtype)
        return cls(csr, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, expected {self.in_features}")
        lead = x.shape[:-1]
        flat = x.detach().reshape(-1, self.in_features).cpu().numpy()
        bias = None if self.bias is None else self.bias.numpy()
        y = sparse_linear(flat, self.weight_csr, bias=bias)
        return torch.from_numpy(y).to(dtype=x.dtype, device=x.device).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        w = self.weight_csr
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nnz={w.nnz}, density={w.density:.4g}")
