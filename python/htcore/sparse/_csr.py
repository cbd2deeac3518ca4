"""`CSRMatrix`: htcore's compressed sparse row matrix, the output of top-k selection and the input
of the runtime kernels.

Storage (chosen for CPU bandwidth; docs/performance.md, "CSR kernels"):
- ``indptr``: int32, or int64 when nnz >= 2**31; length rows + 1, starts at 0, non-decreasing.
- ``indices``: column of each stored value; uint16 when the matrix has <= 65536 columns, else int32
  (int64 accepted and narrowed). Within a row, columns are strictly increasing.
- ``data``: float32, float64 or float16 values; or uint8 codes into a per-matrix float32
  ``codebook`` of r <= 256 levels (value = codebook[code]). int8 codes are accepted when
  non-negative and kept as a zero-copy uint8 view.

Products (`CSRMatrix.matvec`, `CSRMatrix.matmat`, ``A @ x``, `sparse_linear`) run in the C++
kernels: rows are split between threads by nnz, the GIL is released, and every output element
is summed by one thread in a fixed order, so results are bitwise identical at any thread count.
Threads: each thread gets at least 8,192 multiply-adds ((nnz + rows) * batch), so a product below
twice that (an SpMV with < ~16k stored values) runs on the calling thread with no fork/join; larger
ones use up to `htcore.get_num_threads()` threads of htcore's own pool, in chunks of rows: the
calling thread takes chunks itself and waits only for chunks another thread has started, so a
worker that is asleep, or whose core another process holds, does not hold the product up (on a
busy machine it degrades towards the one-thread time instead of waiting a scheduler time slice;
benchmarks/results/contention.md).
float16 and codebook values are accumulated in float32; float64 matrices compute in float64.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np

from .._core import Activation, csr_spmm
from .._validation import as_float_array

_INDPTR_DTYPES = (np.int32, np.int64)
_INDEX_DTYPES = (np.uint16, np.int32)
_VALUE_DTYPES = (np.float16, np.float32, np.float64)
_CODE_DTYPES = (np.uint8, np.int8)
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)  # built once: dtype runs on every product
ACTIVATIONS = ("relu", "gelu", "tanh")
ACTIVATION_CODES = dict(Activation.__members__)  # "none" and ACTIVATIONS -> kernel enum


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
    codebook : array_like, optional
        float32 levels (1 to 256 of them, finite). When given, ``data`` holds uint8 (or
        non-negative int8) codes, each < len(codebook), and the value of an entry is
        ``codebook[code]``.
    index_dtype, indptr_dtype : dtype, optional
        Keep column indices as uint16 or int32 and row pointers as int32 or int64. Default: the
        narrowest that fits (`index_dtype_for`, `indptr_dtype_for`).
    check : bool
        Validate the arrays (default). Pass False only for arrays htcore itself produced: the
        kernels still check the row pointers (O(rows): start 0, non-decreasing, end nnz) and
        raise ValueError, but they trust column indices and codes (O(nnz) to check), so an
        out-of-range column in an unchecked matrix reads out of bounds. Arrays are shared, not
        copied, where possible: do not modify them after construction.

    Raises ValueError naming the inconsistent array when the CSR structure is invalid, TypeError
    for unsupported dtypes.
    """

    __slots__ = ("data", "indices", "indptr", "shape", "codebook")
    codebook: Optional[np.ndarray]

    def __init__(
        self,
        data: Any,
        indices: Any,
        indptr: Any,
        shape: tuple[int, int],
        *,
        codebook: Any = None,
        index_dtype: Any = None,
        indptr_dtype: Any = None,
        check: bool = True,
    ):
        rows, cols = (int(s) for s in shape)
        if rows < 0 or cols < 0:
            raise ValueError(f"shape must be non-negative, got {shape}")
        self.shape = (rows, cols)
        data = np.asarray(data)
        if codebook is not None:
            self.codebook = _check_codebook(codebook)
            data = _as_codes(data, check)
        else:
            self.codebook = None
            if data.dtype not in _VALUE_DTYPES:
                if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
                    raise TypeError(f"data must be real numeric, got dtype {data.dtype}")
                data = data.astype(np.float32)
        self.data = np.ascontiguousarray(data)
        indptr = np.asarray(indptr)
        indices = np.asarray(indices)
        if check:
            _check_structure(self.data, indices, indptr, self.shape)
            if self.codebook is not None and self.nnz and int(self.data.max()) >= len(self.codebook):
                raise ValueError(f"codes must be < len(codebook) = {len(self.codebook)}, got {int(self.data.max())}")
        nnz = self.data.shape[0]
        self.indptr = np.ascontiguousarray(indptr, dtype=_choose(indptr_dtype, indptr_dtype_for(nnz), _INDPTR_DTYPES, "indptr_dtype"))
        self.indices = np.ascontiguousarray(indices, dtype=_choose(index_dtype, index_dtype_for(cols), _INDEX_DTYPES, "index_dtype"))
        if self.indptr.dtype == np.int32 and nnz >= 2**31:
            raise ValueError(f"indptr_dtype int32 cannot address nnz = {nnz}; use int64")
        if self.indices.dtype == np.uint16 and cols > 65536:
            raise ValueError(f"index_dtype uint16 cannot address {cols} columns; use int32")

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
        """Bytes held by the arrays (including the codebook)."""
        extra = self.codebook.nbytes if self.codebook is not None else 0
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes + extra)

    @property
    def dtype(self) -> np.dtype:
        """dtype of the values as computed with: float32 for codebook and float16 storage, else data's."""
        return _FLOAT64 if self.data.dtype == _FLOAT64 else _FLOAT32

    def values(self) -> np.ndarray:
        """The stored values as floats (codebook decoded to float32; other storage returned as is)."""
        return self.codebook[self.data] if self.codebook is not None else self.data

    def todense(self) -> np.ndarray:
        """Dense array with the values' dtype (float32 for codebook matrices)."""
        values = self.values()
        out = np.zeros(self.shape, dtype=values.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices.astype(np.intp)] = values
        return out

    def astype(self, *, index_dtype: Any = None, value_dtype: Any = None) -> "CSRMatrix":
        """This matrix with other storage dtypes (arrays that do not change are shared, not copied).

        ``index_dtype``: uint16 (cols <= 65536) or int32. ``value_dtype``: float16, float32 or
        float64 (a codebook matrix is decoded); a value beyond its range raises ValueError. None
        keeps the current storage.
        """
        data, codebook = self.data, self.codebook
        if value_dtype is not None:
            value_dtype = np.dtype(value_dtype)
            if value_dtype not in _VALUE_DTYPES:
                raise TypeError(f"value_dtype must be float16, float32 or float64, got {value_dtype}")
            values = self.values()
            peak, largest = float(np.abs(values).max()) if values.size else 0.0, float(np.finfo(value_dtype).max)
            if peak > largest:  # would store +-inf, and every product through it gives inf/NaN
                raise ValueError(f"value_dtype={value_dtype.name} cannot hold values up to {peak:.4g} "
                                 f"(its largest is {largest:.4g}); keep {values.dtype.name}")
            data, codebook = values.astype(value_dtype, copy=False), None
        return CSRMatrix(data, self.indices, self.indptr, self.shape, codebook=codebook,
                         index_dtype=self.indices.dtype if index_dtype is None else index_dtype,
                         indptr_dtype=self.indptr.dtype, check=False)

    def to_scipy(self):
        """A ``scipy.sparse.csr_matrix`` sharing nothing with this one (scipy wants signed indices
        and has no float16: float16 and codebook values become float32)."""
        import scipy.sparse as sp

        data = self.values().astype(self.dtype)
        return sp.csr_matrix((data, self.indices.astype(np.int32), self.indptr.copy()), shape=self.shape)

    @classmethod
    def from_scipy(cls, matrix: Any) -> "CSRMatrix":
        """From any scipy sparse matrix or array (converted to canonical CSR first)."""
        csr = matrix.tocsr()
        csr.sum_duplicates()
        csr.sort_indices()
        return cls(csr.data, csr.indices, csr.indptr, csr.shape)

    def to_torch(self):
        """A ``torch.sparse_csr_tensor``. torch wants int32 or int64 indices (one dtype for both
        arrays): int32 indices with int32 row pointers and float values are shared with torch
        (zero-copy); uint16 indices are widened, codebook values decoded to float32. Prefer int32
        for torch: its CPU kernels convert int64 indices on every call."""
        import torch

        index = np.int64 if self.indptr.dtype == np.int64 else np.int32
        arrays = [self.indptr, self.indices.astype(index, copy=False), self.values()]
        crow, col, values = (torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays)
        with warnings.catch_warnings():  # "sparse CSR support is in beta", once per process
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(crow, col, values, size=self.shape, check_invariants=False)

    @classmethod
    def from_torch(cls, tensor: Any) -> "CSRMatrix":
        """From a 2-D torch tensor: sparse CSR (zero-copy for int32 indices and float32/16/64 values
        on the CPU), or sparse COO / dense (converted with ``to_sparse_csr``, zeros dropped).
        bfloat16 values become float32."""
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
            raise TypeError(f"tensor must be a 2-D torch.Tensor, got {type(tensor).__name__}")
        t = tensor.detach().cpu()
        if t.layout != torch.sparse_csr:
            t = t.to_sparse_csr()
        values = t.values()
        if values.dtype not in (torch.float16, torch.float32, torch.float64):
            values = values.to(torch.float32)
        indices = t.col_indices().numpy()
        rows, cols = t.shape
        return cls(values.numpy(), indices, t.crow_indices().numpy(), (rows, cols),
                   index_dtype=np.int32 if indices.dtype == np.int32 else None)

    # ---- products ----
    def matvec(self, x: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """y = A x for a vector x of length cols. float32 (float64 for float64 matrices);
        ``out`` (C-contiguous, that dtype, shape (rows,)) receives the result if given."""
        x = as_kernel_array(x, "x", 1, self.dtype)
        if x.shape[0] != self.shape[1]:
            raise ValueError(f"x has {x.shape[0]} entries but the matrix has {self.shape[1]} columns")
        return self.product_into(x, 1, None, "none", _output(out, (self.shape[0],), self.dtype, x), 1, 1)

    def matmat(self, X: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Y = A X for X of shape (cols, k); Y has shape (rows, k). ``out`` as in `matvec`."""
        X = as_kernel_array(X, "X", 2, self.dtype)
        if X.shape[0] != self.shape[1]:
            raise ValueError(f"X has {X.shape[0]} rows but the matrix has {self.shape[1]} columns")
        k = X.shape[1]
        return self.product_into(X, k, None, "none", _output(out, (self.shape[0], k), self.dtype, X), k, 1)

    def __matmul__(self, other: Any) -> np.ndarray:
        return self.matvec(other) if np.ndim(other) == 1 else self.matmat(other)

    def product_into(self, x: np.ndarray, k: int, bias: Optional[np.ndarray], activation: str, out: np.ndarray,
                 row_stride: int, col_stride: int, batch_major: bool = False) -> np.ndarray:
        """The raw product for runtimes that manage their own buffers (no checks beyond the kernel's):
        out[i*row_stride + j*col_stride] = act((A X)[i, j] + bias[i]) for a C-contiguous X of shape
        (cols, k) in this matrix's compute dtype, or X^T of shape (k, cols) when ``batch_major``.
        ``activation`` is "none" or one of `ACTIVATIONS`; ``out`` must hold rows * k elements.
        Returns ``out``."""
        # Positional on purpose: this is every product's fixed cost, and pybind11 matches keywords
        # ~1.3 us slower per call. Order: the `csr_spmm` stub names each argument.
        csr_spmm(self.indptr, self.indices, self.data, self.codebook, self.shape[0], self.shape[1],
                       x, k, batch_major, bias, ACTIVATION_CODES[activation], out, row_stride, col_stride)
        return out

    def __repr__(self) -> str:
        values = f"uint8 codes, codebook of {len(self.codebook)}" if self.codebook is not None else str(self.data.dtype)
        return (f"CSRMatrix(shape={self.shape}, nnz={self.nnz}, density={self.density:.4g}, "
                f"data={values}, indices={self.indices.dtype}, indptr={self.indptr.dtype})")


def sparse_linear(X: Any, A: CSRMatrix, bias: Any = None, activation: Optional[str] = None) -> np.ndarray:
    """torch's Linear convention with a sparse weight: ``act(X A^T + bias)``.

    Parameters
    ----------
    X : array_like, shape (batch, in_features) or (in_features,)
    A : CSRMatrix, shape (out_features, in_features)
    bias : array_like, shape (out_features,), optional
    activation : None, "relu", "gelu" or "tanh", fused into the kernel. "gelu" is the exact form
        x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))), torch's default (``approximate="none"``).

    Returns float32 (float64 for a float64 matrix) of shape (batch, out_features), or
    (out_features,) for a 1-D X.
    """
    if not isinstance(A, CSRMatrix):
        raise TypeError(f"A must be a CSRMatrix, got {type(A).__name__}")
    X = as_kernel_array(X, "X", (1, 2), A.dtype)
    out_features, in_features = A.shape
    if X.shape[-1] != in_features:
        raise ValueError(f"X has {X.shape[-1]} features but A has {in_features} columns (A is (out, in) = {A.shape})")
    if bias is not None:
        bias = as_kernel_array(bias, "bias", 1, A.dtype)
        if bias.shape[0] != out_features:
            raise ValueError(f"bias has {bias.shape[0]} entries but A has {out_features} rows")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")
    act = activation or "none"
    if X.ndim == 1:
        return A.product_into(X, 1, bias, act, np.empty(out_features, A.dtype), 1, 1)
    batch = X.shape[0]
    out = np.empty((batch, out_features), A.dtype)
    return A.product_into(X, batch, bias, act, out, 1, out_features, batch_major=True)


def as_kernel_array(x: Any, name: str, ndim: Any, dtype: np.dtype | type) -> np.ndarray:
    """``x`` as a C-contiguous array of the kernel's ``dtype`` with ``ndim`` dimensions (an int, a tuple
    of allowed ones, or None for any), ready for `CSRMatrix.product_into`. Arrays already in that form pass
    straight through (this runs on every product, so it must cost far less than a small SpMV);
    the kernels themselves refuse NaN and Inf."""
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous and (ndim is None or x.ndim in dims):
        return x
    return as_float_array(x, name, ndim=ndim, dtype=dtype, finite=False)


def _output(out: Optional[np.ndarray], shape: tuple[int, ...], dtype: np.dtype, source: np.ndarray) -> np.ndarray:
    """``out`` checked for the kernel (or a new array)."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != shape:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be a {dtype} array of shape {shape}, got {got}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be C-contiguous and writeable")
    if np.may_share_memory(out, source):
        raise ValueError("out must not overlap the input")
    return out


def _choose(requested: Any, default: np.dtype, allowed: tuple, name: str) -> np.dtype:
    if requested is None:
        return default
    dtype = np.dtype(requested)
    if dtype not in allowed:
        raise TypeError(f"{name} must be one of {[np.dtype(a).name for a in allowed]}, got {dtype}")
    return dtype


def _check_codebook(codebook: Any) -> np.ndarray:
    cb = np.asarray(codebook)
    if not np.issubdtype(cb.dtype, np.floating) and not np.issubdtype(cb.dtype, np.integer):
        raise TypeError(f"codebook must be a float array, got dtype {cb.dtype}")
    cb = np.ascontiguousarray(cb, dtype=np.float32)
    if cb.ndim != 1 or not 1 <= cb.shape[0] <= 256:
        raise ValueError(f"codebook must be 1-D with 1 to 256 levels, got shape {cb.shape}")
    if not np.isfinite(cb).all():
        raise ValueError("codebook contains non-finite values")
    return cb


def _as_codes(data: np.ndarray, check: bool) -> np.ndarray:
    if data.dtype not in _CODE_DTYPES:
        raise TypeError(f"with a codebook, data must hold uint8 or int8 codes, got dtype {data.dtype}")
    if data.dtype == np.int8:
        if check and data.size and int(data.min()) < 0:
            raise ValueError(f"int8 codes must be non-negative, got {int(data.min())}")
        data = np.ascontiguousarray(data).view(np.uint8)
    return data


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
    # int64 differences: int32 ones wrap (50 - (-2**31 + 10) looks positive), unsigned ones never go negative (uint64 beyond int64 turns negative, so decreasing)
    steps = np.diff(indptr.astype(np.int64))
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
