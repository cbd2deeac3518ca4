"""Concurrency: kernels called from several Python threads at once give the single-threaded
results; the GIL is released during kernels; results are bitwise identical at 1 and 2 OpenMP
threads for selection, fits and the CSR products (whose per-row sums run in one thread in a
fixed order, so no tolerance is needed), even while another thread changes the thread count.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import htcore
from htcore.runtime import Activation, CompressedModel, Linear


@pytest.fixture(autouse=True)
def restore_threads():
    before = htcore.get_num_threads()
    yield
    htcore.set_num_threads(before)


def _data():
    rng = np.random.default_rng(7)
    W = rng.standard_t(3, size=(300, 400)).astype(np.float32)
    W16 = W.astype(np.float16)
    sample = np.abs(rng.standard_t(2.5, size=20000)) + 1e-12
    A = htcore.topk_sparsify(W, 0.3)  # 36k nnz: the CSR kernels split it between threads
    X = rng.standard_normal((400, 48)).astype(np.float32)
    model = CompressedModel([Linear(A, rng.standard_normal(300)), Activation("gelu"),
                             Linear(htcore.topk_sparsify(rng.standard_normal((10, 300)), k=600).astype(value_dtype=np.float16))])
    return W, W16, sample, A, X, model


W, W16, SAMPLE, A, X, MODEL = _data()

# Each entry: a call returning arrays / floats that must be reproduced bit for bit.
CALLS = {
    "topk_matrix": lambda: _csr(htcore.topk_sparsify(W, 0.05)),
    "topk_row_f16": lambda: _csr(htcore.topk_sparsify(W16, k=17, mode="row")),
    "topk_col": lambda: _csr(htcore.topk_sparsify(W, k=9, mode="col")),
    "topk_rel_error": lambda: _csr(htcore.topk_sparsify(W, max_rel_error=0.3)),
    "sparsify_global": lambda: [_csr(m) for m in htcore.sparsify_global({"a": W, "b": W16[:50]}, 0.1).values()],
    "threshold": lambda: htcore.topk_threshold(W, 1000),
    "curve": lambda: htcore.compressibility_curve(W, [0.01, 0.1, 0.5]).rel_error,
    "hill_auto": lambda: htcore.hill(SAMPLE),
    "moments_auto": lambda: htcore.moments(SAMPLE, random_state=3),
    "pickands_k": lambda: htcore.pickands(SAMPLE, 500),
    "fit_exact": lambda: htcore.fit_powerlaw(SAMPLE[:5000]),
    "fit_grid_xmax": lambda: htcore.fit_powerlaw(SAMPLE, xmax=50.0, candidates=200),
    "fit_gof": lambda: htcore.fit_powerlaw(SAMPLE[:2000], candidates=50, gof_bootstrap=3, random_state=1),
    "matvec": lambda: A @ X[:, 0],
    "matmat": lambda: A @ X,
    "matmat_f64": lambda: A.astype(value_dtype=np.float64) @ X.astype(np.float64),
    "sparse_linear_relu": lambda: htcore.sparse_linear(X.T, A, bias=np.arange(300.0), activation="relu"),
    "model": lambda: MODEL(X.T),
}


def _csr(m):
    return (m.data, m.indices, m.indptr)


def assert_identical(a, b, what):
    """Bitwise equality of nested results (arrays compared as bytes, so NaN == NaN and -0 != 0)."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for x, y in zip(a, b):
            assert_identical(x, y, what)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        assert a.tobytes() == b.tobytes(), what
    else:
        assert a == b, what


@pytest.fixture(scope="module")
def single_threaded():
    # Module-scoped, so it runs before the per-test restore records the count: restore it here.
    before = htcore.get_num_threads()
    htcore.set_num_threads(1)
    try:
        return {name: call() for name, call in CALLS.items()}
    finally:
        htcore.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_identical_at_any_openmp_thread_count(single_threaded, threads):
    htcore.set_num_threads(threads)
    for name, call in CALLS.items():
        assert_identical(call(), single_threaded[name], f"{name} at {threads} threads")


def test_many_python_threads_at_once(single_threaded):
    """8 Python threads run every kernel 3 times, interleaved, at 2 OpenMP threads each."""
    htcore.set_num_threads(2)
    jobs = [name for _ in range(3) for name in CALLS]
    np.random.default_rng(0).shuffle(jobs)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda name: (name, CALLS[name]()), jobs))
    for name, got in results:
        assert_identical(got, single_threaded[name], f"{name} from a Python thread")


def test_thread_count_changed_while_kernels_run(single_threaded):
    """set_num_threads from another thread mid-flight never changes a result."""
    stop = threading.Event()

    def flip():
        n = 1
        while not stop.is_set():
            n = 3 - n
            htcore.set_num_threads(n)
            time.sleep(0.0005)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda name: (name, CALLS[name]()), list(CALLS) * 2))
    finally:
        stop.set()
        flipper.join()
    for name, got in results:
        assert_identical(got, single_threaded[name], f"{name} with the thread count changing")


GIL_CASES = {
    # kernel entry in htcore._core: (input maker, public call reaching it)
    "fit_powerlaw": (lambda rng: np.abs(rng.standard_t(2, 300_000)) + 1e-9, lambda x: htcore.fit_powerlaw(x)),
    "tail_estimate": (lambda rng: np.abs(rng.standard_t(2, 300_000)) + 1e-9, lambda x: htcore.hill(x)),
    "topk_select": (lambda rng: rng.standard_normal((2000, 2000)).astype(np.float32),
                    lambda w: htcore.compressibility_curve(w, np.linspace(0, 1, 64))),
    "topk_csr_matrix": (lambda rng: rng.standard_normal((3000, 3000)).astype(np.float32), lambda w: htcore.topk_sparsify(w, 0.5)),
    "topk_csr_per_group": (lambda rng: rng.standard_normal((3000, 3000)).astype(np.float32),
                           lambda w: [htcore.topk_sparsify(w, 0.5, mode=m) for m in ("row", "col")]),
    "topk_csr_threshold": (lambda rng: {"a": rng.standard_normal((3000, 3000)).astype(np.float32)},
                           lambda ws: htcore.sparsify_global(ws, 0.5)),
    "topk_k_for_rel_error": (lambda rng: rng.standard_normal((3000, 3000)).astype(np.float32),
                             lambda w: htcore.topk_sparsify(w, max_rel_error=0.5)),
    "csr_spmm": (lambda rng: (htcore.topk_sparsify(rng.standard_normal((2000, 2000)).astype(np.float32), 0.3),
                              rng.standard_normal((2000, 64)).astype(np.float32)), lambda ax: [ax[0] @ ax[1] for _ in range(8)]),
}


@pytest.mark.parametrize("kernel", sorted(GIL_CASES))
def test_gil_is_released_during_kernels(kernel, patch_kernel):
    """A pure-Python thread keeps counting while the C++ kernel runs.

    The switch interval is raised to 1000 s, so the main thread is never forced to give up the
    GIL; the counting thread yields it voluntarily (sleep(0)) every 1000 counts. A kernel holding
    the GIL would therefore leave the counter exactly unchanged across the wrapped C++ call
    (checked once by hand with ``sum(range(3e7))`` in place of the kernel: 0 counts)."""
    import sys

    from htcore import _core

    make, call = GIL_CASES[kernel]
    arg = make(np.random.default_rng(1))
    htcore.set_num_threads(1)
    counter, during = [0], []
    original = getattr(_core, kernel)

    def measured(*args, **kwargs):
        before = counter[0]
        out = original(*args, **kwargs)
        during.append(counter[0] - before)
        return out

    patch_kernel(kernel, measured)
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1
            if counter[0] % 1000 == 0:
                time.sleep(0)  # releases the GIL

    interval = sys.getswitchinterval()
    counting = threading.Thread(target=count)
    counting.start()
    try:
        sys.setswitchinterval(1000.0)
        call(arg)
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        counting.join()
    assert during, f"{kernel} was not called"
    assert sum(during) > 0, f"the counting thread never advanced during {kernel} ({len(during)} calls)"
