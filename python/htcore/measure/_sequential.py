"""A sequential net (torch ``nn.Sequential`` or runtime `CompressedModel`) as a list of float64 torch
operations, for measurements that need the layers' weights, their inputs and gradients.

`noise_stability` and `resilience` both compare nets layer by layer and perturb weights; this module
gives them one view of a net: `sequential_ops` converts (torch modules through
`htcore.nn.to_runtime_layers`, so `SparseLinear`/`SparseConv2d` and codebook weights are handled as the
runtime handles them; every weight densified to float64), `forward` runs the ops, `check_corresponds`
says whether two nets have the same layers. Computing in float64 keeps ||(W - W_hat) x|| exact to
about 1e-16 relative even when the compression error is tiny.

Needs torch, imported on first use (``import htcore`` never imports torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

WEIGHTED = ("linear", "conv2d")
ELEMENTWISE = ("relu", "gelu", "tanh")


@dataclass(frozen=True, eq=False)
class Op:
    """One layer: ``kind`` is "linear", "conv2d", "flatten", "maxpool2d", "avgpool2d" or an activation
    ("relu", "gelu", "tanh", "softmax"). ``weight`` (float64 tensor, torch's shape: (out, in) or
    (out, in / groups, kh, kw)) and ``bias`` only for weighted kinds; ``params`` the conv/pool sizes."""

    kind: str
    weight: Any = None
    bias: Any = None
    params: dict = field(default_factory=dict)

    def with_weight(self, weight: Any) -> "Op":
        return Op(self.kind, weight, self.bias, self.params)

    def describe(self) -> str:
        shape = "" if self.weight is None else "x".join(map(str, self.weight.shape))
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({', '.join(s for s in (shape, extra) if s)})"


def torch_module():
    """torch, or an ImportError saying what needs it."""
    try:
        import torch
    except ImportError:
        raise ImportError("htcore's noise-stability and resilience measurements need torch (pip install torch)") from None
    return torch


def sequential_ops(model: Any, name: str) -> list[Op]:
    """``model`` (a torch ``nn.Sequential`` or a `htcore.runtime.CompressedModel`) as float64 ops."""
    torch = torch_module()
    from ..runtime import Activation, AvgPool2d, CompressedModel, Conv2d, Flatten, Linear, MaxPool2d
    from ..sparse import CSRMatrix

    if isinstance(model, CompressedModel):
        layers = model.layers
    elif isinstance(model, torch.nn.Module):
        if not isinstance(model, torch.nn.Sequential):
            raise TypeError(f"{name} must be a torch.nn.Sequential or a htcore CompressedModel, got {type(model).__name__}")
        from ..nn import to_runtime_layers

        layers = to_runtime_layers(model)
    else:
        raise TypeError(f"{name} must be a torch.nn.Sequential or a htcore CompressedModel, got {type(model).__name__}")

    def dense(w: Any) -> Any:
        return torch.from_numpy(np.asarray(w.todense() if isinstance(w, CSRMatrix) else w, dtype=np.float64))

    ops: list[Op] = []
    for layer in layers:
        bias = None if getattr(layer, "bias", None) is None else torch.from_numpy(np.asarray(layer.bias, np.float64))
        if isinstance(layer, Linear):
            ops.append(Op("linear", dense(layer.weight), bias))
        elif isinstance(layer, Conv2d):
            (kh, kw), groups = layer.kernel_size, layer.groups
            weight = dense(layer.weight).reshape(layer.out_channels, layer.in_channels // groups, kh, kw)
            ops.append(Op("conv2d", weight, bias, dict(stride=layer.stride, padding=layer.padding,
                                                       dilation=layer.dilation, groups=groups)))
        elif isinstance(layer, (MaxPool2d, AvgPool2d)):
            kind = "maxpool2d" if isinstance(layer, MaxPool2d) else "avgpool2d"
            ops.append(Op(kind, params=dict(kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding)))
        elif isinstance(layer, Flatten):
            ops.append(Op("flatten"))
        elif isinstance(layer, Activation):
            ops.append(Op(layer.kind))
    if not any(op.kind in WEIGHTED for op in ops):
        raise ValueError(f"{name} has no Linear or Conv2d layer")
    return ops


def check_corresponds(a: list[Op], b: list[Op], names: tuple[str, str]) -> None:
    """Raise ValueError unless ``a`` and ``b`` have the same layers (kinds, weight shapes, sizes) in order."""
    if len(a) != len(b):
        raise ValueError(f"{names[0]} and {names[1]} do not correspond: {len(a)} vs {len(b)} layers "
                         f"({[op.kind for op in a]} vs {[op.kind for op in b]})")
    for i, (x, y) in enumerate(zip(a, b)):
        same = x.kind == y.kind and x.params == y.params
        if same and x.kind in WEIGHTED:
            same = x.weight.shape == y.weight.shape and (x.bias is None) == (y.bias is None)
        if not same:
            raise ValueError(f"{names[0]} and {names[1]} do not correspond at layer {i}: "
                             f"{x.describe()} vs {y.describe()}")


def check_input(ops: list[Op], X: np.ndarray, name: str) -> None:
    """Raise ValueError unless X (batch, ...) has the shape the first weighted layer reads."""
    first = next(i for i, op in enumerate(ops) if op.kind in WEIGHTED)
    op = ops[first]
    if op.kind == "conv2d":
        channels = op.weight.shape[1] * op.params["groups"]
        if X.ndim != 4 or X.shape[1] != channels:
            raise ValueError(f"{name} must be (batch, {channels}, H, W) images for the first Conv2d, got shape {X.shape}")
        return
    flattened = any(o.kind == "flatten" for o in ops[:first])
    features = int(np.prod(X.shape[1:])) if flattened else (X.shape[1] if X.ndim == 2 else -1)
    if X.ndim < 2 or features != op.weight.shape[1]:
        raise ValueError(f"{name} must be (batch, {op.weight.shape[1]}) for the first Linear, got shape {X.shape}")


def apply(op: Op, h: Any) -> Any:
    """One op on a float64 batch."""
    torch = torch_module()
    F = torch.nn.functional
    if op.kind == "linear":
        return F.linear(h, op.weight, op.bias)
    if op.kind == "conv2d":
        return F.conv2d(h, op.weight, op.bias, **op.params)
    if op.kind == "flatten":
        return h.reshape(h.shape[0], -1)
    if op.kind == "maxpool2d":
        return F.max_pool2d(h, **op.params)
    if op.kind == "avgpool2d":
        return F.avg_pool2d(h, **op.params)
    if op.kind == "relu":
        return torch.relu(h)
    if op.kind == "gelu":
        return F.gelu(h)
    if op.kind == "tanh":
        return torch.tanh(h)
    return torch.softmax(h, dim=1 if h.ndim == 2 else -1)


def forward(ops: list[Op], h: Any, start: int = 0) -> Any:
    """Run ops[start:] on ``h`` (the input of op ``start``)."""
    for op in ops[start:]:
        h = apply(op, h)
    return h


def layer_matrix(op: Op) -> Any:
    """The matrix a weighted op applies to each input vector: W (out, in) for a Linear; for a Conv2d
    the (out, in * kh * kw) matrix acting on a full patch (block diagonal over the groups, so
    its Frobenius norm is the kernel's)."""
    if op.kind == "linear":
        return op.weight
    torch = torch_module()
    out, per_group, kh, kw = op.weight.shape
    groups = op.params["groups"]
    flat = op.weight.reshape(out, per_group * kh * kw)
    if groups == 1:
        return flat
    full = torch.zeros(out, groups * per_group * kh * kw, dtype=flat.dtype)
    rows, cols = out // groups, per_group * kh * kw
    for g in range(groups):
        full[g * rows:(g + 1) * rows, g * cols:(g + 1) * cols] = flat[g * rows:(g + 1) * rows]
    return full


def layer_vectors(op: Op, h: Any) -> Any:
    """The vectors a weighted op's matrix acts on, one per row: the inputs of a Linear; the
    zero-padded patches (channel-major, then kh, kw: torch's unfold order) of every position of every
    image for a Conv2d."""
    if op.kind == "linear":
        return h
    torch = torch_module()
    out, per_group, kh, kw = op.weight.shape
    p = op.params
    patches = torch.nn.functional.unfold(h, (kh, kw), dilation=p["dilation"], padding=p["padding"], stride=p["stride"])
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def to_tensor(X: np.ndarray) -> Any:
    return torch_module().from_numpy(np.asarray(X, dtype=np.float64))


def maybe_subsample(n: int, max_samples: Optional[int], rng: np.random.Generator) -> Optional[np.ndarray]:
    """Sorted row indices of a seeded subsample when n > max_samples, else None (use all rows)."""
    if max_samples is None or n <= max_samples:
        return None
    return np.sort(rng.choice(n, size=max_samples, replace=False))
