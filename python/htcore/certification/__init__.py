"""Stage: certified generalization bounds for a compressed network.

- `code_length` -> `CodeLength`: the description length L(g) in bits, every choice charged
  (positions, values, dense tensors, architecture, self-delimiting length, the search).
- `bounds`: the bound forms on their own (`occam_bound` in kl / binomial / hoeffding / catoni form,
  `kl_inverse`, `arora_bound`).
- `certify` -> `BoundReport`: all forms for one compressed model from its own training error.
- `search_bound` -> `SearchResult`: compress and certify every setting of a grid, the search charged.

The rules of the code and the bound forms: docs/conventions.md, "Code length" and "Bounds".
"""
from __future__ import annotations

from . import bounds
from ._certify import BoundReport, certify, margin_error, outputs
from ._code_length import (
    CodeLength,
    TensorCodeLength,
    code_length,
    dense_code_length,
    elias_fano_decode,
    elias_fano_encode,
    elias_fano_size,
    sparse_code_length,
)
from ._search import SearchResult, search_bound

__all__ = [
    "BoundReport",
    "CodeLength",
    "SearchResult",
    "TensorCodeLength",
    "bounds",
    "certify",
    "code_length",
    "dense_code_length",
    "elias_fano_decode",
    "elias_fano_encode",
    "elias_fano_size",
    "margin_error",
    "outputs",
    "search_bound",
    "sparse_code_length",
]
