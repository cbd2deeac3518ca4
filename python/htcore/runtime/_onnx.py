"""An ONNX model -> a runtime `CompressedModel` (the optional ``onnx`` extra; no torch).

The file is parsed with ``onnx.load(..., load_external_data=False)``: protobuf only, nothing in it is
executed, and no other file is opened (a tensor stored as external data is refused). Initializers
and ``Constant`` nodes become the weights; every other node maps to a runtime layer:

- ``Conv`` (2-d, symmetric pads, auto_pad NOTSET or VALID), ``Gemm`` (transA 0; alpha and beta
  folded into the weight and bias), ``MatMul`` by a constant, followed optionally by an ``Add`` of a
  constant bias (its only reader), ``BatchNormalization`` (inference: training_mode 0, one output),
  ``MaxPool`` (one output, dilations 1, storage_order 0), ``AveragePool`` (count_include_pad 1 when
  padded), both ceil_mode 0 with symmetric pads, ``GlobalAveragePool``, ``Add`` of two computed
  tensors, ``Flatten`` (axis 1), ``Reshape`` to a constant shape [N, -1] (N 0, -1 or any positive:
  the per-sample flatten torch exports for ``x.view(x.size(0), -1)``), ``Relu``, ``Tanh``, ``Gelu``
  (approximate "none"), ``Softmax`` (axis -1 or 1, on a flat input), ``Dropout`` (no mask output
  used) and ``Identity`` as no-ops.

Anything else raises ValueError naming the node, its operator and the attribute at fault. BatchNorm
stays a `BatchNorm2d` op (``torch.onnx.export`` of an eval-mode model has usually folded it already).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from ._model import (
    INPUT,
    Activation,
    AdaptiveAvgPool2d,
    Add,
    AvgPool2d,
    BatchNorm2d,
    CompressedModel,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Node,
)

_SUPPORTED = ("Conv, Gemm, MatMul (+ Add bias), BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, Add, "
              "Flatten, Reshape [N, -1], Relu, Tanh, Gelu, Softmax, Dropout, Identity, Constant")


def from_onnx(model: Any, *, input_shape: Any = None, metadata: Optional[dict] = None) -> CompressedModel:
    """Convert an ONNX model (a path to a ``.onnx`` file or an ``onnx.ModelProto``) to a
    `CompressedModel` with dense weights (module docstring for the operators).

    ``input_shape``: the per-sample input shape (no batch dimension); by default the model's declared
    input shape without its first dimension, which must then be static. The graph must have one
    input and one output. Returns a sequential model when the graph is a chain, else a graph of
    `Node`s named after the ONNX nodes. Needs the ``onnx`` package (``pip install htcore[onnx]``)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError("reading ONNX files needs the onnx package: pip install 'htcore[onnx]'") from None
    where = "the ONNX model"
    if isinstance(model, (str, os.PathLike)):
        where = os.fspath(model)
        try:
            model = onnx.load(where, load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise ValueError(f"{where}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be a path to an .onnx file or an onnx.ModelProto, got {type(model).__name__}")
    graph = model.graph
    consts: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(f"{where}: initializer {init.name!r} is stored as external data, which htcore does not "
                             "read (it would open another file): save the model with its weights inside")
        consts[init.name] = _array(numpy_helper, init, where, f"initializer {init.name!r}")
    inputs = [v for v in graph.input if v.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"{where}: the graph must have one input and one output, got {len(inputs)} inputs "
                         f"({[v.name for v in inputs]}) and {len(graph.output)} outputs")
    if input_shape is None:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim][1:]
        if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
            raise ValueError(f"{where}: the input {inputs[0].name!r} has no static per-sample shape: pass input_shape "
                             "(--input-shape in the CLI)")
        input_shape = tuple(dims)
    converter = _Converter(where, consts, numpy_helper)
    converter.alias[inputs[0].name] = INPUT
    for index, node in enumerate(graph.node):
        converter.add(node, index)
    output = converter.alias.get(graph.output[0].name)
    if output is None or output == INPUT:
        raise ValueError(f"{where}: the output {graph.output[0].name!r} is not computed by a supported node")
    built = converter.live(output)
    meta = {"source": "onnx", **(metadata or {})}
    try:
        if all(refs == [built[i - 1][0] if i else INPUT] for i, (_, _, refs) in enumerate(built)):
            return CompressedModel([layer for _, layer, _ in built], meta, input_shape=input_shape)
        return CompressedModel([Node(name, layer, refs) for name, layer, refs in built], meta, input_shape=input_shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _array(numpy_helper: Any, tensor: Any, where: str, what: str) -> np.ndarray:
    try:
        value = numpy_helper.to_array(tensor)
    except Exception as exc:  # a tensor whose raw bytes do not match its declared shape, or a bad dtype
        raise ValueError(f"{where}: {what} is malformed ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(value.dtype, np.number):
        raise ValueError(f"{where}: {what} has dtype {value.dtype}, not a number")
    return value.astype(np.float64) if np.issubdtype(value.dtype, np.floating) else value


class _Converter:
    """Maps ONNX nodes in order to (name, runtime layer, input names) entries."""

    def __init__(self, where: str, consts: dict, numpy_helper: Any):
        self.where, self.consts, self.numpy_helper = where, consts, numpy_helper
        self.alias: dict[str, str] = {}  # ONNX value name -> runtime node name (or "input")
        self.built: list[tuple[str, Any, list[str]]] = []
        self.taken = {INPUT}
        self.readers: dict[str, int] = {}  # runtime name -> readers so far (a MatMul's bias Add must be the only one)
        self.biased: set[str] = set()  # MatMul outputs whose Linear now includes the bias: no one else may read them

    def at(self, node: Any, index: int) -> str:
        return f"{self.where}: node {node.name or index!r} ({node.op_type})"

    def add(self, node: Any, index: int) -> None:
        at = self.at(node, index)
        attrs = {a.name: _attribute(a) for a in node.attribute}
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise ValueError(f"{at}: operator domain {node.domain!r} is not supported (standard ONNX operators only)")
        if op == "Constant":
            if set(attrs) != {"value"}:
                raise ValueError(f"{at}: only a tensor 'value' Constant is supported, got {sorted(attrs)}")
            self.consts[node.output[0]] = _array(self.numpy_helper, attrs["value"], self.where, f"{at} value")
            return
        if op in ("Identity", "Dropout"):
            if op == "Dropout" and (len(node.input) > 2 and node.input[2] or len(node.output) > 1 and node.output[1]):
                raise ValueError(f"{at}: Dropout in training mode or with its mask output used is not supported")
            if node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]]
            else:
                self.alias[node.output[0]] = self._ref(node.input[0], at)
            return
        if len([o for o in node.output if o]) != 1:
            raise ValueError(f"{at}: {len(node.output)} outputs; the runtime computes one per node")
        if op == "Add" and len(node.input) == 2 and sum(i in self.consts for i in node.input) == 1:
            self._bias_add(node, at)
            return
        layer, sources = self._layer(op, node, attrs, at)
        if layer is None:
            self.alias[node.output[0]] = self._ref(sources[0], at)
            return
        refs = [self._ref(s, at) for s in sources]
        name = node.name or f"{op}_{index}"
        if name in self.taken:
            name = f"{name}_{index}"
        self.taken.add(name)
        for r in refs:
            self.readers[r] = self.readers.get(r, 0) + 1
        self.alias[node.output[0]] = name
        self.built.append((name, layer, refs))

    def live(self, output: str) -> list:
        """The entries the output depends on, in order (a Dropout's unused mask etc. dropped)."""
        needed = {output}
        for name, _, refs in reversed(self.built):
            if name in needed:
                needed.update(refs)
        return [entry for entry in self.built if entry[0] in needed]

    def _ref(self, value: str, at: str) -> str:
        if value in self.biased:
            raise ValueError(f"{at}: input {value!r} is a MatMul output whose bias Add was merged into it; "
                             "reading it elsewhere too is not supported")
        if value in self.consts:
            raise ValueError(f"{at}: input {value!r} is a constant where the runtime needs a computed tensor")
        if value not in self.alias:
            raise ValueError(f"{at}: input {value!r} is neither an initializer nor the output of an earlier node")
        return self.alias[value]

    def _const(self, node: Any, position: int, what: str, at: str, ndim: int, required: bool = True) -> Optional[np.ndarray]:
        name = node.input[position] if len(node.input) > position else ""
        if not name:
            if required:
                raise ValueError(f"{at}: missing {what} (input {position})")
            return None
        if name not in self.consts:
            raise ValueError(f"{at}: {what} {name!r} is not an initializer or constant (missing from the file?)")
        value = self.consts[name]
        if ndim == 1 and value.ndim == 2 and value.shape[0] == 1:  # a (1, out) bias row, broadcast over the batch
            value = value[0]
        if value.ndim != ndim:
            raise ValueError(f"{at}: {what} {name!r} has shape {list(value.shape)}, expected {ndim} dimensions")
        return value

    def _bias_add(self, node: Any, at: str) -> None:
        """x @ W (a bias-free Linear read only here) + b, as that Linear with bias b."""
        const_pos = 0 if node.input[0] in self.consts else 1
        src = self._ref(node.input[1 - const_pos], at)
        bias = self.consts[node.input[const_pos]]
        entry = next((e for e in self.built if e[0] == src), None)
        if entry is None or not isinstance(entry[1], Linear) or entry[1].bias is not None or self.readers.get(src, 0):
            raise ValueError(f"{at}: Add of a constant is supported only as the bias of a MatMul it alone reads")
        bias = bias.reshape(-1) if bias.ndim == 2 and bias.shape[0] == 1 else bias
        try:
            layer = Linear(entry[1].weight, bias)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{at}: {exc}") from None
        self.built[self.built.index(entry)] = (entry[0], layer, entry[2])
        self.biased.add(node.input[1 - const_pos])
        self.alias[node.output[0]] = src

    def _layer(self, op: str, node: Any, attrs: dict, at: str) -> tuple[Any, list[str]]:
        x = node.input[0] if node.input else ""
        try:
            if op == "Conv":
                weight = self._const(node, 1, "weight", at, 4)
                assert weight is not None
                pads = _pads(attrs, at, weight.shape[2:])
                _check(at, attrs, {"dilations", "group", "kernel_shape", "pads", "strides", "auto_pad"})
                if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != weight.shape[2:]:
                    raise ValueError(f"{at}: kernel_shape {attrs['kernel_shape']} does not match the weight's {list(weight.shape)}")
                return Conv2d(weight, self._const(node, 2, "bias", at, 1, required=False), kernel_size=weight.shape[2:],
                              stride=attrs.get("strides", 1), padding=pads, dilation=attrs.get("dilations", 1),
                              groups=attrs.get("group", 1)), [x]
            if op == "Gemm":
                _check(at, attrs, {"alpha", "beta", "transA", "transB"})
                if attrs.get("transA", 0):
                    raise ValueError(f"{at}: attribute transA=1 is not supported")
                weight = self._const(node, 1, "weight", at, 2)
                assert weight is not None
                weight = (weight if attrs.get("transB", 0) else weight.T) * attrs.get("alpha", 1.0)
                bias = self._const(node, 2, "bias", at, 1, required=False)
                return Linear(weight, None if bias is None else bias * attrs.get("beta", 1.0)), [x]
            if op == "MatMul":
                _check(at, attrs, set())
                weight = self._const(node, 1, "weight", at, 2)
                assert weight is not None
                return Linear(weight.T), [x]
            if op == "BatchNormalization":
                _check(at, attrs, {"epsilon", "momentum", "training_mode"})
                if attrs.get("training_mode", 0):
                    raise ValueError(f"{at}: training_mode=1 is not supported (export the model in eval mode)")
                gamma, beta, mean, var = (self._const(node, i, what, at, 1) for i, what in
                                          ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
                scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
                return BatchNorm2d(scale, beta - mean * scale), [x]
            if op in ("MaxPool", "AveragePool"):
                _check(at, attrs, {"kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "dilations",
                                   "storage_order", "count_include_pad"})
                if attrs.get("ceil_mode", 0):
                    raise ValueError(f"{at}: attribute ceil_mode=1 is not supported")
                if any(d != 1 for d in attrs.get("dilations", [1])) or attrs.get("storage_order", 0):
                    raise ValueError(f"{at}: dilations other than 1 or storage_order 1 are not supported")
                kernel = tuple(attrs.get("kernel_shape", ()))
                pads = _pads(attrs, at, kernel)
                if op == "AveragePool" and any(pads) and not attrs.get("count_include_pad", 0):
                    raise ValueError(f"{at}: a padded AveragePool needs count_include_pad=1 (the runtime counts the padding)")
                kind = MaxPool2d if op == "MaxPool" else AvgPool2d
                return kind(kernel, attrs.get("strides", 1), pads), [x]
            if op == "GlobalAveragePool":
                return AdaptiveAvgPool2d(1), [x]
            if op == "Add":
                return Add(), list(node.input)
            if op == "Flatten":
                if attrs.get("axis", 1) != 1:
                    raise ValueError(f"{at}: Flatten axis={attrs['axis']} is not supported (only axis=1)")
                return Flatten(), [x]
            if op == "Reshape":
                shape = self._const(node, 1, "shape", at, 1)
                assert shape is not None
                if len(shape) != 2 or shape[1] != -1 or shape[0] < -1 or attrs.get("allowzero", 0):
                    raise ValueError(f"{at}: only a Reshape to [N, -1] (a per-sample flatten) is supported, got {shape.tolist()}")
                return Flatten(), [x]
            if op in ("Relu", "Tanh") or op == "Gelu" and attrs.get("approximate", "none") == "none":
                return Activation(op.lower()), [x]
            if op == "Softmax" and attrs.get("axis", -1) in (-1, 1):
                return Activation("softmax"), [x]
        except (TypeError, ValueError) as exc:
            message = str(exc)
            raise ValueError(message if message.startswith(at) else f"{at}: {message}") from None
        raise ValueError(f"{at}: operator {op} (attributes {sorted(attrs)}) is not supported by the runtime; supported: {_SUPPORTED}")


def _attribute(attr: Any) -> Any:
    """An attribute's value: int, float, string, list of ints/floats or a TensorProto."""
    from onnx import helper

    value = helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else (list(value) if isinstance(value, (list, tuple)) else value)


def _check(at: str, attrs: dict, allowed: set) -> None:
    unknown = sorted(set(attrs) - allowed)
    if unknown:
        raise ValueError(f"{at}: attribute(s) {unknown} are not supported")


def _pads(attrs: dict, at: str, kernel: tuple) -> tuple:
    """(h, w) padding from ONNX's [top, left, bottom, right] pads, which must be symmetric."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID"):
        raise ValueError(f"{at}: auto_pad={auto!r} is not supported (only NOTSET or VALID: export with explicit padding)")
    if len(kernel) != 2:
        raise ValueError(f"{at}: only 2-d windows are supported, got kernel {list(kernel)}")
    pads = list(attrs.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise ValueError(f"{at}: pads {pads} are not symmetric [top, left, bottom, right] with top == bottom and "
                         "left == right (asymmetric padding is not supported)")
    return (pads[0], pads[1])
