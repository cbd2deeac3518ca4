"""Continuous power-law fit of Clauset, Shalizi & Newman (2009), exact over every candidate xmin.

Convention: ``pdf_exponent`` is a in p(x) ~ x^(-a) (what the ``powerlaw`` package and WeightWatcher
call "alpha"); ``alpha = pdf_exponent - 1`` is the tail index, P(X > x) ~ x^(-alpha), the quantity
:func:`htcore.hill` estimates.

Definitions match ``powerlaw.Fit(x, xmin=None, xmax=xmax, discrete=False)`` (powerlaw 2.0):

- candidates: every distinct sample value except the largest (after dropping samples > xmax);
- for each candidate, a = 1 + n_tail / sum_{x >= xmin} ln(x / xmin) (closed-form MLE);
- KS distance: max |T - A| over the distinct tail values u, with A(u) the fraction of tail samples
  strictly below u and T(u) = 1 - (u / xmin)^(1 - a), divided by 1 - (xmax / xmin)^(1 - a) when
  ``xmax`` is given (samples above ``xmax`` are dropped; the MLE itself ignores the truncation,
  as powerlaw's does);
- the fit is the candidate with the smallest KS distance (the lowest xmin on exact ties).

Deliberate differences from powerlaw 2.0: by default it clamps the pdf exponent to [0, 3] and, when
the closed form falls outside (1.5, 3], replaces it by a Nelder-Mead search (tol 1e-4); htcore
always uses the closed form, which equals ``powerlaw.Fit(..., parameter_ranges={'alpha': [1, None]})``
wherever powerlaw keeps the closed form. ``n_tail`` counts samples in [xmin, xmax] (powerlaw also
counts those above xmax).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from .._core import PowerLawResult
from .._core import fit_powerlaw as kernel_fit_powerlaw
from .._validation import as_float_array, check_int, make_rng
from ._tails import kernel_dtype

__all__ = ["PowerLawFit", "fit_powerlaw"]


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_powerlaw`.

    Attributes:
        pdf_exponent: a in p(x) ~ x^(-a) (powerlaw's / WeightWatcher's "alpha").
        alpha: tail index a - 1, P(X > x) ~ x^(-alpha).
        xmin: start of the power-law tail (a sample value unless given).
        xmax: upper cut-off, or None.
        ks_distance: KS distance between the tail's empirical and fitted CDFs.
        n_tail: number of samples in [xmin, xmax].
        sigma: standard error of pdf_exponent (and of alpha), (a - 1) / sqrt(n_tail).
        p_value: Clauset's semi-parametric bootstrap goodness-of-fit p-value, or None.
    """

    pdf_exponent: float
    alpha: float
    xmin: float
    xmax: float | None
    ks_distance: float
    n_tail: int
    sigma: float
    p_value: float | None


def _optional_positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not np.isscalar(value) or not np.isreal(value):
        raise TypeError(f"{name} must be a positive number or None, got {value!r}")
    value = float(cast(Any, value))  # a real scalar: checked just above
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _fit(sample: np.ndarray, xmin: float | None, xmax: float | None, grid: int) -> PowerLawResult:
    return kernel_fit_powerlaw(
        x=sample, xmax=np.inf if xmax is None else xmax, xmin=np.nan if xmin is None else xmin, grid=grid
    )


def _synthetic(
    rng: np.random.Generator, body: np.ndarray, n: int, fit: PowerLawResult, xmax: float | None
) -> np.ndarray:
    """Clauset's semi-parametric resample: body values redrawn from the data, tail from the fit."""
    a, xmin = fit.pdf_exponent, fit.xmin
    n_tail = int(rng.binomial(n, fit.n_tail / n)) if body.size else n
    u = rng.random(n_tail)
    z = 1.0 if xmax is None else -np.expm1((1.0 - a) * np.log(xmax / xmin))
    with np.errstate(over="ignore"):
        tail = xmin * np.exp(-np.log1p(-u * z) / (a - 1.0))
    if not np.isfinite(tail).all():  # a fit with a near 1 puts real mass beyond float64's range
        beyond = float(np.exp((1.0 - a) * (np.log(np.finfo(np.float64).max) - np.log(xmin))))
        raise ValueError(f"gof_bootstrap: the fitted tail (pdf exponent {a:.6g}, xmin {xmin:.6g}) puts probability "
                         f"{beyond:.3g} beyond float64's largest value, so its resamples cannot be drawn; "
                         f"pass xmax, or gof_bootstrap=0")
    return np.concatenate([rng.choice(body, size=n - n_tail, replace=True) if body.size else body, tail])


def fit_powerlaw(
    x: Any,
    xmin: float | None = None,
    xmax: float | None = None,
    *,
    candidates: int | None = None,
    gof_bootstrap: int = 0,
    random_state: Any = None,
) -> PowerLawFit:
    """Fit a continuous power law p(x) ~ x^(-a) to the tail of a positive 1-D sample.

    Args:
        x: positive, finite samples (e.g. eigenvalues, or ``htcore.element_sample(W)``).
        xmin: fix the start of the tail instead of choosing it by the KS distance.
        xmax: drop samples above it and truncate the fitted CDF there (WeightWatcher's
            ``xmax = lambda_max`` convention equals no xmax up to the truncation factor).
        candidates: None scans every distinct value but the largest, exactly (parallel branch and
            bound, identical at any thread count); an int g >= 2 scans g log-spaced values between
            the smallest and second-largest distinct value, each moved up to the next sample value
            (duplicates merged): for n in the millions.
        gof_bootstrap: number of Clauset semi-parametric resamples for the goodness-of-fit p-value
            (the fraction of synthetic KS distances >= the observed one); 0 skips it.
        random_state: seed for the bootstrap (None means seed 0, or an int or numpy Generator).

    Raises ValueError for non-finite or non-positive samples, fewer than 2 distinct values
    <= xmax, an xmin that leaves fewer than 2 distinct tail values, or (with ``gof_bootstrap``) a
    fitted tail too heavy for its resamples to stay finite in float64 (pass ``xmax`` then).
    """
    sample = as_float_array(x, "x", ndim=1, dtype=kernel_dtype(x))
    bad = int(np.count_nonzero(sample <= 0))
    if bad:
        raise ValueError(f"x must contain only positive values, got {bad} value(s) <= 0 out of {sample.size}")
    xmin = _optional_positive(xmin, "xmin")
    xmax = _optional_positive(xmax, "xmax")
    if xmin is not None and xmax is not None and xmin >= xmax:
        raise ValueError(f"xmin must be < xmax, got xmin = {xmin}, xmax = {xmax}")
    grid = 0 if candidates is None else check_int(candidates, "candidates", low=2)
    reps = check_int(gof_bootstrap, "gof_bootstrap", low=0)

    fit = _fit(sample, xmin, xmax, grid)
    p_value = None
    if reps:
        rng = make_rng(random_state)
        sample = sample.astype(np.float64, copy=False)  # compared with float64 xmin/xmax below
        kept = sample if xmax is None else sample[sample <= xmax]
        body = kept[kept < fit.xmin]
        hits = 0
        for _ in range(reps):
            synthetic = _synthetic(rng, body, kept.size, fit, xmax)
            hits += _fit(synthetic, xmin, xmax, grid).ks_distance >= fit.ks_distance
        p_value = hits / reps
    a, n_tail = float(fit.pdf_exponent), int(fit.n_tail)
    return PowerLawFit(
        pdf_exponent=a,
        alpha=a - 1.0,
        xmin=float(fit.xmin),
        xmax=xmax,
        ks_distance=float(fit.ks_distance),
        n_tail=n_tail,
        sigma=float((a - 1.0) / np.sqrt(n_tail)),
        p_value=p_value,
    )
