"""Stage: how heavy-tailed a model's weights are.

- Element tails of a sample (|w| of a matrix, zeros dropped: `element_sample`): the tail index by
  `hill`, `moments`, `pickands` (`TailEstimate`), and the exact Clauset power-law fit `fit_powerlaw`
  (`PowerLawFit`, with both the pdf exponent and the tail index).
- Spectra: `esd` (eigenvalues of W^T W, `symmetric_eigenvalues` for htcore's own solver) and
  WeightWatcher's metrics (`spectral_metrics` -> `SpectralMetrics`).
- Whole models: `analyze` -> `ModelReport` (one `LayerReport` per weight tensor; CSV, JSON, markdown,
  pandas and PNG plots).

Conventions (tail index vs pdf exponent, the ESD): docs/conventions.md.
"""
from __future__ import annotations

from ._analyze import DEFAULT_KEEPS, analyze, analyze_layer
from ._plots import plot_report
from ._powerlaw_fit import PowerLawFit, fit_powerlaw
from ._report import MIN_HILL_K, MIN_SPECTRAL_EVALS, MIN_SPECTRAL_TAIL, ElementTails, LayerReport, ModelReport
from ._spectra import MIN_EVALS, ZERO_EIGENVALUE, SpectralMetrics, esd, spectral_metrics, symmetric_eigenvalues
from ._tails import TailEstimate, element_sample, hill, moments, pickands

__all__ = [
    "DEFAULT_KEEPS",
    "MIN_HILL_K",
    "MIN_SPECTRAL_EVALS",
    "MIN_SPECTRAL_TAIL",
    "ElementTails",
    "LayerReport",
    "MIN_EVALS",
    "ModelReport",
    "PowerLawFit",
    "SpectralMetrics",
    "TailEstimate",
    "ZERO_EIGENVALUE",
    "analyze",
    "analyze_layer",
    "element_sample",
    "esd",
    "fit_powerlaw",
    "hill",
    "moments",
    "pickands",
    "plot_report",
    "spectral_metrics",
    "symmetric_eigenvalues",
]
