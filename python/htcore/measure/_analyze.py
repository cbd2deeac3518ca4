"""`htcore.analyze`: the per-layer heavy-tail table of a whole model, one tensor at a time."""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np

from .._concurrent import ordered_map
from .._progress import progress as progress_bar
from .._threads import get_num_threads
from .._validation import as_float_array, check_fraction
from ..errors import DegenerateSampleWarning
from ..io import Layer, load_layers
from ..sparse import compressibility_curve
from ._compare_tails import TailVerdict, compare_tails, tail_verdict
from ._report import ElementTails, LayerReport, ModelReport
from ._spectra import esd, single_threaded_blas, spectral_metrics, splits_into_blocks
from ._tails import DEFAULT_RESAMPLES, check_resamples, element_measurements, element_sample

DEFAULT_KEEPS = (0.01, 0.05, 0.1, 0.25, 0.5)
# Element fits scan every distinct |w| as xmin up to this many samples, a log-spaced grid of
# ELEMENT_FIT_CANDIDATES values above it (exact scans of 10^7 magnitudes cost seconds per layer).
ELEMENT_FIT_EXACT_MAX = 100_000
ELEMENT_FIT_CANDIDATES = 1000
# Layers with fewer nonzero entries get no element statistics (NaN).
MIN_ELEMENT_SAMPLES = 50
# Points of the |w| CCDF kept for plots (exact counts of |w| >= x at log-spaced x).
CCDF_POINTS = 200


def analyze(
    source: Any,
    *,
    spectral: bool = True,
    elements: bool = True,
    keeps: Sequence[float] | None = DEFAULT_KEEPS,
    include: str | None = None,
    exclude: str | None = None,
    progress: bool = True,
    tail_tests: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
) -> ModelReport:
    """Analyse every weight matrix of ``source`` and return a `ModelReport` (one row per layer).

    Parameters
    ----------
    source : anything `htcore.load_layers` accepts: an ``nn.Module``, a state_dict, or a path to a
        ``.safetensors``, ``.pt``/``.pth`` (weights_only) or ``.npz`` file. Files are processed one
        tensor at a time, so peak memory stays near the largest tensor, not the model.
    spectral : compute the ESD (eigenvalues of W^T W, lambda = sigma^2) and WeightWatcher 0.7.7's
        metrics: ``alpha`` is WeightWatcher's alpha, the **pdf exponent** of the ESD's power-law tail
        (not a tail index), with ``xmin``, ``xmax``, ``ks_distance``, ``num_spikes``,
        ``alpha_weighted``, ``log_norm``, ``log_spectral_norm``, ``stable_rank``
        (see `htcore.measure.spectral_metrics`). Conv kernels pool one ESD over kernel positions.
    elements : measure the tail of |w| over all entries of the tensor (zeros dropped): the Hill
        tail index alpha (P(|w| > x) ~ x^-alpha) at the double-bootstrap k with its 95% CI
        (`htcore.hill`, seed 0, ``resamples`` per bootstrap stage) and the Clauset power-law fit's
        tail index (`htcore.fit_powerlaw`; a 1000-point log grid of xmin candidates above 10^5 entries).
    keeps : keep fractions in (0, 1] for the compressibility curve: the exact relative Frobenius
        error ||W - W_k||_F / ||W||_F of keeping the top ceil(keep * n) entries by magnitude
        (`htcore.compressibility_curve`; with ``elements``, summed over the element statistics'
        sorted magnitudes instead, equal to rounding). None or () skips it.
    include, exclude : regular expressions on tensor names (see `htcore.load_layers`).
    progress : show a progress bar on stderr.
    tail_tests : also decide, per layer, whether the element tail (|w| >= the fit's xmin) and the
        spectral tail (eigenvalues >= the spectral fit's xmin) are better described by a power law
        or by an alternative: `htcore.compare_tails` (Vuong likelihood-ratio tests against the
        exponential, log-normal, stretched exponential and truncated power law, significance 0.1)
        and `htcore.tail_verdict` (a significant R < 0 names the alternative, else a significant
        R > 0 says "power law", else "inconclusive"); columns ``element_tail_*`` and
        ``spectral_tail_*`` (`ModelReport`). Off by default for its cost: the alternatives'
        Nelder-Mead fits (Python, under the GIL) take about 1.6 s of CPU on all-MiniLM-L6-v2, more
        than the rest of the analysis (1.06 s on one thread; benchmarks/results/analyze.md).
    resamples : bootstrap resamples per stage of Hill's automatic k (`htcore.hill`); the default
        100 costs under half of what Voitalov et al.'s 500 does; its estimates lie inside the
        500-resample 95% intervals except where the bootstrap's AMSE curve has two near-equal
        minima, and there the 500-resample k jumps between them from seed to seed as often
        (`htcore.measure._tails`).

    Threads: the rows (ESD, element tails, compressibility, tail tests) of up to
    ``htcore.get_num_threads()`` small layers are computed concurrently (one BLAS thread and one
    htcore kernel thread each, and htcore's own eigenvalue solver, whose calls overlap where
    LAPACK's do not; the element kernels release the GIL) while this thread takes the layers in
    order. A big layer (more than 2^21 entries, such as an embedding;
    `htcore.measure._spectra.splits_into_blocks`) runs on one thread beside the small layers after
    it when they hold at least half as many entries as it does per other thread (an embedding
    followed by the encoder's layers); otherwise it is computed alone, its Gram row blocks and
    kernels shared between the threads. So at most one big tensor and the small layers read with it
    are being computed at a time. Every number is identical at any thread count.
    """
    keeps = _check_keeps(keeps)
    resamples = check_resamples(resamples)
    layers = load_layers(source, include=include, exclude=exclude)

    def row(layer: Layer) -> LayerReport:
        return _layer_report(layer, _layer_esd(layer) if spectral else None, elements=elements, keeps=keeps,
                             tail_tests=tail_tests, resamples=resamples)

    rows = []
    with single_threaded_blas():  # entered here, around the workers' ESDs (see its docstring)
        pairs = ordered_map(row, layers, workers=get_num_threads(), big=_big_layer, size=_layer_size)
        for layer, report in progress_bar(pairs, enabled=progress, desc="htcore analyze", unit="layer"):
            rows.append(report)
            del layer  # release the tensor before the next big one is read
    return ModelReport(source=_describe(source), keeps=keeps, layers=tuple(rows))


def analyze_layer(layer: Layer, *, spectral: bool = True, elements: bool = True, keeps: Sequence[float] = DEFAULT_KEEPS,
                  tail_tests: bool = False, resamples: int = DEFAULT_RESAMPLES) -> LayerReport:
    """The `LayerReport` of one `Layer` (what `analyze` does per row). A measurement the tensor
    does not allow (NaN or Inf weights, or weights so large their squares overflow) is left out
    with a `DegenerateSampleWarning` naming the tensor and the reason."""
    return _layer_report(layer, _layer_esd(layer) if spectral else None, elements=elements, keeps=_check_keeps(keeps),
                         tail_tests=tail_tests, resamples=check_resamples(resamples))


def _layer_esd(layer: Layer) -> np.ndarray | ValueError:
    """The ESD, or why there is none (non-finite or overflowing weights), for `_layer_report` to warn
    about: one bad tensor does not stop the analysis."""
    try:
        return esd(layer.matrices)
    except ValueError as exc:
        return exc


def _big_layer(layer: Layer) -> bool:
    # A big layer's ESD and element kernels can use all the threads themselves (row blocks), so it runs
    # alone unless enough small layers follow to run beside it (`ordered_map`): no nested pools, and no
    # more than one big tensor being computed at a time.
    return splits_into_blocks(layer.matrices)


def _layer_size(layer: Layer) -> int:
    return layer.num_params


def _layer_report(layer: Layer, evals: np.ndarray | ValueError | None, *, elements: bool,
                  keeps: Sequence[float], tail_tests: bool, resamples: int) -> LayerReport:
    """The row of ``layer`` given its ESD (None: no spectral metrics; an exception: why there is none)."""
    if isinstance(evals, ValueError):
        _warn_missing(layer.name, "spectral metrics", evals)
        evals = None
    element_tails = ccdf = element_verdict = spectral_verdict = rel_error = None
    if elements:
        try:
            element_tails, ccdf, rel_error = _element_statistics(layer.name, layer.weight, resamples, keeps)
        except ValueError as exc:  # NaN or Inf weights
            _warn_missing(layer.name, "element statistics", exc)
    if tail_tests and element_tails is not None:
        element_verdict = _tail_verdict(layer.name, "element", element_sample(layer.weight), element_tails.fit_xmin)
    metrics = None
    if evals is not None:
        metrics = spectral_metrics(evals)
        if tail_tests and np.isfinite(metrics.xmin):
            spectral_verdict = _tail_verdict(layer.name, "spectral", evals, metrics.xmin)
    if keeps and rel_error is None:  # not measured with the element statistics (off, or NaN weights)
        try:
            rel_error = tuple(float(e) for e in compressibility_curve(layer.weight, keeps).rel_error)
        except ValueError as exc:
            _warn_missing(layer.name, "compressibility curve", exc)
    return LayerReport(
        name=layer.name,
        kind=layer.kind,
        shape=layer.shape,
        spectral=metrics,
        elements=element_tails,
        rel_error=rel_error,
        evals=evals,
        element_ccdf=ccdf,
        element_tail=element_verdict,
        spectral_tail=spectral_verdict,
    )


def _warn_missing(name: str, what: str, reason: Exception) -> None:
    warnings.warn(f"{name}: no {what} ({reason})", DegenerateSampleWarning, stacklevel=4)


def _tail_verdict(name: str, what: str, sample: np.ndarray, xmin: float) -> TailVerdict | None:
    """`tail_verdict` of `compare_tails` on the values of ``sample`` >= ``xmin`` (the rest of the
    sample does not enter the tests, so it is left out before compare_tails copies it)."""
    try:
        return tail_verdict(compare_tails(sample[sample >= np.float64(xmin)], xmin=xmin))  # float64 comparison
    except ValueError as exc:  # e.g. a tail of tied values
        warnings.warn(f"{name}: no {what} tail verdict ({exc})", DegenerateSampleWarning, stacklevel=4)
        return None


def _element_statistics(name: str, weight: np.ndarray, resamples: int, keeps: Sequence[float]
                        ) -> tuple[ElementTails | None, tuple[np.ndarray, np.ndarray] | None, tuple[float, ...] | None]:
    """The element tails (None below MIN_ELEMENT_SAMPLES nonzero entries, or where ties leave no
    estimate: warned), the |w| CCDF for plots and the compressibility curve at ``keeps`` (None
    without keeps), from one kernel call (`element_measurements`: Hill with seed 0 and ``resamples``,
    the power-law fit on an ELEMENT_FIT_CANDIDATES grid above ELEMENT_FIT_EXACT_MAX entries).
    Raises ValueError for NaN or Inf weights."""
    found = element_measurements(as_float_array(weight, "W", finite=False), ELEMENT_FIT_CANDIDATES,
                                 exact_max=ELEMENT_FIT_EXACT_MAX, random_state=0, resamples=resamples,
                                 ccdf_points=CCDF_POINTS, min_samples=MIN_ELEMENT_SAMPLES, keeps=keeps)
    if found.error:  # e.g. heavily quantized weights whose ties leave no estimate
        warnings.warn(f"{name}: no element tail estimate (too many tied magnitudes, as in codebook-quantised or "
                      f"rounded weights: {found.error})", DegenerateSampleWarning, stacklevel=3)
    rel_error = tuple(float(e) for e in found.rel_error) if keeps else None
    if found.hill is None or found.fit is None:
        return None, found.ccdf, rel_error
    h, fit = found.hill, found.fit
    return ElementTails(
        n=found.n,
        tail_index=float(h.alpha),
        tail_index_ci_low=float(h.ci_low),
        tail_index_ci_high=float(h.ci_high),
        hill_k=int(h.k),
        fit_tail_index=float(fit.pdf_exponent) - 1.0,
        fit_xmin=float(fit.xmin),
        fit_ks_distance=float(fit.ks_distance),
    ), found.ccdf, rel_error


def _check_keeps(keeps: Sequence[float] | None) -> tuple[float, ...]:
    if keeps is None:
        return ()
    if isinstance(keeps, (str, bytes)) or not hasattr(keeps, "__iter__"):
        raise TypeError(f"keeps must be a sequence of fractions in (0, 1], got {keeps!r}")
    return tuple(check_fraction(k, "keeps[]") for k in keeps)


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return type(source).__name__
