"""Thread count for htcore's OpenMP kernels.

One process-wide setting, read by every kernel. It starts at ``OMP_NUM_THREADS`` when that is
set (up to `MAX_THREADS`), else the number of cores. Results never depend on it: selection and fits are bitwise
identical at any thread count, and reductions are ordered deterministically.
"""
from __future__ import annotations

import operator
from contextlib import contextmanager
from typing import Iterator

from ._core import get_num_threads as kernel_get_num_threads
from ._core import max_num_threads, set_calling_thread_limit
from ._core import set_num_threads as kernel_set_num_threads

MAX_THREADS = int(max_num_threads())


def get_num_threads() -> int:
    """Number of threads htcore's kernels use."""
    return int(kernel_get_num_threads())


def set_num_threads(n: int) -> None:
    """Set the number of threads htcore's kernels use, 1 <= ``n`` <= `MAX_THREADS` (1024: more only add
    fork/join cost, and tens of thousands make OpenMP abort the process); affects all Python threads."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"num_threads must be an integer, got {type(n).__name__}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads must be in [1, {MAX_THREADS}], got {n}")
    kernel_set_num_threads(n=n)


@contextmanager
def kernels_on_this_thread_only() -> Iterator[None]:
    """Inside it, the kernels this Python thread calls run on this thread alone (other threads keep
    `get_num_threads`). For work already spread over a pool of threads: a kernel's own team on
    top would put more threads than cores on the machine."""
    previous = set_calling_thread_limit(limit=1)
    try:
        yield
    finally:
        set_calling_thread_limit(limit=previous)
