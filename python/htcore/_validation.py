"""Argument checks shared by the public functions. Messages name the argument and the value."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def as_float_array(
    x: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: type | np.dtype | None = None,
    allow_empty: bool = True,
    finite: bool = True,
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float array for the kernels.

    Accepts any real array-like (float16/32/64, integers, any strides). ``dtype`` forces the
    result dtype; otherwise float16 and integers become float32 and float64 stays float64.
    Raises TypeError for non-numeric or complex input, ValueError for wrong ndim, emptiness or
    non-finite values (when ``finite``).
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got a {arr.ndim}-D array of shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if dtype is None:
        dtype = np.float64 if arr.dtype == np.float64 else np.float32
    out: np.ndarray = np.ascontiguousarray(arr, dtype=dtype)
    if finite and out.size and not np.isfinite(out).all():
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")
    return out


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int in [low, high]; bools and floats are refused."""
    if type(value) is not int:  # a plain int skips the ABC check (~1 us; conv sizes are checked on every call)
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_pair(value: Any, name: str, *, low: int) -> tuple[int, int]:
    """An int or a pair of ints (a conv size: kernel, stride, padding, dilation), each >= ``low``, as (h, w)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
        return check_int(value[0], f"{name}[0]", low=low), check_int(value[1], f"{name}[1]", low=low)
    v = check_int(value, name, low=low)
    return v, v


def check_positive(value: Any, name: str) -> float:
    """``value`` as a positive finite float (a learning rate, a weight); anything else is a ValueError
    naming ``name``, bools and strings included."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)) or not 0 < float(value) < np.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_fraction(value: Any, name: str, *, include_zero: bool = False) -> float:
    """``value`` as a float in (0, 1] (or [0, 1] with ``include_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in (0, 1], got {value!r}")
    value = float(value)
    low_ok = value >= 0 if include_zero else value > 0
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if include_zero else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_labels(y: Any, n: int, name: str, *, n_classes: int | None = None) -> np.ndarray:
    """``y`` as int64 class labels of shape (n,), each in [0, n_classes) when ``n_classes`` is given."""
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer labels of shape ({n},), got {y.dtype} {y.shape}")
    if n_classes is not None and n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} labels must lie in [0, {n_classes}) (the model's outputs), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def make_rng(random_state: Any) -> np.random.Generator:
    """A numpy Generator from None (fixed default seed 0, so results are reproducible), an int or a Generator."""
    if random_state is None:
        return np.random.default_rng(0)
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(check_int(random_state, "random_state", low=0))
