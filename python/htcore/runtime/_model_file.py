"""The compressed-model file: a `CompressedModel` in safetensors format (no pickle, mmap-able).

Tensors, for layer i (its index in ``model.layers``):
- sparse Linear: ``layers.{i}.indptr`` (int32/int64), ``layers.{i}.indices`` (uint16/int32),
  ``layers.{i}.data`` (float32/float16/float64, or uint8 codes plus ``layers.{i}.codebook``
  float32), optional ``layers.{i}.bias`` (float32);
- dense Linear: ``layers.{i}.weight`` (float32, (out, in)) and optional ``layers.{i}.bias``;
- Conv2d: the same tensors, the CSR matrix of shape (out, in_per_group * kh * kw) or the dense
  weight of torch's shape (out, in_per_group, kh, kw).

String metadata (each value JSON): ``format`` = "htcore-compressed-model", ``format_version`` = 1,
``htcore_version``, ``architecture`` (one object per layer: ``{"type": "linear", "storage":
"csr"|"dense", "shape": [out, in], "bias": bool}``, ``{"type": "activation", "kind": ...}`` or
``{"type": "flatten"}``, ``{"type": "conv2d", "storage": "csr"|"dense", "shape": [out,
in_per_group, kh, kw], "stride": [h, w], "padding": [h, w], "dilation": [h, w], "groups": g,
"bias": bool}``, ``{"type": "maxpool2d"|"avgpool2d", "kernel_size": [h, w], "stride": [h, w],
"padding": [h, w]}``), ``provenance`` (a JSON object) and ``metadata`` (the model's dict). Files
without image layers are written exactly as before; the image layer types are new in the same
format version (an older htcore refuses them as unknown layer types).

`load_compressed` validates everything before returning — the header, the JSON schema, that the
tensors present are exactly those the architecture needs with the right dtypes and shapes, the CSR
structure, codebook ranges, finite values and that the layers chain — and never executes code
from the file. Any problem raises ValueError naming the file and the offending part.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from .._version import __version__
from ..io import SafetensorsFile, save_safetensors
from ..sparse import CSRMatrix
from ._model import (
    ACTIVATION_KINDS,
    Activation,
    AvgPool2d,
    CompressedModel,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    RuntimeLayer,
)

_MAX_ELEMENTS = 2**40  # a declared weight shape with more elements is refused before anything is built

FORMAT = "htcore-compressed-model"
FORMAT_VERSION = 1
_META_KEYS = {"format", "format_version", "htcore_version", "architecture", "provenance", "metadata"}
_CSR_DTYPES = {"indptr": ("int32", "int64"), "indices": ("uint16", "int32"),
               "data": ("float32", "float16", "float64", "uint8"), "codebook": ("float32",), "bias": ("float32",)}


def save_compressed(path: str | os.PathLike, model: Any, provenance: Optional[dict] = None) -> None:
    """Write ``model`` (a `CompressedModel`, or a torch ``nn.Sequential`` converted with
    `CompressedModel.from_torch`) to ``path``. ``provenance``: a JSON-serialisable dict (e.g. the
    source checkpoint, keep fractions, training data) stored with the htcore version."""
    if not isinstance(model, CompressedModel):
        model = CompressedModel.from_torch(model)
    if provenance is not None and not isinstance(provenance, dict):
        raise TypeError(f"provenance must be a dict or None, got {type(provenance).__name__}")
    tensors: dict[str, np.ndarray] = {}
    architecture: list[dict[str, Any]] = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (Linear, Conv2d)):
            if isinstance(layer, Linear):
                architecture.append({"type": "linear", "storage": "csr" if layer.sparse else "dense",
                                     "shape": list(layer.weight.shape), "bias": layer.bias is not None})
            else:
                architecture.append({
                    "type": "conv2d", "storage": "csr" if layer.sparse else "dense",
                    "shape": [layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size],
                    "stride": list(layer.stride), "padding": list(layer.padding), "dilation": list(layer.dilation),
                    "groups": layer.groups, "bias": layer.bias is not None})
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
            tensors.update({f"layers.{i}.{k}": v for k, v in parts.items()})
        elif isinstance(layer, Activation):
            architecture.append({"type": "activation", "kind": layer.kind})
        elif isinstance(layer, (MaxPool2d, AvgPool2d)):
            architecture.append({"type": type(layer).__name__.lower(), "kernel_size": list(layer.kernel_size),
                                 "stride": list(layer.stride), "padding": list(layer.padding)})
        else:
            architecture.append({"type": "flatten"})
    # Widest dtypes first, so every tensor starts aligned to its itemsize in the data section.
    ordered = dict(sorted(tensors.items(), key=lambda kv: -kv[1].dtype.itemsize))
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "htcore_version": __version__,
                "architecture": architecture, "provenance": provenance or {}, "metadata": model.metadata}
    try:
        strings = {k: json.dumps(v) for k, v in metadata.items()}
    except TypeError as exc:
        raise TypeError(f"provenance and model.metadata must be JSON-serialisable: {exc}") from None
    save_safetensors(path, ordered, strings)


def load_compressed(path: str | os.PathLike) -> CompressedModel:
    """Read and fully validate a compressed-model file (see the module docstring)."""
    where = os.fspath(path)
    with SafetensorsFile(where) as f:
        meta = _parse_metadata(f.metadata, where)
        tensors = {name: f[name] for name in f}
    expected: set[str] = set()
    layers: list[RuntimeLayer] = []
    for i, spec in enumerate(meta["architecture"]):
        at = f"{where}: architecture[{i}]"
        kind = _field(spec, "type", str, at)
        if kind == "linear":
            _keys(spec, {"type", "storage", "shape", "bias"}, at)
            storage = _field(spec, "storage", str, at)
            shape = _field(spec, "shape", list, at)
            if len(shape) != 2 or not all(type(d) is int and d >= 0 for d in shape):
                raise ValueError(f"{at}: shape must be two non-negative integers, got {shape}")
            arrays = _weight_tensors(spec, storage, tensors, i, where, at)
            expected.update(f"layers.{i}.{n}" for n in arrays)
            layers.append(Linear(*_weight(arrays, tuple(shape), tuple(shape), storage, f"{where}: layer {i}")))
        elif kind == "conv2d":
            _keys(spec, {"type", "storage", "shape", "stride", "padding", "dilation", "groups", "bias"}, at)
            storage = _field(spec, "storage", str, at)
            shape = _field(spec, "shape", list, at)
            if len(shape) != 4 or not all(type(d) is int and d >= 1 for d in shape):
                raise ValueError(f"{at}: shape must be four positive integers [out, in_per_group, kh, kw], got {shape}")
            out, per_group, kh, kw = shape
            if out * per_group * kh * kw > _MAX_ELEMENTS or per_group * kh * kw >= 2**31:
                raise ValueError(f"{at}: shape {shape} is too large")
            sizes = {key: _pair(spec, key, 0 if key == "padding" else 1, at) for key in ("stride", "padding", "dilation")}
            groups = _field(spec, "groups", int, at)
            if groups < 1 or out % groups:
                raise ValueError(f"{at}: groups must be a positive integer dividing the {out} output channels, got {groups}")
            arrays = _weight_tensors(spec, storage, tensors, i, where, at)
            expected.update(f"layers.{i}.{n}" for n in arrays)
            weight, bias = _weight(arrays, tuple(shape), (out, per_group * kh * kw), storage, f"{where}: layer {i}")
            layers.append(_build(Conv2d, at, weight, bias, kernel_size=(kh, kw), groups=groups, **sizes))
        elif kind in ("maxpool2d", "avgpool2d"):
            _keys(spec, {"type", "kernel_size", "stride", "padding"}, at)
            k, st, pad = (_pair(spec, key, 0 if key == "padding" else 1, at) for key in ("kernel_size", "stride", "padding"))
            pool = MaxPool2d if kind == "maxpool2d" else AvgPool2d
            layers.append(_build(pool, at, k, st, pad))
        elif kind == "activation":
            _keys(spec, {"type", "kind"}, at)
            act = _field(spec, "kind", str, at)
            if act not in ACTIVATION_KINDS:
                raise ValueError(f"{at}: activation kind must be one of {ACTIVATION_KINDS}, got {act!r}")
            layers.append(Activation(act))
        elif kind == "flatten":
            _keys(spec, {"type"}, at)
            layers.append(Flatten())
        else:
            raise ValueError(f"{at}: unknown layer type {kind!r}")
    extra = sorted(set(tensors) - expected)
    if extra:
        raise ValueError(f"{where}: tensors not used by the architecture: {extra[:5]}")
    try:
        return CompressedModel(layers, meta["metadata"])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _parse_metadata(raw: dict, where: str) -> dict:
    if set(raw) != _META_KEYS:
        raise ValueError(f"{where}: not an htcore compressed model (metadata keys {sorted(raw)}, need {sorted(_META_KEYS)})")
    meta = {}
    for key, text in raw.items():
        try:
            meta[key] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: metadata {key!r} is not valid JSON ({exc})") from None
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
