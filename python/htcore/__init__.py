"""htcore: heavy-tailed weights -> measurement, top-k compression, generalization bounds, fast CPU runtime.

The package is layered (a lower layer never imports a higher one; `.importlinter` enforces it):

- foundation: `htcore.sparse` (CSR, SELL-8, top-k) -> `htcore.io` (model files, layer enumeration)
  -> `htcore.runtime` (torch-free model and its file) -> `htcore.nn` (torch integration) and
  `htcore.train` (seeded torch training helpers);
- stages: `htcore.measure` (tails, spectra, analyze) -> `htcore.compression` (compress) ->
  `htcore.certification` (code length, bounds, certify, search);
- apps: `htcore.cli`, `htcore.demo`, `htcore.datasets`, and this root, which re-exports the public API.

The compiled kernels live in ``htcore._core``; users never call it directly. Conventions (tail
index vs pdf exponent, ESD, keep and ties, code length, threads): docs/conventions.md.
Exceptions and warnings: `htcore.errors`.
"""
from __future__ import annotations

from typing import Any

from . import datasets, errors, train
from ._threads import get_num_threads, set_num_threads
from ._version import __version__
from .certification import BoundReport, bounds, certify, code_length, search_bound
from .compression import Allocation, allocate, compress, output_sensitivity
from .io import Layer, load_layers
from .measure import (
    LayerStability,
    ManyReport,
    ModelReport,
    NoiseStability,
    PowerLawFit,
    Resilience,
    TailComparison,
    TailEstimate,
    TailVerdict,
    analyze,
    analyze_many,
    compare_tails,
    element_sample,
    fit_powerlaw,
    hill,
    layer_stability,
    moments,
    noise_stability,
    pickands,
    resilience,
    tail_verdict,
)
from .runtime import load_compressed, save_compressed
from .sparse import (
    CompressibilityCurve,
    CSRMatrix,
    TopkThreshold,
    compressibility_curve,
    k_for_keep,
    sparse_conv2d,
    sparse_linear,
    sparsify_global,
    topk_sparsify,
    topk_threshold,
)

__all__ = [
    "__version__",
    # compression and bounds
    "Allocation",
    "allocate",
    "BoundReport",
    "bounds",
    "certify",
    "code_length",
    "compress",
    "output_sensitivity",
    "datasets",
    "errors",
    "search_bound",
    "train",
    # tails
    "PowerLawFit",
    "TailComparison",
    "TailVerdict",
    "TailEstimate",
    "compare_tails",
    "tail_verdict",
    "element_sample",
    "fit_powerlaw",
    "hill",
    "moments",
    "pickands",
    # CSR kernels and runtime
    "CSRMatrix",
    "sparse_linear",
    "sparse_conv2d",
    "save_compressed",
    "load_compressed",
    "get_num_threads",
    "set_num_threads",
    # top-k selection
    "CompressibilityCurve",
    "TopkThreshold",
    "compressibility_curve",
    "k_for_keep",
    "sparsify_global",
    "topk_sparsify",
    "topk_threshold",
    # model I/O and whole-model analysis
    "Layer",
    "ManyReport",
    "ModelReport",
    "analyze",
    "analyze_many",
    "load_layers",
    # compressed nets on real inputs
    "LayerStability",
    "NoiseStability",
    "Resilience",
    "layer_stability",
    "noise_stability",
    "resilience",
]


def __getattr__(name: str) -> Any:
    """``htcore.nn`` (torch integration) is imported on first use, so ``import htcore`` never imports torch."""
    if name == "nn":
        import importlib

        return importlib.import_module(".nn", __name__)
    raise AttributeError(f"module 'htcore' has no attribute {name!r}")
