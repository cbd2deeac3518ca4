"""Hill / moments / Pickands: numpy references at fixed k, validation, reproducibility, statistics."""
from __future__ import annotations

import numpy as np
import pytest

import htcore


def ref_xi(method: str, x: np.ndarray, k: int) -> float:
    """The DESIGN.md formulas, written plainly in numpy."""
    desc = np.sort(np.asarray(x, dtype=np.float64))[::-1]
    if method == "pickands":
        a, b, c = desc[k - 1], desc[2 * k - 1], desc[4 * k - 1]
        return float(np.log((a - b) / (b - c)) / np.log(2.0))
    logs = np.log(desc[:k]) - np.log(desc[k])
    m1 = np.mean(logs)
    if method == "hill":
        return float(m1)
    m2 = np.mean(logs**2)
    return float(m1 + 1 - 1 / (2 * (1 - m1**2 / m2)))


ESTIMATORS = {"hill": htcore.hill, "moments": htcore.moments, "pickands": htcore.pickands}


def samples(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "pareto": rng.pareto(1.7, 3000) + 1,
        "student_t": np.abs(rng.standard_t(3, 2500)) + 1e-300,
        "lognormal": rng.lognormal(0, 2, 2000),
        "small_values": rng.pareto(3.0, 1000) * 1e-8 + 1e-9,
    }


@pytest.mark.parametrize("method", ["hill", "moments", "pickands"])
def test_fixed_k_matches_numpy_reference(method):
    rng = np.random.default_rng(0)
    for name, x in samples(rng).items():
        k_max = x.size // 4 if method == "pickands" else x.size - 1
        k_min = 2 if method == "moments" else 1
        for k in [k_min, 2, 7, 50, k_max // 2, k_max]:
            got = ESTIMATORS[method](x, k)
            want = ref_xi(method, x, k)
            assert got.xi == pytest.approx(want, rel=1e-12, abs=1e-15), (name, k)
            assert got.k == k and got.n == x.size and got.method == method
            assert got.alpha == (1 / got.xi if got.xi > 0 else np.inf)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_and_strides(dtype):
    rng = np.random.default_rng(1)
    base = (rng.pareto(2.0, 4000) + 1).astype(dtype)
    strided = base[::2]  # non-contiguous
    assert not strided.flags["C_CONTIGUOUS"]
    for method, fn in ESTIMATORS.items():
        k = 100 if method != "pickands" else 50
        got = fn(strided, k).xi
        # float16 has many ties; use the same values the estimator sees.
        assert got == pytest.approx(ref_xi(method, strided.astype(np.float64), k), rel=1e-12)


def test_large_samples_sorted_exactly():
    # n >= 2^14 takes the radix sort (2^20 and more: in parallel); skewed key ranges, ties,
    # subnormals and outliers exercise its recursive buckets. Pickands reads single order
    # statistics, so any misplaced value shows.
    rng = np.random.default_rng(11)
    n = 1 << 20
    cases = {
        "student_t": np.abs(rng.standard_t(3, n)),
        "ties": np.round(rng.pareto(2.0, n) + 1, 2),
        "outlier": np.r_[rng.uniform(1.0, 2.0, n - 1), 1e30],
        "subnormal": np.r_[rng.uniform(1.0, 2.0, n // 2) * 5e-324 * 2**20, rng.pareto(1.0, n // 2) + 1],
    }
    before = htcore.get_num_threads()
    try:
        for name, x in cases.items():
            for threads in (1, 2):
                htcore.set_num_threads(threads)
                for k in [1, 1000, n // 8, n // 4]:
                    want = ref_xi("pickands", x, k)
                    try:
                        got = htcore.pickands(x, k).xi
                    except ValueError:  # tied order statistics
                        assert not np.isfinite(want) or name == "ties", (name, k)
                        continue
                    assert got == want, (name, threads, k)
                assert htcore.hill(x, n // 3).xi == pytest.approx(ref_xi("hill", x, n // 3), rel=1e-12)
    finally:
        htcore.set_num_threads(before)


def test_ties_raise_or_match():
    x = np.round(np.random.default_rng(2).pareto(2.0, 2000) + 1, 1)
    for k in [10, 300]:
        assert htcore.hill(x, k).xi == pytest.approx(ref_xi("hill", x, k), rel=1e-12)
    flat = np.r_[np.full(60, 50.0), np.arange(1.0, 41.0)]  # the top 60 values are tied
    with pytest.raises(ValueError, match="k = 50.*tied"):
        htcore.hill(flat, 50)
    assert htcore.hill(flat, 60).xi == pytest.approx(ref_xi("hill", flat, 60), rel=1e-12)
    with pytest.raises(ValueError, match="tied"):
        htcore.pickands(np.ones(40), 5)


def test_confidence_interval_formulas():
    x = np.random.default_rng(3).pareto(2.0, 5000) + 1
    e = htcore.hill(x, 400, ci=0.9)
    z = 1.6448536269514722
    assert e.ci_low == pytest.approx(1 / (e.xi * (1 + z / 20)), rel=1e-12)
    assert e.ci_high == pytest.approx(1 / (e.xi * (1 - z / 20)), rel=1e-12)
    wide = htcore.hill(x, 400, ci=0.99)
    assert wide.ci_low < e.ci_low < e.alpha < e.ci_high < wide.ci_high
    m = htcore.moments(x, 400)
    half = 1.959963984540054 * np.sqrt(1 + m.xi**2) / 20
    assert m.ci_low == pytest.approx(1 / (m.xi + half), rel=1e-12)
    p = htcore.pickands(x, 100)
    assert p.ci_low < p.alpha < p.ci_high


def test_validation_messages():
    good = np.random.default_rng(4).pareto(2.0, 100) + 1
    with pytest.raises(ValueError, match="non-finite"):
        htcore.hill(np.r_[good, np.nan], 5)
    with pytest.raises(ValueError, match="2 value"):
        htcore.hill(np.r_[good, 0.0, -1.0], 5)
    with pytest.raises(ValueError, match=r"k = 100.*|n = 100"):
        htcore.hill(good, 100)
    with pytest.raises(ValueError, match=r"1 <= k <= 25 for n = 100 samples, got k = 26"):
        htcore.pickands(good, 26)
    with pytest.raises(ValueError, match="2 <= k <= 99 for n = 100 samples, got k = 1"):
        htcore.moments(good, 1)
    with pytest.raises(TypeError, match="k"):
        htcore.hill(good, 2.5)
    with pytest.raises(ValueError, match="at least 20 samples, got n = 19"):
        htcore.hill(good[:19])
    with pytest.raises(ValueError, match="1-D"):
        htcore.hill(good.reshape(10, 10), 3)
    with pytest.raises(ValueError, match="ci"):
        htcore.hill(good, 3, ci=1.0)
    with pytest.raises(ValueError):
        htcore.hill(np.array([]), 1)
    with pytest.raises(ValueError, match="n = 1"):
        htcore.hill(np.array([2.0]), 1)


def test_auto_k_reproducible_and_thread_independent():
    x = np.abs(np.random.default_rng(5).standard_t(3, 30000))
    before = htcore.get_num_threads()
    try:
        for fn in ESTIMATORS.values():
            htcore.set_num_threads(1)
            one = fn(x, random_state=7)
            htcore.set_num_threads(2)
            two = fn(x, random_state=7)
            assert one == two
            assert fn(x, random_state=np.random.default_rng(7)) == one
        # Large enough that the second-order sums (k1 = n^0.995 > 1e5 terms) run in parallel.
        big = np.abs(np.random.default_rng(8).standard_t(3, 150_000))
        htcore.set_num_threads(1)
        one = htcore.hill(big, random_state=7)
        htcore.set_num_threads(2)
        assert htcore.hill(big, random_state=7) == one
    finally:
        htcore.set_num_threads(before)


def test_auto_k_seeds_differ_but_agree():
    x = np.abs(np.random.default_rng(6).standard_t(3, 30000))
    ks = {htcore.hill(x, random_state=s).k for s in range(4)}
    assert len(ks) > 1  # the seed enters
    assert all(50 < k < 5000 for k in ks)


def test_auto_k_survives_few_values_above_one_and_ties():
    # Voitalov's script crashes on such samples (amse border); htcore must not.
    rng = np.random.default_rng(7)
    x = np.r_[rng.uniform(0.01, 0.5, 5000), 1.5, 2.0, 3.0]
    for fn in ESTIMATORS.values():
        e = fn(x)
        assert e.k >= 1 and np.isfinite(e.xi)
    ties = np.round(rng.pareto(2.0, 5000) + 1, 1)
    assert htcore.hill(ties).k >= 2


def test_element_sample():
    w = np.array([[0.0, -2.0, 3.0], [0.5, 0.0, -0.25]], dtype=np.float32)[:, ::-1]
    got = htcore.element_sample(w)
    assert got.dtype == np.float32 and got.ndim == 1
    np.testing.assert_array_equal(np.sort(got), [0.25, 0.5, 2.0, 3.0])
    assert htcore.element_sample(np.zeros(3)).size == 0
    with pytest.raises(ValueError, match="non-finite"):
        htcore.element_sample(np.array([1.0, np.inf]))


SAMPLERS = {
    "pareto_1.5": (1.5, lambda g, n: g.pareto(1.5, n) + 1),
    "pareto_2.5": (2.5, lambda g, n: g.pareto(2.5, n) + 1),
    "pareto_4": (4.0, lambda g, n: g.pareto(4.0, n) + 1),
    "student_t_3": (3.0, lambda g, n: np.abs(g.standard_t(3, n))),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_auto_k_hill_covers_the_truth(name):
    alpha, draw = SAMPLERS[name]
    hits = 0
    for rep in range(100):
        x = draw(np.random.default_rng(1000 + rep), 100_000)
        e = htcore.hill(x, random_state=rep)
        hits += e.ci_low <= alpha <= e.ci_high
    assert hits >= 85, f"{name}: truth inside the 95% CI in {hits}/100 repetitions"


def ref_second_order(x: np.ndarray) -> tuple[float, float, bool]:
    """rho (Fraga Alves et al. 2003, tau = 0, capped at -1/4) and beta (Gomes & Martins 2002) at
    k1 = floor(n^0.995), plainly in numpy; also whether the cap was active."""
    n = x.size
    k1 = int(n**0.995)
    logs = np.log(np.sort(x)[::-1][: k1 + 1])
    d = logs[:k1] - logs[k1]
    m1, m2, m3 = d.mean(), np.mean(d**2), np.mean(d**3)
    t = (np.log(m1) - np.log(m2 / 2) / 2) / (np.log(m2 / 2) / 2 - np.log(m3 / 6) / 3)
    raw = -abs(3 * (t - 1) / (t - 3))
    rho = min(raw, -0.25)
    i = np.arange(1, k1 + 1)
    u = i * (logs[:k1] - logs[1:])
    w = (i / k1) ** -rho
    d_rho, d0, d1, d2 = w.mean(), u.mean(), np.mean(w * u), np.mean(w * w * u)
    beta = (k1 / n) ** rho * (d_rho * d0 - d1) / (d_rho * d1 - d2)
    return rho, beta, raw > -0.25


def test_auto_k_interval_is_the_documented_root_mse_interval():
    z = 1.959963984540054
    cases = {
        "student_t_3": np.abs(np.random.default_rng(1000).standard_t(3, 20_000)),
        # An exact Pareto sample whose noise-level rho_hat lies above the cap (-0.004 uncapped).
        "pareto_capped": np.random.default_rng(1009).pareto(2.5, 100_000) + 1,
    }
    for name, x in cases.items():
        rho, beta, capped = ref_second_order(x)
        assert capped == (name == "pareto_capped")
        n = x.size
        for method in ["hill", "moments", "pickands"]:
            e = ESTIMATORS[method](x, random_state=3)
            a = e.xi * beta * (n / e.k) ** rho
            if method == "hill":
                sd, bias = e.xi, a / (1 - rho)
            elif method == "moments":
                sd, bias = np.sqrt(1 + e.xi**2), a * (e.xi * (1 - rho) + rho) / (e.xi * (1 - rho) ** 2)
            else:  # Pickands keeps the plain interval
                plain = htcore.pickands(x, e.k)
                assert (e.ci_low, e.ci_high) == (plain.ci_low, plain.ci_high), name
                continue
            half = z * np.hypot(sd / np.sqrt(e.k), bias)
            assert e.ci_low == pytest.approx(1 / (e.xi + half), rel=1e-9), (name, method)
            assert e.ci_high == pytest.approx(1 / (e.xi - half), rel=1e-9), (name, method)
            if name == "student_t_3" and method == "hill":
                assert bias / (e.xi / np.sqrt(e.k)) > 0.3  # the bias term matters here
            # With k given, the same k gives the plain interval.
            fixed = ESTIMATORS[method](x, e.k)
            assert fixed.xi == e.xi and fixed.ci_high - fixed.ci_low < e.ci_high - e.ci_low


def test_moments_on_gaussian_is_light_tailed():
    for rep in range(5):
        x = np.abs(np.random.default_rng(rep).standard_normal(100_000))
        assert htcore.moments(x, random_state=rep).xi <= 0.05


def test_pickands_interval_survives_an_extreme_outlier():
    """xi near 1000 (a 1e300 outlier at k = 1) must give a finite estimate, not an OverflowError."""
    x = np.concatenate([np.random.default_rng(0).pareto(2.0, 1000) + 1.0, [1e300]])
    e = htcore.pickands(x, k=1)
    assert e.xi > 100 and np.isfinite(e.ci_low) and e.ci_low <= e.alpha


def test_float32_auto_k_bitwise_equals_float64():
    # float32 samples bind without a float64 copy, and with auto k hill/moments write the logs
    # over the sorted copy: the same values must give the same bits as float64 input and as the
    # fixed-k path at the chosen k, at 1 and 2 threads (2^20 + samples: the parallel sort).
    x32 = np.abs(np.random.default_rng(12).standard_t(3, (1 << 20) + 3)).astype(np.float32)
    x32 = x32[x32 > 0]
    x64 = x32.astype(np.float64)
    before = htcore.get_num_threads()
    try:
        for method, fn in ESTIMATORS.items():
            results = []
            for threads in (1, 2):
                htcore.set_num_threads(threads)
                results += [fn(x32, random_state=3), fn(x64, random_state=3)]
            assert all(r == results[0] for r in results), method
            got = results[0]
            assert fn(x64, got.k).xi == got.xi, method
            assert got.xi == pytest.approx(ref_xi(method, x64, got.k), rel=1e-12), method
    finally:
        htcore.set_num_threads(before)
