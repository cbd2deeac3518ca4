"""Exact top-k magnitude sparsification, straight to CSR.

Compression in htcore keeps the k largest-magnitude entries of a weight matrix (Shin 2021:
heavy-tailed matrices lose little when their small entries go). The selection runs in C++ as a
radix select on the IEEE bits of |w| (a few O(n) passes, no sort, no dense mask, no index array
of the matrix's size) and writes CSR directly.

Conventions (shared with the rest of htcore):

- ``keep`` is a fraction in (0, 1]; ``k = ceil(keep * n)`` (see `k_for_keep`), where n is the
  size of the group the k applies to: the whole matrix, one row or one column.
- Ties at the threshold go to the lowest position: flat row-major index in "matrix" mode (and
  mapping order, then flat index, in `sparsify_global`), lowest column in "row" mode, lowest row
  in "col" mode. Results are therefore identical at any thread count.
- Values keep their dtype (float16, float32, float64; other real types become float32) and are
  copied bit for bit; -0.0 counts as |w| = 0. NaN or Inf raise ValueError.
- Relative error is the Frobenius ratio ||W - W_k||_F / ||W||_F (0 for an all-zero matrix).
  Sums of squares are accumulated as exact integers per exponent, so they do not depend on the
  thread count either.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .._core import (
    TopkCsr,
    TopkGroup,
    topk_csr_matrix,
    topk_csr_per_group,
    topk_csr_threshold,
    topk_k_for_rel_error,
    topk_select,
)
from .._validation import FLOAT_DTYPES, as_float_array, check_fraction, check_int
from ._csr import CSRMatrix

_MODES = ("matrix", "row", "col")
_SELECT_NOTHING = 2**64 - 1  # a threshold key above every finite |w|
_GROUPS = dict(TopkGroup.__members__)  # "row", "col" -> kernel enum


@dataclass(frozen=True)
class TopkThreshold:
    """The k-th largest |x| of an array.

    Attributes
    ----------
    value : float
        The k-th largest absolute value (exact; float16/32 values are represented exactly).
    k : int
    greater : int
        Entries with ``|x| > value`` (all kept by a top-k selection).
    ties : int
        Entries with ``|x| == value``; a top-k selection keeps the ``k - greater`` of them with
        the lowest flat index.
    """

    value: float
    k: int
    greater: int
    ties: int


@dataclass(frozen=True)
class CompressibilityCurve:
    """Relative Frobenius error of keeping the top-k entries, at several keep fractions.

    Attributes
    ----------
    keeps : ndarray of float64
        The keep fractions, in the order given.
    k : ndarray of int64
        Entries kept, ``k_for_keep(keep, W.size)``.
    rel_error : ndarray of float64
        ``||W - W_k||_F / ||W||_F`` (0 for an all-zero or empty W).
    """

    keeps: np.ndarray
    k: np.ndarray
    rel_error: np.ndarray


def k_for_keep(keep: float, n: int) -> int:
    """Entries kept out of ``n`` for a keep fraction: ``ceil(keep * n)``, at least 1 when
    ``keep > 0`` and ``n > 0``.

    A product within 1e-9 (relative) of an integer counts as that integer, so floating-point
    noise does not add an entry (``0.07 * 100`` is 7.000000000000001 in binary, and gives 7).
    """
    keep = check_fraction(keep, "keep", include_zero=True)
    n = check_int(n, "n", low=0)
    product = keep * n
    nearest = round(product)
    k = nearest if abs(product - nearest) <= 1e-9 * max(1.0, product) else math.ceil(product)
    if keep > 0 and n > 0:
        k = max(k, 1)
    return min(int(k), n)


def _as_weights(x: Any, name: str, ndim: int | None) -> np.ndarray:
    """A C-contiguous float16/32/64 array (float dtypes kept, others to float32). Finiteness is
    checked by the kernels during their first pass, at no extra cost."""
    arr = np.asarray(x)
    dtype = arr.dtype.type if arr.dtype in FLOAT_DTYPES else None
    return as_float_array(arr, name, ndim=ndim, dtype=dtype, finite=False)


def _csr(parts: TopkCsr, shape: tuple[int, int]) -> CSRMatrix:
    return CSRMatrix(parts.data, parts.indices, parts.indptr, shape, check=False)


def topk_sparsify(
    W: Any,
    keep: float | None = None,
    *,
    k: int | None = None,
    max_rel_error: float | None = None,
    mode: str = "matrix",
) -> CSRMatrix:
    """Keep the largest-magnitude entries of a 2-D array, as a `CSRMatrix`.

    Parameters
    ----------
    W : array_like, 2-D
        float16/32/64 keep their dtype; other real dtypes become float32. Any strides.
    keep : float in (0, 1], optional
        Fraction kept; ``k = ceil(keep * n)`` with n the group size (matrix, row or column).
    k : int, optional
        Entries kept per group, in [0, group size].
    max_rel_error : float in [0, 1], optional
        "matrix" mode only: keep the smallest k with ``||W - W_k||_F <= max_rel_error ||W||_F``.
    mode : {"matrix", "row", "col"}
        "matrix": k over the whole matrix (ties to the lowest flat index); "row": k in every row
        (ties to the lowest column; balanced rows for SpMV); "col": k in every column (ties to
        the lowest row).

    Exactly one of ``keep``, ``k`` and ``max_rel_error`` must be given. Raises ValueError for
    NaN/Inf entries, a 1-D or 3-D W, or out-of-range arguments.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    given = [name for name, v in (("keep", keep), ("k", k), ("max_rel_error", max_rel_error)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of keep, k and max_rel_error, got {given or 'none'}")
    if max_rel_error is not None and mode != "matrix":
        raise ValueError(f"max_rel_error is only supported with mode='matrix', got mode={mode!r}")
    W = _as_weights(W, "W", ndim=2)
    rows, cols = W.shape
    group = {"matrix": rows * cols, "row": cols, "col": rows}[mode]
    if keep is not None:
        k = k_for_keep(check_fraction(keep, "keep"), group)
    elif k is not None:
        k = check_int(k, "k", low=0, high=group)
    else:
        max_rel_error = check_fraction(max_rel_error, "max_rel_error", include_zero=True)
        k = topk_k_for_rel_error(arrays=[W], max_rel_error=max_rel_error, name="W")

    if mode != "matrix":
        return _csr(topk_csr_per_group(w=W, k=k, by=_GROUPS[mode], name="W"), W.shape)
    return _csr(topk_csr_matrix(w=W, k=k, name="W"), W.shape)


def sparsify_global(weights: Mapping[str, Any], keep: float | None = None, *, k: int | None = None) -> dict[str, CSRMatrix]:
    """Global magnitude pruning: one threshold across several 2-D arrays.

    Keeps the ``k`` (or ``ceil(keep * total size)``) largest |w| over all arrays together, ties
    going to the earliest array in mapping order, then the lowest flat index. Arrays of
    different float dtypes are compared exactly (in the widest dtype); each output keeps its
    array's dtype. Returns name -> `CSRMatrix`, in mapping order.
    """
    if (keep is None) == (k is None):
        raise ValueError("give exactly one of keep and k")
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping name -> 2-D array, got {type(weights).__name__}")
    arrays = {name: _as_weights(w, f"weights[{name!r}]", ndim=2) for name, w in weights.items()}
    if not arrays:
        return {}
    total = sum(a.size for a in arrays.values())
    k = k_for_keep(check_fraction(keep, "keep"), total) if keep is not None else check_int(k, "k", low=0, high=total)
    common = np.result_type(*arrays.values())
    # exact comparisons need one bit format: widening float16 -> float32 -> float64 is exact
    selected = [a if a.dtype == common else a.astype(common) for a in arrays.values()]
    try:  # also checks every entry is finite, even for k = 0
        selection = topk_select(arrays=selected, ks=[k] if k > 0 else [], sums=False, name="weights")
    except ValueError:
        for name, a in arrays.items():
            if not np.isfinite(a).all():
                raise ValueError(f"weights[{name!r}] contains non-finite values (NaN or Inf)") from None
        raise
    key, tie_budget = (selection.targets[0].key, k - selection.targets[0].greater) if k > 0 else (_SELECT_NOTHING, 0)
    out = {}
    for (name, original), a in zip(arrays.items(), selected):
        csr = topk_csr_threshold(w=a, key=key, tie_budget=tie_budget)
        data, indices, indptr, taken = csr.data, csr.indices, csr.indptr, csr.ties_taken
        tie_budget -= taken
        out[name] = CSRMatrix(data.astype(original.dtype, copy=False), indices, indptr, a.shape, check=False)
    return out


def topk_threshold(x: Any, k: int) -> TopkThreshold:
    """The k-th largest |x| of an array of any shape (flattened), and how many entries tie with it.

    ``k`` must be in [1, x.size]. Raises ValueError for NaN/Inf entries.
    """
    x = _as_weights(x, "x", ndim=None).reshape(-1)
    k = check_int(k, "k", low=1, high=x.size)
    target = topk_select(arrays=[x], ks=[k], sums=False, name="x").targets[0]
    return TopkThreshold(value=target.value, k=k, greater=target.greater, ties=target.ties)


def compressibility_curve(W: Any, keeps: Any) -> CompressibilityCurve:
    """Exact relative Frobenius error of keeping the top ``ceil(keep * n)`` entries, for each keep.

    ``W`` may have any shape (all entries compete, as in "matrix" mode); ``keeps`` is a 1-D
    sequence of fractions in [0, 1] (keep = 0 gives error 1). All thresholds are found together
    in a few passes over W, without sorting it.
    """
    W = _as_weights(W, "W", ndim=None).reshape(-1)
    keeps_arr = np.asarray(keeps, dtype=np.float64).reshape(-1)
    ks = np.array([k_for_keep(check_fraction(v, "keeps", include_zero=True), W.size) for v in keeps_arr], dtype=np.int64)
    positive = ks > 0
    selection = topk_select(arrays=[W], ks=ks[positive].tolist(), sums=True, name="W")
    total = selection.total_sq
    tail = np.full(ks.shape, total, dtype=np.float64)
    tail[positive] = [target.tail_sq for target in selection.targets]
    return CompressibilityCurve(keeps=keeps_arr, k=ks, rel_error=relative_errors(tail, total))


def relative_errors(tail_sq: np.ndarray, total_sq: float) -> np.ndarray:
    """||W - W_k||_F / ||W||_F from the sums of squares outside the top k and over all entries
    (0 for an all-zero W)."""
    tail_sq = np.asarray(tail_sq, dtype=np.float64)
    return np.sqrt(tail_sq / total_sq) if total_sq > 0 else np.zeros(tail_sq.shape)
