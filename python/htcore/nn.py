"""torch integration (optional extra: needs torch): `SparseLinear`, an inference drop-in for
``nn.Linear`` running htcore's CSR kernels, and `sparsify_model`, which swaps a model's
``nn.Linear`` modules for top-k sparsified `SparseLinear` ones and reports what it changed.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from ._validation import check_fraction
from .csr import CSRMatrix, sparse_linear
from .runtime import Activation, Flatten, Linear
from .topk import topk_sparsify


class SparseLinear(nn.Module):
    """y = x W^T + b with W a `CSRMatrix` of shape (out_features, in_features), for inference.

    Inputs of shape (..., in_features) in any float dtype; the product runs in float32 (float64
    for float64 weights) in htcore's kernels and is returned in the input's dtype. No autograd:
    outputs carry no gradient. ``bias`` (optional) is kept as a float32 buffer.
    """

    def __init__(self, weight: CSRMatrix, bias: Any = None):
        super().__init__()
        if not isinstance(weight, CSRMatrix):
            raise TypeError(f"weight must be a CSRMatrix, got {type(weight).__name__}")
        self.weight_csr = weight
        self.out_features, self.in_features = weight.shape
        if bias is not None:
            bias = torch.as_tensor(bias).detach().to("cpu", torch.float32).reshape(-1)
            if bias.shape[0] != self.out_features:
                raise ValueError(f"bias has {bias.shape[0]} entries but weight has {self.out_features} rows")
        self.register_buffer("bias", bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, keep: Optional[float] = None, *, k: Optional[int] = None,
                   mode: str = "matrix", value_dtype: Any = np.float32) -> "SparseLinear":
        """Keep the top-k |w| of ``linear.weight`` (see `htcore.topk_sparsify` for ``keep``, ``k``
        and ``mode``); values stored as ``value_dtype`` (float32, or float16 to halve them)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().to("cpu", torch.float32).numpy()
        csr = topk_sparsify(w, keep, k=k, mode=mode).astype(value_dtype=value_dtype)
        return cls(csr, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, expected {self.in_features}")
        lead = x.shape[:-1]
        flat = x.detach().reshape(-1, self.in_features).cpu().numpy()
        bias = None if self.bias is None else self.bias.numpy()
        y = sparse_linear(flat, self.weight_csr, bias=bias)
        return torch.from_numpy(y).to(dtype=x.dtype, device=x.device).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        w = self.weight_csr
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nnz={w.nnz}, density={w.density:.4g}")


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
    else:
        keeps = None
        keep = check_fraction(keep, "keep")
    selected = _selector(include)
    changed, skipped = [], []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        fraction = keeps.get(name) if keeps is not None else keep
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


def layers_from_torch(module: nn.Module) -> list:
    """Runtime layers (`htcore.runtime`) for an ``nn.Sequential``; see `CompressedModel.from_torch`."""
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Sequential, got {type(module).__name__}")
    layers: list = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            layers.extend(layers_from_torch(child))
        elif isinstance(child, nn.Linear):
            bias = None if child.bias is None else child.bias.detach().to("cpu", torch.float32).numpy()
            layers.append(Linear(child.weight.detach().to("cpu", torch.float32).numpy(), bias))
        elif isinstance(child, SparseLinear):
            layers.append(Linear(child.weight_csr, None if child.bias is None else child.bias.numpy()))
        elif isinstance(child, (nn.ReLU, nn.Tanh)):
            layers.append(Activation("relu" if isinstance(child, nn.ReLU) else "tanh"))
        elif isinstance(child, nn.GELU):
            if child.approximate != "none":
                raise ValueError(f"{name}: only the exact GELU (approximate='none') is supported, got {child.approximate!r}")
            layers.append(Activation("gelu"))
        elif isinstance(child, nn.Softmax):
            if child.dim not in (-1, 1):
                raise ValueError(f"{name}: Softmax must be over the features (dim=-1 or 1), got dim={child.dim}")
            layers.append(Activation("softmax"))
        elif isinstance(child, nn.Flatten):
            if child.start_dim != 1 or child.end_dim != -1:
                raise ValueError(f"{name}: only Flatten(start_dim=1, end_dim=-1) is supported")
            layers.append(Flatten())
        elif isinstance(child, (nn.Dropout, nn.Identity)):
            continue  # no-ops at inference
        else:
            raise TypeError(f"{name}: {type(child).__name__} is not supported by the runtime "
                            "(Linear, SparseLinear, ReLU, GELU, Tanh, Softmax, Flatten, Dropout, Identity)")
    return layers
