"""Memory layouts the fuzz tests feed to the entry points: the same values through other strides."""
from __future__ import annotations

import numpy as np

LAYOUTS = ("contiguous", "strided", "negative_stride", "readonly", "fortran")


def with_layout(a: np.ndarray, how: str) -> np.ndarray:
    """``a``'s values (ndim >= 1) through the memory layout ``how`` (one of LAYOUTS)."""
    if how == "contiguous":
        return np.ascontiguousarray(a)
    if how == "strided":  # every other element of the last axis of a buffer twice as wide
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if how == "negative_stride":
        flip = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[flip])[flip]
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "fortran":
        return np.asfortranarray(a)
    raise ValueError(f"unknown layout {how!r}")
