"""`sparsify_model`: swap a model's ``nn.Linear`` modules for top-k `SparseLinear` ones, and report what changed."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

import numpy as np
from torch import nn

from .._validation import check_fraction
from ._sparse_linear import SparseLinear


@dataclass(frozen=True)
class SparsifiedLayer:
    """One swapped module: qualified name, (out, in) shape, keep fraction asked for, kept entries,
    and bytes of the dense float32 weight vs the CSR arrays."""

    name: str
    shape: tuple
    keep: float
    nnz: int
    dense_bytes: int
    sparse_bytes: int

    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1]) if self.shape[0] * self.shape[1] else 0.0


@dataclass(frozen=True)
class SparsifyReport:
    """What `sparsify_model` changed: the swapped layers (in module order) and the names of the
    ``nn.Linear`` modules it left dense."""

    layers: tuple
    skipped: tuple

    @property
    def dense_bytes(self) -> int:
        return sum(l.dense_bytes for l in self.layers)

    @property
    def sparse_bytes(self) -> int:
        return sum(l.sparse_bytes for l in self.layers)

    def __str__(self) -> str:
        lines = ["| layer | shape | keep | nnz | density | dense bytes | CSR bytes |", "|---|---|---|---|---|---|---|"]
        for l in self.layers:
            lines.append(f"| {l.name} | {l.shape[0]}x{l.shape[1]} | {l.keep:.4g} | {l.nnz} | {l.density:.4g} | "
                         f"{l.dense_bytes} | {l.sparse_bytes} |")
        lines.append(f"\n{len(self.layers)} Linear layers sparsified, {len(self.skipped)} left dense; "
                     f"{self.dense_bytes} -> {self.sparse_bytes} bytes")
        return "\n".join(lines)


def sparsify_model(
    model: nn.Module,
    keep: Union[float, Mapping[str, float]],
    *,
    include: Union[None, Iterable[str], Callable[[str, nn.Module], bool]] = None,
    mode: str = "matrix",
    value_dtype: Any = np.float32,
) -> SparsifyReport:
    """Replace ``nn.Linear`` modules of ``model`` (in place) by top-k `SparseLinear` ones.

    ``keep``: one fraction in (0, 1] for every layer, or a mapping from qualified module name
    (as in ``model.named_modules()``) to its fraction; layers missing from the mapping stay dense.
    ``include``: None (every Linear), glob patterns on the qualified names (``"encoder.*"``), or
    a predicate ``(name, module) -> bool``. Returns a `SparsifyReport`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(keep, Mapping):
        keeps = {name: check_fraction(v, f"keep[{name!r}]") for name, v in keep.items()}
        known = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        unknown = sorted(set(keeps) - known)
        if unknown:
            raise ValueError(f"keep names modules that are not nn.Linear in the model: {unknown[:5]}")
        every = None
    else:
        keeps = None
        every = check_fraction(keep, "keep")
    selected = _selector(include)
    changed, skipped = [], []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        fraction = keeps.get(name) if keeps is not None else every
        if fraction is None or not selected(name, module):
            skipped.append(name)
            continue
        sparse = SparseLinear.from_dense(module, fraction, mode=mode, value_dtype=value_dtype)
        _replace(model, name, sparse)
        w = sparse.weight_csr
        changed.append(SparsifiedLayer(name, w.shape, fraction, w.nnz, 4 * w.shape[0] * w.shape[1], w.nbytes))
    return SparsifyReport(tuple(changed), tuple(skipped))


def _selector(include: Any) -> Callable[[str, nn.Module], bool]:
    if include is None:
        return lambda name, module: True
    if callable(include):
        return include
    if isinstance(include, str):
        include = [include]
    patterns = list(include)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError("include must be None, glob patterns (strings) or a callable (name, module) -> bool")
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise ValueError("model itself is an nn.Linear: wrap it, or use SparseLinear.from_dense")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
