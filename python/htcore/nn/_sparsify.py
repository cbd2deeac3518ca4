"""`sparsify_model`: swap a model's ``nn.Linear`` and ``nn.Conv2d`` modules for top-k `SparseLinear` and
`SparseConv2d` ones, and report what changed."""
from __future__ import annotations

import fnmatch
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from .._text import plural
from .._validation import check_fraction
from ..errors import CalibrationWarning
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
    """What `sparsify_model` changed: the swapped layers (in module order), the names of the
    ``nn.Linear`` / ``nn.Conv2d`` modules (of the kinds asked for) it left dense, and, when a
    calibration batch was given, the relative output error it caused (None otherwise)."""

    layers: tuple
    skipped: tuple
    calibration_error: Optional[float] = None  # ||y_sparse - y_dense|| / ||y_dense|| on the calibration batch

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
        counts = [(kind, n) for kind in _KINDS if (n := sum(l.kind == kind for l in self.layers))]
        if len(counts) > 1:  # "1 Linear + 2 Conv2d layers": two kinds are two layers at least
            sparsified = " + ".join(f"{n} {kind}" for kind, n in counts) + " layers"
        else:  # "0 layers", "1 Linear layer", "2 Conv2d layers"
            sparsified = plural(len(self.layers), f"{counts[0][0]} layer" if counts else "layer")
        lines.append(f"\n{sparsified} sparsified, {len(self.skipped)} left dense; "
                     f"{self.dense_bytes} -> {self.sparse_bytes} bytes")
        if self.calibration_error is not None:
            lines.append(f"relative output error on the calibration batch: {self.calibration_error:.4g}")
        return "\n".join(lines)


def sparsify_model(
    model: nn.Module,
    keep: Union[float, Mapping[str, float]],
    *,
    include: Union[None, Iterable[str], Callable[[str, nn.Module], bool]] = None,
    mode: str = "matrix",
    value_dtype: Any = np.float32,
    kinds: Iterable[str] = ("Linear", "Conv2d"),
    calibration: Any = None,
    warn_above: float = 0.1,
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

    ``calibration``: an input batch (called as ``model(calibration)``; a tuple is unpacked as
    positional arguments). When given, the model runs on it before and after the swap (no grad)
    and the report's ``calibration_error`` is ||y_sparse - y_dense||_F / ||y_dense||_F over every
    floating tensor of the output (tensors nested in tuples, lists and dicts, e.g. a
    SentenceTransformer's features). Above ``warn_above`` (default 0.1, i.e. 10 %) a
    `htcore.errors.CalibrationWarning` says so. Returns a `SparsifyReport`.
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
    warn_above = float(warn_above)
    if not warn_above >= 0:
        raise ValueError(f"warn_above must be a number >= 0, got {warn_above}")
    selected = _selector(include)
    dense_output = None if calibration is None else _outputs(model, calibration)
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
    error = None
    if dense_output is not None:
        error = _relative_error(_outputs(model, calibration), dense_output)
        if error > warn_above:
            warnings.warn(f"sparsify_model changed the output on the calibration batch by {error:.3g} (relative, "
                          f"Frobenius) > warn_above = {warn_above:g}: keep more entries, or sparsify fewer layers",
                          CalibrationWarning, stacklevel=2)
    return SparsifyReport(tuple(changed), tuple(skipped), error)


def _outputs(model: nn.Module, batch: Any) -> list[torch.Tensor]:
    """Every floating tensor of ``model``'s output on ``batch``, flattened, as float64."""
    with torch.no_grad():
        out = model(*batch) if isinstance(batch, tuple) else model(batch)
    tensors: list[torch.Tensor] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point():
                tensors.append(obj.detach().to("cpu", torch.float64).reshape(-1))
        elif isinstance(obj, Mapping):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (tuple, list)):
            for value in obj:
                walk(value)

    walk(out)
    if not tensors:
        raise ValueError(f"calibration: the model's output holds no floating tensor ({type(out).__name__})")
    return tensors


def _relative_error(sparse: list[torch.Tensor], dense: list[torch.Tensor]) -> float:
    diff = math.sqrt(sum(float(((s - d) ** 2).sum()) for s, d in zip(sparse, dense)))
    norm = math.sqrt(sum(float((d**2).sum()) for d in dense))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


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
