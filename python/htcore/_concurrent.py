"""Ordered, bounded thread-pool map for work that releases the GIL (BLAS/LAPACK through numpy)."""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in the order of ``items``, computing ``fn`` on ``workers`` threads.

    At most ``workers`` items are taken from ``items`` and not yet handed back at any time, so a
    streamed source (tensors mapped from a file) keeps about ``workers`` of them alive; the next
    item is taken only after the consumer asks for the following result. Each result is computed
    by one call on one thread, so the results are those of the serial loop whatever ``workers``
    is. An exception from ``fn`` is raised when its item's turn comes; the pool is shut down (queued
    work cancelled) when the consumer stops early. ``workers <= 1`` runs serially in this thread.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        pending = deque((item, pool.submit(fn, item)) for item in itertools.islice(source, workers))
        while pending:
            item, future = pending.popleft()
            yield item, future.result()
            del item, future
            for nxt in itertools.islice(source, 1):
                pending.append((nxt, pool.submit(fn, nxt)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
