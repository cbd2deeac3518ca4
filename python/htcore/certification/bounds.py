"""Generalization bounds for a classifier described in a fixed prefix-free code (Occam bounds).

Setting: before seeing the data, fix a prefix-free code for classifiers; g has description length
L = L(g) bits, so the prior pi(g) = 2^-L sums to at most 1. Let q be g's error on m i.i.d. training
samples and p its true error. With probability >= 1 - delta over the sample, simultaneously for every
g, p is at most each of the following (``c = (L ln 2 + ln(1/delta)) / m`` nats per sample):

- ``"kl"``: the largest p with kl(q || p) <= c (Chernoff bound on the binomial tail + union bound).
- ``"binomial"``: the exact binomial-tail inversion of Langford (2005, "Tutorial on practical
  prediction theory", test-set bound with delta * 2^-L): the largest p with
  P[Binomial(m, p) <= q m] >= delta 2^-L. Always at least as tight as "kl".
- ``"hoeffding"``: q + sqrt(c / 2).
- ``"catoni"``: Catoni (2007, Theorem 1.2.7) as used by Zhou et al. (2019, "Non-vacuous generalization
  bounds at the ImageNet scale", Theorem 2.1), with KL(g || pi) = L ln 2:
  min over lambda > 1 of Phi^-1_{lambda/m}(q + (a / lambda) (L ln 2 + ln(1/delta) + 2 ln(ln(a^2 lambda) / ln a))),
  where Phi^-1_g(x) = (1 - e^(-g x)) / (1 - e^(-g)) and a = ``catoni_a`` > 1, finite (default 1.0001, Zhou et
  al.'s choice). The 2 ln(...) term is the union-bound charge over the geometric grid lambda = a^j,
  and the factor a pays for using any lambda between grid points, so minimising over lambda is allowed.

Every bound is clipped to [q, 1]. Errors are fractions in [0, 1]; code lengths are in bits.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validation import check_int

FORMS = ("kl", "binomial", "hoeffding", "catoni")

_BISECTION_STEPS = 200  # enough to reach float64 resolution on [0, 1]


def _check_error(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_nonnegative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a non-negative number, got {value!r}")
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def _check_delta(delta: Any) -> float:
    delta = _check_nonnegative(delta, "delta")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return delta


def kl_bernoulli(q: float, p: float) -> float:
    """kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p)) in nats, with 0 ln 0 = 0 (inf when p excludes q)."""
    total = 0.0
    for a, b in ((q, p), (1.0 - q, 1.0 - p)):
        if a > 0.0:
            if b <= 0.0:
                return math.inf
            total += a * math.log(a / b)
    return max(total, 0.0)


def kl_inverse(q: float, c: float) -> float:
    """The largest p in [q, 1] with kl(q || p) <= c (nats), by bisection.

    Returns the upper end of the final bracket, so the result is never below the exact value (it is
    within float64 resolution of it): rounding errs on the safe side for an upper bound.

    kl(q || p) increases in p on [q, 1], so the answer is unique; it is q for c = 0 and 1 when
    c >= kl(q || 1) (which is infinite for q < 1).
    """
    q = _check_error(q, "q")
    c = _check_nonnegative(c, "c")
    lo, hi = q, 1.0
    if kl_bernoulli(q, hi) <= c:
        return hi
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if kl_bernoulli(q, mid) <= c:
            lo = mid
        else:
            hi = mid
    return hi


def binomial_log_cdf(k: int, m: int, p: float) -> float:
    """ln P[Binomial(m, p) <= k], summed in log space so it stays finite far below 1e-308."""
    k = check_int(k, "k", low=0)
    m = check_int(m, "m", low=0)
    p = _check_error(p, "p")
    if k >= m or p == 0.0:
        return 0.0
    if p == 1.0:
        return -math.inf
    from scipy import special  # deferred: it is most of `import htcore`'s time (~0.25 s), and only bounds need it

    i = np.arange(k + 1, dtype=np.float64)
    log_pmf = (special.gammaln(m + 1) - special.gammaln(i + 1) - special.gammaln(m - i + 1)
               + i * math.log(p) + (m - i) * math.log1p(-p))
    return float(special.logsumexp(log_pmf))


def binomial_tail_inverse(k: int, m: int, log_delta: float) -> float:
    """The largest p with P[Binomial(m, p) <= k] >= exp(log_delta) (Langford 2005), by bisection.

    ``log_delta`` is the natural log of the confidence budget (<= 0), so budgets like delta * 2^-L
    with L in the millions of bits are representable. Like `kl_inverse`, returns the upper end of
    the final bisection bracket (never below the exact value).
    """
    k = check_int(k, "k", low=0)
    m = check_int(m, "m", low=1)
    if k > m:
        raise ValueError(f"k must be <= m = {m}, got {k}")
    if not log_delta <= 0.0:
        raise ValueError(f"log_delta must be <= 0, got {log_delta}")
    if k == m:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if binomial_log_cdf(k, m, mid) >= log_delta:
            lo = mid
        else:
            hi = mid
    return hi


def _catoni(q: float, m: int, complexity: float, a: float) -> float:
    """Zhou et al. 2019 Theorem 2.1 minimised over lambda > 1; ``complexity`` = L ln 2 + ln(1/delta)."""
    log_a = math.log(a)

    def bound(log_lam: np.ndarray) -> np.ndarray:
        lam = np.exp(log_lam)
        charge = 2.0 * np.log((2.0 * log_a + log_lam) / log_a)
        x = q + (a / lam) * (complexity + charge)
        gamma = lam / m
        return np.expm1(-gamma * x) / np.expm1(-gamma)

    # coarse log-spaced scan over lambda in (1, 1e6 m], then a bounded refinement around the best point
    grid = np.linspace(1e-9, math.log(m) + math.log(1e6), 4001)
    values = bound(grid)
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    from scipy import optimize  # deferred: scipy.optimize costs ~0.5 s at import, and only this search needs it

    refined = optimize.minimize_scalar(lambda t: float(bound(np.array(t))), bounds=(lo, hi), method="bounded",
                                       options={"xatol": 1e-10})
    return float(min(values[best], refined.fun))


def occam_bound(train_error: float, m: int, code_bits: float, delta: float = 0.05, form: str = "kl",
                *, catoni_a: float = 1.0001) -> float:
    """Upper bound on the true error of a classifier with ``train_error`` on ``m`` samples and a
    ``code_bits``-bit prefix-free description, holding with probability >= 1 - ``delta``.

    ``form`` is one of "kl", "binomial", "hoeffding", "catoni" (see the module docstring for the
    formulas). "binomial" needs ``train_error * m`` to be a whole number of errors.
    """
    q = _check_error(train_error, "train_error")
    m = check_int(m, "m", low=1)
    code_bits = _check_nonnegative(code_bits, "code_bits")
    delta = _check_delta(delta)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    complexity = code_bits * math.log(2.0) + math.log(1.0 / delta)  # nats
    if form == "kl":
        value = kl_inverse(q, complexity / m)
    elif form == "hoeffding":
        value = q + math.sqrt(complexity / (2.0 * m))
    elif form == "binomial":
        errors = q * m
        if abs(errors - round(errors)) > 1e-6 * max(1.0, errors):
            raise ValueError(f"train_error * m must be a whole number of errors for form='binomial', got {errors}")
        value = binomial_tail_inverse(int(round(errors)), m, -complexity)
    else:
        if isinstance(catoni_a, bool) or not (isinstance(catoni_a, (int, float)) and 1.0 < catoni_a < math.inf):
            raise ValueError(f"catoni_a must be a finite number > 1, got {catoni_a!r}")
        value = _catoni(q, m, complexity, float(catoni_a))
    return min(max(value, q), 1.0)


def arora_bound(q: int, r: int, m: int, train_margin_error: float, delta: float = 0.05) -> float:
    """Arora, Ge, Neyshabur & Zhang (2018) Theorem 2.1 with explicit constants.

    If f is (gamma, S)-compressible to g_A described by ``q`` parameters taking ``r`` discrete values
    each (for a helper string fixed before the data), then with probability >= 1 - delta
    err(g_A) <= L_hat_margin(f) + sqrt((q ln r + ln(1/delta)) / (2 m)), where L_hat_margin(f) =
    ``train_margin_error`` is the training margin error of the original net (htcore uses margin
    2 gamma for an entrywise output gap gamma). The union bound runs over the r^q classifiers only: the
    positions of sparse parameters are not charged, unlike `occam_bound` with a full code length.
    """
    q = check_int(q, "q", low=0)
    r = check_int(r, "r", low=1)
    m = check_int(m, "m", low=1)
    margin = _check_error(train_margin_error, "train_margin_error")
    delta = _check_delta(delta)
    value = margin + math.sqrt((q * math.log(r) + math.log(1.0 / delta)) / (2.0 * m))
    return min(value, 1.0)
