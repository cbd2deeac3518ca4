"""Stage: how heavy-tailed a model's weights are.

- Element tails of a sample (|w| of a matrix, zeros dropped: `element_sample`): the tail index by
  `hill`, `moments`, `pickands` (`TailEstimate`), and the exact Clauset power-law fit `fit_powerlaw`
  (`PowerLawFit`, with both the pdf exponent and the tail index).
- Is a tail a power law at all: `compare_tails` (Clauset et al.'s likelihood-ratio tests against the
  exponential, log-normal, stretched exponential and truncated power law -> `TailComparison`).
- Spectra: `esd` (eigenvalues of W^T W, `symmetric_eigenvalues` for htcore's own solver) and
  WeightWatcher's metrics (`spectral_metrics` -> `SpectralMetrics`).
- Compressed nets on real inputs: `noise_stability` -> `NoiseStability` (relative errors vs the
  Frobenius prediction, Arora et al.'s cushions, error propagation, margins; `layer_stability` for one
  matrix), `resilience` -> `Resilience` (accuracy under input and weight noise, several nets side by
  side), `stability_section` (both as a report section). Need torch.
- Whole models: `analyze` -> `ModelReport` (one `LayerReport` per weight tensor; CSV, JSON, markdown,
  pandas and PNG plots; `format_column` prints a table column with its numbers formatted alike).
- Many models: `analyze_many` -> `ManyReport` (files, directories, globs on a local process pool,
  a Dask cluster or any executor; `executor_for`, `local_executor`, `pool_executor`).

Conventions (tail index vs pdf exponent, the ESD): docs/conventions.md.
"""
from __future__ import annotations

from ._analyze import DEFAULT_KEEPS, analyze, analyze_layer
from ._compare_tails import ALTERNATIVES, LikelihoodRatioTest, TailComparison, TailVerdict, compare_tails, tail_verdict
from ._many import (
    MODEL_SUFFIXES,
    ManyReport,
    ModelResult,
    analyze_many,
    executor_for,
    local_executor,
    model_files,
    pool_executor,
)
from ._plots import plot_report, plot_resilience, plot_stability
from ._powerlaw_fit import PowerLawFit, fit_powerlaw
from ._report import (
    MIN_HILL_K,
    MIN_SPECTRAL_EVALS,
    MIN_SPECTRAL_TAIL,
    ElementTails,
    LayerReport,
    ModelReport,
    format_column,
)
from ._resilience import Resilience, resilience
from ._spectra import MIN_EVALS, ZERO_EIGENVALUE, SpectralMetrics, esd, spectral_metrics, symmetric_eigenvalues
from ._stability import LayerStability, NoiseStability, layer_stability, noise_stability
from ._stability_section import stability_section
from ._tails import DEFAULT_RESAMPLES, TailEstimate, element_sample, hill, moments, pickands

__all__ = [
    "DEFAULT_RESAMPLES",
    "ALTERNATIVES",
    "LikelihoodRatioTest",
    "TailComparison",
    "TailVerdict",
    "compare_tails",
    "tail_verdict",
    "DEFAULT_KEEPS",
    "MIN_HILL_K",
    "MIN_SPECTRAL_EVALS",
    "MIN_SPECTRAL_TAIL",
    "ElementTails",
    "LayerReport",
    "LayerStability",
    "MIN_EVALS",
    "MODEL_SUFFIXES",
    "ManyReport",
    "ModelReport",
    "ModelResult",
    "format_column",
    "NoiseStability",
    "PowerLawFit",
    "Resilience",
    "SpectralMetrics",
    "TailEstimate",
    "ZERO_EIGENVALUE",
    "analyze",
    "analyze_layer",
    "analyze_many",
    "element_sample",
    "esd",
    "executor_for",
    "fit_powerlaw",
    "hill",
    "layer_stability",
    "local_executor",
    "model_files",
    "moments",
    "noise_stability",
    "pickands",
    "plot_report",
    "plot_resilience",
    "plot_stability",
    "pool_executor",
    "resilience",
    "spectral_metrics",
    "stability_section",
    "symmetric_eigenvalues",
]
