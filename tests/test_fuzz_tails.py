"""Property-based tests (hypothesis) for the tail estimators: hill / moments / pickands (fixed and
automatic k), fit_powerlaw (exact and grid candidates, xmin / xmax, bootstrap) and element_sample.

Expected: the numpy reference of DESIGN.md's formulas where it is defined, a ValueError where
ties make it undefined (0/0, log 0) or for NaN/Inf, non-positive, empty or 2-D samples and k out
of range, and a TypeError for complex / object / str arrays; never a crash. Reproducible
(``derandomize=True``); inputs per test: ``pytest tests/test_fuzz_tails.py --hypothesis-show-statistics``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import htcore
from layouts import with_layout
from test_powerlaw_fit import reference_fit
from test_tails import ref_xi

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
ESTIMATORS = {"hill": htcore.hill, "moments": htcore.moments, "pickands": htcore.pickands}
KINDS = ("pareto", "ties", "tiny", "huge", "lognormal")
DTYPES = (np.float64, np.float32, np.float16, np.int32, np.uint8)
VIEWS = ("contiguous", "strided", "negative_stride", "readonly")
BAD_DTYPES = {"complex": np.complex128, "object": object, "str": np.str_}


def sample(seed: int, n: int, kind: str, dtype) -> np.ndarray:
    """n positive values of ``dtype`` (clipped away from 0 after the cast)."""
    rng = np.random.default_rng(seed)
    x = {"pareto": lambda: rng.pareto(1.5, n) + 1, "ties": lambda: rng.integers(1, 5, n).astype(float),
         "tiny": lambda: (rng.pareto(2.0, n) + 1) * 1e-30, "huge": lambda: (rng.pareto(0.8, n) + 1) * 1e30,
         "lognormal": lambda: rng.lognormal(0, 3, n)}[kind]()
    if np.issubdtype(dtype, np.integer):
        return np.clip(np.rint(x), 1, np.iinfo(dtype).max).astype(dtype)
    finfo = np.finfo(dtype)
    return np.clip(x, finfo.tiny, finfo.max).astype(dtype)


def reference(method: str, x: np.ndarray, k: int) -> float:
    """DESIGN.md's formula, or nan where it is undefined (0/0, a log of 0, division by 0)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return ref_xi(method, x, k)


samples = st.tuples(st.integers(0, 2**32 - 1), st.one_of(st.integers(5, 80), st.integers(0, 4)), st.sampled_from(KINDS), st.sampled_from(DTYPES),
                    st.sampled_from(VIEWS))


@settings(FUZZ, max_examples=400)
@given(st.sampled_from(sorted(ESTIMATORS)), samples, st.booleans())
def test_fixed_k_matches_reference_or_raises(method, spec, k_out_of_range):
    """Expected: xi of the reference (rel 1e-10) when it is finite and k is in range; else ValueError."""
    seed, n, kind, dtype, how = spec
    x = with_layout(sample(seed, n, kind, dtype), how)
    k_min, k_max = (2 if method == "moments" else 1), (n // 4 if method == "pickands" else n - 1)
    rng = np.random.default_rng(seed + 1)
    if not k_out_of_range and k_min <= k_max:
        k = int(rng.integers(k_min, k_max + 1))
    else:
        k = int(rng.choice([k_min - 1, k_max + 1, -(2**40), 2**62]))
    if not k_min <= k <= k_max:
        event("k out of range")
        with pytest.raises(ValueError, match="k|positive|empty"):
            ESTIMATORS[method](x, k)
        return
    want = reference(method, np.asarray(x, np.float64), k)
    if not np.isfinite(want):
        event("undefined (ties)")
        with pytest.raises(ValueError):
            ESTIMATORS[method](x, k)
        return
    try:
        got = ESTIMATORS[method](x, k)
    except ValueError as exc:  # documented: ties at the order statistics used make it undefined
        event("undefined (ties, rounding)")
        assert "tied" in str(exc), exc
        assert method != "hill" or want == 0  # Hill: X_(1) = ... = X_(k+1)
        return
    event("compared with the reference")
    assert got.xi == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert got.k == k and got.n == n and got.alpha == (1 / got.xi if got.xi > 0 else np.inf)
    assert got.ci_low <= got.alpha <= got.ci_high


@settings(FUZZ, max_examples=25)
@given(st.sampled_from(sorted(ESTIMATORS)), st.tuples(st.integers(0, 2**32 - 1), st.one_of(st.integers(20, 400), st.integers(0, 19)),
       st.sampled_from(KINDS), st.sampled_from(DTYPES), st.sampled_from(VIEWS)), st.integers(0, 2**32 - 1))
def test_auto_k_is_valid_and_reproducible(method, spec, seed):
    """Expected: for n >= 20 a k in the estimator's range, the same result for the same seed;
    for n < 20 a ValueError. (Ties may make the estimate undefined: ValueError.)"""
    x = with_layout(sample(*spec[:4]), spec[4])
    n = x.size
    event(f"n {'< 20' if n < 20 else '>= 20'}")
    if n < 20:
        with pytest.raises(ValueError, match="at least 20"):
            ESTIMATORS[method](x, random_state=seed)
        return
    try:
        first = ESTIMATORS[method](x, random_state=seed)
    except ValueError as exc:
        assert "tie" in str(exc) or "undefined" in str(exc), exc
        return
    assert first == ESTIMATORS[method](x, random_state=np.random.default_rng(seed))
    assert 1 <= first.k <= (n // 4 if method == "pickands" else n - 1)
    assert not np.isnan(first.xi)


@FUZZ
@given(samples, st.sampled_from([None, 2, 5, 50]), st.sampled_from([None, 0.5, 0.9]))
def test_fit_powerlaw_matches_brute_force(spec, grid, xmax_quantile):
    """Expected: the brute-force Clauset fit (exact or on the grid), or ValueError when fewer than
    2 distinct values (<= xmax) remain."""
    x = with_layout(sample(*spec[:4]), spec[4])
    x64 = np.asarray(x, np.float64)
    xmax = None if xmax_quantile is None or x.size == 0 else float(np.quantile(x64, xmax_quantile))
    kept = x64 if xmax is None else x64[x64 <= xmax]
    if np.unique(kept).size < 2:
        with pytest.raises(ValueError):
            htcore.fit_powerlaw(x, xmax=xmax, candidates=grid)
        return
    event("compared with the reference")
    got = htcore.fit_powerlaw(x, xmax=xmax, candidates=grid)
    with np.errstate(all="ignore"):
        xmin, (a, d, n_tail) = reference_fit(x64, xmax, grid)
    assert got.xmin == xmin and got.n_tail == n_tail
    assert got.pdf_exponent == pytest.approx(a, rel=1e-10)
    assert got.ks_distance == pytest.approx(d, rel=1e-8, abs=1e-12)


@settings(FUZZ, max_examples=30)
@given(samples, st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_fit_powerlaw_fixed_xmin_and_bootstrap(spec, reps, seed):
    """Expected: a p-value in [0, 1] reproducible from the seed; xmin at or above the second
    largest distinct value -> ValueError (fewer than 2 distinct tail values)."""
    x = sample(*spec[:4])
    u = np.unique(np.asarray(x, np.float64))
    if u.size < 2:
        return
    with pytest.raises(ValueError):
        htcore.fit_powerlaw(x, xmin=float(u[-1]))
    xmin = float(u[0])
    fit = htcore.fit_powerlaw(x, xmin=xmin, gof_bootstrap=reps, random_state=seed)
    assert fit.xmin == xmin and 0 <= fit.p_value <= 1
    assert fit == htcore.fit_powerlaw(x, xmin=xmin, gof_bootstrap=reps, random_state=seed)


@FUZZ
@given(st.sampled_from(["nan", "inf", "-inf", "zero", "negative", "empty", "2d", "complex", "object", "str"]),
       st.sampled_from(["hill", "moments", "pickands", "auto", "fit", "fit_grid", "element"]),
       st.integers(0, 2**32 - 1))
def test_bad_samples_raise(bad, entry, seed):
    """Expected: ValueError for NaN/Inf, non-positive, empty or 2-D samples (element_sample takes
    any shape and drops zeros, so only NaN/Inf and bad dtypes raise there); TypeError for
    complex / object / str arrays."""
    x = sample(seed, 40, "pareto", np.float64)
    if bad in BAD_DTYPES:
        x = x.astype(BAD_DTYPES[bad])
    elif bad == "empty":
        x = x[:0]
    elif bad == "2d":
        x = x.reshape(4, 10)
    else:
        x[seed % 40] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "zero": 0.0, "negative": -1.0}[bad]
    calls = {"hill": lambda: htcore.hill(x, 3), "moments": lambda: htcore.moments(x, 3),
             "pickands": lambda: htcore.pickands(x, 3), "auto": lambda: htcore.hill(x),
             "fit": lambda: htcore.fit_powerlaw(x), "fit_grid": lambda: htcore.fit_powerlaw(x, candidates=4),
             "element": lambda: htcore.element_sample(x)}
    if entry == "element" and bad in ("zero", "negative", "empty", "2d"):
        got = htcore.element_sample(x)
        mags = np.abs(np.asarray(x, np.float64)).ravel()
        np.testing.assert_array_equal(got, mags[mags > 0])
        return
    with pytest.raises(TypeError if bad in BAD_DTYPES else ValueError):
        calls[entry]()


@FUZZ
@given(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.booleans(), st.text(max_size=1), st.none()),
       st.sampled_from(["k", "ci", "xmin", "xmax", "candidates", "gof_bootstrap", "random_state"]))
def test_bad_parameters_raise(value, name):
    """Expected: the documented parameter ranges are enforced with TypeError/ValueError; accepted
    values give a finite-or-inf alpha."""
    x = sample(1, 50, "pareto", np.float64)
    call = {"k": lambda: htcore.hill(x, value), "ci": lambda: htcore.hill(x, 5, ci=value),
            "xmin": lambda: htcore.fit_powerlaw(x, xmin=value), "xmax": lambda: htcore.fit_powerlaw(x, xmax=value),
            "candidates": lambda: htcore.fit_powerlaw(x, candidates=value),
            "gof_bootstrap": lambda: htcore.fit_powerlaw(x, gof_bootstrap=value),
            "random_state": lambda: htcore.hill(x, random_state=value)}[name]
    try:
        result = call()
    except (TypeError, ValueError):
        return
    valid = {"k": lambda v: type(v) is int and 1 <= v <= 49 or v is None,
             "ci": lambda v: type(v) in (int, float) and 0 < v < 1,
             "xmin": lambda v: v is None or (type(v) in (int, float) and 0 < v < np.inf),
             "xmax": lambda v: v is None or (type(v) in (int, float) and 0 < v < np.inf),
             "candidates": lambda v: v is None or (type(v) is int and v >= 2),
             "gof_bootstrap": lambda v: type(v) is int and v >= 0,
             "random_state": lambda v: v is None or (type(v) is int and v >= 0)}[name]
    assert valid(value), f"{name}={value!r} was accepted"
    assert not np.isnan(result.alpha)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(1, 3)),
       st.sampled_from((np.float16, np.float32, np.float64, np.int8, np.bool_)), st.sampled_from(VIEWS))
def test_element_sample_matches_numpy(seed, shape, dtype, how):
    """Expected: |w| of every non-zero entry in C order; float64 kept, other dtypes as float32."""
    rng = np.random.default_rng(seed)
    W = (rng.integers(-2, 3, size=shape) * rng.standard_t(2, size=shape)).astype(dtype)
    W = with_layout(W.reshape(-1), how).reshape(shape) if how != "strided" else W[:, :, ::1]
    got = htcore.element_sample(W)
    mags = np.abs(np.asarray(W, np.float64)).ravel()
    assert got.dtype == (np.float64 if W.dtype == np.float64 else np.float32)
    np.testing.assert_array_equal(got.astype(np.float64), mags[mags > 0])
