"""htcore._concurrent.ordered_map: order, bounded look-ahead, errors, early stop."""
import random
import threading
import time

import pytest

import htcore
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


def test_big_items_without_enough_company_run_alone_in_the_calling_thread():
    # Items divisible by 5 are big (size 100); the four small ones (size 1) after each are far from
    # half of the 2 * 100 the other two threads could take on, so each big item is computed in the
    # caller's thread, with every earlier item handed back, and nothing after it runs meanwhile.
    src = CountingSource(23)
    caller, log, running = threading.current_thread(), [], []

    def fn(i):
        log.append((i, threading.current_thread() is caller, src.returned, list(running)))
        running.append(i)
        result = slow_square(i)
        running.remove(i)
        return result

    got = []
    for item, result in ordered_map(fn, src, workers=3, big=lambda i: i % 5 == 0,
                                    size=lambda i: 100 if i % 5 == 0 else 1):
        src.returned += 1
        got.append((item, result))
    assert got == [(i, i * i) for i in range(23)]
    for i, in_caller, returned, others in log:
        if i % 5 == 0:
            assert in_caller and returned == i and others == []
        else:
            assert not in_caller


def test_big_item_with_enough_company_runs_beside_it():
    # Item 0 is big (size 4) and items 1-4 (size 1 each) reach half of it: item 0 runs on a pool
    # thread while item 1 runs on the other (the barrier deadlocks unless both run at once), its
    # kernels on one thread like theirs; a big item run alone has all the threads.
    caller, barrier, seen = threading.current_thread(), threading.Barrier(2, timeout=10), {}

    def fn(i):
        seen[i] = (threading.current_thread() is caller, htcore.get_num_threads())
        if i in (0, 1):
            barrier.wait()
        return i

    sizes = {0: 4, 5: 4}  # item 5 is big too, with nothing after it: alone
    previous = htcore.get_num_threads()
    htcore.set_num_threads(2)
    try:
        got = [r for _, r in ordered_map(fn, range(6), workers=2, big=lambda i: i in sizes,
                                         size=lambda i: sizes.get(i, 1))]
    finally:
        htcore.set_num_threads(previous)
    assert got == list(range(6))
    assert all(seen[i] == (False, 1) for i in range(5)) and seen[5] == (True, 2)


def test_big_and_size_go_together():
    with pytest.raises(ValueError, match="big and size together"):
        list(ordered_map(slow_square, range(3), workers=2, big=lambda i: True))


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
