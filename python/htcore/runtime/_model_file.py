"""The compressed-model file: a `CompressedModel` in safetensors format (no pickle, mmap-able).

The full format, for readers in other languages, is in docs/conventions.md ("Model file").

Tensors, for layer i (its index in ``model.layers``):
- sparse Linear: ``layers.{i}.indptr`` (int32/int64), ``layers.{i}.indices`` (uint16/int32),
  ``layers.{i}.data`` (float32/float16/float64, or uint8 codes plus ``layers.{i}.codebook``
  float32), optional ``layers.{i}.bias`` (float32);
- dense Linear: ``layers.{i}.weight`` (float32, (out, in)) and optional ``layers.{i}.bias``;
- Conv2d: the same tensors, the CSR matrix of shape (out, in_per_group * kh * kw) or the dense
  weight of torch's shape (out, in_per_group, kh, kw);
- BatchNorm2d: ``layers.{i}.scale`` and ``layers.{i}.shift`` (float32, (C,), finite).

String metadata (each value JSON): ``format`` = "htcore-compressed-model", ``format_version`` = 1,
``htcore_version``, ``architecture`` (one object per layer: ``{"type": "linear", "storage":
"csr"|"dense", "shape": [out, in], "bias": bool}``, ``{"type": "activation", "kind": ...}`` or
``{"type": "flatten"}``, ``{"type": "conv2d", "storage": "csr"|"dense", "shape": [out,
in_per_group, kh, kw], "stride": [h, w], "padding": [h, w], "dilation": [h, w], "groups": g,
"bias": bool}``, ``{"type": "maxpool2d"|"avgpool2d", "kernel_size": [h, w], "stride": [h, w],
"padding": [h, w]}``, ``{"type": "batchnorm2d", "channels": C}``, ``{"type":
"adaptiveavgpool2d", "output_size": [oh, ow]}``, ``{"type": "add"}``), ``provenance`` (a JSON
object), ``metadata`` (the model's dict) and, when the model knows it, ``input_shape`` (the
per-sample input shape). Graph models add ``"name"`` and ``"inputs"`` (names of earlier entries or
"input") to every entry and always have ``input_shape``. Files of MLPs and sequential CNNs without
an input shape are written exactly as before.

`load_compressed` validates everything before returning, in two passes. First the JSON alone: the
header, every entry's keys and field types, declared sizes (at most 2**40 weight elements), the
graph's references (unique names, earlier entries only, so no cycle; the right number of inputs;
no unused entry) and, with ``input_shape``, shape inference over the whole model (channels, Add
operands, Linear in_features, windows that fit, at most 2**31 elements per sample per
intermediate). Then the tensors: exactly those the architecture needs, with the right dtypes and
shapes, the CSR structure, codebook ranges and finite values. It never executes code from the
file. Any problem raises ValueError naming the file and the offending part.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Optional

import numpy as np

from .._version import __version__
from ..io import SafetensorsFile, save_safetensors
from ..sparse import CSRMatrix
from ._model import (
    ACTIVATION_KINDS,
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
    RuntimeLayer,
    _adaptive_shape,
    _batchnorm_shape,
    _check_references,
    _infer_shapes,
    _linear_shape,
    _output_shape,
    _window_shape,
)
from ._sniff import ONNX, TORCH_EXPORT, TORCH_PICKLE, not_a_model_file, sniff_model_file

_MAX_ELEMENTS = 2**40  # a declared weight shape with more elements is refused before anything is built

FORMAT = "htcore-compressed-model"
FORMAT_VERSION = 1
_META_KEYS = {"format", "format_version", "htcore_version", "architecture", "provenance", "metadata"}
_CSR_DTYPES = {"indptr": ("int32", "int64"), "indices": ("uint16", "int32"),
               "data": ("float32", "float16", "float64", "uint8"), "codebook": ("float32",), "bias": ("float32",)}


def save_compressed(path: str | os.PathLike, model: Any, provenance: Optional[dict] = None) -> None:
    """Write ``model`` (a `CompressedModel`, or a torch module converted with
    `CompressedModel.from_torch`) to ``path``. ``provenance``: a JSON-serialisable dict (e.g. the
    source checkpoint, keep fractions, training data) stored with the htcore version. A graph model
    needs its ``input_shape`` (the file format requires it)."""
    if not isinstance(model, CompressedModel):
        model = CompressedModel.from_torch(model)
    if provenance is not None and not isinstance(provenance, dict):
        raise TypeError(f"provenance must be a dict or None, got {type(provenance).__name__}")
    if model.nodes is not None and model.input_shape is None:
        raise ValueError("a graph model needs its input_shape to be saved: build it with "
                         "CompressedModel(nodes, input_shape=...) or CompressedModel.from_torch(module, input_shape=...)")
    tensors: dict[str, np.ndarray] = {}
    architecture: list[dict[str, Any]] = []
    for i, layer in enumerate(model.layers):
        entry, parts = _entry(layer)
        if model.nodes is not None:
            entry.update(name=model.nodes[i].name, inputs=list(model.nodes[i].inputs))
        architecture.append(entry)
        tensors.update({f"layers.{i}.{k}": v for k, v in parts.items()})
    # Widest dtypes first, so every tensor starts aligned to its itemsize in the data section.
    ordered = dict(sorted(tensors.items(), key=lambda kv: -kv[1].dtype.itemsize))
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "htcore_version": __version__,
                "architecture": architecture, "provenance": provenance or {}, "metadata": model.metadata}
    if model.input_shape is not None:
        metadata["input_shape"] = list(model.input_shape)
    try:
        strings = {k: json.dumps(v) for k, v in metadata.items()}
    except TypeError as exc:
        raise TypeError(f"provenance and model.metadata must be JSON-serialisable: {exc}") from None
    save_safetensors(path, ordered, strings)


def _entry(layer: RuntimeLayer) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A layer's architecture entry and its tensors (by short name: indptr, data, weight, bias, ...)."""
    if isinstance(layer, (Linear, Conv2d)):
        entry: dict[str, Any]
        if isinstance(layer, Linear):
            entry = {"type": "linear", "storage": "csr" if layer.sparse else "dense",
                     "shape": list(layer.weight.shape), "bias": layer.bias is not None}
        else:
            entry = {"type": "conv2d", "storage": "csr" if layer.sparse else "dense",
                     "shape": [layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size],
                     "stride": list(layer.stride), "padding": list(layer.padding), "dilation": list(layer.dilation),
                     "groups": layer.groups, "bias": layer.bias is not None}
        w = layer.weight
        parts: dict[str, np.ndarray]
        if isinstance(w, CSRMatrix):
            parts = {"indptr": w.indptr, "indices": w.indices, "data": w.data}
            if w.codebook is not None:
                parts["codebook"] = w.codebook
        else:
            parts = {"weight": w}
        if layer.bias is not None:
            parts["bias"] = layer.bias
        return entry, parts
    if isinstance(layer, Activation):
        return {"type": "activation", "kind": layer.kind}, {}
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        return {"type": type(layer).__name__.lower(), "kernel_size": list(layer.kernel_size),
                "stride": list(layer.stride), "padding": list(layer.padding)}, {}
    if isinstance(layer, BatchNorm2d):
        return {"type": "batchnorm2d", "channels": layer.channels}, {"scale": layer.scale, "shift": layer.shift}
    if isinstance(layer, AdaptiveAvgPool2d):
        return {"type": "adaptiveavgpool2d", "output_size": list(layer.output_size)}, {}
    if isinstance(layer, Add):
        return {"type": "add"}, {}
    return {"type": "flatten"}, {}


def load_compressed(path: str | os.PathLike) -> CompressedModel:
    """Read and fully validate a compressed-model file (see the module docstring). A torch.save
    file, a torch.export program or an ONNX model is refused with a message naming `htcore convert`."""
    where = os.fspath(path)
    kind = sniff_model_file(where)
    if kind in (TORCH_EXPORT, TORCH_PICKLE, ONNX):
        raise ValueError(not_a_model_file(where, kind))
    with SafetensorsFile(where) as f:
        meta = _parse_metadata(f.metadata, where)
        tensors = {name: f[name] for name in f}
    specs = meta["architecture"]
    input_shape = meta.get("input_shape")
    # 1. the JSON alone: every entry's fields, the graph's references, and shape inference
    declared = [_declared(spec, f"{where}: architecture[{i}]") for i, spec in enumerate(specs)]
    graph = _graph_entries(specs, where)
    if graph is not None:
        if input_shape is None:
            raise ValueError(f"{where}: a graph file (entries with names and inputs) needs the metadata key 'input_shape'")
        for (name, refs), spec, i in zip(graph, specs, range(len(specs))):
            arity = 2 if spec["type"] == "add" else 1
            if len(refs) != arity:
                raise ValueError(f"{where}: architecture[{i}] (node {name!r}): a {spec['type']} entry takes {arity} "
                                 f"input{'s' if arity > 1 else ''}, got {len(refs)} ({refs})")
        try:
            _check_references(graph)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        index = {name: i for i, (name, _) in enumerate(graph)}
        inputs = [[index.get(r, -1) for r in refs] for _, refs in graph]
        names = [f"architecture[{i}] (node {name!r})" for i, (name, _) in enumerate(graph)]
    else:
        if any(spec["type"] == "add" for spec in specs):
            raise ValueError(f"{where}: an 'add' entry needs a graph file (every entry with 'name' and 'inputs')")
        inputs = [[i - 1] for i in range(len(specs))]
        names = [f"architecture[{i}] ({spec['type']})" for i, spec in enumerate(specs)]
    if input_shape is not None:
        try:
            _infer_shapes(declared, inputs, tuple(input_shape), names)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    # 2. the tensors, and the layers built from them
    expected: set[str] = set()
    layers: list[RuntimeLayer] = []
    for i, spec in enumerate(specs):
        at = f"{where}: architecture[{i}]"
        layer, used = _layer(spec, tensors, i, where, at)
        expected.update(f"layers.{i}.{n}" for n in used)
        layers.append(layer)
    extra = sorted(set(tensors) - expected)
    if extra:
        raise ValueError(f"{where}: tensors not used by the architecture: {extra[:5]}")
    parts: list = layers if graph is None else [Node(name, layer, refs) for (name, refs), layer in zip(graph, layers)]
    try:
        return CompressedModel(parts, meta["metadata"], input_shape=input_shape)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None


_KEYS = {
    "linear": {"type", "storage", "shape", "bias"},
    "conv2d": {"type", "storage", "shape", "stride", "padding", "dilation", "groups", "bias"},
    "maxpool2d": {"type", "kernel_size", "stride", "padding"},
    "avgpool2d": {"type", "kernel_size", "stride", "padding"},
    "batchnorm2d": {"type", "channels"},
    "adaptiveavgpool2d": {"type", "output_size"},
    "add": {"type"},
    "activation": {"type", "kind"},
    "flatten": {"type"},
}


def _declared(spec: dict, at: str) -> Callable[[list], tuple]:
    """Check an entry's JSON fields (not its tensors) and return its shape function (input shapes ->
    output shape), built without allocating anything the size of a declared shape."""
    kind = _field(spec, "type", str, at)
    if kind not in _KEYS:
        raise ValueError(f"{at}: unknown layer type {kind!r}")
    graph_keys = {"name", "inputs"} & set(spec)
    _keys(spec, _KEYS[kind] | graph_keys, at)
    if kind in ("linear", "conv2d"):
        storage = _field(spec, "storage", str, at)
        if storage not in ("csr", "dense"):
            raise ValueError(f"{at}: storage must be 'csr' or 'dense', got {storage!r}")
        _field(spec, "bias", bool, at)
        shape = _field(spec, "shape", list, at)
    if kind == "linear":
        if len(shape) != 2 or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"{at}: shape must be two non-negative integers, got {shape}")
        if shape[0] * shape[1] > _MAX_ELEMENTS or max(shape) >= 2**31:
            raise ValueError(f"{at}: shape {shape} is too large")
        return _on_first(functools.partial(_linear_shape, in_features=shape[1], out_features=shape[0]))
    if kind == "conv2d":
        if len(shape) != 4 or not all(type(d) is int and d >= 1 for d in shape):
            raise ValueError(f"{at}: shape must be four positive integers [out, in_per_group, kh, kw], got {shape}")
        out, per_group, kh, kw = shape
        if out * per_group * kh * kw > _MAX_ELEMENTS or per_group * kh * kw >= 2**31 or out >= 2**31:
            raise ValueError(f"{at}: shape {shape} is too large")
        sizes = {key: _pair(spec, key, 0 if key == "padding" else 1, at) for key in ("stride", "padding", "dilation")}
        groups = _field(spec, "groups", int, at)
        if groups < 1 or out % groups:
            raise ValueError(f"{at}: groups must be a positive integer dividing the {out} output channels, got {groups}")
        return _on_first(functools.partial(_window_shape, kind="Conv2d", kernel_size=(kh, kw), **sizes,
                                           channels=(per_group * groups, out)))
    if kind == "batchnorm2d":
        channels = _field(spec, "channels", int, at)
        if not 1 <= channels < 2**31:
            raise ValueError(f"{at}: channels must be a positive integer below 2**31, got {channels}")
        return _on_first(functools.partial(_batchnorm_shape, channels=channels))
    if kind == "adaptiveavgpool2d":
        size = _pair(spec, "output_size", 1, at)
        if size[0] * size[1] >= 2**31:
            raise ValueError(f"{at}: output_size {list(size)} is too large")
        return _on_first(functools.partial(_adaptive_shape, output_size=size))
    layer = _simple_layer(kind, spec, at)  # small and parameter-only: built now
    return functools.partial(_output_shape, layer)


def _on_first(fn: Callable[[tuple], tuple]) -> Callable[[list], tuple]:
    """A shape function of one input as one of the list of input shapes."""
    return lambda shapes: fn(shapes[0])


def _simple_layer(kind: str, spec: dict, at: str) -> RuntimeLayer:
    """A layer without tensors (pool, adaptive pool, activation, flatten, add) from its checked entry."""
    if kind in ("maxpool2d", "avgpool2d"):
        k, st, pad = (_pair(spec, key, 0 if key == "padding" else 1, at) for key in ("kernel_size", "stride", "padding"))
        return _build(MaxPool2d if kind == "maxpool2d" else AvgPool2d, at, k, st, pad)
    if kind == "adaptiveavgpool2d":
        return AdaptiveAvgPool2d(_pair(spec, "output_size", 1, at))
    if kind == "activation":
        act = _field(spec, "kind", str, at)
        if act not in ACTIVATION_KINDS:
            raise ValueError(f"{at}: activation kind must be one of {ACTIVATION_KINDS}, got {act!r}")
        return Activation(act)
    return Add() if kind == "add" else Flatten()


def _graph_entries(specs: list, where: str) -> Optional[list[tuple[str, list[str]]]]:
    """(name, inputs) of every entry of a graph file, None for a sequential file; ValueError for a mix."""
    has = [("name" in s) or ("inputs" in s) for s in specs]
    if not any(has):
        return None
    if not all(has):
        i = has.index(False)
        raise ValueError(f"{where}: architecture[{i}] has no 'name'/'inputs' but other entries do: in a graph file "
                         "every entry has both")
    entries = []
    for i, spec in enumerate(specs):
        at = f"{where}: architecture[{i}]"
        name, refs = spec.get("name"), spec.get("inputs")
        if type(name) is not str or not name or name == INPUT:
            raise ValueError(f"{at}: 'name' must be a non-empty string other than {INPUT!r}, got {name!r}")
        if type(refs) is not list or not all(type(r) is str for r in refs):
            raise ValueError(f"{at} (node {name!r}): 'inputs' must be a list of names, got {refs!r}")
        entries.append((name, refs))
    return entries


def _layer(spec: dict, tensors: dict, i: int, where: str, at: str) -> tuple[RuntimeLayer, list[str]]:
    """Layer i built from its (already checked) entry and its tensors, and the tensor names it used."""
    kind = spec["type"]
    if kind in ("linear", "conv2d"):
        arrays = _weight_tensors(spec, spec["storage"], tensors, i, where, at)
        shape = tuple(spec["shape"])
        if kind == "linear":
            return Linear(*_weight(arrays, shape, shape, spec["storage"], f"{where}: layer {i}")), list(arrays)
        out, per_group, kh, kw = shape
        weight, bias = _weight(arrays, shape, (out, per_group * kh * kw), spec["storage"], f"{where}: layer {i}")
        sizes = {key: tuple(spec[key]) for key in ("stride", "padding", "dilation")}
        return _build(Conv2d, at, weight, bias, kernel_size=(kh, kw), groups=spec["groups"], **sizes), list(arrays)
    if kind == "batchnorm2d":
        arrays = {n: _tensor(tensors, f"layers.{i}.{n}", where) for n in ("scale", "shift")}
        for name, arr in arrays.items():
            if arr.dtype != np.float32 or arr.shape != (spec["channels"],):
                raise ValueError(f"{at}: {name} must be float32 of shape ({spec['channels']},), got {arr.dtype} {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{at}: {name} contains non-finite values")
        return BatchNorm2d(arrays["scale"], arrays["shift"]), list(arrays)
    return _simple_layer(kind, spec, at), []


def _parse_metadata(raw: dict, where: str) -> dict:
    if set(raw) - {"input_shape"} != _META_KEYS:
        raise ValueError(f"{where}: not an htcore compressed model (metadata keys {sorted(raw)}, need {sorted(_META_KEYS)} "
                         "and optionally 'input_shape')")
    meta = {}
    for key, text in raw.items():
        try:
            meta[key] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: metadata {key!r} is not valid JSON ({exc})") from None
        except RecursionError:  # json recurses once per nesting level
            raise ValueError(f"{where}: metadata {key!r} is JSON nested too deeply to be a model description") from None
    if meta["format"] != FORMAT:
        raise ValueError(f"{where}: format is {meta['format']!r}, expected {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {meta['format_version']!r} is not supported (this htcore reads {FORMAT_VERSION})")
    if not isinstance(meta["htcore_version"], str):
        raise ValueError(f"{where}: htcore_version must be a string")
    if not isinstance(meta["architecture"], list) or not all(isinstance(s, dict) for s in meta["architecture"]):
        raise ValueError(f"{where}: architecture must be a list of objects")
    for key in ("provenance", "metadata"):
        if not isinstance(meta[key], dict):
            raise ValueError(f"{where}: {key} must be a JSON object")
    shape = meta.get("input_shape")
    if shape is not None:
        if type(shape) is not list or not shape or not all(type(d) is int and 1 <= d < 2**31 for d in shape):
            raise ValueError(f"{where}: input_shape must be a non-empty list of positive integers, got {shape!r}")
        if int(np.prod(shape, dtype=object)) > 2**31:
            raise ValueError(f"{where}: input_shape {shape} has more than 2**31 elements per sample")
    return meta


def _keys(spec: dict, allowed: set, at: str) -> None:
    if set(spec) != allowed:
        raise ValueError(f"{at}: keys must be {sorted(allowed)}, got {sorted(spec)}")


def _field(spec: dict, key: str, kind: type, at: str) -> Any:
    value = spec.get(key)
    if type(value) is not kind:
        raise ValueError(f"{at}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value



def _weight_tensors(spec: dict, storage: str, tensors: dict, i: int, where: str, at: str) -> dict:
    """The tensors of layer i's weight (CSR arrays or a dense array, as ``storage`` says) and bias."""
    names = {"csr": ["indptr", "indices", "data"], "dense": ["weight"]}.get(storage)
    if names is None:
        raise ValueError(f"{at}: storage must be 'csr' or 'dense', got {storage!r}")
    if storage == "csr" and f"layers.{i}.codebook" in tensors:
        names.append("codebook")
    if _field(spec, "bias", bool, at):
        names.append("bias")
    return {n: _tensor(tensors, f"layers.{i}.{n}", where) for n in names}

def _tensor(tensors: dict, name: str, where: str) -> np.ndarray:
    if name not in tensors:
        raise ValueError(f"{where}: missing tensor {name!r}")
    arr = tensors[name]
    return np.require(arr, requirements=["C", "A"])  # copies only a misaligned tensor


def _pair(spec: dict, key: str, low: int, at: str) -> tuple[int, int]:
    value = spec.get(key)
    if type(value) is not list or len(value) != 2 or not all(type(v) is int and low <= v < 2**31 for v in value):
        raise ValueError(f"{at}: {key!r} must be two integers >= {low}, got {value!r}")
    return value[0], value[1]


def _build(make: Any, at: str, *args: Any, **kwargs: Any) -> RuntimeLayer:
    try:
        layer: RuntimeLayer = make(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{at}: {exc}") from None
    return layer


def _weight(arrays: dict, shape: tuple, csr_shape: tuple, storage: str, at: str) -> tuple:
    """The weight (dense of ``shape`` or CSR of ``csr_shape``) and bias of a Linear or Conv2d."""
    bias = arrays.get("bias")
    for name, arr in arrays.items():
        allowed = ("float32",) if name == "weight" else _CSR_DTYPES[name]
        if arr.dtype.name not in allowed:
            raise ValueError(f"{at}: {name} must be {' or '.join(allowed)}, got {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"{at}: {name} contains non-finite values")
    if bias is not None and bias.shape != (shape[0],):
        raise ValueError(f"{at}: bias has shape {bias.shape}, expected ({shape[0]},)")
    if storage == "dense":
        if arrays["weight"].shape != shape:
            raise ValueError(f"{at}: weight has shape {arrays['weight'].shape}, expected {shape}")
        return arrays["weight"], bias
    data, codebook = arrays["data"], arrays.get("codebook")
    if (data.dtype == np.uint8) != (codebook is not None):
        raise ValueError(f"{at}: uint8 data needs a codebook and a codebook needs uint8 data")
    try:
        csr = CSRMatrix(data, arrays["indices"], arrays["indptr"], csr_shape, codebook=codebook,
                        index_dtype=arrays["indices"].dtype, indptr_dtype=arrays["indptr"].dtype)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{at}: invalid CSR weight: {exc}") from None
    return csr, bias
