"""`CSRMatrix`: htcore's compressed sparse row matrix, the output of top-k selection and the input
of the runtime kernels.

Storage (chosen for CPU bandwidth, see DESIGN.md "Runtime"):
- ``indptr``: int32, or int64 when nnz >= 2**31; length rows + 1, starts at 0, non-decreasing.
- ``indices``: column of each stored value; uint16 when the matrix has <= 65536 columns, else int32
  (int64 accepted and narrowed). Within a row, columns are strictly increasing.
- ``data``: float32, float64 or float16 values.
"""
from __future__ import annotations

from typing import Any

import numpy as np

_INDPTR_DTYPES = (np.int32, np.int64)
_VALUE_DTYPES = (np.float16, np.float32, np.float64)


def index_dtype_for(n_cols: int) -> np.dtype:
    """The narrowest column-index dtype for a matrix with ``n_cols`` columns."""
    return np.dtype(np.uint16) if n_cols <= 65536 else np.dtype(np.int32)


def indptr_dtype_for(nnz: int) -> np.dtype:
    """int32 row pointers unless ``nnz`` needs int64."""
    return np.dtype(np.int32) if nnz < 2**31 else np.dtype(np.int64)


class CSRMatrix:
    """A compressed sparse row matrix with validated, C-contiguous arrays.

    Parameters
    ----------
    data, indices, indptr : array_like
        Standard CSR arrays (see the module docstring for the dtypes kept).
    shape : (rows, cols)
    check : bool
        Validate the arrays (default). Pass False only for arrays htcore itself produced.

    Raises ValueError naming the inconsistent array when the CSR structure is invalid.
    """

    __slots__ = ("data", "indices", "indptr", "shape")

    def __init__(self, data: Any, indices: Any, indptr: Any, shape: tuple[int, int], *, check: bool = True):
        rows, cols = (int(s) for s in shape)
        if rows < 0 or cols < 0:
            raise ValueError(f"shape must be non-negative, got {shape}")
        self.shape = (rows, cols)
        data = np.asarray(data)
        if data.dtype not in _VALUE_DTYPES:
            if check and not np.issubdtype(data.dtype, np.number):
                raise TypeError(f"data must be numeric, got dtype {data.dtype}")
            data = data.astype(np.float32)
        self.data = np.ascontiguousarray(data)
        indptr = np.asarray(indptr)
        indices = np.asarray(indices)
        if check:
            _check_structure(self.data, indices, indptr, self.shape)
        nnz = self.data.shape[0]
        self.indptr = np.ascontiguousarray(indptr, dtype=indptr_dtype_for(nnz))
        self.indices = np.ascontiguousarray(indices, dtype=index_dtype_for(cols))

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    @property
    def density(self) -> float:
        """nnz / (rows * cols); 0 for an empty shape."""
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes held by the three arrays."""
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)

    def todense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices.astype(np.intp)] = self.data
        return out

    def to_scipy(self):
        """A ``scipy.sparse.csr_matrix`` sharing nothing with this one (scipy wants signed indices)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.data.copy(), self.indices.astype(np.int32), self.indptr.copy()), shape=self.shape)

    @classmethod
    def from_scipy(cls, matrix: Any) -> "CSRMatrix":
        """From any scipy sparse matrix or array (converted to canonical CSR first)."""
        csr = matrix.tocsr()
        csr.sum_duplicates()
        csr.sort_indices()
        return cls(csr.data, csr.indices, csr.indptr, csr.shape)

    def __repr__(self) -> str:
        return (f"CSRMatrix(shape={self.shape}, nnz={self.nnz}, density={self.density:.4g}, "
                f"data={self.data.dtype}, indices={self.indices.dtype}, indptr={self.indptr.dtype})")


def _check_structure(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> None:
    rows, cols = shape
    if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1:
        raise ValueError("data, indices and indptr must be 1-D")
    if not np.issubdtype(indices.dtype, np.integer) or not np.issubdtype(indptr.dtype, np.integer):
        raise TypeError(f"indices and indptr must be integer arrays, got {indices.dtype} and {indptr.dtype}")
    if indptr.shape[0] != rows + 1:
        raise ValueError(f"indptr must have rows + 1 = {rows + 1} entries, got {indptr.shape[0]}")
    nnz = data.shape[0]
    if indices.shape[0] != nnz:
        raise ValueError(f"indices has {indices.shape[0]} entries but data has {nnz}")
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise ValueError(f"indptr must start at 0 and end at nnz = {nnz}, got {indptr[0]} and {indptr[-1]}")
    steps = np.diff(indptr)
    if (steps < 0).any():
        raise ValueError(f"indptr must be non-decreasing (first decrease at row {int(np.argmax(steps < 0))})")
    if nnz:
        if indices.min() < 0 or indices.max() >= cols:
            raise ValueError(f"indices must lie in [0, {cols}), got values in [{indices.min()}, {indices.max()}]")
        # strictly increasing columns within each row: a decrease is only allowed at a row start
        row_start = np.zeros(nnz, dtype=bool)
        row_start[indptr[:-1][steps > 0]] = True
        rising = np.empty(nnz, dtype=bool)
        rising[0] = True
        rising[1:] = np.diff(indices.astype(np.int64)) > 0
        if not (rising | row_start).all():
            raise ValueError("indices must be strictly increasing within each row (sorted, no duplicates)")
