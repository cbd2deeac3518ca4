"""compare_tails: the likelihood-ratio statistic against a direct numpy computation, verdicts on
samples whose answer is known, and agreement with the powerlaw package (optional dependency) on
its reference data sets and on synthetic samples."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from scipy.special import erfc
from scipy.stats import chi2

import htcore
from htcore.measure import ALTERNATIVES, compare_tails


def pareto(n: int, pdf_exponent: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1 - rng.random(n)) ** (-1 / (pdf_exponent - 1))


def test_exponential_test_statistic_matches_direct_formula():
    """R and p from the returned parameters, by the textbook formulas (Clauset et al. 2009, eq. 5.4)."""
    x = pareto(2000, 2.4, seed=3)
    xmin = 1.0
    result = compare_tails(x, xmin=xmin, alternatives=["exponential"])
    test = result["exponential"]
    tail = x[x >= xmin]
    a = 1 + tail.size / np.sum(np.log(tail / xmin))
    lam = test.parameters["Lambda"]
    diff = (np.log((a - 1) / xmin) - a * np.log(tail / xmin)) - (np.log(lam) - lam * (tail - xmin))
    n, var = tail.size, np.var(diff)
    assert result.pdf_exponent == pytest.approx(a, rel=1e-12)
    assert test.loglikelihood_ratio == pytest.approx(diff.sum(), rel=1e-9)
    assert test.R == pytest.approx(diff.sum() / np.sqrt(n * var), rel=1e-9)
    assert test.p_value == pytest.approx(erfc(abs(diff.sum()) / np.sqrt(2 * n * var)), rel=1e-9, abs=1e-300)
    # Nelder-Mead at tol 1e-4 lands near the closed-form MLE of the shifted exponential
    assert lam == pytest.approx(1 / (tail.mean() - xmin), rel=1e-3)


def test_truncated_power_law_uses_nested_rule():
    result = compare_tails(pareto(3000, 2.2, seed=4), xmin=1.0, alternatives=("truncated_power_law",))
    test = result["truncated_power_law"]
    assert test.nested
    assert test.p_value == pytest.approx(chi2.sf(2 * abs(test.loglikelihood_ratio), 1), rel=1e-12)
    assert not result["truncated_power_law"].loglikelihood_ratio > 1e-6  # the larger family fits at least as well


def test_verdicts_on_known_samples():
    power = compare_tails(pareto(20000, 2.5, seed=5), xmin=1.0)
    assert power["exponential"].favoured == "power_law"
    assert power["stretched_exponential"].favoured in ("power_law", "inconclusive")
    assert power["lognormal"].favoured == "inconclusive"  # a power law is a log-normal's limit
    rng = np.random.default_rng(6)
    exponential = compare_tails(1 + rng.exponential(1.0, 20000), xmin=1.0)
    assert exponential["exponential"].favoured == "exponential"
    assert exponential["exponential"].R < 0
    assert not exponential.power_law_favoured
    assert exponential.significance == 0.1


def test_default_xmin_is_fit_powerlaw_and_results_deterministic():
    x = np.random.default_rng(7).lognormal(0, 1.5, 3000)
    first, second = compare_tails(x), compare_tails(x.tolist())
    assert first.xmin == htcore.fit_powerlaw(x).xmin
    assert first.n_tail == int(np.count_nonzero(x >= first.xmin))
    assert first == second
    assert [t.alternative for t in first.tests] == list(ALTERNATIVES)


def test_summary_and_as_dict():
    result = compare_tails(pareto(1000, 2.5, seed=8), xmin=1.0, alternatives=("lognormal", "exponential"))
    text = result.summary()
    assert "lognormal" in text and "exponential" in text and "truncated" not in text
    data = json.loads(json.dumps(result.as_dict()))
    assert set(data["tests"]) == {"lognormal", "exponential"}
    assert data["tests"]["lognormal"]["R"] == result["lognormal"].R
    with pytest.raises(KeyError, match="stretched_exponential"):
        result["stretched_exponential"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sample": [1.0, -2.0, 3.0]}, ValueError, "positive"),
        ({"sample": [1.0, 0.0, 3.0]}, ValueError, "positive"),
        ({"sample": [1.0, np.nan, 3.0]}, ValueError, "non-finite"),
        ({"sample": []}, ValueError, "empty"),
        ({"sample": [[1.0, 2.0]]}, ValueError, "1-D"),
        ({"sample": [1.0, 2.0, 3.0], "alternatives": ["gaussian"]}, ValueError, "alternatives"),
        ({"sample": [1.0, 2.0, 3.0], "alternatives": []}, ValueError, "alternatives"),
        ({"sample": [1.0, 2.0, 3.0], "alternatives": ["lognormal", "lognormal"]}, ValueError, "distinct"),
        ({"sample": [1.0, 2.0, 3.0], "xmin": 3.0}, ValueError, "2 distinct"),
        ({"sample": [2.0, 2.0, 2.0], "xmin": 1.0}, ValueError, "2 distinct"),
        ({"sample": [1.0, 2.0, 3.0], "xmin": -1.0}, ValueError, "xmin"),
        ({"sample": [1.0, 2.0, 3.0], "significance": 1.5}, ValueError, "significance"),
    ],
)
def test_bad_input(kwargs, error, match):
    sample = kwargs.pop("sample")
    with pytest.raises(error, match=match):
        compare_tails(sample, **{"xmin": 1.0, **kwargs})


def _powerlaw_compare(x: np.ndarray, xmin: float, alternative: str) -> tuple[float, float]:
    powerlaw = pytest.importorskip("powerlaw", reason="powerlaw (optional test dependency) is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # powerlaw warns about integer data and boundary fits
        fit = powerlaw.Fit(x, xmin=xmin, verbose=0)
        R, p = fit.distribution_compare("power_law", alternative, normalized_ratio=True)
    return float(R), float(p)


def _assert_matches_powerlaw(x: np.ndarray) -> None:
    result = compare_tails(x)
    assert 1.5 < result.pdf_exponent <= 3  # where powerlaw keeps the closed-form exponent (module docstring)
    for test in result.tests:
        R, p = _powerlaw_compare(x, result.xmin, test.alternative)
        assert abs(test.R - R) <= 1e-6, (test.alternative, test.R, R)
        assert abs(test.p_value - p) <= 1e-6, (test.alternative, test.p_value, p)


@pytest.mark.parametrize("name", ["blackouts", "cities", "fires", "flares"])
def test_matches_powerlaw_on_reference_data(name):
    powerlaw = pytest.importorskip("powerlaw", reason="powerlaw (optional test dependency) is not installed")
    path = os.path.join(os.path.dirname(powerlaw.__file__), "reference_data", f"{name}.txt")
    if not os.path.exists(path):
        pytest.skip(f"powerlaw's reference data {name}.txt is not installed")
    _assert_matches_powerlaw(np.loadtxt(path))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_powerlaw_on_synthetic_samples(seed):
    rng = np.random.default_rng(seed)
    _assert_matches_powerlaw(pareto(4000, 2.5, seed=seed))
    _assert_matches_powerlaw(rng.lognormal(0.0, 2.0, 4000))
