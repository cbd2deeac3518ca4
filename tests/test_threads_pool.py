"""htcore's own thread pool (cpp/parallel.cpp): how its workers are scheduled and which kernels use
it. Each check runs in a fresh process, so the pool and OpenMP start from nothing."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import htcore

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc/self/task (Linux)")

# Prints the scheduling policy (field 41 of /proc/.../stat; 0 normal, 3 batch) of every thread the
# given code started (numpy's BLAS may hold threads of its own from the import).
_POLICIES = """
import os, sys, numpy as np, htcore
before = set(os.listdir("/proc/self/task"))
{code}
for tid in sorted(set(os.listdir("/proc/self/task")) - before):
        stat = open(f"/proc/self/task/{{tid}}/stat").read()
        print(stat[stat.rindex(")") + 2:].split()[38])
"""


def _other_threads(code: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run([sys.executable, "-c", _POLICIES.format(code=code)], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


@linux_only
def test_workers_start_with_the_thread_count_and_never_preempt_on_wake_up():
    """set_num_threads(3) starts two workers at once, as SCHED_BATCH (a woken worker must not push
    the caller off its core: that made first calls on a busy machine take milliseconds)."""
    assert _other_threads("htcore.set_num_threads(3)") == ["3", "3"]


@linux_only
def test_convolution_runs_on_the_pool_not_openmp():
    """A parallel convolution adds no OpenMP team: the one thread it starts is the pool worker."""
    code = """
htcore.set_num_threads(2)
htcore._core._conv2d_ignore_parallel_grain(True)
rng = np.random.default_rng(0)
K = htcore.topk_sparsify(rng.standard_normal((16, 8 * 9)).astype(np.float32), 0.3)
htcore.sparse_conv2d(rng.standard_normal((4, 8, 12, 12)).astype(np.float32), K, kernel_size=3, padding=1)
"""
    assert _other_threads(code) == ["3"]


@pytest.mark.parametrize("n", [1, 3, 17])
def test_convolution_same_bits_for_any_number_of_chunks(n):
    """Batches of 1, 3 and 17 images split into 2 to 8 chunks on 2 threads; every chunk count gives
    the one-thread result bit for bit, NaN refusal included."""
    rng = np.random.default_rng(n)
    K = htcore.topk_sparsify(rng.standard_normal((6, 3 * 25)).astype(np.float32), 0.4)
    x = rng.standard_normal((n, 3, 11, 9)).astype(np.float32)
    before = htcore.get_num_threads()
    try:
        htcore._core._conv2d_ignore_parallel_grain(True)
        results = []
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            results.append(htcore.sparse_conv2d(x, K, kernel_size=5, stride=2, padding=2, activation="relu"))
            bad = x.copy()
            bad[-1, -1, -1, -1] = np.nan
            with pytest.raises(ValueError, match="X"):
                htcore.sparse_conv2d(bad, K, kernel_size=5, stride=2, padding=2)
    finally:
        htcore._core._conv2d_ignore_parallel_grain(False)
        htcore.set_num_threads(before)
    assert np.array_equal(results[0], results[1])


def test_products_around_the_wake_sizes_same_bits_as_one_thread():
    """Products below the wake size (2^18 multiply-adds: only a still-spinning worker joins) and
    above it (sleeping workers woken) in turn, as a forward pass mixes them, so workers are asleep,
    just woken and spinning by turns: every result is the one-thread result bit for bit."""
    rng = np.random.default_rng(21)
    A = htcore.topk_sparsify(rng.standard_normal((1024, 784)).astype(np.float32), 0.1)  # nnz + rows ~ 2^16.3
    x = rng.standard_normal(784).astype(np.float32)
    X = rng.standard_normal((784, 8)).astype(np.float32)  # 8 columns: ~2^19.3 multiply-adds
    before = htcore.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            results[threads] = [A.matvec(x) if i % 3 else A.matmat(X) for i in range(30)]
    finally:
        htcore.set_num_threads(before)
    for one, two in zip(results[1], results[2]):
        np.testing.assert_array_equal(one, two)


# A matrix whose product with a vector is below the wake size (~2^16.3 multiply-adds), the worker of
# a 2-thread pool asleep, and sleeps(): how often it went to sleep so far (its voluntary context
# switches: one per wake it answered). Shared by the two scripts below.
_SLEEPING_WORKER = """
import os, sys, time, numpy as np, htcore
{affinity}
rng = np.random.default_rng({seed})
A = htcore.topk_sparsify(rng.standard_normal((1024, 784)).astype(np.float32), 0.1)
x = rng.standard_normal(784).astype(np.float32)
before = set(os.listdir("/proc/self/task"))
htcore.set_num_threads(2)
(worker,) = set(os.listdir("/proc/self/task")) - before
time.sleep(0.01)  # the worker has stopped spinning and sleeps

def sleeps():
    with open(f"/proc/self/task/{{worker}}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))
"""

# Runs such products back to back for `seconds` with every thread of the process on one CPU, so the
# worker can only get a core behind the caller (as beside a busy process), and prints the products
# run, how often the worker went to sleep and whether every result was the one-thread result.
_SHARED_CORE = _SLEEPING_WORKER.format(
    affinity="os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # threads started from here inherit it",
    seed=21) + """
expected = A.matvec(x)
start_sleeps, start, products, same = sleeps(), time.perf_counter(), 0, True
while time.perf_counter() - start < float(sys.argv[1]):
    same &= np.array_equal(A.matvec(x), expected)
    products += 1
print(products, sleeps() - start_sleeps, same)
"""


@linux_only
def test_small_products_stop_waking_a_worker_that_finds_its_core_taken():
    """A worker woken for a small product that gets its core late (here always: it shares the
    caller's CPU) leaves the product to the caller, and small products then wake no worker for
    20 ms (kBackOff): about one wake per 20 ms, not one per product (a system call for the caller
    and a context switch each, thousands a second)."""
    seconds = 0.4
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run([sys.executable, "-c", _SHARED_CORE, str(seconds)], env=env,
                         capture_output=True, text=True, check=True)
    products, wakes, same = out.stdout.split()
    assert same == "True"
    assert int(products) > 200  # enough products that a wake per product would show
    assert int(wakes) <= seconds / 0.020 + 10


# Runs 8 such products back to back, then pauses 2 ms, five times, and prints how often the
# sleeping worker was woken.
_SHORT_RUNS = _SLEEPING_WORKER.format(affinity="", seed=3) + """
start = sleeps()
for _ in range(5):
    for _ in range(8):
        A.matvec(x)
    time.sleep(0.002)
print(sleeps() - start)
"""


@linux_only
def test_a_few_small_products_never_wake_a_sleeping_worker():
    """Small products wake a worker only after a run of 8 back to back (kStreak): a lone call (here
    runs of 8 products, 2 ms apart) runs on the caller alone and never waits for a worker it woke."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run([sys.executable, "-c", _SHORT_RUNS], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0"]


def test_many_callers_around_the_wake_size_same_bits_as_one_thread():
    """Eight Python threads run small (below the wake size) and large products at once on 3 threads,
    so calls publish over each other, wake workers while a wake is pending and finish with workers
    still in them: every result is the one-thread result bit for bit."""
    rng = np.random.default_rng(5)
    A = htcore.topk_sparsify(rng.standard_normal((1024, 784)).astype(np.float32), 0.1)
    xs = [rng.standard_normal(784).astype(np.float32) for _ in range(4)]
    Xs = [rng.standard_normal((784, 8)).astype(np.float32) for _ in range(4)]
    jobs = [(i % 4, i % 3 == 0) for i in range(96)]  # (input, large)

    def run(job):
        i, large = job
        return A.matmat(Xs[i]) if large else A.matvec(xs[i])

    before = htcore.get_num_threads()
    try:
        htcore.set_num_threads(1)
        expected = [run(job) for job in jobs]
        htcore.set_num_threads(3)
        with ThreadPoolExecutor(max_workers=8) as callers:
            got = list(callers.map(run, jobs))
    finally:
        htcore.set_num_threads(before)
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(want, have)
