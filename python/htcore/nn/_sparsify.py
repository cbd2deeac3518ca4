"""`sparsify_model`: swap a model's ``nn.Linear`` and ``nn.Conv2d`` modules for top-k `SparseLinear` and
`SparseConv2d` ones, and report what changed."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

import numpy as np
from torch import nn

from .._validation import check_fraction
from ._sparse_conv import SparseConv2d
from ._sparse_linear import SparseLinear

# kind (the torch class's name) -> (the dense torch module it replaces, the sparse module)
_KINDS: dict = {"Linear": (nn.Linear, SparseLinear), "Conv2d": (nn.Conv2d, SparseConv2d)}


@dataclass(frozen=True)
class SparsifiedLayer:
    """One swapped module: qualified name, the weight's shape as the matrix it is stored as ((out, in)
    for a Linear, (out, in / groups * kh * kw) for a Conv2d), keep fraction asked for, kept entries,
    bytes of the dense float32 weight vs the CSR arrays, and the module's kind ("Linear" or "Conv2d")."""

    name: str
    shape: tuple
    keep: float
    nnz: int
    dense_bytes: int
    sparse_bytes: int
    kind: str = "Linear"

    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1]) if self.shape[0] * self.shape[1] else 0.0


@dataclass(frozen=True)
class SparsifyReport:
    """What `sparsify_model` changed: the swapped layers (in module order) and the names of the
    ``nn.Linear`` / ``nn.Conv2d`` modules (of the kinds asked for) it left dense."""

    layers: tuple
    skipped: tuple

    @property
    def dense_bytes(self) -> int:
        return sum(l.dense_bytes for l in self.layers)

    @property
    def sparse_bytes(self) -> int:
        return sum(l.sparse_bytes for l in self.layers)

    def __str__(self) -> str:
        lines = ["| layer | kind | shape | keep | nnz | density | dense bytes | CSR bytes |",
                 "|---|---|---|---|---|---|---|---|"]
        for l in self.layers:
            lines.append(f"| {l.name} | {l.kind} | {l.shape[0]}x{l.shape[1]} | {l.keep:.4g} | {l.nnz} | "
                         f"{l.density:.4g} | {l.dense_bytes} | {l.sparse_bytes} |")
        counts = " + ".join(f"{sum(l.kind == kind for l in self.layers)} {kind}"
                            for kind in _KINDS if any(l.kind == kind for l in self.layers))
        lines.append(f"\n{counts or 0} layers sparsified, {len(self.skipped)} left dense; "
                     f"{self.dense_bytes} -> {self.sparse_bytes} bytes")
        return "\n".join(lines)


def sparsify_model(
    model: nn.Module,
    keep: Union[float, Mapping[str, float]],
    *,
    include: Union[None, Iterable[str], Callable[[str, nn.Module], bool]] = None,
    mode: str = "matrix",
    value_dtype: Any = np.float32,
    kinds: Iterable[str] = ("Linear", "Conv2d"),
) -> SparsifyReport:
    """Replace the ``nn.Linear`` and ``nn.Conv2d`` modules of ``model`` (in place) by top-k
    `SparseLinear` and `SparseConv2d` ones.

    ``keep``: one fraction in (0, 1] for every layer, or a mapping from qualified module name
    (as in ``model.named_modules()``) to its fraction; layers missing from the mapping stay dense.
    ``include``: None (every layer of the kinds), glob patterns on the qualified names
    (``"encoder.*"``), or a predicate ``(name, module) -> bool``. ``mode`` and ``value_dtype`` as
    in `SparseLinear.from_dense` / `SparseConv2d.from_dense` (a conv weight ranks as the matrix
    (out, in / groups * kh * kw); SparseConv2d needs padding_mode="zeros" and float32 or float16
    values). ``kinds``: which module kinds to swap, "Linear" and/or "Conv2d" (both by default).
    Returns a `SparsifyReport`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or not set(kinds) <= set(_KINDS):
        raise ValueError(f"kinds must be a non-empty selection of {tuple(_KINDS)}, got {kinds!r}")
    swaps = [(kind, _KINDS[kind][0]) for kind in _KINDS if kind in kinds]
    dense_types = tuple(dense for _, dense in swaps)
    if isinstance(keep, Mapping):
        keeps = {name: check_fraction(v, f"keep[{name!r}]") for name, v in keep.items()}
        known = {name for name, m in model.named_modules() if isinstance(m, dense_types)}
        unknown = sorted(set(keeps) - known)
        if unknown:
            names = " or ".join(f"nn.{kind}" for kind, _ in swaps)
            raise ValueError(f"keep names modules that are not {names} in the model: {unknown[:5]}")
        every = None
    else:
        keeps = None
        every = check_fraction(keep, "keep")
    selected = _selector(include)
    changed, skipped = [], []
    for name, module in list(model.named_modules()):
        kind = next((kind for kind, dense in swaps if isinstance(module, dense)), None)
        if kind is None:
            continue
        fraction = keeps.get(name) if keeps is not None else every
        if fraction is None or not selected(name, module):
            skipped.append(name)
            continue
        if name == "":
            raise ValueError(f"model itself is an nn.{kind}: wrap it, or use Sparse{kind}.from_dense")
        sparse = _KINDS[kind][1].from_dense(module, fraction, mode=mode, value_dtype=value_dtype)
        _replace(model, name, sparse)
        w = sparse.weight_csr
        changed.append(SparsifiedLayer(name, w.shape, fraction, w.nnz, 4 * w.shape[0] * w.shape[1], w.nbytes, kind))
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
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
