"""Ordered, bounded thread-pool map for work that releases the GIL (htcore's kernels, BLAS/LAPACK)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ._threads import kernels_on_this_thread_only

T = TypeVar("T")
R = TypeVar("R")
_END = object()  # what take() returns when the items are used up


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    big: Callable[[T], bool] | None = None,
    size: Callable[[T], int] | None = None,
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in the order of ``items``, computing ``fn`` on ``workers`` threads.

    Each pool thread runs htcore's kernels on itself alone (`kernels_on_this_thread_only`), so
    ``workers`` items at once use ``workers`` threads. At most ``workers`` items are taken from
    ``items`` and not yet handed back, so a streamed source keeps about ``workers`` of them alive;
    more are taken only when the consumer asks for the next result.

    An item for which ``big(item)`` is true is one whose kernels could use every thread (e.g. a big
    matrix). The items after it, up to the next big one, are taken while their total ``size`` stays
    within ``(workers - 1) * size(big_item)``. If they reach half of that, there is enough work to
    keep the other threads busy meanwhile: the big item runs on one pool thread and they run on the
    others. Otherwise it runs alone in the calling thread with all threads, once every earlier item
    is handed back, and the items taken after it wait until it is done.

    Each result comes from one call of ``fn``, so the results are those of the serial loop whatever
    ``workers`` is (htcore's kernels give the same numbers at any thread count). An exception from
    ``fn`` is raised when its item's turn comes; the pool is shut down (queued work cancelled) when
    the consumer stops early. ``workers <= 1`` runs everything serially in this thread.
    """
    if (big is None) != (size is None):
        raise ValueError("ordered_map takes big and size together")
    is_big = big or (lambda item: False)
    size_of = size or (lambda item: 0)
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    source = iter(items)
    taken: deque = deque()  # items read from `source` ahead of their turn
    pending: deque = deque()  # (item, future, or None for an item run alone)
    pool = ThreadPoolExecutor(max_workers=workers)

    def on_pool_thread(item: T) -> R:
        with kernels_on_this_thread_only():
            return fn(item)

    def submit(item: T) -> Future:
        return pool.submit(on_pool_thread, item)

    def take() -> Any:  # the next item, or _END
        return taken.popleft() if taken else next(source, _END)

    def take_company(limit: int) -> list[T]:
        """The items after a big one, up to the next big one, within ``limit`` of total size."""
        company: list[T] = []
        total = 0
        for item in iter(take, _END):
            if is_big(item) or total + size_of(item) > limit:
                taken.appendleft(item)
                break
            company.append(item)
            total += size_of(item)
        return company

    def refill() -> None:  # take items until `workers` are pending or the last one runs alone
        while len(pending) < workers and not (pending and pending[-1][1] is None):
            item = take()
            if item is _END:
                return
            if not is_big(item):
                pending.append((item, submit(item)))
                continue
            limit = (workers - 1) * size_of(item)
            company = take_company(limit)
            if 2 * sum(map(size_of, company)) >= limit:  # enough to keep the other threads busy
                pending.append((item, submit(item)))
                pending.extend((other, submit(other)) for other in company)
            else:
                pending.append((item, None))
                taken.extendleft(reversed(company))

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
