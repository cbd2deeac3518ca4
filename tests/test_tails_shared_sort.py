"""The fast paths of the element-tail measurements: one kernel call that takes |w| of the nonzero
entries, sorts them once and gives auto-k Hill, the power-law fit and the CCDF (what htcore.analyze
runs, with the compressibility curve from the same sort), the float32 key sort, and the bootstrap's
resamples drawn eight at a time."""
from __future__ import annotations

import numpy as np
import pytest

import htcore
from htcore import _core
from htcore.measure._tails import element_measurements


def separate_calls(x: np.ndarray, grid: int) -> tuple:
    h = htcore.hill(x, random_state=0)
    fit = htcore.fit_powerlaw(x, candidates=grid or None)
    return h, (fit.pdf_exponent, fit.xmin, fit.ks_distance, fit.n_tail)


def shared(x: np.ndarray, grid: int) -> tuple:
    found = element_measurements(x, grid, random_state=0)
    assert found.n == np.count_nonzero(x) and found.error == ""
    fit = found.fit
    return found.hill, (fit.pdf_exponent, fit.xmin, fit.ks_distance, fit.n_tail)


def shared_sort_samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(21)
    t3 = np.abs(rng.standard_t(3, 20_000))
    return {
        "t3_float64": t3,
        "t3_float32": t3.astype(np.float32),
        "ties": np.round(rng.pareto(2.0, 5000) + 1, 1),
        "tiny_20": rng.pareto(1.5, 20) + 1,
        "tiny_21_float32": (rng.pareto(1.5, 21) + 1).astype(np.float32),
        # Either side of the size where float32 samples switch from std::sort to the key sort.
        "below_radix": np.abs(rng.standard_normal((1 << 14) - 1)).astype(np.float32) + 1e-6,
        "at_radix": np.abs(rng.standard_normal(1 << 14)).astype(np.float32) + 1e-6,
    }


@pytest.mark.parametrize("name", list(shared_sort_samples()))
@pytest.mark.parametrize("grid", [0, 50])
def test_shared_sort_equals_separate_calls(name, grid):
    x = shared_sort_samples()[name]
    before = htcore.get_num_threads()
    try:
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            assert shared(x, grid) == separate_calls(x, grid)
    finally:
        htcore.set_num_threads(before)


def test_shared_sort_reports_where_hill_raises():
    x = np.r_[np.full(40, 2.0), np.full(40, 1.0)]  # two values: Hill is undefined at every k it can choose
    with pytest.raises(ValueError) as separate:
        separate_calls(x, 0)
    found = element_measurements(x, 0, random_state=0, ccdf_points=10)
    assert found.hill is None and found.fit is None and found.error == str(separate.value)
    np.testing.assert_array_equal(found.ccdf[1], [1.0] + [0.5] * 9)  # the CCDF stands: x_0 = 1, then x in (1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_with_signs_and_zeros_equal_their_element_sample(dtype):
    # What analyze passes: a weight matrix (negative entries, pruned zeros, -0.0), not a sample.
    rng = np.random.default_rng(4)
    w = rng.standard_t(4, (300, 200)).astype(dtype)
    w[rng.random(w.shape) < 0.4] = 0
    w[0, :5] = -0.0
    sample = htcore.element_sample(w)
    for grid in (0, 40):
        found = element_measurements(w, grid, random_state=0, ccdf_points=50, min_samples=50)
        assert found.n == sample.size
        assert (found.hill, (found.fit.pdf_exponent, found.fit.xmin, found.fit.ks_distance, found.fit.n_tail)) == \
            separate_calls(sample, grid)
    x, p = found.ccdf
    assert x[0] == sample.min() and x[-1] < sample.max() and np.all(np.diff(x) > 0)
    np.testing.assert_array_equal(p, [np.mean(sample >= v) for v in x])  # exact counts


def test_measurements_below_min_samples_and_bad_entries():
    w = np.zeros((10, 10), np.float32)
    w[0, :30] = np.arange(1, 31)[:10]
    found = element_measurements(w, 0, random_state=0, ccdf_points=20, min_samples=50)
    assert found.n == 10 and found.ccdf is None and found.hill is None and found.error == ""
    assert element_measurements(np.zeros(7), 0, random_state=0, ccdf_points=20).n == 0
    for bad in (np.nan, np.inf, -np.inf):
        w = np.ones(100, np.float32)
        w[[3, 50]] = bad
        with pytest.raises(ValueError, match=r"W contains 2 non-finite value\(s\) \(NaN or Inf\)"):
            element_measurements(w, 0, random_state=0)


@pytest.mark.parametrize("n", [1 << 14, 50_000])  # (2^20 and up, the parallel key sort: test_tails.py)
def test_float32_key_sort_order_statistics(n):
    # Fixed-k Hill reads the order statistics of the sorted copy: compare with numpy's sort at
    # k = 1, the middle and n - 1 (the deepest it may go), on awkward float32 samples: the whole
    # exponent range (subnormals to 1e38), heavy ties, and all but one value equal.
    rng = np.random.default_rng(n)
    wide = np.exp(rng.uniform(np.log(1e-44), np.log(3e38), n)).astype(np.float32)
    wide[wide == 0] = np.float32(1e-45)
    ties = (rng.integers(1, 6, n) * 0.25).astype(np.float32)
    one_high = np.full(n, 0.5, np.float32)
    one_high[n // 3] = 0.75
    before = htcore.get_num_threads()
    try:
        for x in (wide, ties, one_high):
            desc = np.sort(x.astype(np.float64))[::-1]
            for threads in (1, 2):
                htcore.set_num_threads(threads)
                for k in (1, n // 2, n - 1):
                    expected = np.mean(np.log(desc[:k])) - np.log(desc[k])
                    if expected > 0:
                        assert htcore.hill(x, k).xi == pytest.approx(expected, rel=1e-10, abs=1e-12)  # summation order
                    else:  # ties at this k
                        with pytest.raises(ValueError, match="tied"):
                            htcore.hill(x, k)
            with pytest.raises(ValueError, match="k = " + str(n)):
                htcore.hill(x, n)  # k = n has no X_(k+1)
    finally:
        htcore.set_num_threads(before)


@pytest.mark.parametrize("resamples", [1, 3, 5, 9, 17, 64, 100])
def test_bootstrap_with_resample_counts_not_a_multiple_of_eight(resamples):
    # Resamples are drawn eight at a time and the last group's spare lanes are dropped: any count must
    # give a deterministic, thread-independent choice inside the searched range.
    x = np.abs(np.random.default_rng(9).standard_t(3, 20_000))
    before = htcore.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1):
            htcore.set_num_threads(threads)
            out = _core.tail_estimate(x=x, method=_core.TailMethod.hill, k=0, seed=11, resamples=resamples,
                                      eps_stop=0.99, cap_factor=3.0, rho_max=-0.25)
            results.append((out.xi, out.k, out.bootstrap.k1, out.bootstrap.k2))
        assert results[0] == results[1] == results[2]
        xi, k, k1, k2 = results[0]
        assert 2 <= k < x.size and 1 <= k2 <= k1 and xi > 0
    finally:
        htcore.set_num_threads(before)



def test_logs_of_subnormal_and_huge_float64_samples():
    # The kernels' own vectorised log (also for values below 2^-1022, which it rescales first):
    # fixed-k Hill reads only logs, so compare it with numpy's at several k.
    rng = np.random.default_rng(5)
    x = np.exp(rng.uniform(np.log(5e-324), np.log(1e308), 4000))
    x[:50] = rng.uniform(1, 4e3, 50) * 5e-324  # subnormal doubles
    desc = np.sort(x)[::-1]
    for k in (1, 100, 2000, 3990):
        expected = np.mean(np.log(desc[:k])) - np.log(desc[k])
        assert htcore.hill(x, k).xi == pytest.approx(expected, rel=1e-12)


def test_exact_max_switches_the_fit_between_every_candidate_and_the_grid():
    # analyze's rule: every distinct value as xmin up to exact_max nonzero entries, the grid above.
    w = np.random.default_rng(8).standard_t(3, (90, 60)).astype(np.float32)
    n = np.count_nonzero(w)
    sample = htcore.element_sample(w)
    for exact_max, grid in ((n, 0), (n - 1, 30)):
        fit = element_measurements(w, 30, exact_max=exact_max, random_state=0).fit
        assert (fit.pdf_exponent, fit.xmin, fit.ks_distance, fit.n_tail) == separate_calls(sample, grid)[1]


def reference_rel_error(w: np.ndarray, keeps) -> np.ndarray:
    """||W - W_k||_F / ||W||_F of the top ceil(keep * size) entries, plainly in numpy (float64)."""
    mags = np.sort(np.abs(w.astype(np.float64).ravel()))[::-1]
    total = np.sum(mags**2)
    out = [np.sum(mags[htcore.k_for_keep(keep, w.size):] ** 2) for keep in keeps]
    return np.sqrt(np.array(out) / total) if total > 0 else np.zeros(len(keeps))


KEEPS = (0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0)


@pytest.mark.parametrize("case", ["gaussian_f32", "gaussian_f64", "pruned_90pct", "ties", "tiny", "one", "zeros",
                                  "strided", "large"])
def test_curve_from_the_shared_sort_matches_numpy(case):
    # The compressibility curve analyze takes from the element kernel's sort: zeros count in W.size
    # (a keep above the nonzero fraction loses nothing), ties only change which entry, not the error.
    rng = np.random.default_rng(23)
    w = {
        "gaussian_f32": rng.standard_normal((64, 48)).astype(np.float32),
        "gaussian_f64": rng.standard_normal((64, 48)),
        "pruned_90pct": np.where(rng.random((100, 50)) < 0.9, 0.0, rng.standard_normal((100, 50))).astype(np.float32),
        "ties": np.round(rng.standard_normal(4000), 1),
        "tiny": rng.standard_normal(7),
        "one": np.array([[-3.0]], dtype=np.float32),
        "zeros": np.zeros((5, 4), dtype=np.float32),
        "strided": rng.standard_normal((40, 60))[:, ::3].copy(),
        "large": rng.standard_t(3, 1_500_000).astype(np.float32),
    }[case]
    found = element_measurements(w, 0, keeps=KEEPS)
    np.testing.assert_allclose(found.rel_error, reference_rel_error(w, KEEPS), rtol=1e-12, atol=1e-15)
    assert found.rel_error[0] == (1.0 if np.any(w) else 0.0) and found.rel_error[-1] == 0.0
    np.testing.assert_allclose(found.rel_error, htcore.compressibility_curve(w, KEEPS).rel_error, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("magnitude", [1e300, 1e-160, 1e-310])
def test_curve_from_the_shared_sort_of_weights_near_overflow_or_underflow(magnitude):
    # Squares of 1e300 overflow a plain sum and those of 1e-160 underflow (1e-310 is subnormal
    # itself): the kernel sums in units of the largest magnitude squared, as compressibility_curve does.
    unit = np.random.default_rng(24).standard_normal((64, 32))
    found = element_measurements(unit * magnitude, 0, keeps=KEEPS)
    np.testing.assert_allclose(found.rel_error, reference_rel_error(unit, KEEPS), rtol=1e-6 if magnitude < 1e-300 else 1e-12,
                               atol=1e-15)
    np.testing.assert_allclose(found.rel_error, htcore.compressibility_curve(unit * magnitude, KEEPS).rel_error,
                               rtol=1e-6 if magnitude < 1e-300 else 1e-12, atol=1e-15)
