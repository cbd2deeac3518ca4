"""A torch-free runtime for compressed networks (MLPs, sequential CNNs and graphs such as ResNets):
numpy and htcore's kernels only.

A `CompressedModel` is a sequence of layers (each reads the previous one's output) or a graph of
`Node(name, layer, inputs)` in topological order (each reads the named earlier nodes or "input";
the output is the last node's). Layers:

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
- `AdaptiveAvgPool2d(output_size)`: torch's adaptive average pooling bins, in numpy (float64 sums).
- `BatchNorm2d(scale, shift)`: inference batch norm as x * scale[c] + shift[c] per channel
  (`htcore.nn` folds it into the conv before it when it can; this op is what remains).
- `Add()`: the element-wise sum of two inputs of the same shape (graph models only).

``input_shape`` (per sample, no batch dimension) is optional for sequential models and needed to
save a graph model; when given, every layer's output shape is inferred and checked on construction
(`output_shape`), and inputs are checked against it. Graph models run their nodes in order on
batch-major arrays, drop each intermediate after its last reader, fuse an element-wise activation
into a Conv2d or sparse Linear whose only reader it is, and let element-wise ops (activations,
BatchNorm2d, Add) overwrite an input that is a fresh array nobody reads afterwards.

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

import functools
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from .._core import Activation as _KernelActivation
from .._core import (
    activate_inplace,
    adaptive_avg_pool2d,
    add_arrays,
    avg_pool2d,
    channel_affine,
    max_pool2d,
    softmax_axis0,
)
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
class _Pool2d:
    """The window of a pooling layer: ``stride`` defaults to ``kernel_size``, ``padding`` is at most
    half the kernel; sizes are ints or (h, w) pairs, stored as pairs."""

    kernel_size: Any
    stride: Any = None
    padding: Any = 0

    def __post_init__(self) -> None:
        for name, value in zip(("kernel_size", "stride", "padding"), _pool_sizes(self.kernel_size, self.stride, self.padding)):
            object.__setattr__(self, name, value)


class MaxPool2d(_Pool2d):
    """torch's max_pool2d (ceil_mode False, dilation 1); the padding counts as -inf."""


class AvgPool2d(_Pool2d):
    """torch's avg_pool2d (ceil_mode False, count_include_pad True: the zero padding counts in the
    divisor kh * kw)."""


@dataclass(frozen=True, eq=False)
class BatchNorm2d:
    """Inference batch normalisation of (batch, C, H, W) images as a per-channel affine map:
    y[n, c, h, w] = x[n, c, h, w] * scale[c] + shift[c], with scale = gamma / sqrt(running_var + eps)
    and shift = beta - running_mean * scale (`htcore.nn` computes them in float64 from a torch
    BatchNorm2d). ``scale`` and ``shift``: finite arrays of shape (C,), stored as float32."""

    scale: np.ndarray
    shift: np.ndarray

    def __post_init__(self) -> None:
        scale = as_float_array(self.scale, "scale", ndim=1, dtype=np.float32)
        shift = as_float_array(self.shift, "shift", ndim=1, dtype=np.float32)
        if scale.shape != shift.shape or scale.shape[0] < 1:
            raise ValueError(f"scale and shift must have the same positive length (channels), got {scale.shape} and {shift.shape}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "shift", shift)

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])


@dataclass(frozen=True)
class AdaptiveAvgPool2d:
    """torch's adaptive_avg_pool2d: (batch, C, H, W) -> (batch, C, oh, ow), output cell (i, j)
    averaging rows floor(i H / oh) .. ceil((i + 1) H / oh) - 1 and the columns likewise.
    ``output_size``: an int or a pair (oh, ow), stored as a pair."""

    output_size: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_size", check_pair(self.output_size, "output_size", low=1))


@dataclass(frozen=True)
class Add:
    """Element-wise sum of two inputs of the same shape (a residual connection); graph models only."""


RuntimeLayer = Union[Linear, Activation, Flatten, Conv2d, MaxPool2d, AvgPool2d, BatchNorm2d, AdaptiveAvgPool2d, Add]
_IMAGE_LAYERS = (Conv2d, MaxPool2d, AvgPool2d, BatchNorm2d, AdaptiveAvgPool2d)
_LAYER_TYPES = (Linear, Activation, Flatten, Add) + _IMAGE_LAYERS
_MAX_ACTIVATION = 2**31  # elements per sample of any intermediate; more is refused by shape inference
INPUT = "input"  # the name by which graph nodes refer to the model input


@dataclass(frozen=True)
class Node:
    """One node of a graph model: ``layer`` applied to the outputs of ``inputs`` (names of earlier
    nodes, or "input" for the model input). ``name``: non-empty, unique in the model, not "input".
    An `Add` takes two inputs, every other layer one."""

    name: str
    layer: Any
    inputs: Sequence[str] = ()  # stored as a tuple

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name == INPUT:
            raise ValueError(f"a node name must be a non-empty string other than {INPUT!r}, got {self.name!r}")
        if not isinstance(self.layer, _LAYER_TYPES):
            raise TypeError(f"node {self.name!r}: layer must be a runtime layer ({', '.join(t.__name__ for t in _LAYER_TYPES)}), "
                            f"got {type(self.layer).__name__}")
        inputs = (self.inputs,) if isinstance(self.inputs, str) else tuple(self.inputs)
        if not all(isinstance(i, str) for i in inputs):
            raise TypeError(f"node {self.name!r}: inputs must be node names (strings), got {self.inputs!r}")
        arity = 2 if isinstance(self.layer, Add) else 1
        if len(inputs) != arity:
            raise ValueError(f"node {self.name!r}: a {type(self.layer).__name__} takes {arity} input{'s' if arity > 1 else ''}, "
                             f"got {len(inputs)} ({list(inputs)})")
        object.__setattr__(self, "inputs", inputs)


def _check_graph(nodes: list) -> None:
    """Every entry a Node, then the references (`_check_references`)."""
    for i, node in enumerate(nodes):
        if not isinstance(node, Node):
            raise TypeError(f"nodes[{i}] must be a Node, got {type(node).__name__}")
    _check_references([(n.name, n.inputs) for n in nodes])


def _check_references(entries: list) -> None:
    """(name, inputs) pairs: names unique, every input an earlier name or "input" (topological order,
    so no cycle), every entry but the last used by a later one (the output is the last entry's)."""
    if not entries:
        raise ValueError("a graph model needs at least one node")
    seen: set[str] = set()
    used: set[str] = set()
    for i, (name, inputs) in enumerate(entries):
        if name in seen:
            raise ValueError(f"node {name!r} (entry {i}): duplicate name")
        for ref in inputs:
            if ref != INPUT and ref not in seen:
                later = any(other == ref for other, _ in entries[i + 1:])
                raise ValueError(f"node {name!r} (entry {i}): input {ref!r} is "
                                 + ("a later node (entries must be in topological order, so a cycle is impossible)"
                                    if later else "not an earlier node nor 'input'"))
        used.update(inputs)
        seen.add(name)
    unused = [name for name, _ in entries[:-1] if name not in used]
    if unused:
        raise ValueError(f"node {unused[0]!r} is not used by any later node (the model output is the last node's); "
                         f"unused nodes: {unused[:5]}")


def _output_shape(layer: Any, shapes: list) -> tuple:
    """The per-sample output shape of ``layer`` for per-sample input ``shapes``; ValueError if they do not fit."""
    x = shapes[0]
    if isinstance(layer, Add):
        if shapes[0] != shapes[1]:
            raise ValueError(f"Add needs two inputs of the same shape, got {shapes[0]} and {shapes[1]}")
        return x
    if isinstance(layer, Flatten):
        return (int(np.prod(x, dtype=object)),)
    if isinstance(layer, Activation):
        if layer.kind == "softmax" and len(x) != 1:
            raise ValueError(f"softmax needs (features,) input, got {x}: add a Flatten")
        return x
    if isinstance(layer, Linear):
        return _linear_shape(x, layer.in_features, layer.out_features)
    if isinstance(layer, BatchNorm2d):
        return _batchnorm_shape(x, layer.channels)
    if isinstance(layer, AdaptiveAvgPool2d):
        return _adaptive_shape(x, layer.output_size)
    if isinstance(layer, Conv2d):
        return _window_shape(x, "Conv2d", layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                             (layer.in_channels, layer.out_channels))
    return _window_shape(x, type(layer).__name__, layer.kernel_size, layer.stride, layer.padding)


def _linear_shape(x: tuple, in_features: int, out_features: int) -> tuple:
    if x != (in_features,):
        raise ValueError(f"Linear expects ({in_features},) features per sample, got {x}")
    return (out_features,)


def _image(x: tuple, kind: str) -> tuple:
    if len(x) != 3:
        raise ValueError(f"{kind} needs (C, H, W) images per sample, got {x}")
    return x


def _batchnorm_shape(x: tuple, channels: int) -> tuple:
    if _image(x, "BatchNorm2d")[0] != channels:
        raise ValueError(f"BatchNorm2d has {channels} channels, got images of shape {x}")
    return x


def _adaptive_shape(x: tuple, output_size: tuple) -> tuple:
    c, h, w = _image(x, "AdaptiveAvgPool2d")
    if h < 1 or w < 1:
        raise ValueError(f"AdaptiveAvgPool2d needs non-empty images, got {x}")
    return (c, *output_size)


def _window_shape(x: tuple, kind: str, kernel_size: tuple, stride: tuple, padding: tuple,
                  dilation: tuple = (1, 1), channels: Optional[tuple] = None) -> tuple:
    """Output shape of a conv (``channels`` = (in, out)) or pool window sliding over (C, H, W)."""
    c, h, w = _image(x, kind)
    if channels is not None:
        if c != channels[0]:
            raise ValueError(f"Conv2d expects {channels[0]} input channels, got images of shape {x}")
        c = channels[1]
    sizes = []
    for size, k, d, p, s in zip((h, w), kernel_size, dilation, padding, stride):
        reach = d * (k - 1) + 1
        if size + 2 * p < reach:
            raise ValueError(f"{kind} window {reach} (kernel_size {kernel_size}, dilation {dilation}) is larger than "
                             f"the padded input (images of shape {x}, padding {padding})")
        sizes.append((size + 2 * p - reach) // s + 1)
    return (c, *sizes)


def _infer_shapes(shape_fns: list, inputs: list, input_shape: tuple, names: list) -> list:
    """Per-sample output shapes of every layer (``shape_fns[i]``: input shapes -> output shape;
    ``inputs[i]``: indices of its inputs, -1 the model input); ValueError naming the layer on a
    mismatch or an activation over 2**31 elements."""
    shapes: list = []
    for i, fn in enumerate(shape_fns):
        try:
            shape = fn([input_shape if j < 0 else shapes[j] for j in inputs[i]])
        except ValueError as exc:
            raise ValueError(f"{names[i]}: {exc}") from None
        if int(np.prod(shape, dtype=object)) > _MAX_ACTIVATION:
            raise ValueError(f"{names[i]}: output of shape {shape} per sample has more than 2**31 elements")
        shapes.append(shape)
    return shapes


def _check_input_shape(input_shape: Any) -> Optional[tuple]:
    if input_shape is None:
        return None
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise TypeError(f"input_shape must be a non-empty tuple of positive ints (per sample, no batch), got {input_shape!r}")
    shape = tuple(check_int(d, "input_shape", low=1) for d in input_shape)
    if int(np.prod(shape, dtype=object)) > _MAX_ACTIVATION:
        raise ValueError(f"input_shape {shape} has more than 2**31 elements per sample")
    return shape


@dataclass(frozen=True)
class _Step:
    """One step of the execution plan: a Linear or Conv2d with the activation fused into it, or a lone layer."""

    layer: RuntimeLayer
    activation: str = "none"


class CompressedModel:
    """A network run with numpy and htcore's CSR kernels (no torch): sequential (MLP or LeNet-style
    CNN, a plain list of layers) or a graph (a list of `Node`, e.g. a ResNet with residual adds).

    ``model(X)`` returns the float32 outputs for X of shape (batch, ...); ``model.predict(X)``
    the argmax labels. ``metadata`` is a JSON-serialisable dict carried along (e.g. provenance).
    ``input_shape``: the per-sample input shape without the batch dimension (e.g. (1, 28, 28) or
    (784,)); optional, but with it every layer's shape is inferred and checked on construction,
    inputs are checked against it, and `output_shape` is known. Saving a graph model needs it.

    Sequential models: layer shapes are checked on construction (consecutive Linear layers must
    chain, as must the channels of consecutive Conv2d/BatchNorm2d layers; image layers come before
    any Flatten or Linear). Graph models: node names unique, inputs earlier nodes or "input"
    (topological order, so no cycle), the right number of inputs per layer, every node but the last
    used (the output is the last node's); each error names the node. Nodes run in order and each
    intermediate is freed after its last user; an activation that is the only user of a Conv2d or
    sparse Linear is fused into its kernel, as in sequential models.
    """

    def __init__(self, layers: list, metadata: Optional[dict] = None, *, input_shape: Any = None):
        layers = list(layers)
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        self.metadata = dict(metadata or {})
        self.input_shape: Optional[tuple] = _check_input_shape(input_shape)
        self.nodes: Optional[list[Node]] = None
        if layers and all(isinstance(n, Node) for n in layers):
            _check_graph(layers)
            self.nodes = layers
            self.layers = [n.layer for n in layers]
            index = {n.name: i for i, n in enumerate(layers)}
            inputs = [[index.get(ref, -1) for ref in n.inputs] for n in layers]
            names = [f"node {n.name!r}" for n in layers]
        else:
            if any(isinstance(n, Node) for n in layers):
                raise TypeError("layers must be all runtime layers (a sequential model) or all Nodes (a graph model), not a mix")
            _check_sequential(layers)
            self.layers = layers
            inputs = [[i - 1] for i in range(len(layers))]
            names = [f"layers[{i}] ({type(l).__name__})" for i, l in enumerate(layers)]
        self._not_plain = self.nodes is not None or self.input_shape is not None
        self._shapes = None if self.input_shape is None else _infer_shapes(
            [functools.partial(_output_shape, l) for l in self.layers], inputs, self.input_shape, names)
        if self.nodes is not None:
            self._graph = _graph_plan(self.layers, inputs)
            return
        self._plan = _plan(layers)
        first = next((step.layer for step in self._plan if not isinstance(step.layer, Flatten)), None)
        # the CSR and conv kernels refuse NaN/Inf
        self._kernel_checks_input = (isinstance(first, Linear) and first.sparse) or isinstance(first, Conv2d)

    @property
    def is_graph(self) -> bool:
        """True for a graph model (built from `Node`s), False for a sequential one."""
        return self.nodes is not None

    @property
    def output_shape(self) -> Optional[tuple]:
        """The per-sample output shape (None when `input_shape` is not known)."""
        return None if self._shapes is None else (self._shapes[-1] if self._shapes else self.input_shape)

    @property
    def in_features(self) -> Optional[int]:
        """Input features per sample: the product of `input_shape` when it is known, else the
        in_features of a Linear reading the input (through Flatten/activations only); None when
        the model does not say (an image model without `input_shape`)."""
        if self.input_shape is not None:
            return int(np.prod(self.input_shape))
        if self.nodes is not None:
            return next((n.layer.in_features for n in self.nodes if INPUT in n.inputs and isinstance(n.layer, Linear)), None)
        first = next((l for l in self.layers if not isinstance(l, (Flatten, Activation))), None)
        return first.in_features if isinstance(first, Linear) else None

    def __call__(self, X: Any) -> np.ndarray:
        X = as_kernel_array(X, "X", X.ndim if isinstance(X, np.ndarray) else None, np.float32)
        if X.ndim < 2:
            raise ValueError(f"X must be (batch, ...) with a batch dimension, got shape {X.shape}")
        if self._not_plain:  # one test on the MLP path, which stays as fast as before graphs existed
            if self.input_shape is not None and X.shape[1:] != self.input_shape:
                raise ValueError(f"X has shape {X.shape}, expected (batch, {', '.join(map(str, self.input_shape))})")
            if self.nodes is not None:
                return self._run_graph(X)
        if not self._kernel_checks_input and X.size and not np.isfinite(X).all():
            raise ValueError("X contains non-finite values (NaN or Inf)")
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
        if h is None:  # only Flatten and image layers
            return np.array(flat) if np.may_share_memory(flat, X) else np.ascontiguousarray(flat)
        return np.ascontiguousarray(h.T)

    def _run_graph(self, X: np.ndarray) -> np.ndarray:
        """Run the graph plan on batch-major arrays, dropping each value after its last reader."""
        if X.size and not np.isfinite(X).all():
            raise ValueError("X contains non-finite values (NaN or Inf)")
        values: list = [None] * len(self.layers)
        out = X
        for step in self._graph:
            args = [X if j < 0 else values[j] for j in step.inputs]
            try:
                out = _graph_op(step, args)
            except ValueError as exc:
                raise ValueError(f"node {self.nodes[step.node].name!r}: {exc}") from None  # type: ignore[index]
            values[step.output] = out
            for j in step.free:
                values[j] = None
        return np.array(out) if np.may_share_memory(out, X) else np.ascontiguousarray(out)

    def predict(self, X: Any) -> np.ndarray:
        """Argmax over the outputs: int64 labels of shape (batch,)."""
        return np.argmax(self(X), axis=1)

    def __repr__(self) -> str:
        if self.nodes is not None:
            inner = ", ".join(f"{n.name}={_describe(n.layer)}({', '.join(n.inputs)})" for n in self.nodes)
            return f"CompressedModel(graph [{inner}], input_shape={self.input_shape})"
        inner = ", ".join(_describe(l) for l in self.layers)
        return f"CompressedModel([{inner}])"

    @classmethod
    def from_torch(cls, module: Any, metadata: Optional[dict] = None, *, input_shape: Any = None) -> "CompressedModel":
        """Convert a torch module: an ``nn.Sequential`` to a sequential model, any other module that
        ``torch.fx`` can trace (``htcore.nn.SparseLinear``/``SparseConv2d`` kept as leaves) to a
        graph model, or to a sequential one when its traced graph is a plain chain. Supported:
        Linear, Conv2d (zero padding), BatchNorm2d (running statistics, folded into the conv before
        it when possible), MaxPool2d, AvgPool2d (ceil_mode False), AdaptiveAvgPool2d, ReLU, GELU
        (approximate="none"), Tanh, Softmax (over the last dim), Flatten (from dim 1), Dropout and
        Identity (skipped at inference), residual additions, and the sparse htcore modules; anything
        else raises TypeError naming the node, its target and module path. Dense weights are copied
        as float32. ``input_shape``: per-sample input shape (needed to save a graph model).
        Needs torch; the conversion is `htcore.nn.to_runtime_layers`."""
        from ..nn import to_runtime_layers  # the one declared upward import (.importlinter): torch stays optional

        return cls(to_runtime_layers(module), metadata, input_shape=input_shape)


def _check_sequential(layers: list) -> None:
    features = None
    channels = None
    giver = ""  # the layer that set ``channels``
    flat_seen = False
    for i, layer in enumerate(layers):
        if isinstance(layer, Add):
            raise TypeError(f"layers[{i}] is an Add, which takes two inputs: build a graph model from Nodes")
        if not isinstance(layer, _LAYER_TYPES):
            raise TypeError(f"layers[{i}] must be a Linear, Activation, Flatten, Conv2d, MaxPool2d, AvgPool2d, BatchNorm2d "
                            f"or AdaptiveAvgPool2d, got {type(layer).__name__}")
        if isinstance(layer, _IMAGE_LAYERS):
            if flat_seen:
                raise ValueError(f"layers[{i}] is a {type(layer).__name__} after a Flatten or Linear: image layers "
                                 "must come first")
            if isinstance(layer, (Conv2d, BatchNorm2d)):
                expects = layer.in_channels if isinstance(layer, Conv2d) else layer.channels
                if channels is not None and expects != channels:
                    raise ValueError(f"layers[{i}] expects {expects} input channels but the previous {giver} gives {channels}")
                channels = layer.out_channels if isinstance(layer, Conv2d) else layer.channels
                giver = type(layer).__name__
        elif isinstance(layer, (Linear, Flatten)):
            flat_seen = True
        if isinstance(layer, Linear):
            if features is not None and layer.in_features != features:
                raise ValueError(f"layers[{i}] expects {layer.in_features} input features but the previous Linear gives {features}")
            features = layer.out_features


@dataclass(frozen=True)
class _GraphStep:
    """One step of a graph plan: node ``node``'s layer (with ``activation`` fused) reading the values
    ``inputs`` (node indices, -1 the model input), writing value ``output`` (the fused activation
    node's index, else ``node``), then dropping the values ``free``. ``in_place``: the first input is
    a fresh array nobody reads afterwards, so element-wise layers may overwrite it."""

    node: int
    layer: Any
    activation: str
    inputs: tuple
    output: int
    free: tuple
    in_place: bool


def _graph_plan(layers: list, inputs: list) -> list[_GraphStep]:
    users: list[list[int]] = [[] for _ in layers]
    for i, refs in enumerate(inputs):
        for j in refs:
            if j >= 0:
                users[j].append(i)
    fused_into: dict[int, int] = {}  # producer index -> the activation node fused into it
    for i, layer in enumerate(layers):
        j = inputs[i][0]
        if (isinstance(layer, Activation) and layer.kind in ACTIVATIONS and j >= 0 and users[j] == [i]
                and (isinstance(layers[j], Conv2d) or (isinstance(layers[j], Linear) and layers[j].sparse))):
            fused_into[j] = i
    steps = [(i, fused_into.get(i, i)) for i in range(len(layers)) if i not in fused_into.values()]
    last_reader: dict[int, int] = {}
    for s, (i, _) in enumerate(steps):
        for j in inputs[i]:
            last_reader[j] = s
    owned: set[int] = set()  # values that are fresh arrays (not views of the input or of another value)
    plan = []
    for s, (i, out) in enumerate(steps):
        refs = tuple(inputs[i])
        exclusive = refs[0] in owned and last_reader[refs[0]] == s
        if not isinstance(layers[i], Flatten) or exclusive:
            owned.add(out)  # a Flatten is a view of its input, exclusive when it is that input's last reader
        free = tuple(sorted({j for j in refs if j >= 0 and last_reader[j] == s}))
        plan.append(_GraphStep(i, layers[i], layers[out].kind if out != i else "none", refs, out, free, exclusive))
    return plan


def _graph_op(step: _GraphStep, args: list) -> np.ndarray:
    """One graph step on batch-major arrays ((batch, features) or (batch, C, H, W))."""
    layer, x = step.layer, args[0]
    if isinstance(layer, Add):
        a, b = args
        if a.shape != b.shape:
            raise ValueError(f"Add needs two inputs of the same shape, got {a.shape} and {b.shape}")
        return add_arrays(np.ascontiguousarray(a), np.ascontiguousarray(b))
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1)
    if isinstance(layer, Linear):
        if x.ndim != 2:
            raise ValueError(f"a Linear needs (batch, features), got shape {x.shape}: add a Flatten")
        return np.ascontiguousarray(_linear(layer, np.ascontiguousarray(x), step.activation, batch_major=True).T)
    if isinstance(layer, Activation):
        if layer.kind == "softmax":
            if x.ndim != 2:
                raise ValueError(f"softmax needs (batch, features), got shape {x.shape}: add a Flatten")
            return np.ascontiguousarray(_activate(x.T, "softmax").T)
        return _activate(x if step.in_place else x.copy(), layer.kind)
    if x.ndim != 4:
        raise ValueError(f"a {type(layer).__name__} needs (batch, C, H, W) images, got shape {x.shape}")
    return _image_layer(layer, x, step.activation)


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
    """A Conv2d (activation fused), MaxPool2d, AvgPool2d, BatchNorm2d or AdaptiveAvgPool2d on
    (batch, C, H, W) float32 images; all but Conv2d in the C runtime's kernels (cpp/image_ops.hpp)."""
    if isinstance(layer, BatchNorm2d):
        if x.shape[1] != layer.channels:
            raise ValueError(f"a BatchNorm2d has {layer.channels} channels, got images of shape {x.shape}")
        return channel_affine(np.ascontiguousarray(x), layer.scale, layer.shift)
    if isinstance(layer, AdaptiveAvgPool2d):
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"an AdaptiveAvgPool2d needs non-empty images, got shape {x.shape}")
        return adaptive_avg_pool2d(np.ascontiguousarray(x), *layer.output_size)
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
    if isinstance(layer, BatchNorm2d):
        return f"BatchNorm2d({layer.channels})"
    if isinstance(layer, AdaptiveAvgPool2d):
        return f"AdaptiveAvgPool2d({layer.output_size})"
    return f"{type(layer).__name__}()"
