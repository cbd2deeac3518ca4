"""htcore: heavy-tailed weights -> measurement, top-k compression, generalization bounds, fast CPU runtime.

The compiled kernels live in ``htcore._core``; everything public is re-exported here with
validation, documentation and type hints. Conventions (the README has them all): ``alpha`` is a
tail index (P(X > x) ~ x^-alpha), ``pdf_exponent`` = alpha + 1.
"""
from __future__ import annotations

from . import bounds, datasets, train
from ._version import __version__
from .analyze import analyze
from .certify import BoundReport, certify, search_bound
from .code_length import code_length
from .compress import compress
from .csr import CSRMatrix, sparse_linear
from .layers import Layer, load_layers
from .model_file import load_compressed, save_compressed
from .powerlaw_fit import PowerLawFit, fit_powerlaw
from .report import ModelReport
from .tails import TailEstimate, element_sample, hill, moments, pickands
from .threads import get_num_threads, set_num_threads
from .topk import (
    CompressibilityCurve,
    TopkThreshold,
    compressibility_curve,
    k_for_keep,
    sparsify_global,
    topk_sparsify,
    topk_threshold,
)

__all__ = [
    "__version__",
    # compression and bounds
    "BoundReport",
    "bounds",
    "certify",
    "code_length",
    "compress",
    "datasets",
    "search_bound",
    "train",
    # tails
    "PowerLawFit",
    "TailEstimate",
    "element_sample",
    "fit_powerlaw",
    "hill",
    "moments",
    "pickands",
    # CSR kernels and runtime
    "CSRMatrix",
    "sparse_linear",
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
    "ModelReport",
    "analyze",
    "load_layers",
]


def __getattr__(name: str):
    """``htcore.nn`` (torch integration) is imported on first use, so ``import htcore`` never imports torch."""
    if name in ("nn", "runtime"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'htcore' has no attribute {name!r}")
