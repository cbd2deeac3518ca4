"""One-dimensional k-means for the codebook of a sparse matrix's kept values (deterministic, no randomness)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_float_array, check_int

_KMEANS_MAX_ITER = 300


def kmeans_1d(values: Any, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """One-dimensional k-means with the deterministic quantile init described in the module docstring.

    Returns ``(codebook, assignment)``: the sorted distinct centres (float64, at most ``levels`` of
    them; empty clusters are dropped) and, per value, the index of its nearest centre (int64).
    """
    values = as_float_array(values, "values", ndim=1, dtype=np.float64)
    levels = check_int(levels, "levels", low=1)
    if values.size == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    centres = np.unique(np.quantile(values, (np.arange(levels) + 0.5) / levels))
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    for _ in range(_KMEANS_MAX_ITER):
        # nearest centre by the midpoints between sorted centres (exact for 1-D)
        assign_sorted = np.searchsorted((centres[1:] + centres[:-1]) / 2.0, sorted_vals, side="right")
        sums = np.bincount(assign_sorted, weights=sorted_vals, minlength=centres.size)
        counts = np.bincount(assign_sorted, minlength=centres.size)
        used = counts > 0
        new = sums[used] / counts[used]
        if new.size == centres.size and np.array_equal(new, centres):
            break
        centres = new
    assign_sorted = np.searchsorted((centres[1:] + centres[:-1]) / 2.0, sorted_vals, side="right")
    assignment = np.empty(values.size, np.int64)
    assignment[order] = assign_sorted
    return centres, assignment
