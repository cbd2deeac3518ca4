"""Foundation: htcore's sparse matrices and the selection that makes them.

- `CSRMatrix` and `sparse_linear`: validated CSR storage (uint16/int32 columns, float32/float16/
  float64 values or uint8 codebook codes) and the C++ SpMV/SpMM kernels with fused bias and activation.
- `sparse_conv2d`: torch's conv2d with a CSR weight (the row-major flattening of the
  (out, in / groups, kh, kw) kernel), bias and activation fused.
- `SellMatrix`: SELL-8, a derived read-only layout for batch-1 products on short rows (the runtime
  builds it; `sell_eligible` says when).
- Top-k: `topk_sparsify`, `sparsify_global`, `topk_threshold`, `compressibility_curve`, `k_for_keep`
  (exact, ties to the lowest flat index; docs/conventions.md, "Keep fraction and ties").
"""
from __future__ import annotations

from ._conv import sparse_conv2d
from ._csr import ACTIVATIONS, CSRMatrix, as_kernel_array, index_dtype_for, indptr_dtype_for, sparse_linear
from ._sell import MAX_MEAN_ROW_LENGTH, SellMatrix, sell_eligible
from ._topk import (
    CompressibilityCurve,
    TopkThreshold,
    compressibility_curve,
    k_for_keep,
    relative_errors,
    sparsify_global,
    topk_sparsify,
    topk_threshold,
)

__all__ = [
    "ACTIVATIONS",
    "CSRMatrix",
    "CompressibilityCurve",
    "MAX_MEAN_ROW_LENGTH",
    "SellMatrix",
    "TopkThreshold",
    "as_kernel_array",
    "compressibility_curve",
    "index_dtype_for",
    "indptr_dtype_for",
    "k_for_keep",
    "relative_errors",
    "sell_eligible",
    "sparse_conv2d",
    "sparse_linear",
    "sparsify_global",
    "topk_sparsify",
    "topk_threshold",
]
