"""Ordered, bounded thread-pool map for work that releases the GIL (BLAS/LAPACK through numpy)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    exclusive: Callable[[T], bool] | None = None,
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in the order of ``items``, computing ``fn`` on ``workers`` threads.

    At most ``workers`` items are taken from ``items`` and not yet handed back at any time, so a
    streamed source (tensors mapped from a file) keeps about ``workers`` of them alive; more are
    taken only when the consumer asks for the next result. An item for which ``exclusive(item)``
    is true (one that parallelises itself, e.g. a big matrix) is computed alone, in the calling
    thread, once every earlier item has been handed back, and no later item is taken before it is
    done. Each result comes from one call of ``fn``, so the results are those of the serial loop
    whatever ``workers`` is. An exception from ``fn`` is raised when its item's turn comes; the
    pool is shut down (queued work cancelled) when the consumer stops early. ``workers <= 1``
    runs everything serially in this thread.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    source = iter(items)
    pending: deque = deque()  # (item, future, or None for an exclusive item)
    pool = ThreadPoolExecutor(max_workers=workers)

    def refill() -> None:  # take items until `workers` are pending or the last one is exclusive
        while len(pending) < workers and not (pending and pending[-1][1] is None):
            try:
                item = next(source)
            except StopIteration:
                return
            pending.append((item, None if exclusive is not None and exclusive(item) else pool.submit(fn, item)))

    try:
        refill()
        while pending:
            item, future = pending.popleft()
            result = fn(item) if future is None else future.result()
            yield item, result
            del item, future, result
            refill()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
