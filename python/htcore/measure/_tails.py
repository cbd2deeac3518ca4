"""Tail-index estimators of a positive sample: Hill, moments (Dekkers-Einmahl-de Haan), Pickands.

Conventions (docs/conventions.md, "Tail index and pdf exponent"): ``alpha`` is the tail index, P(X > x) ~ x^(-alpha), and
``xi = 1 / alpha``. This is NOT the power-law pdf exponent (p(x) ~ x^(-a), a = alpha + 1) that the
``powerlaw`` package and WeightWatcher call "alpha"; see :func:`htcore.fit_powerlaw` for that.

With X_(1) >= X_(2) >= ... >= X_(n) the order statistics and ``k`` the number of upper order
statistics used:

- Hill: xi = (1/k) sum_{i<=k} ln X_(i) - ln X_(k+1).
- Moments: M_j = (1/k) sum_{i<=k} (ln X_(i) - ln X_(k+1))^j, xi = M_1 + 1 - 1 / (2 (1 - M_1^2 / M_2)).
- Pickands: xi = ln((X_(k) - X_(2k)) / (X_(2k) - X_(4k))) / ln 2.

``k=None`` chooses k by the double bootstrap of Danielsson, de Haan, Peng & de Vries (2001) as
implemented in Voitalov et al. (2019)'s tail-estimation code (t = 0.5, eps_stop = 0.99, Voitalov's
prefactor for moments; for Hill, Danielsson et al.'s own constant, where Voitalov uses Qi's, which
picks larger k), seeded by ``random_state``. Deliberate deviations, for speed and robustness:

- ``resamples`` = `DEFAULT_RESAMPLES` = 100 bootstrap resamples per stage by default, where Voitalov
  uses 500: the bootstrap's cost is proportional to it (about 3/4 of an auto-k Hill estimate's time at
  500, under half at 100). The estimates at 100 lie inside the 500-resample 95% intervals on seeded
  Pareto and Student-t samples and on MiniLM layers, except where the AMSE curve has two
  near-equal minima (|t(6)| at n = 30000, one MiniLM layer): there the chosen k jumps between them
  from seed to seed already at 500 resamples, and a 500-resample estimate with another seed leaves
  the interval as often as the 100-resample one does (tests/test_analyze_speed_defaults.py);
  ``resamples=500`` gives Voitalov's setting;

- the AMSE is minimised over k <= min(0.99 n_b, 3 n_b^(2/3)) in a bootstrap sample of size n_b
  (the resamples' top order statistics are drawn directly, in O(k) instead of O(n_b log n_b));
- on a false minimum (k2 > k1) both search windows move right by 0.5% of n and the same resamples
  are searched again (Voitalov redraws them); if no usable minimum remains, k = floor(sqrt(n));
- Pickands with ``k=None`` uses a quarter of the moments estimator's bootstrap k (Pickands reaches
  down to X_(4k)).

Confidence intervals are for xi, mapped to alpha = 1 / xi. With ``k`` given they are the plain
asymptotic ones, xi_hat +- z s(xi_hat) / sqrt(k) (z the normal quantile of (1 + ci) / 2, s^2 the
estimator's asymptotic variance). With ``k=None`` the bootstrap picks k near the AMSE optimum, where
the squared bias is of the order of the variance (for |t(3)| the plain Hill interval then covered
the truth in only 50% of runs), so Hill and moments report the root-MSE interval

    xi_hat +- z sqrt(s(xi_hat)^2 / k + b^2),

with b the estimated asymptotic bias at k in Hall's class, U(t) = C t^xi (1 + xi beta t^rho / rho),
A(t) = xi beta t^rho:

- Hill: b = A(n/k) / (1 - rho)  (the bias that Caeiro, Gomes & Pestana (2005) remove);
- moments, for xi_hat > 0: b = A(n/k) (xi (1 - rho) + rho) / (xi (1 - rho)^2); for xi_hat <= 0
  (light tails, outside Hall's class) b = 0;
- Pickands: b = 0 (the plain interval; its variance, several times Hill's, dominates).

rho and beta are estimated once per sample at k1 = floor(n^0.995): rho by Fraga Alves, Gomes & de
Haan (2003) with tau = 0, capped at -1/4, and beta by Gomes & Martins (2002) at that rho. The cap:
as rho -> 0 the bias is nearly constant in k, so beta is not identifiable from the sample, and on
exact Pareto samples (no second-order term) a noise-level rho_hat near 0 made beta_hat, and the
interval, explode. If ties make rho or beta undefined, b = 0. The double bootstrap's own AMSE
statistic was tried for b and rejected: it estimates the MSE of M_2 - 2 M_1^2, not of Hill, and its
bias part was uncorrelated with Hill's actual error on |t(3)| samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from .._core import PowerLawResult, TailMethod, TailResult, element_statistics, tail_estimate
from .._validation import as_float_array, check_fraction, check_int, make_rng
from ..sparse import k_for_keep, relative_errors

# Double-bootstrap settings (Voitalov et al.'s, but 100 resamples where he uses 500, plus htcore's cap on the k range).
#: Bootstrap resamples per stage of the double bootstrap by default (module docstring).
DEFAULT_RESAMPLES = 100
_DBS_EPS_STOP = 0.99
_DBS_CAP_FACTOR = 3.0
_AUTO_K_MIN_N = 20
# Cap on the estimated second-order parameter rho (see the module docstring).
_RHO_MAX = -0.25
_TAIL_METHODS = dict(TailMethod.__members__)  # "hill", "moments", "pickands" -> kernel enum

__all__ = ["DEFAULT_RESAMPLES", "TailEstimate", "element_sample", "hill", "moments", "pickands"]


@dataclass(frozen=True)
class TailEstimate:
    """A tail-index estimate.

    Attributes:
        alpha: tail index, P(X > x) ~ x^(-alpha) (``inf`` when ``xi <= 0``, a light tail).
        xi: extreme-value index, 1 / alpha.
        k: number of upper order statistics used (for Pickands: X_(k), X_(2k), X_(4k)).
        n: sample size.
        ci_low, ci_high: confidence interval for ``alpha`` at level ``ci`` (from the asymptotic
            normal interval for xi, widened by the estimated bias when k was chosen automatically,
            mapped through alpha = 1/xi; ``ci_high`` is ``inf`` when the xi interval reaches 0).
        method: "hill", "moments" or "pickands".
    """

    alpha: float
    xi: float
    k: int
    n: int
    ci_low: float
    ci_high: float
    method: str


def element_sample(W: Any) -> np.ndarray:
    """The element sample of a weight array: |w| over all entries, zeros dropped, as a 1-D array.

    Keeps float32 for float16/float32 input and float64 for float64. Raises ValueError on
    non-finite entries.
    """
    arr = as_float_array(W, "W")
    mags = np.abs(arr.reshape(-1))
    return mags[mags > 0]


def kernel_dtype(x: Any) -> type:
    """float32 stays float32 (the kernels widen it exactly, without a float64 copy); the rest is float64."""
    return np.float32 if np.asarray(x).dtype == np.float32 else np.float64


def _positive_sample(x: Any) -> np.ndarray:
    arr = as_float_array(x, "x", ndim=1, dtype=kernel_dtype(x))
    bad = int(np.count_nonzero(arr <= 0))
    if bad:
        raise ValueError(
            f"x must contain only positive values, got {bad} value(s) <= 0 out of {arr.size} "
            "(use htcore.element_sample(W) for the magnitudes of a weight array)"
        )
    return arr


def _xi_std(method: str, xi: float) -> float:
    """Asymptotic standard deviation of sqrt(k) (xi_hat - xi)."""
    if method == "hill":
        return abs(xi)
    if method == "moments":
        if xi >= 0:
            return float(np.sqrt(1.0 + xi * xi))
        return float(np.sqrt((1 - xi) ** 2 * (1 - 2 * xi) * (1 - xi + 6 * xi * xi) / ((1 - 3 * xi) * (1 - 4 * xi))))
    # Pickands (Dekkers & de Haan 1989), with its limit at xi = 0.
    ln2 = np.log(2.0)
    if abs(xi) < 1e-8:
        return float(np.sqrt(3.0) / (2.0 * ln2 * ln2))
    if xi > 0:  # divided through by 2^xi, so a huge xi (an extreme outlier) cannot overflow
        ratio = np.sqrt(2.0 + 2.0 ** (-2 * xi)) / (1.0 - 2.0 ** (-xi))
    else:
        ratio = np.sqrt(2.0 ** (2 * xi + 1) + 1) / abs(2.0**xi - 1)
    return float(abs(xi) * ratio / (2 * ln2))


def _xi_bias(method: str, xi: float, n: int, k: int, rho: float, beta: float) -> float:
    """Estimated asymptotic bias of xi_hat at k in Hall's class (module docstring); 0 where undefined."""
    if method == "pickands" or xi <= 0 or not (np.isfinite(rho) and np.isfinite(beta)):
        return 0.0
    a = xi * beta * (n / k) ** rho
    if method == "hill":
        return a / (1 - rho)
    return a * (xi * (1 - rho) + rho) / (xi * (1 - rho) ** 2)


def _alpha_of(xi: float) -> float:
    return 1.0 / xi if xi > 0 else float("inf")


def _estimate(method: str, x: Any, k: int | None, ci: float, random_state: Any, resamples: int) -> TailEstimate:
    resamples = check_resamples(resamples)
    sample = _positive_sample(x)
    n = int(sample.size)
    level = check_fraction(ci, "ci")
    if level >= 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if k is None:
        if n < _AUTO_K_MIN_N:
            raise ValueError(f"choosing k automatically needs at least {_AUTO_K_MIN_N} samples, got n = {n}")
        k_arg = 0
    else:
        k_min = 2 if method == "moments" else 1
        k_max = n // 4 if method == "pickands" else n - 1
        k_arg = check_int(k, "k")
        if not k_min <= k_arg <= k_max:
            raise ValueError(f"{method} needs {k_min} <= k <= {k_max} for n = {n} samples, got k = {k_arg}")
    out = tail_estimate(x=sample, method=_TAIL_METHODS[method], k=k_arg, seed=_seed(random_state),
                        resamples=resamples, eps_stop=_DBS_EPS_STOP, cap_factor=_DBS_CAP_FACTOR,
                        rho_max=_RHO_MAX)
    return _from_kernel(method, out, n, level, auto_k=k is None)


def check_resamples(resamples: Any) -> int:
    """``resamples`` (bootstrap resamples per stage) as an int in [1, 10^6], else a clear error."""
    return check_int(resamples, "resamples", low=1, high=1_000_000)


def _seed(random_state: Any) -> int:
    return int(make_rng(random_state).integers(0, 2**63))


def _from_kernel(method: str, out: TailResult, n: int, level: float, *, auto_k: bool) -> TailEstimate:
    """The estimate and its interval (module docstring) from the kernel's result."""
    xi, k_used, second = float(out.xi), int(out.k), out.second_order
    bias = _xi_bias(method, xi, n, k_used, float(second.rho), float(second.beta)) if auto_k else 0.0
    half = NormalDist().inv_cdf(0.5 + level / 2) * float(np.hypot(_xi_std(method, xi) / np.sqrt(k_used), bias))
    xi_low, xi_high = xi - half, xi + half
    return TailEstimate(
        alpha=_alpha_of(xi),
        xi=xi,
        k=k_used,
        n=n,
        ci_low=_alpha_of(xi_high),
        ci_high=_alpha_of(xi_low),
        method=method,
    )


@dataclass(frozen=True)
class ElementMeasurements:
    """What `element_measurements` finds in a weight array (for `htcore.analyze`).

    Attributes:
        n: nonzero entries (the size of `element_sample`).
        ccdf: (x, P(|w| >= x)) at ``ccdf_points`` log-spaced x from the smallest to the largest
            magnitude (one point when all are equal), or None below ``min_samples``.
        hill: ``hill(sample, random_state=..., resamples=...)`` (95% interval), or None.
        fit: the kernel result of ``fit_powerlaw(sample, candidates=grid or None)``, or None.
        error: why ``hill`` and ``fit`` are None although n >= ``min_samples`` (ties), else "".
        rel_error: per keep of ``keeps``, the compressibility curve's ||W - W_k||_F / ||W||_F of
            keeping the top k = ceil(keep * W.size) entries (`htcore.compressibility_curve` to
            rounding: summed here over the sorted magnitudes), at any n.
    """

    n: int
    ccdf: tuple[np.ndarray, np.ndarray] | None
    hill: TailEstimate | None
    fit: PowerLawResult | None
    error: str
    rel_error: np.ndarray


def element_measurements(W: np.ndarray, grid: int, *, exact_max: int = 0, random_state: Any = None,
                         resamples: int = DEFAULT_RESAMPLES, ccdf_points: int = 0,
                         min_samples: int = _AUTO_K_MIN_N, keeps: Sequence[float] = ()) -> ElementMeasurements:
    """The element sample's CCDF, auto-k Hill, power-law fit and compressibility curve at ``keeps``,
    from one sort inside the kernel.

    Bit for bit ``hill(element_sample(W), random_state=random_state, resamples=resamples)`` and
    ``fit_powerlaw(element_sample(W), candidates=grid or None)`` (``candidates=None`` when the sample
    has at most ``exact_max`` values), without building the sample in
    numpy (taking |w|, dropping zeros and sorting happen in one kernel call). ``W``: a C-contiguous
    float32 or float64 array of any shape (`as_float_array` with ``finite=False``); NaN or Inf
    entries raise ValueError, as in `element_sample`. Arguments are taken as checked
    (``min_samples >= 20``; ``ccdf_points=0`` skips the CCDF; ``keeps`` fractions in [0, 1]).
    """
    out = element_statistics(w=W.reshape(-1), seed=_seed(random_state), resamples=resamples, eps_stop=_DBS_EPS_STOP,
                             cap_factor=_DBS_CAP_FACTOR, rho_max=_RHO_MAX, grid=grid, exact_max=exact_max, ccdf_points=ccdf_points,
                             min_samples=min_samples, keep_counts=[k_for_keep(keep, W.size) for keep in keeps])
    n, tails = int(out.n), out.tails
    ccdf = (out.ccdf_x, out.ccdf_p) if ccdf_points and n >= min_samples else None
    hill_estimate = None if tails is None else _from_kernel("hill", tails.hill, n, 0.95, auto_k=True)
    return ElementMeasurements(n=n, ccdf=ccdf, hill=hill_estimate, fit=None if tails is None else tails.fit,
                               error=out.tails_error, rel_error=relative_errors(out.tail_sq, out.total_sq))


def hill(x: Any, k: int | None = None, *, ci: float = 0.95, random_state: Any = None,
         resamples: int = DEFAULT_RESAMPLES) -> TailEstimate:
    """Hill estimate of the tail index alpha of a positive 1-D sample ``x``.

    ``k``: number of upper order statistics (1 <= k <= n - 1), or None for the double bootstrap
    (needs n >= 20; seeded by ``random_state``: None means seed 0, or an int or numpy Generator;
    ``resamples`` per bootstrap stage, default 100; the bootstrap's time is proportional to it, and
    Voitalov et al.'s 500 makes the whole estimate about twice as slow on MiniLM's layers; the same
    result at any thread count).
    With ``k`` given, the interval uses sqrt(k) (xi_hat - xi) -> N(0, xi^2): xi_hat (1 -+ z / sqrt(k)),
    z the normal quantile of (1 + ci) / 2, mapped to alpha = 1 / xi. With ``k=None`` it is the
    root-MSE interval xi_hat +- z sqrt(xi_hat^2 / k + b^2), b = xi_hat beta (n/k)^rho / (1 - rho) the
    estimated Hill bias (module docstring), mapped the same way. Raises ValueError for non-finite or
    non-positive samples and out-of-range k, and when ties make the estimate undefined at k.
    """
    return _estimate("hill", x, k, ci, random_state, resamples)


def moments(x: Any, k: int | None = None, *, ci: float = 0.95, random_state: Any = None,
            resamples: int = DEFAULT_RESAMPLES) -> TailEstimate:
    """Moments (Dekkers-Einmahl-de Haan) estimate; valid for any real xi (xi <= 0: light tail, alpha = inf).

    Same arguments as :func:`hill`, except 2 <= k <= n - 1 (M_1^2 = M_2 at k = 1). The interval uses the estimator's asymptotic variance,
    1 + xi^2 for xi >= 0 and (1-xi)^2 (1-2xi) (1-xi+6xi^2) / ((1-3xi)(1-4xi)) for xi < 0; with
    ``k=None`` and xi_hat > 0 it adds the estimated squared bias (root-MSE interval, module docstring).
    """
    return _estimate("moments", x, k, ci, random_state, resamples)


def pickands(x: Any, k: int | None = None, *, ci: float = 0.95, random_state: Any = None,
             resamples: int = DEFAULT_RESAMPLES) -> TailEstimate:
    """Pickands estimate from X_(k), X_(2k), X_(4k) (1 <= k <= n // 4); valid for any real xi.

    ``k=None`` uses a quarter of the moments double-bootstrap k. The interval uses the asymptotic
    variance xi^2 (2^(2xi+1) + 1) / (2 (2^xi - 1) ln 2)^2 (3 / (4 ln^4 2) at xi = 0).
    """
    return _estimate("pickands", x, k, ci, random_state, resamples)
