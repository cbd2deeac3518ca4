import os
import subprocess
import sys

import numpy as np
import pytest

import htcore


@pytest.fixture
def restore_threads():
    before = htcore.get_num_threads()
    yield
    htcore.set_num_threads(before)


def test_set_and_get(restore_threads):
    htcore.set_num_threads(1)
    assert htcore.get_num_threads() == 1
    htcore.set_num_threads(3)
    assert htcore.get_num_threads() == 3


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_rejects_bad_counts(bad, exc, restore_threads):
    with pytest.raises(exc, match="num_threads"):
        htcore.set_num_threads(bad)


def test_setting_is_seen_from_other_python_threads(restore_threads):
    import threading

    htcore.set_num_threads(1)
    seen = []
    t = threading.Thread(target=lambda: seen.append(htcore.get_num_threads()))
    t.start()
    t.join()
    assert seen == [1]


def test_kernels_on_this_thread_only_limits_only_the_calling_thread(restore_threads):
    from concurrent.futures import ThreadPoolExecutor

    from htcore._core import set_calling_thread_limit
    from htcore._threads import kernels_on_this_thread_only

    htcore.set_num_threads(2)
    x = np.random.default_rng(0).pareto(2.0, 300_000) + 1  # big enough for the kernels' parallel paths
    expected = htcore.hill(x, random_state=1)
    with ThreadPoolExecutor(max_workers=1) as other:
        with kernels_on_this_thread_only():
            assert htcore.get_num_threads() == 1
            assert other.submit(htcore.get_num_threads).result() == 2  # other threads keep the setting
            with kernels_on_this_thread_only():  # nests
                assert htcore.get_num_threads() == 1
            assert htcore.get_num_threads() == 1
            assert htcore.hill(x, random_state=1) == expected  # the same result on one thread
        assert htcore.get_num_threads() == 2
    with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
        set_calling_thread_limit(limit=-1)


def test_honours_omp_num_threads():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", "import htcore; print(htcore.get_num_threads())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_default_ignores_torch_lowering_openmp_first():
    """torch.set_num_threads(1) before importing htcore must not become htcore's default."""
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "import torch; torch.set_num_threads(1); import htcore, os; print(htcore.get_num_threads(), os.cpu_count())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    threads, cores = out.stdout.split()
    assert threads == cores


def test_every_kernel_is_complete_when_openmp_gives_fewer_threads_than_asked(tmp_path):
    """OMP_THREAD_LIMIT=1 (like OMP_DYNAMIC, or a caller's own parallel region) hands every team one
    thread although htcore asks for two: each kernel must still compute all of its parts, and give
    the same bits as a normal one-thread run."""
    script = """
import sys, numpy as np, htcore
from htcore.sparse import SellMatrix
htcore.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(0)
A = htcore.topk_sparsify(rng.standard_normal((3000, 2000)).astype(np.float32), 0.3)
X = rng.standard_normal((2000, 16)).astype(np.float32)
S = SellMatrix(htcore.topk_sparsify(rng.standard_normal((20000, 784)).astype(np.float32), 0.05))
x = rng.standard_normal(784).astype(np.float32)
sell = np.empty(20000, np.float32)
S.matvec_into(x, None, "relu", sell)
sample = np.abs(rng.standard_t(2, 400_000))
K = htcore.topk_sparsify(rng.standard_normal((64, 32 * 9)).astype(np.float32), 0.2)
conv = htcore.sparse_conv2d(rng.standard_normal((8, 32, 28, 28)).astype(np.float32), K, kernel_size=3, padding=1)
np.savez(sys.argv[2], spmv=A @ X[:, 0], spmm=A.matmat(X), linear=htcore.sparse_linear(X.T, A, activation="relu"),
         sell=sell, conv=conv, topk=A.data, hill=htcore.hill(sample, random_state=0).alpha,
         fit=htcore.fit_powerlaw(sample[:50_000]).pdf_exponent)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    subprocess.run([sys.executable, "-c", script, "1", str(tmp_path / "one.npz")], env=env, check=True)
    subprocess.run([sys.executable, "-c", script, "2", str(tmp_path / "limited.npz")],
                   env={**env, "OMP_THREAD_LIMIT": "1"}, check=True)
    one, limited = np.load(tmp_path / "one.npz"), np.load(tmp_path / "limited.npz")
    for name in one.files:
        assert np.array_equal(one[name], limited[name]), name
