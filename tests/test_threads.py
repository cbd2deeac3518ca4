import os
import subprocess
import sys

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
