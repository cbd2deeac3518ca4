"""What `SparseLinear` and `SparseConv2d` share: a CSR weight of shape (out, ...) held as module
state, an optional float32 bias buffer, top-k construction from a dense torch weight, and the trip
from a torch tensor to htcore's numpy kernels and back (no autograd).

The weight is real module state, so ``state_dict()`` / ``torch.save`` / ``torch.load(weights_only=True)``
/ ``load_state_dict`` carry it: four buffers hold the `CSRMatrix` arrays (``weight_data``,
``weight_indices``, ``weight_indptr`` and, for codebook matrices, ``weight_codebook``) and
``weight_shape`` holds its (rows, cols). `weight_csr` is a `CSRMatrix` view of those buffers (no
copy). ``load_state_dict`` replaces the weight by the incoming arrays (any nnz), after validating
them, and refuses a weight of another shape or an invalid CSR structure with a message naming the key.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..sparse import CSRMatrix, topk_sparsify

_ARRAYS = ("data", "indices", "indptr", "codebook")  # weight_<name> buffers, in CSRMatrix's argument order


class SparseModule(nn.Module):
    """Base of the sparse inference modules: the CSR weight buffers (see the module docstring) and ``bias``."""

    bias: Optional[torch.Tensor]
    weight_data: torch.Tensor
    weight_indices: torch.Tensor
    weight_indptr: torch.Tensor
    weight_codebook: Optional[torch.Tensor]
    weight_shape: torch.Tensor

    def __init__(self, weight: CSRMatrix, bias: Any = None):
        super().__init__()
        if not isinstance(weight, CSRMatrix):
            raise TypeError(f"weight must be a CSRMatrix, got {type(weight).__name__}")
        for name, array in zip(_ARRAYS, (weight.data, weight.indices, weight.indptr, weight.codebook)):
            self.register_buffer(f"weight_{name}", None if array is None else _tensor(array))
        self.register_buffer("weight_shape", torch.tensor(weight.shape, dtype=torch.int64))
        if bias is not None:
            bias = torch.as_tensor(bias).detach().to("cpu", torch.float32).reshape(-1)
            if bias.shape[0] != weight.shape[0]:
                raise ValueError(f"bias has {bias.shape[0]} entries but weight has {weight.shape[0]} rows")
        self.register_buffer("bias", bias)

    @property
    def weight_csr(self) -> CSRMatrix:
        """The weight as a `CSRMatrix` sharing the buffers' memory (rows = output features/channels)."""
        arrays = [None if t is None else t.detach().cpu().numpy() for t in self._weight_tensors()]
        data, indices, indptr, codebook = arrays
        assert indices is not None and indptr is not None
        return CSRMatrix(data, indices, indptr, self._csr_shape(), codebook=codebook, index_dtype=indices.dtype,
                         indptr_dtype=indptr.dtype, check=False)

    def to_dense(self) -> torch.Tensor:
        """The weight as a dense float32 tensor of the dense module's shape (zeros where nothing is kept)."""
        return torch.from_numpy(self.weight_csr.todense().astype(np.float32)).reshape(self.dense_weight_shape)

    @property
    def dense_weight_shape(self) -> tuple[int, ...]:
        """Shape of the equivalent dense torch weight (the CSR shape; subclasses refine it)."""
        return tuple(int(s) for s in self.weight_shape)

    def _csr_shape(self) -> tuple[int, int]:
        rows, cols = (int(s) for s in self.weight_shape)
        return rows, cols

    def _weight_tensors(self) -> list[Optional[torch.Tensor]]:
        return [getattr(self, f"weight_{name}") for name in _ARRAYS]

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        """Replace the CSR buffers by the incoming ones (their nnz may differ) once they form a valid
        matrix of this module's shape; otherwise record why, which makes ``load_state_dict`` raise."""
        if prefix + "weight_data" in state_dict:
            incoming = {name: state_dict.get(f"{prefix}weight_{name}") for name in (*_ARRAYS, "shape")}
            try:
                weight = _checked_weight(incoming, self._csr_shape())
            except (TypeError, ValueError) as exc:
                error_msgs.append(f"{prefix}weight_*: refused ({exc})")
                return
            for name, array in zip(_ARRAYS, (weight.data, weight.indices, weight.indptr, weight.codebook)):
                setattr(self, f"weight_{name}", None if array is None else _tensor(array))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @staticmethod
    def _topk(weight: torch.Tensor, keep: Optional[float], k: Optional[int], mode: str, value_dtype: Any) -> CSRMatrix:
        """The top-k |w| of a dense torch weight seen as the matrix (out, everything else)."""
        w = weight.detach().to("cpu", torch.float32).reshape(weight.shape[0], -1).numpy()
        return topk_sparsify(w, keep, k=k, mode=mode).astype(value_dtype=value_dtype)

    def _bias_array(self) -> Optional[np.ndarray]:
        return None if self.bias is None else self.bias.numpy()

    @staticmethod
    def _to_numpy(x: torch.Tensor) -> np.ndarray:
        """``x`` detached on the CPU as numpy (bfloat16, which numpy lacks, as float32). Like ``nn.Linear``,
        refuses a non-floating input rather than returning integers."""
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            got = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"input must be a floating-point torch.Tensor, got {got}")
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()

    @staticmethod
    def _like(y: np.ndarray, x: torch.Tensor) -> torch.Tensor:
        """The kernel's output ``y`` as a tensor in ``x``'s dtype and device."""
        return torch.from_numpy(y).to(dtype=x.dtype, device=x.device)

    def _csr_repr(self) -> str:
        w = self.weight_csr
        return f"bias={self.bias is not None}, nnz={w.nnz}, density={w.density:.4g}"


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory (a copy when it is read-only, which torch cannot share)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _checked_weight(incoming: dict, shape: tuple[int, int]) -> CSRMatrix:
    """The CSR arrays of a state_dict as a validated `CSRMatrix` of ``shape``."""
    for name in ("indices", "indptr", "shape"):
        if incoming[name] is None:
            raise ValueError(f"weight_{name} is missing")
    arrays = {name: None if t is None else torch.as_tensor(t).detach().cpu().numpy() for name, t in incoming.items()}
    got = tuple(int(s) for s in np.asarray(arrays["shape"]).reshape(-1))
    if got != shape:
        raise ValueError(f"the weight has shape {got} but this module's is {shape}")
    return CSRMatrix(arrays["data"], arrays["indices"], arrays["indptr"], shape, codebook=arrays["codebook"])
