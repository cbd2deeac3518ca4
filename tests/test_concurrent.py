"""htcore._concurrent.ordered_map: order, bounded look-ahead, errors, early stop."""
import random
import threading
import time

import pytest

from htcore._concurrent import ordered_map


class CountingSource:
    """An iterator that records how many items were taken and not yet handed back."""

    def __init__(self, n):
        self.n, self.taken, self.returned, self.max_outstanding = n, 0, 0, 0

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            self.max_outstanding = max(self.max_outstanding, self.taken - self.returned)
            yield i


def slow_square(i):
    time.sleep(random.Random(i).uniform(0, 0.003))  # finish out of order
    return i * i


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_in_input_order_and_bounded_lookahead(workers):
    src = CountingSource(40)
    got = []
    for item, result in ordered_map(slow_square, src, workers=workers):
        src.returned += 1
        got.append((item, result))
    assert got == [(i, i * i) for i in range(40)]
    assert src.max_outstanding == workers


def test_runs_on_several_threads():
    names, barrier = set(), threading.Barrier(2, timeout=10)

    def fn(i):
        names.add(threading.current_thread().name)
        barrier.wait()  # deadlocks (BrokenBarrierError after 10 s) unless two calls run at once
        return i

    assert [r for _, r in ordered_map(fn, range(4), workers=2)] == [0, 1, 2, 3]
    assert len(names) == 2 and threading.current_thread().name not in names


def test_exclusive_items_run_alone_in_the_calling_thread():
    # Items divisible by 5 are exclusive: computed in the caller's thread once every earlier item
    # was handed back, with no later item taken before they are done.
    src = CountingSource(23)
    caller, log = threading.current_thread(), []

    def fn(i):
        log.append((i, threading.current_thread() is caller, src.taken, src.returned))
        return slow_square(i)

    got = []
    for item, result in ordered_map(fn, src, workers=3, exclusive=lambda i: i % 5 == 0):
        src.returned += 1
        got.append((item, result))
    assert got == [(i, i * i) for i in range(23)] and src.max_outstanding <= 3
    for i, in_caller, taken, returned in log:
        if i % 5 == 0:
            assert in_caller and taken == i + 1 and returned == i
        else:
            assert not in_caller


def test_exception_raised_at_its_turn_and_pool_stops():
    calls = []

    def fn(i):
        calls.append(i)
        if i == 3:
            raise ValueError("bad item 3")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for _, r in ordered_map(fn, range(100), workers=2):
            got.append(r)
    assert got == [0, 1, 2] and max(calls) <= 5


def test_early_stop_takes_no_more_items():
    src = CountingSource(100)
    gen = ordered_map(slow_square, src, workers=2)
    assert next(gen) == (0, 0)
    gen.close()
    assert src.taken <= 3


def test_empty_source():
    assert list(ordered_map(slow_square, [], workers=2)) == []
