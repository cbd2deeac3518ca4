"""htcore's own symmetric eigenvalue solver (htcore.measure.symmetric_eigenvalues) against LAPACK.

Tolerance: both solvers are backward stable, each eigenvalue's absolute error bounded by a small
multiple of M * eps * ||A||_2 (M the order, eps = 2^-52). Measured differences (20 seeds, Gram and
Gaussian matrices): at most 1.4 M eps max|lambda| for M <= 5, 0.3 M at M = 100, 0.16 M at M = 384.
TOL_FACTOR * max(M, 4) * eps * max|lambda| keeps a margin of 5 or more; at M = 100 it is 1.8e-13
max|lambda|.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from htcore import _core
from htcore.measure import symmetric_eigenvalues

EPS = np.finfo(np.float64).eps
TOL_FACTOR = 8.0


def assert_close_spectrum(ours: np.ndarray, expected: np.ndarray) -> None:
    n = expected.size
    assert ours.shape == (n,) and ours.dtype == np.float64
    assert np.all(np.diff(ours) >= 0), "not sorted ascending"
    scale = np.abs(expected).max() if n else 0.0
    err = np.abs(ours - expected).max() if n else 0.0
    assert err <= TOL_FACTOR * max(n, 4) * EPS * scale, (err, scale)


def random_symmetric(rng, n):
    a = rng.standard_normal((n, n))
    return (a + a.T) / 2


def with_spectrum(rng, evals):
    q, _ = np.linalg.qr(rng.standard_normal((len(evals), len(evals))))
    return (q * evals) @ q.T


@pytest.fixture(params=[True, False], ids=["avx2", "portable"])
def code_path(request):
    """Run a test with the AVX2+FMA path (where the CPU has it) and with the portable path."""
    if request.param and not _core.symmetric_eigenvalues_uses_avx2():
        pytest.skip("no AVX2+FMA on this CPU")
    _core._symmetric_eigenvalues_enable_avx2(request.param)
    yield request.param
    _core._symmetric_eigenvalues_enable_avx2(True)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 64, 100, 257])
def test_random_symmetric_matches_lapack(code_path, n):
    rng = np.random.default_rng(n)
    a = random_symmetric(rng, n)
    assert_close_spectrum(symmetric_eigenvalues(a), np.linalg.eigvalsh(a))


@pytest.mark.parametrize("rows,cols", [(800, 384), (384, 384), (100, 384), (3, 50), (60, 61)])
@pytest.mark.parametrize("kind", ["heavy", "wishart"])
def test_gram_matrices_match_lapack(code_path, rows, cols, kind):
    # The matrices the solver exists for: W^T W of heavy-tailed (Student t, 2 dof) or Gaussian W,
    # full rank or rank-deficient (rows < cols: cols - rows eigenvalues are zero).
    rng = np.random.default_rng(rows * 1000 + cols)
    w = rng.standard_t(2, size=(rows, cols)) if kind == "heavy" else rng.standard_normal((rows, cols))
    gram = w.T @ w
    ours = symmetric_eigenvalues(gram)
    assert_close_spectrum(ours, np.linalg.eigvalsh(gram))
    if rows < cols:
        assert np.abs(ours[: cols - rows]).max() <= TOL_FACTOR * cols * EPS * ours[-1]


@pytest.mark.parametrize(
    "evals",
    [
        [1.0] * 40,  # one eigenvalue, multiplicity 40
        [0.0] * 20 + [1.0] * 20 + [2.0] * 20,  # repeated, including zero
        list(1 + 1e-10 * np.arange(30)) + [5.0] * 10,  # a tight cluster
        list(np.geomspace(1e-12, 1.0, 50)),  # graded, many tiny
        [-3.0, -3.0, 0.0, 2.0, 2.0, 2.0, 7.0],  # indefinite
        list(np.arange(64.0)) + [1e8],  # one dominant eigenvalue
    ],
    ids=["identity-like", "repeated", "cluster", "graded", "indefinite", "dominant"],
)
def test_known_spectra(code_path, evals):
    rng = np.random.default_rng(len(evals))
    evals = np.sort(np.array(evals))
    a = with_spectrum(rng, evals)
    ours = symmetric_eigenvalues(a)
    assert_close_spectrum(ours, evals)
    assert_close_spectrum(ours, np.linalg.eigvalsh(a))


def test_diagonal_and_tridiagonal_are_exact_or_close(code_path):
    rng = np.random.default_rng(1)
    d = rng.integers(-5, 5, size=50).astype(float)  # ties
    assert np.array_equal(symmetric_eigenvalues(np.diag(d)), np.sort(d))  # no reflection, no sweep
    t = np.diag(d) + np.diag(np.full(49, 0.5), 1) + np.diag(np.full(49, 0.5), -1)
    t[10, 11] = t[11, 10] = 0.0  # splits into two blocks
    assert_close_spectrum(symmetric_eigenvalues(t), np.linalg.eigvalsh(t))


def test_zero_empty_and_one_by_one():
    assert np.array_equal(symmetric_eigenvalues(np.zeros((7, 7))), np.zeros(7))
    empty = symmetric_eigenvalues(np.zeros((0, 0)))
    assert empty.shape == (0,) and empty.dtype == np.float64
    assert np.array_equal(symmetric_eigenvalues([[-2.5]]), [-2.5])
    assert np.array_equal(symmetric_eigenvalues([[0.0, 0.0], [0.0, 3.0]]), [0.0, 3.0])


@pytest.mark.parametrize("scale", [1e-150, 1e150, 1e-300, 1e300, 5e-324])
def test_huge_and_tiny_scales(code_path, scale):
    rng = np.random.default_rng(3)
    base = random_symmetric(rng, 30)
    base /= np.abs(base).max()
    a = base * scale
    ours = symmetric_eigenvalues(a)
    assert np.isfinite(ours).all()
    if scale == 5e-324:  # every entry is 0 or the smallest subnormal: compare with the exact rounding
        assert_close_spectrum(ours, np.linalg.eigvalsh(a / scale) * scale)
        return
    # The solver scales by a power of two, so its relative accuracy does not depend on the scale.
    assert_close_spectrum(ours / scale, np.linalg.eigvalsh(base))


def test_power_of_two_scaling_is_exact():
    rng = np.random.default_rng(4)
    a = random_symmetric(rng, 40)
    ref = symmetric_eigenvalues(a)
    for k in (-900, -100, 7, 600):
        assert np.array_equal(symmetric_eigenvalues(a * 2.0**k), ref * 2.0**k)


def test_reads_only_the_lower_triangle():
    rng = np.random.default_rng(5)
    a = random_symmetric(rng, 25)
    messy = a.copy()
    messy[np.triu_indices(25, 1)] = rng.standard_normal(300) * 1e6
    assert np.array_equal(symmetric_eigenvalues(messy), symmetric_eigenvalues(a))
    assert_close_spectrum(symmetric_eigenvalues(messy), np.linalg.eigvalsh(messy, UPLO="L"))


def test_accepts_views_and_other_dtypes():
    rng = np.random.default_rng(6)
    a = random_symmetric(rng, 20)
    ref = symmetric_eigenvalues(a)
    assert np.array_equal(symmetric_eigenvalues(np.asfortranarray(a)), ref)
    big = np.zeros((40, 40))
    big[::2, ::2] = a
    assert np.array_equal(symmetric_eigenvalues(big[::2, ::2]), ref)
    f32 = a.astype(np.float32)
    assert np.array_equal(symmetric_eigenvalues(f32), symmetric_eigenvalues(f32.astype(np.float64)))
    assert np.array_equal(symmetric_eigenvalues(np.eye(3, dtype=np.int64)), np.ones(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(bad):
    a = np.eye(4)
    a[2, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        symmetric_eigenvalues(a)
    with pytest.raises(ValueError, match=r"non-finite entry at \(2, 1\)"):  # the kernel checks too
        _core.symmetric_eigenvalues(a, 30)


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match="square"):
        symmetric_eigenvalues(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        symmetric_eigenvalues(np.zeros(4))
    with pytest.raises(TypeError, match="complex"):
        symmetric_eigenvalues(np.eye(2, dtype=complex))
    with pytest.raises(ValueError, match="max_sweeps"):
        symmetric_eigenvalues(np.eye(2), max_sweeps=-1)


def test_iteration_limit_raises_instead_of_looping():
    a = random_symmetric(np.random.default_rng(7), 12)
    with pytest.raises(ValueError, match="did not converge"):
        symmetric_eigenvalues(a, max_sweeps=0)
    with pytest.raises(ValueError, match="did not converge"):
        symmetric_eigenvalues(a, max_sweeps=1)  # 12 sweeps are not enough for 12 eigenvalues
    assert_close_spectrum(symmetric_eigenvalues(a, max_sweeps=3), np.linalg.eigvalsh(a))
    assert np.array_equal(symmetric_eigenvalues(np.diag([3.0, 1.0]), max_sweeps=0), [1.0, 3.0])


def test_concurrent_calls_give_the_serial_results():
    # Two threads (the GIL released): the same bits as one after the other.
    rng = np.random.default_rng(8)
    mats = [random_symmetric(rng, n) for n in (50, 120, 50, 200, 3, 120, 80, 1)]
    serial = [symmetric_eigenvalues(m) for m in mats]
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = list(pool.map(symmetric_eigenvalues, mats))
    assert all(np.array_equal(s, p) for s, p in zip(serial, parallel))
