"""Empirical spectral densities (ESD) of weight matrices and WeightWatcher's per-layer metrics.

Convention (WeightWatcher's; docs/conventions.md, "Spectra (ESD)"): for W of shape (N, M) the ESD is the set of
eigenvalues lambda_i = sigma_i^2 of W^T W (the squared singular values of W), with no 1/N
scaling; a layer with several matrices (conv kernel positions) pools all their eigenvalues.

The eigenvalues are computed in float64 as the eigenvalues of the smaller Gram matrix
(W^T W if N >= M, else W W^T), accumulating the Gram matrix over fixed row blocks so a float32
matrix is never copied whole to float64. BLAS runs on one thread; parallelism comes from computing
the blocks' products on htcore's threads and adding them in block order, so the result is bitwise
the same whatever the thread settings. The Gram matrix's eigenvalues come from htcore's own
solver (`symmetric_eigenvalues`: Householder tridiagonalisation and root-free QL/QR, in C++ with
the GIL released) up to M = `OWN_SOLVER_MAX_SIZE` on CPUs with AVX2+FMA, and from LAPACK
(``numpy.linalg.eigvalsh``) otherwise. htcore's solver exists because OpenBLAS runs its LAPACK
eigensolvers one call at a time per process: with it, `htcore.analyze`'s worker threads compute
two layers' eigenvalues on two cores at once. This costs N M^2 + O(M^3) flops instead of an
SVD's ~4 N M^2 + O(M^3); the absolute error of each eigenvalue is about 1e-16 * M * lambda_max
with either solver, far below WeightWatcher's 1e-5 cut for "zero" eigenvalues.

The metrics follow weightwatcher 0.7.7 (``apply_esd``, ``fit_powerlaw``, ``apply_norm_metrics``)
exactly; `spectral_metrics` documents each one.
"""
from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .._concurrent import ordered_map
from .._core import symmetric_eigenvalues as kernel_symmetric_eigenvalues
from .._core import symmetric_eigenvalues_uses_avx2
from .._threads import get_num_threads
from .._validation import as_float_array, check_int
from ._powerlaw_fit import fit_powerlaw

# WeightWatcher 0.7.7: eigenvalues <= EVALS_THRESH are dropped before the power-law fit, and layers
# with fewer than DEFAULT_MIN_EVALS eigenvalues are not analysed.
ZERO_EIGENVALUE = 1e-5
MIN_EVALS = 8

# Row-block size for Gram accumulation, in float64 elements (16 MiB): small enough that the
# 30522x384 MiniLM embedding splits into 6 blocks to share between threads, large enough that
# the per-block products run at full BLAS speed. Fixed, never derived from the thread count: the
# blocks and the order their products are added fix the rounding.
_BLOCK_ELEMENTS = 1 << 21
# BLAS/LAPACK run on one thread here. Threaded BLAS sums in a thread-count-dependent order (the
# last bits of the eigenvalues, and so possibly the chosen xmin, would change with the thread
# count), and on a loaded 2-core machine it was slower anyway (OpenBLAS threads busy-wait for a
# core). htcore's own kernels (fits, Hill, top-k) use htcore's thread count, and so do the Gram
# blocks here and `htcore.analyze`'s layers (each on a one-BLAS-thread worker). OpenBLAS runs its
# LAPACK eigensolvers one call at a time per process: hence htcore's own solver below.
# Figures for both: docs/performance.md, "Spectra".

# Largest Gram matrix whose eigenvalues come from htcore's solver rather than LAPACK: beyond it
# the solver's unblocked reduction streams the matrix from memory every step and LAPACK's blocked
# one wins. Used only with the AVX2+FMA code path (the portable one is ~3x slower).
# Figures: docs/performance.md, "Spectra".
OWN_SOLVER_MAX_SIZE = 2048


def esd(matrices: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Eigenvalues of W^T W (lambda = sigma^2, no 1/N scaling), pooled over ``matrices``.

    ``matrices`` is one 2-D array or an iterable of them (any float dtype, any strides). Returns a
    float64 array sorted ascending with min(N, M) eigenvalues per matrix, clipped at 0.
    Raises ValueError for non-2-D or non-finite input.
    """
    if isinstance(matrices, np.ndarray):
        matrices = [matrices]
    with single_threaded_blas():
        parts = [_gram_eigenvalues(w) for w in matrices]
    if not parts:
        raise ValueError("matrices must contain at least one 2-D array")
    out = np.concatenate(parts)
    out.sort()
    return out


def _gram_eigenvalues(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"each matrix must be 2-D, got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating) and not np.issubdtype(w.dtype, np.integer):
        raise TypeError(f"matrices must be real numeric arrays, got dtype {w.dtype}")
    if w.shape[0] < w.shape[1]:
        w = w.T
    n, m = w.shape
    if m == 0:
        return np.zeros(0)
    _check_gram_range(w)
    step = _block_rows(w.shape)
    blocks = (w[start : start + step] for start in range(0, n, step))
    workers = get_num_threads() if n > step else 1
    gram = np.zeros((m, m))
    for _, product in ordered_map(_block_gram, blocks, workers=workers):
        gram += product
    if not np.isfinite(gram).all():
        raise ValueError(f"matrix of shape {w.shape} contains non-finite values (NaN or Inf)")
    return np.maximum(_gram_spectrum(gram), 0.0)


def _check_gram_range(w: np.ndarray) -> None:
    """Refuse NaN/Inf, and finite entries so large that W^T W overflows float64 (each Gram entry
    sums n products of at most max|w|^2), saying which: before the products, which would warn."""
    peak = max(abs(float(w.max())), abs(float(w.min())))
    if not math.isfinite(peak):
        raise ValueError(f"matrix of shape {w.shape} contains non-finite values (NaN or Inf)")
    limit = math.sqrt(np.finfo(np.float64).max / w.shape[0])
    if peak > limit:
        raise ValueError(f"matrix of shape {w.shape} has entries up to {peak:.4g}: W^T W would overflow float64 "
                         f"(entries must stay below {limit:.4g}); rescale the weights")


def _gram_spectrum(gram: np.ndarray) -> np.ndarray:
    """Eigenvalues of a finite float64 Gram matrix, from the solver `OWN_SOLVER_MAX_SIZE` picks."""
    if gram.shape[0] <= OWN_SOLVER_MAX_SIZE and symmetric_eigenvalues_uses_avx2():
        return kernel_symmetric_eigenvalues(a=gram, max_sweeps=_MAX_SWEEPS)
    return np.linalg.eigvalsh(gram)


# QL/QR sweeps allowed per eigenvalue, in total (LAPACK's limit; about 2 are needed).
_MAX_SWEEPS = 30


def symmetric_eigenvalues(matrix: np.ndarray, *, max_sweeps: int = _MAX_SWEEPS) -> np.ndarray:
    """Eigenvalues of a real symmetric matrix, ascending, like ``numpy.linalg.eigvalsh``.

    Only the lower triangle is read (eigvalsh's default ``UPLO='L'``). The matrix (any real dtype,
    any strides) is converted to float64; the solver is htcore's own: the matrix is scaled by a
    power of two (exactly) so its largest entry is near 1, reduced to tridiagonal form by
    Householder reflections, and the tridiagonal's eigenvalues found by root-free implicit QL/QR
    (Pal-Walker-Kahan, as LAPACK's dsterf). It runs on the calling thread with the GIL released,
    so calls from several threads run side by side (LAPACK's, through OpenBLAS, do not). Each
    eigenvalue's absolute error is a small multiple of M * 2^-53 * max|lambda| (M the order), as
    LAPACK's; the result is deterministic on a given CPU. Fastest up to M of about 2000; the
    work is O(M^3) and it keeps an M x M copy.

    Raises ValueError for a non-square or non-2-D matrix, NaN or Inf anywhere in it, or when the
    iteration needs more than ``max_sweeps * M`` QL/QR sweeps in total (LAPACK's limit is 30 * M).
    """
    a = as_float_array(matrix, "matrix", ndim=2, dtype=np.float64)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"matrix must be square, got shape {a.shape}")
    return kernel_symmetric_eigenvalues(a=a, max_sweeps=check_int(max_sweeps, "max_sweeps", low=0, high=1_000_000))


def _block_rows(shape: tuple[int, ...]) -> int:
    """Rows per Gram block of a matrix of ``shape``, the long side as rows."""
    return max(1, _BLOCK_ELEMENTS // max(1, min(shape)))


def splits_into_blocks(matrices: Iterable[np.ndarray]) -> bool:
    """Whether `esd` splits any of ``matrices`` into several row blocks, and so computes its Gram
    products on htcore's threads (the matrices' data is not read)."""
    return any(max(w.shape) > _block_rows(w.shape) for w in matrices)


def _block_gram(rows: np.ndarray) -> np.ndarray:
    block = np.asarray(rows, dtype=np.float64)
    return block.T @ block


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None
_controller = None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit the BLAS/LAPACK libraries numpy and scipy use to one thread while any thread is
    inside this context (needs threadpoolctl; without it the libraries keep their own setting).

    The limit is process-wide, so concurrent users share one limiter, counted: the original
    setting comes back when the last one leaves, never while another thread is computing.
    OpenBLAS lets only the thread that lowered its thread count raise it again, so the thread
    that enters first must leave last: enter in the calling thread around any worker pool (as
    `esd` and `htcore.analyze` do), and workers only nest inside it."""
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _limit_blas()
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def _limit_blas():
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class SpectralMetrics:
    """WeightWatcher's per-layer spectral metrics (weightwatcher 0.7.7 definitions).

    ``alpha`` here is WeightWatcher's alpha: the **pdf exponent** a of the fitted power-law tail of
    the ESD, p(lambda) ~ lambda^(-a) for lambda >= xmin (the tail index of the ESD is a - 1). This
    is htcore's one deliberate use of "alpha" for a pdf exponent, so tables compare directly.
    Fit-based fields are NaN (``num_spikes`` -1) when the layer has fewer than `MIN_EVALS`
    eigenvalues or fewer than two above `ZERO_EIGENVALUE`.

    Scale: eigenvalues are those of the stored weights. weightwatcher 0.7.7's default
    ``conv2d_norm=True`` multiplies Conv2d kernels by 1/sqrt(2) first, so for Conv2d layers its
    ``xmin`` and ``xmax`` are half of htcore's and its ``log_norm``, ``log_spectral_norm`` are
    log10(2) lower (``alpha_weighted`` follows); ``alpha``, ``ks_distance``, ``num_spikes`` and
    ``stable_rank`` are scale-free and identical. Linear and embedding layers match exactly.
    """

    num_evals: int  #: number of eigenvalues, min(N, M) per matrix, zeros included
    alpha: float  #: pdf exponent of the ESD tail, Clauset fit on eigenvalues > 1e-5 (WW ``alpha``)
    xmin: float  #: start of the fitted tail (an eigenvalue; WW ``xmin``)
    xmax: float  #: largest eigenvalue (WW ``xmax``: the fit is not truncated)
    ks_distance: float  #: KS distance of the fit (WW ``D``)
    num_spikes: int  #: eigenvalues >= xmin (WW ``num_pl_spikes``)
    alpha_weighted: float  #: alpha * log10(lambda_max) (WW ``alpha_weighted``)
    log_norm: float  #: log10(sum lambda) = log10 ||W||_F^2 (WW ``log_norm``)
    log_spectral_norm: float  #: log10(lambda_max) = log10 ||W||_2^2 (WW ``log_spectral_norm``)
    stable_rank: float  #: sum lambda / lambda_max (WW ``stable_rank``)


def spectral_metrics(evals: np.ndarray) -> SpectralMetrics:
    """WeightWatcher's metrics from an ESD (the output of `esd`).

    The tail fit is `htcore.fit_powerlaw` on the eigenvalues above 1e-5, scanning every
    eigenvalue but the largest as xmin with no xmax, which is what weightwatcher 0.7.7's default
    fit does (its separate small-sample fit for fewer than 20 such eigenvalues is not reproduced).
    The norm metrics use all eigenvalues.
    """
    evals = np.asarray(evals, dtype=np.float64)
    if evals.ndim != 1 or evals.size == 0:
        raise ValueError(f"evals must be a non-empty 1-D array, got shape {evals.shape}")
    total, lam_max = float(evals.sum()), float(evals.max())
    log_norm = math.log10(total) if total > 0 else -math.inf
    log_spectral_norm = math.log10(lam_max) if lam_max > 0 else -math.inf
    stable_rank = total / lam_max if lam_max > 0 else math.nan
    alpha = xmin = ks = math.nan
    num_spikes = -1
    tail = evals[evals > ZERO_EIGENVALUE]
    if evals.size >= MIN_EVALS and tail.size >= 2 and tail.min() < tail.max():
        fit = fit_powerlaw(tail)
        alpha, xmin, ks = float(fit.pdf_exponent), float(fit.xmin), float(fit.ks_distance)
        num_spikes = int(np.count_nonzero(evals >= xmin))
    return SpectralMetrics(
        num_evals=int(evals.size),
        alpha=alpha,
        xmin=xmin,
        xmax=lam_max,
        ks_distance=ks,
        num_spikes=num_spikes,
        alpha_weighted=alpha * log_spectral_norm,
        log_norm=log_norm,
        log_spectral_norm=log_spectral_norm,
        stable_rank=stable_rank,
    )
