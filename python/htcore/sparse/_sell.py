"""SELL-8: a derived, read-only layout of a CSRMatrix for fast A x when rows are short (internal).

Rows are sorted by length (longest first) and cut into slices of 8; a slice stores its rows'
values column-major, padded to its longest row, so the kernel computes eight rows per SIMD step
with no per-row loop exit or horizontal sum (cpp/sell.hpp has the details). It is built once from
a CSRMatrix and never follows later changes to that matrix's arrays: use it only where the
weights are immutable (the torch-free runtime). Not stored in files; rebuilt on load.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .._core import sell_build, sell_spmv
from ._csr import ACTIVATION_CODES, CSRMatrix

#: Largest mean row length (nnz / rows) for which SELL-8 is used: past it SELL-8 stops beating the
#: CSR kernel once the matrix leaves the cache (docs/performance.md, "SELL-8").
MAX_MEAN_ROW_LENGTH = 128


def _sell_values(A: CSRMatrix) -> bool:
    """float32 or float16 values without a codebook: the value types the SELL-8 kernel reads."""
    return A.codebook is None and A.data.dtype in (np.float32, np.float16)


def sell_eligible(A: CSRMatrix) -> bool:
    """True when A has float32/float16 values (no codebook) and at most MAX_MEAN_ROW_LENGTH values per row."""
    return _sell_values(A) and A.nnz <= MAX_MEAN_ROW_LENGTH * A.shape[0]


class SellMatrix:
    """SELL-8 copy of a float32/float16 CSRMatrix (values and indices keep their dtypes).

    ``perm`` (int32, rows): original row of each lane; ``slice_ptr`` (int64, ceil(rows / 8) + 1):
    start of each slice in ``indices``/``data``, which hold 8 x (width of the slice) entries per
    slice, padding included. All arrays are read-only.
    """

    __slots__ = ("shape", "perm", "slice_ptr", "indices", "data")

    def __init__(self, A: CSRMatrix):
        if not isinstance(A, CSRMatrix):
            raise TypeError(f"A must be a CSRMatrix, got {type(A).__name__}")
        if not _sell_values(A):
            raise TypeError(f"SELL-8 needs float32 or float16 values without a codebook, got {A.data.dtype}"
                            + (" codes" if A.codebook is not None else ""))
        self.shape = A.shape
        layout = sell_build(indptr=A.indptr, indices=A.indices, data=A.data, rows=A.shape[0], cols=A.shape[1])
        arrays = (layout.perm, layout.slice_ptr, layout.indices, layout.data)
        for a in arrays:
            a.flags.writeable = False
        self.perm, self.slice_ptr, self.indices, self.data = arrays

    @property
    def nbytes(self) -> int:
        """Bytes of the layout's arrays (padding and row order included)."""
        return sum(a.nbytes for a in (self.perm, self.slice_ptr, self.indices, self.data))

    def matvec_into(self, x: np.ndarray, bias: Optional[np.ndarray], activation: str, out: np.ndarray) -> np.ndarray:
        """out = act(A x + bias) for C-contiguous float32 x (cols elements), bias (rows, or None) and
        out (rows); ``activation`` as in `CSRMatrix.product_into`. No checks beyond the kernel's. Returns ``out``."""
        # Positional on purpose, as in `CSRMatrix.product_into` (the batch-1 path's fixed cost).
        sell_spmv(self.perm, self.slice_ptr, self.indices, self.data, self.shape[0], self.shape[1],
                        x, bias, ACTIVATION_CODES[activation], out)
        return out
