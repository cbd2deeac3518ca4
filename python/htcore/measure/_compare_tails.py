"""Is a tail a power law at all? Clauset, Shalizi & Newman (2009) likelihood-ratio tests.

`compare_tails` fits, on the tail x >= xmin of a positive sample, a continuous power law and each
alternative (exponential, log-normal, stretched exponential (Weibull), truncated power law), and
compares their log-likelihoods point by point (Vuong's test):

- R = sum_i (ln p_pl(x_i) - ln p_alt(x_i)) over the n tail points; the reported ``R`` is normalised,
  R / sqrt(n var), var the (1/n) variance of the pointwise differences; R > 0 favours the power law;
- non-nested alternatives: two-sided p = erfc(|R| / sqrt(2 n var));
- the truncated power law nests the power law (Lambda = 0), so, as in ``powerlaw``, its p-value is
  the nested rule p = 1 - chi2_1.cdf(2 |R|) with the raw (unnormalised) R;
- ``favoured``: the power law (R > 0) or the alternative (R < 0) when p < ``significance``
  (default 0.1, Clauset et al.'s level), else "inconclusive".

Definitions match ``powerlaw.Fit(x, xmin=xmin).distribution_compare("power_law", alternative,
normalized_ratio=True)`` of powerlaw 2.0 (continuous case): the same densities, normalisations,
starting points, parameter ranges (open intervals: outside them every point has likelihood
1e-307, as in powerlaw), the same bounded Nelder-Mead (scipy, tol 1e-4) on the same negative
log-likelihood, and likelihoods that underflow to 0 replaced by 1e-307. The exponential, stretched
exponential and truncated power law objectives are evaluated from sufficient statistics (sum x,
sum ln x, sum x^beta) wherever no point's likelihood can underflow, and point by point otherwise,
which is what makes this fast; the log-normal's, whose optimum on power-law data lies on a flat
ridge where Nelder-Mead's path depends on rounding, repeats powerlaw's arithmetic point by point.

One deliberate difference: the power law's pdf exponent is always the closed-form MLE
a = 1 + n / sum ln(x / xmin) (as `htcore.fit_powerlaw`); powerlaw 2.0 keeps it only in (1.5, 3] and
otherwise replaces it by a Nelder-Mead fit clamped to [0, 3]. Outside (1.5, 3] the two therefore
differ. The truncated power law keeps powerlaw's range alpha in (0, 3), so for a power-law
exponent above 3 it no longer nests the fitted power law.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .._validation import as_float_array, check_fraction
from ._powerlaw_fit import fit_powerlaw

__all__ = ["ALTERNATIVES", "LikelihoodRatioTest", "TailComparison", "TailVerdict", "compare_tails", "tail_verdict"]

ALTERNATIVES = ("exponential", "lognormal", "stretched_exponential", "truncated_power_law")
_TINY = 10.0 ** sys.float_info.min_10_exp  # powerlaw's stand-in for a zero likelihood
_LOG_TINY = float(np.log(_TINY))
_SAFE_LOG = -700.0
_SQRT_PI = np.longdouble("1.77245385090551602729816748334114518")
_SERIES_TOL = np.longdouble(1e-22)  # a log-density above this cannot underflow: sufficient statistics are exact


@dataclass(frozen=True)
class LikelihoodRatioTest:
    """Power law against one alternative on the same tail.

    Attributes:
        alternative: the alternative's name (one of `ALTERNATIVES`).
        R: normalised log-likelihood ratio R / sqrt(n var); > 0 favours the power law.
        p_value: two-sided Vuong p-value (nested chi-square rule for the truncated power law).
        favoured: "power_law", the alternative's name, or "inconclusive" (p >= significance).
        loglikelihood_ratio: the raw R, sum of pointwise log-likelihood differences.
        nested: whether the nested rule gave the p-value.
        parameters: the alternative's fitted parameters, by powerlaw's names.
    """

    alternative: str
    R: float
    p_value: float
    favoured: str
    loglikelihood_ratio: float
    nested: bool
    parameters: dict[str, float]


@dataclass(frozen=True)
class TailComparison:
    """Result of `compare_tails`: the power-law fit and one `LikelihoodRatioTest` per alternative."""

    xmin: float
    n_tail: int
    pdf_exponent: float
    significance: float
    tests: tuple[LikelihoodRatioTest, ...]

    def __getitem__(self, alternative: str) -> LikelihoodRatioTest:
        for test in self.tests:
            if test.alternative == alternative:
                return test
        raise KeyError(f"no test against {alternative!r}; tested: {[t.alternative for t in self.tests]}")

    @property
    def power_law_favoured(self) -> bool:
        """True when no alternative is significantly better than the power law."""
        return all(test.favoured != test.alternative for test in self.tests)

    def summary(self) -> str:
        """A plain-text table, one line per alternative."""
        lines = [f"power law: pdf exponent {self.pdf_exponent:.4g}, xmin {self.xmin:.6g}, n_tail {self.n_tail}, "
                 f"significance {self.significance:g}",
                 f"{'alternative':<23}{'R':>10}{'p':>12}  favoured"]
        for t in self.tests:
            lines.append(f"{t.alternative:<23}{t.R:>10.4g}{t.p_value:>12.4g}  {t.favoured}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """Plain types, for JSON."""
        return {"xmin": self.xmin, "n_tail": self.n_tail, "pdf_exponent": self.pdf_exponent,
                "significance": self.significance,
                "tests": {t.alternative: {"R": t.R, "p_value": t.p_value, "favoured": t.favoured,
                                          "loglikelihood_ratio": t.loglikelihood_ratio, "nested": t.nested,
                                          "parameters": dict(t.parameters)} for t in self.tests}}


class _Tail:
    """The sorted tail x >= xmin and the sums the objectives need."""

    def __init__(self, x: np.ndarray, xmin: float):
        self.x, self.xmin, self.n = x, xmin, x.size
        self.log_x = np.log(x)
        self.inv_x = 1 / x
        self.sum_x = float(np.sum(x))
        self.sum_log = float(np.sum(self.log_x))
        self.lo, self.hi = float(x[0]), float(x[-1])


def _clamped_log(likelihoods: np.ndarray) -> np.ndarray:
    """ln of powerlaw's likelihoods: zeros become 1e-307 (the ratio's -inf cleaning is then moot)."""
    likelihoods = np.asarray(likelihoods, dtype=np.float64)
    likelihoods[likelihoods == 0] = _TINY
    return np.log(likelihoods)


def _upper_gamma(s: float, x: float) -> float:
    """Upper incomplete gamma Gamma(s, x) for s > -3 (negative s by Gamma(s, x) = (Gamma(s+1, x) - x^s e^-x) / s)."""
    from scipy.special import exp1, gamma, gammaincc

    if s > 0:
        return float(gammaincc(s, x) * gamma(s))
    if s == 0:
        return float(exp1(x))
    return (_upper_gamma(s + 1.0, x) - x**s * np.exp(-x)) / s


# Each alternative: initial parameters, bounds, and the tail log-likelihood (pointwise, and summed
# from sufficient statistics or None when some point could underflow). Parameters are in range.
def _exponential_pointwise(t: _Tail, p: np.ndarray) -> np.ndarray:
    lam = p[0]
    return _clamped_log(lam * np.exp(lam * (t.xmin - t.x)))


def _exponential_sum(t: _Tail, p: np.ndarray) -> float | None:
    lam = p[0]
    if np.log(lam) - lam * (t.hi - t.xmin) < _SAFE_LOG:
        return None
    return t.n * np.log(lam) - lam * (t.sum_x - t.n * t.xmin)


def _erfc(z: float) -> float:
    """erfc(z) in long double, then rounded: scipy's loses up to 1e-13 relative for z > 3, and the
    log-normal fit on power-law data sits on a flat ridge where Nelder-Mead follows the
    normalisation's last bits (powerlaw computes it exactly, with mpmath). z < 2.5: the positive
    series erf(z) = 2/sqrt(pi) e^(-z^2) sum_n 2^n z^(2n+1) / (1 3 ... (2n+1)); beyond, the continued
    fraction erfc(z) = e^(-z^2) / sqrt(pi) / (z + (1/2) / (z + 1 / (z + (3/2) / (z + ...))))."""
    x = np.longdouble(z)
    if x < 0:
        return float(2 - np.longdouble(_erfc(-z)))
    x2 = x * x
    if x < 2.5:
        term = total = x
        n = 0
        while term > total * _SERIES_TOL:
            term = term * 2 * x2 / (2 * n + 3)
            total += term
            n += 1
        return float(1 - 2 / _SQRT_PI * np.exp(-x2) * total)
    fraction = x
    for k in range(int(50 + 2500 / z**2), 0, -1):  # enough terms for long double accuracy at z >= 2.5
        fraction = x + np.longdouble(k) / 2 / fraction
    return float(np.exp(-x2) / _SQRT_PI / fraction)


def _lognormal_norm(t: _Tail, p: np.ndarray) -> float:
    mu, sigma = p
    return float(sigma * np.sqrt(np.pi / 2) * _erfc(-(mu - np.log(t.xmin)) / (sigma * np.sqrt(2))))


def _lognormal_pointwise(t: _Tail, p: np.ndarray) -> np.ndarray:
    """powerlaw's arithmetic step by step: on the flat ridge even the summation order matters."""
    mu, sigma = p
    norm = _lognormal_norm(t, p)
    if not norm > 0:
        return np.full(t.n, _LOG_TINY)
    return _clamped_log(t.inv_x * np.exp(-((t.log_x - mu) ** 2) / (2 * sigma**2)) / norm)


def _stretched_pointwise(t: _Tail, p: np.ndarray) -> np.ndarray:
    lam, beta = p
    norm = beta * lam * np.exp(np.longdouble(lam * t.xmin) ** beta)  # long double, as powerlaw
    f = (t.x * lam) ** (beta - 1) * np.exp(-((lam * t.x) ** beta))
    return _clamped_log(f * norm)


def _stretched_sum(t: _Tail, p: np.ndarray) -> float | None:
    lam, beta = p
    ends = lam * np.array([t.lo, t.hi])
    log_f = (beta - 1) * np.log(ends) - ends**beta  # concave or monotone in ln x: extremes at the ends
    log_norm = np.log(beta * lam) + (lam * t.xmin) ** beta
    if log_f.min() < _SAFE_LOG or log_f.max() + log_norm > -_SAFE_LOG:
        return None
    powers = float(np.sum(np.exp(beta * t.log_x)))
    return ((beta - 1) * (t.sum_log + t.n * np.log(lam)) - lam**beta * powers
            + t.n * (np.log(beta * lam) + (lam * t.xmin) ** beta))


def _truncated_norm(t: _Tail, p: np.ndarray) -> float:
    alpha, lam = p
    return float(lam ** (1 - alpha) / _upper_gamma(1 - alpha, lam * t.xmin))


def _truncated_pointwise(t: _Tail, p: np.ndarray) -> np.ndarray:
    alpha, lam = p
    return _clamped_log(t.x ** (-alpha) * np.exp(-lam * t.x) * _truncated_norm(t, p))


def _truncated_sum(t: _Tail, p: np.ndarray) -> float | None:
    alpha, lam = p
    norm = _truncated_norm(t, p)
    ends = np.array([t.lo, t.hi])
    log_f = -alpha * np.log(ends) - lam * ends
    if not 0 < norm < np.inf or log_f.min() < _SAFE_LOG or log_f.max() + np.log(norm) > -_SAFE_LOG:
        return None
    return t.n * np.log(norm) - alpha * t.sum_log - lam * t.sum_x


@dataclass(frozen=True)
class _Family:
    names: tuple[str, ...]
    bounds: tuple[tuple[float | None, float | None], ...]
    start: Callable[[_Tail], list[float]]
    pointwise: Callable[[_Tail, np.ndarray], np.ndarray]
    summed: Callable[[_Tail, np.ndarray], float | None] | None  # None: always point by point


_FAMILIES = {
    "exponential": _Family(("Lambda",), ((0, None),), lambda t: [1 / np.mean(t.x)],
                           _exponential_pointwise, _exponential_sum),
    "lognormal": _Family(("mu", "sigma"), ((None, None), (0, None)),
                         lambda t: [np.mean(t.log_x), np.std(t.log_x)], _lognormal_pointwise, None),
    "stretched_exponential": _Family(("Lambda", "beta"), ((0, None), (0, None)), lambda t: [1 / np.mean(t.x), 1],
                                     _stretched_pointwise, _stretched_sum),
    "truncated_power_law": _Family(("alpha", "Lambda"), ((0, 3), (0, None)),
                                   lambda t: [1 + t.n / np.sum(np.log(t.x / t.xmin)), 1 / np.mean(t.x)],
                                   _truncated_pointwise, _truncated_sum),
}


def _in_range(family: _Family, p: np.ndarray) -> bool:
    return all((lo is None or v > lo) and (hi is None or v < hi) for v, (lo, hi) in zip(p, family.bounds))


def _fit(family: _Family, tail: _Tail) -> np.ndarray:
    """powerlaw's fit: bounded Nelder-Mead (tol 1e-4) on the negative log-likelihood from its start."""
    from scipy.optimize import minimize  # scipy on first use: `import htcore` stays light

    out_of_range = -tail.n * _LOG_TINY

    def objective(p: np.ndarray) -> float:
        if not _in_range(family, p):
            return out_of_range
        total = None if family.summed is None else family.summed(tail, p)
        return -(float(np.sum(family.pointwise(tail, p))) if total is None else total)

    lower = [-np.inf if lo is None else lo for lo, _ in family.bounds]
    upper = [np.inf if hi is None else hi for _, hi in family.bounds]
    start = np.clip(np.asarray(family.start(tail), dtype=np.float64), lower, upper)  # as scipy would, silently
    with np.errstate(all="ignore"):
        result = minimize(objective, x0=start, bounds=family.bounds, method="Nelder-Mead", tol=1e-4)
    return np.asarray(result.x, dtype=np.float64)


def _ratio_test(alternative: str, tail: _Tail, power_law_ll: np.ndarray, significance: float) -> LikelihoodRatioTest:
    from scipy.special import erfc
    from scipy.stats import chi2

    family = _FAMILIES[alternative]
    params = _fit(family, tail)
    with np.errstate(all="ignore"):
        alt_ll = family.pointwise(tail, params) if _in_range(family, params) else np.full(tail.n, _LOG_TINY)
    diff = power_law_ll - alt_ll
    raw = float(np.sum(diff))
    variance = float(np.sum((diff - (np.mean(power_law_ll) - np.mean(alt_ll))) ** 2) / tail.n)
    nested = alternative == "truncated_power_law"
    scale = np.sqrt(tail.n * variance)
    if nested:
        p_value = float(chi2.sf(abs(2 * raw), 1))
    else:
        p_value = float(erfc(abs(raw) / (np.sqrt(2.0) * scale))) if scale > 0 else float(raw == 0)
    R = raw / scale if scale > 0 else (0.0 if raw == 0 else float(np.copysign(np.inf, raw)))
    if p_value >= significance or raw == 0:
        favoured = "inconclusive"
    else:
        favoured = "power_law" if raw > 0 else alternative
    return LikelihoodRatioTest(alternative=alternative, R=float(R), p_value=p_value, favoured=favoured,
                               loglikelihood_ratio=raw, nested=nested,
                               parameters={name: float(v) for name, v in zip(family.names, params)})


def compare_tails(
    sample: Any,
    *,
    xmin: float | None = None,
    alternatives: Sequence[str] = ALTERNATIVES,
    significance: float = 0.1,
) -> TailComparison:
    """Likelihood-ratio tests of a power-law tail against alternatives (module docstring).

    Args:
        sample: positive, finite 1-D samples (e.g. ``htcore.element_sample(W)`` or eigenvalues).
        xmin: start of the tail; None takes `htcore.fit_powerlaw`'s (the KS-optimal xmin).
        alternatives: any of "exponential", "lognormal", "stretched_exponential",
            "truncated_power_law" (all four by default), tested in the order given.
        significance: a test whose p-value is below this names a winner; else "inconclusive".

    Returns a `TailComparison` (``result["lognormal"].R``, ``summary()``, ``as_dict()``).
    Raises ValueError for non-positive or non-finite samples, an unknown alternative, or a tail
    (x >= xmin) with fewer than 2 distinct values.
    """
    x = as_float_array(sample, "sample", ndim=1, dtype=np.float64, allow_empty=False)
    bad = int(np.count_nonzero(x <= 0))
    if bad:
        raise ValueError(f"sample must contain only positive values, got {bad} value(s) <= 0 out of {x.size}")
    names = (alternatives,) if isinstance(alternatives, str) else tuple(alternatives)
    unknown = [a for a in names if a not in _FAMILIES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"alternatives must be distinct names from {ALTERNATIVES}, got {alternatives!r}")
    significance = check_fraction(significance, "significance")
    xmin = fit_powerlaw(x).xmin if xmin is None else float(xmin)
    if not (np.isfinite(xmin) and xmin > 0):
        raise ValueError(f"xmin must be a positive finite number, got {xmin}")
    tail_x = np.sort(x[x >= xmin])
    if tail_x.size < 2 or tail_x[0] == tail_x[-1]:
        raise ValueError(f"the tail x >= xmin = {xmin} needs at least 2 distinct values, got {tail_x.size} sample(s)")
    tail = _Tail(tail_x, xmin)
    a = float(1 + tail.n / np.sum(np.log(tail_x / xmin)))
    with np.errstate(all="ignore"):
        power_law_ll = _clamped_log(tail_x ** (-a) * ((a - 1) * xmin ** (a - 1)))
    tests = tuple(_ratio_test(name, tail, power_law_ll, significance) for name in names)
    return TailComparison(xmin=xmin, n_tail=tail.n, pdf_exponent=a, significance=significance, tests=tests)


#: How `tail_verdict` names each distribution.
VERDICT_NAMES = {"power_law": "power law", "exponential": "exponential", "lognormal": "log-normal",
                 "stretched_exponential": "stretched exponential", "truncated_power_law": "truncated power law"}


@dataclass(frozen=True)
class TailVerdict:
    """Which distribution describes a tail best, by `tail_verdict`, and the test that decided it.

    Attributes:
        verdict: "power law", "exponential", "log-normal", "stretched exponential",
            "truncated power law" or "inconclusive".
        alternative: the deciding test's alternative (a name of `ALTERNATIVES`).
        R: its normalised log-likelihood ratio (> 0 favours the power law).
        p: its p-value.
    """

    verdict: str
    alternative: str
    R: float
    p: float


def tail_verdict(comparison: TailComparison) -> TailVerdict:
    """One verdict from a `compare_tails` result, at its ``significance`` (default 0.1).

    Rule: a test is significant when its p-value is below the significance level (its
    ``favoured`` is then the power law if R > 0, the alternative if R < 0).

    - If any test is significant with R < 0, the alternative of the significant R < 0 test with the
      smallest p (ties: the most negative R) wins: the power law is rejected in its favour.
    - Else, if any test is significant with R > 0, the verdict is "power law": it beats at least
      one alternative and loses to none. The deciding test is the significant R > 0 one with the
      smallest p (ties: the largest R).
    - Else "inconclusive", and the deciding test is the one with the smallest p.
    """
    tests = comparison.tests
    rejected = [t for t in tests if t.favoured == t.alternative]
    won = [t for t in tests if t.favoured == "power_law"]
    if rejected:
        test = min(rejected, key=lambda t: (t.p_value, t.R))
        verdict = VERDICT_NAMES[test.alternative]
    elif won:
        test = min(won, key=lambda t: (t.p_value, -t.R))
        verdict = VERDICT_NAMES["power_law"]
    else:
        test = min(tests, key=lambda t: t.p_value)
        verdict = "inconclusive"
    return TailVerdict(verdict=verdict, alternative=test.alternative, R=test.R, p=test.p_value)
