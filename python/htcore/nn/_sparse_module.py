"""What `SparseLinear` and `SparseConv2d` share: a `CSRMatrix` weight of shape (out, ...) with an
optional float32 bias buffer, built from a dense torch weight by top-k, and the trip from a torch
tensor to htcore's numpy kernels and back (no autograd)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..sparse import CSRMatrix, topk_sparsify


class SparseModule(nn.Module):
    """Base of the sparse inference modules: ``weight_csr`` (out rows) and the ``bias`` buffer."""

    bias: Optional[torch.Tensor]

    def __init__(self, weight: CSRMatrix, bias: Any = None):
        super().__init__()
        if not isinstance(weight, CSRMatrix):
            raise TypeError(f"weight must be a CSRMatrix, got {type(weight).__name__}")
        self.weight_csr = weight
        if bias is not None:
            bias = torch.as_tensor(bias).detach().to("cpu", torch.float32).reshape(-1)
            if bias.shape[0] != weight.shape[0]:
                raise ValueError(f"bias has {bias.shape[0]} entries but weight has {weight.shape[0]} rows")
        self.register_buffer("bias", bias)

    @staticmethod
    def _topk(weight: torch.Tensor, keep: Optional[float], k: Optional[int], mode: str, value_dtype: Any) -> CSRMatrix:
        """The top-k |w| of a dense torch weight seen as the matrix (out, everything else)."""
        w = weight.detach().to("cpu", torch.float32).reshape(weight.shape[0], -1).numpy()
        return topk_sparsify(w, keep, k=k, mode=mode).astype(value_dtype=value_dtype)

    def _bias_array(self) -> Optional[np.ndarray]:
        return None if self.bias is None else self.bias.numpy()

    @staticmethod
    def _to_numpy(x: torch.Tensor) -> np.ndarray:
        """``x`` detached on the CPU as numpy (bfloat16, which numpy lacks, as float32)."""
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()

    @staticmethod
    def _like(y: np.ndarray, x: torch.Tensor) -> torch.Tensor:
        """The kernel's output ``y`` as a tensor in ``x``'s dtype and device."""
        return torch.from_numpy(y).to(dtype=x.dtype, device=x.device)

    def _csr_repr(self) -> str:
        w = self.weight_csr
        return f"bias={self.bias is not None}, nnz={w.nnz}, density={w.density:.4g}"
