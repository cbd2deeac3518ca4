"""A torch-free runtime for sequential compressed networks (MLPs and LeNet-style CNNs): numpy and
htcore's kernels only.

A `CompressedModel` is a sequence of layers:

- `Linear(weight, bias)`: y = x W^T + b (torch's convention), W of shape (out, in) either a
  `CSRMatrix` (any storage format; runs in the CSR kernels) or a dense float32 array.
- `Activation(kind)`: "relu", "gelu" (exact erf form, torch's default), "tanh" or "softmax"
  (over the features). An activation right after a sparse Linear is fused into its kernel.
- `Flatten()`: (batch, d1, d2, ...) -> (batch, d1 * d2 * ...).
- `Conv2d(weight, bias, kernel_size=, stride=, padding=, dilation=, groups=)`: torch's conv2d
  (zero padding) on (batch, C, H, W) images, run by `htcore.sparse_conv2d`. The weight is a
  `CSRMatrix` of shape (out, in / groups * kh * kw) or a dense float32 array of torch's shape
  (out, in / groups, kh, kw); a dense weight runs in the same kernel as a CSR matrix holding every
  entry (built once, with the layer). An activation right after a Conv2d is fused into its kernel.
- `MaxPool2d(kernel_size, stride=None, padding=0)`, `AvgPool2d(...)`: torch's pooling (ceil_mode
  False; average pooling counts the zero padding, count_include_pad=True), in numpy.

Layers before the first Flatten see (batch, C, H, W) images when the model starts with a Conv2d or
a pool; an element-wise activation there acts on the images (softmax needs a Flatten first).

When to keep a layer dense: CSR pays ~6-8 bytes and a gathered load per kept weight, dense
GEMV 4 bytes and none. For a small layer that stays in cache, dense wins from about 30% density
(SpMV) and, for batches of hundreds of rows, from about 10-30%; pass such weights as dense arrays
(benchmarks/results/spmv.md has the measured crossover on this machine).

Everything is computed in float32 (float64 CSR weights are converted when the layer is built).
Inputs are (batch, ...) arrays. Internally activations are kept as (features, batch), so the
kernels read each weight row once per batch and no transposes happen between layers.
Threads: a layer runs on one thread unless it has at least 2 x 8,192 multiply-adds ((nnz + out)
* batch, see `htcore.sparse.CSRMatrix`), so a batch of 1 through an MLP of Fashion-MNIST size at 10% density
runs its two large layers on `htcore.get_num_threads()` threads and the 10-output layer serially.

Batch 1 (A x) on short rows: a sparse Linear whose weight has float32 or float16 values (no
codebook) and at most 128 values per row on average (nnz / out_features <= 128) also keeps a
SELL-8 copy of its weight (rows sorted by length, eight rows per SIMD step; `htcore.sparse.SellMatrix`),
built when the layer is constructed, and uses it for batches of 1; larger batches use the CSR kernel.
It costs extra memory of about 1.0-1.15x the CSR matrix (values and indices padded by 0-5% on
uniform and top-k patterns, plus 4 bytes of row order per row). Why and by how much it is faster:
docs/performance.md, "SELL-8".
Weights are immutable once a layer is built: changing a CSRMatrix's arrays afterwards is not
seen by the SELL-8 copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from .._core import Activation as _KernelActivation
from .._core import activate_inplace, avg_pool2d, max_pool2d, softmax_axis0
from .._validation import as_float_array, check_int, check_pair
from ..sparse import ACTIVATIONS, CSRMatrix, SellMatrix, as_kernel_array, sell_eligible, sparse_conv2d

ACTIVATION_KINDS = ACTIVATIONS + ("softmax",)


@dataclass(frozen=True, eq=False)
class Linear:
    """y = x W^T + b. ``weight``: CSRMatrix or dense array of shape (out_features, in_features);
    ``bias``: None or shape (out_features,). Arrays are stored as float32, C-contiguous.
    A short-row float32/float16 CSR weight also gets a SELL-8 copy for batch 1 (module docstring)."""

    weight: Union[CSRMatrix, np.ndarray]
    bias: Optional[np.ndarray] = None
    _sell: Optional[SellMatrix] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        w = self.weight
        if isinstance(w, CSRMatrix):
            if w.data.dtype == np.float64:
                w = w.astype(value_dtype=np.float32)
        else:
            w = as_float_array(w, "weight", ndim=2, dtype=np.float32)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "_sell", SellMatrix(w) if isinstance(w, CSRMatrix) and sell_eligible(w) else None)
        if self.bias is not None:
            b = as_float_array(self.bias, "bias", ndim=1, dtype=np.float32)
            if b.shape[0] != w.shape[0]:
                raise ValueError(f"bias has {b.shape[0]} entries but weight has {w.shape[0]} rows (out_features)")
            object.__setattr__(self, "bias", b)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def sparse(self) -> bool:
        return isinstance(self.weight, CSRMatrix)


@dataclass(frozen=True)
class Activation:
    """An element-wise activation ("relu", "gelu", "tanh") or "softmax" over the features."""

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATION_KINDS:
            raise ValueError(f"activation kind must be one of {ACTIVATION_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Flatten:
    """(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)."""


def _pool_sizes(kernel_size: Any, stride: Any, padding: Any) -> tuple:
    k = check_pair(kernel_size, "kernel_size", low=1)
    s = k if stride is None else check_pair(stride, "stride", low=1)
    p = check_pair(padding, "padding", low=0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding must be at most half the kernel_size (as torch requires), got padding={p} for kernel_size={k}")
    return k, s, p


@dataclass(frozen=True, eq=False)
class Conv2d:
    """torch's conv2d (zero padding) with a CSRMatrix weight of shape (out, in / groups * kh * kw)
    or a dense array of torch's shape (out, in / groups, kh, kw); ``bias``: None or shape (out,).
    Sizes are ints or (h, w) pairs, stored as pairs. A dense weight is kept as float32 and also as
    a CSR matrix holding every entry, which is what runs."""

    weight: Union[CSRMatrix, np.ndarray]
    bias: Optional[np.ndarray] = None
    kernel_size: Any = None
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    _csr: CSRMatrix = field(default=None, init=False, repr=False)  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.kernel_size is None:
            raise TypeError("Conv2d needs kernel_size (an int or a pair (kh, kw))")
        kh, kw = check_pair(self.kernel_size, "kernel_size", low=1)
        object.__setattr__(self, "kernel_size", (kh, kw))
        object.__setattr__(self, "stride", check_pair(self.stride, "stride", low=1))
        object.__setattr__(self, "padding", check_pair(self.padding, "padding", low=0))
        object.__setattr__(self, "dilation", check_pair(self.dilation, "dilation", low=1))
        groups = check_int(self.groups, "groups", low=1)
        object.__setattr__(self, "groups", groups)
        w = self.weight
        if isinstance(w, CSRMatrix):
            if w.data.dtype == np.float64:
                w = w.astype(value_dtype=np.float32)
            out, cols = w.shape
            if cols % (kh * kw) or cols == 0:
                raise ValueError(f"weight has {cols} columns, not a positive multiple of kh * kw = {kh * kw} "
                                 f"(a CSR conv weight is (out, in / groups * kh * kw))")
            csr = w
        else:
            w = as_float_array(w, "weight", ndim=4, dtype=np.float32)
            out, per_group, wkh, wkw = w.shape
            if (wkh, wkw) != (kh, kw):
                raise ValueError(f"weight has kernel {(wkh, wkw)} (shape {w.shape}) but kernel_size is {(kh, kw)}")
            if per_group < 1:
                raise ValueError(f"weight must have at least one input channel per group, got shape {w.shape}")
            cols = per_group * kh * kw
            csr = CSRMatrix(w.reshape(out, cols).ravel(), np.tile(np.arange(cols), out),
                            np.arange(0, out * cols + 1, cols), (out, cols))
        if out < 1:
            raise ValueError(f"weight must have at least one row (output channel), got shape {w.shape}")
        if out % groups:
            raise ValueError(f"groups={groups} must divide the output channels {out}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "_csr", csr)
        if self.bias is not None:
            b = as_float_array(self.bias, "bias", ndim=1, dtype=np.float32)
            if b.shape[0] != out:
                raise ValueError(f"bias has {b.shape[0]} entries but weight has {out} output channels")
            object.__setattr__(self, "bias", b)

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) // (self.kernel_size[0] * self.kernel_size[1]) * self.groups if self.sparse \
            else int(self.weight.shape[1]) * self.groups

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def sparse(self) -> bool:
        return isinstance(self.weight, CSRMatrix)


@dataclass(frozen=True)
class MaxPool2d:
    """torch's max_pool2d (ceil_mode False, dilation 1): ``stride`` defaults to ``kernel_size``,
    ``padding`` (at most half the kernel) pads with -inf. Sizes are stored as (h, w) pairs."""

    kernel_size: Any
    stride: Any = None
    padding: Any = 0

    def __post_init__(self) -> None:
        for name, value in zip(("kernel_size", "stride", "padding"), _pool_sizes(self.kernel_size, self.stride, self.padding)):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class AvgPool2d:
    """torch's avg_pool2d (ceil_mode False, count_include_pad True: the zero padding counts in the
    divisor kh * kw): ``stride`` defaults to ``kernel_size``. Sizes are stored as (h, w) pairs."""

    kernel_size: Any
    stride: Any = None
    padding: Any = 0

    def __post_init__(self) -> None:
        for name, value in zip(("kernel_size", "stride", "padding"), _pool_sizes(self.kernel_size, self.stride, self.padding)):
            object.__setattr__(self, name, value)


RuntimeLayer = Union[Linear, Activation, Flatten, Conv2d, MaxPool2d, AvgPool2d]
_IMAGE_LAYERS = (Conv2d, MaxPool2d, AvgPool2d)


@dataclass(frozen=True)
class _Step:
    """One step of the execution plan: a Linear or Conv2d with the activation fused into it, or a lone layer."""

    layer: RuntimeLayer
    activation: str = "none"


class CompressedModel:
    """A sequential network (MLP or LeNet-style CNN) run with numpy and htcore's CSR kernels (no torch).

    ``model(X)`` returns the float32 outputs for X of shape (batch, ...); ``model.predict(X)``
    the argmax labels. ``metadata`` is a JSON-serialisable dict carried along (e.g. provenance).
    Layer shapes are checked on construction: consecutive Linear layers must chain, as must the
    channels of consecutive Conv2d layers (pools keep them); image layers come before any Flatten
    or Linear.
    """

    def __init__(self, layers: list, metadata: Optional[dict] = None):
        layers = list(layers)
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        features = None
        channels = None
        flat_seen = False
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Linear, Activation, Flatten) + _IMAGE_LAYERS):
                raise TypeError(f"layers[{i}] must be a Linear, Activation, Flatten, Conv2d, MaxPool2d or AvgPool2d, "
                                f"got {type(layer).__name__}")
            if isinstance(layer, _IMAGE_LAYERS):
                if flat_seen:
                    raise ValueError(f"layers[{i}] is a {type(layer).__name__} after a Flatten or Linear: image layers "
                                     "must come first")
                if isinstance(layer, Conv2d):
                    if channels is not None and layer.in_channels != channels:
                        raise ValueError(f"layers[{i}] expects {layer.in_channels} input channels but the previous "
                                         f"Conv2d gives {channels}")
                    channels = layer.out_channels
            elif isinstance(layer, (Linear, Flatten)):
                flat_seen = True
            if isinstance(layer, Linear):
                if features is not None and layer.in_features != features:
                    raise ValueError(f"layers[{i}] expects {layer.in_features} input features but the previous Linear gives {features}")
                features = layer.out_features
        self.layers = layers
        self.metadata = dict(metadata or {})
        self._plan = _plan(layers)
        first = next((step.layer for step in self._plan if not isinstance(step.layer, Flatten)), None)
        # the CSR and conv kernels refuse NaN/Inf
        self._kernel_checks_input = (isinstance(first, Linear) and first.sparse) or isinstance(first, Conv2d)

    @property
    def in_features(self) -> Optional[int]:
        """Input features of the first Linear (None if there is none)."""
        return next((l.in_features for l in self.layers if isinstance(l, Linear)), None)

    def __call__(self, X: Any) -> np.ndarray:
        X = as_kernel_array(X, "X", X.ndim if isinstance(X, np.ndarray) else None, np.float32)
        if not self._kernel_checks_input and X.size and not np.isfinite(X).all():
            raise ValueError("X contains non-finite values (NaN or Inf)")
        if X.ndim < 2:
            raise ValueError(f"X must be (batch, ...) with a batch dimension, got shape {X.shape}")
        batch = X.shape[0]
        flat = X  # (batch, features...) until the first Linear; afterwards h is (features, batch)
        h = None
        for step in self._plan:
            layer = step.layer
            if isinstance(layer, Flatten):
                if h is None:
                    flat = flat.reshape(batch, -1)
                continue
            if h is None:  # image layers come before any Linear (checked in __init__)
                if isinstance(layer, _IMAGE_LAYERS):
                    if flat.ndim != 4:
                        raise ValueError(f"a {type(layer).__name__} needs (batch, C, H, W) images, got shape {flat.shape}")
                    flat = _image_layer(layer, flat, step.activation)
                    continue
                if flat.ndim == 4 and isinstance(layer, Activation) and layer.kind in ACTIVATIONS:
                    flat = _activate(flat.copy() if np.shares_memory(flat, X) else flat, layer.kind)  # on images
                    continue
                if flat.ndim != 2:
                    raise ValueError(f"X has shape {X.shape}: a Linear or Activation needs (batch, features); add a Flatten layer")
                if isinstance(layer, Linear):  # the first Linear reads the (batch, features) input directly
                    h = _linear(layer, flat, step.activation, batch_major=True)
                    continue
                h = flat.T.copy()  # a copy: the activation below runs in place, and flat may be the caller's X
            if isinstance(layer, Linear):
                h = _linear(layer, h, step.activation)
            else:
                h = _activate(h, layer.kind)  # type: ignore[union-attr]  # only Activations are left after a Linear
        if h is None:  # only Flatten layers
            return np.ascontiguousarray(flat)
        return np.ascontiguousarray(h.T)

    def predict(self, X: Any) -> np.ndarray:
        """Argmax over the outputs: int64 labels of shape (batch,)."""
        return np.argmax(self(X), axis=1)

    def __repr__(self) -> str:
        inner = ", ".join(_describe(l) for l in self.layers)
        return f"CompressedModel([{inner}])"

    @classmethod
    def from_torch(cls, module: Any, metadata: Optional[dict] = None) -> "CompressedModel":
        """Convert a torch ``nn.Sequential`` (nested ones are flattened) of Linear, Conv2d (zero
        padding), MaxPool2d, AvgPool2d (ceil_mode False), ReLU, GELU
        (approximate="none"), Tanh, Flatten (start_dim=1, end_dim=-1), Softmax (over the last
        dim), Dropout/Identity (skipped at inference), ``htcore.nn.SparseLinear`` and ``SparseConv2d``. Dense
        weights are copied as float32 (sparsify them with htcore.topk_sparsify elsewhere).
        Needs torch; the conversion is `htcore.nn.to_runtime_layers`."""
        from ..nn import to_runtime_layers  # the one declared upward import (.importlinter): torch stays optional

        return cls(to_runtime_layers(module), metadata)


def _plan(layers: list) -> list[_Step]:
    plan: list[_Step] = []
    for layer in layers:
        prev = plan[-1] if plan else None
        if (isinstance(layer, Activation) and layer.kind in ACTIVATIONS and prev is not None
                and ((isinstance(prev.layer, Linear) and prev.layer.sparse) or isinstance(prev.layer, Conv2d))
                and prev.activation == "none"):
            plan[-1] = _Step(prev.layer, layer.kind)
        else:
            plan.append(_Step(layer))
    return plan


def _linear(layer: Linear, h: np.ndarray, activation: str, batch_major: bool = False) -> np.ndarray:
    """W h + b for h of shape (in, batch) (or (batch, in) when ``batch_major``), returned as
    (out, batch); the activation is fused for sparse weights."""
    features, batch = (h.shape[1], h.shape[0]) if batch_major else h.shape
    if features != layer.in_features:
        raise ValueError(f"a Linear layer expects {layer.in_features} input features, got {features}")
    if isinstance(layer.weight, CSRMatrix):
        out = np.empty((layer.out_features, batch), np.float32)
        if batch == 1 and layer._sell is not None:  # (in, 1) and (1, in) are the same vector
            layer._sell.matvec_into(np.ascontiguousarray(h.reshape(-1)), layer.bias, activation, out.reshape(-1))
            return out
        return layer.weight.product_into(h, batch, layer.bias, activation, out, batch, 1, batch_major=batch_major)
    out = layer.weight @ (h.T if batch_major else h)
    if layer.bias is not None:
        out += layer.bias[:, None]
    return out


def _image_layer(layer: Any, x: np.ndarray, activation: str) -> np.ndarray:
    """A Conv2d (activation fused), MaxPool2d or AvgPool2d on (batch, C, H, W) float32 images."""
    if isinstance(layer, Conv2d):
        if x.shape[1] != layer.in_channels:
            raise ValueError(f"a Conv2d expects {layer.in_channels} input channels, got images of shape {x.shape}")
        return sparse_conv2d(x, layer._csr, kernel_size=layer.kernel_size, bias=layer.bias, stride=layer.stride,
                             padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                             activation=None if activation == "none" else activation)
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    if x.shape[2] + 2 * ph < kh or x.shape[3] + 2 * pw < kw:
        raise ValueError(f"a {type(layer).__name__} with kernel_size {layer.kernel_size} and padding {layer.padding} "
                         f"does not fit images of shape {x.shape}")
    pool = max_pool2d if isinstance(layer, MaxPool2d) else avg_pool2d  # the C runtime's kernels (cpp/image_ops.hpp)
    return pool(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw)


def _activate(h: np.ndarray, kind: str) -> np.ndarray:
    """Activation of (features, batch) activations (or, element-wise kinds, of images), in float32,
    in place when ``h`` is a C-contiguous writeable array. The kernels are the C runtime's
    (cpp/image_ops.hpp), so both runtimes compute bitwise the same values."""
    if not (h.flags.c_contiguous and h.flags.writeable):
        h = np.array(h, dtype=np.float32, order="C")
    if kind == "softmax":
        softmax_axis0(h)  # over the features (axis 0)
    else:
        activate_inplace(h, _KernelActivation.__members__[kind])
    return h


def _describe(layer: RuntimeLayer) -> str:
    if isinstance(layer, Linear):
        kind = "sparse" if layer.sparse else "dense"
        return f"Linear({layer.in_features}->{layer.out_features}, {kind}{', bias' if layer.bias is not None else ''})"
    if isinstance(layer, Activation):
        return f"Activation({layer.kind!r})"
    if isinstance(layer, Conv2d):
        kind = "sparse" if layer.sparse else "dense"
        return (f"Conv2d({layer.in_channels}->{layer.out_channels}, kernel_size={layer.kernel_size}, stride={layer.stride}, "
                f"padding={layer.padding}, dilation={layer.dilation}, groups={layer.groups}, {kind}"
                f"{', bias' if layer.bias is not None else ''})")
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        return f"{type(layer).__name__}(kernel_size={layer.kernel_size}, stride={layer.stride}, padding={layer.padding})"
    return "Flatten()"
