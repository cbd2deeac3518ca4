"""htcore: heavy-tailed weights -> measurement, top-k compression, generalization bounds, fast CPU runtime.

The compiled kernels live in ``htcore._core``; everything public is re-exported here with
validation, documentation and type hints. See ``../shared/DESIGN.md`` conventions in the README:
``alpha`` is a tail index (P(X > x) ~ x^-alpha), ``pdf_exponent`` = alpha + 1.
"""
from __future__ import annotations

from . import bounds, datasets, train
from ._version import __version__
from .certify import BoundReport, certify, search_bound
from .code_length import code_length
from .compress import compress
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
    "BoundReport",
    "bounds",
    "certify",
    "code_length",
    "compress",
    "datasets",
    "search_bound",
    "train",
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
]
