"""Enumerate the weight matrices of a model, from memory or from a file, without executing code.

`load_layers` accepts an ``nn.Module``, a state_dict (any mapping of names to tensors/arrays,
nested mappings flattened with dots), or a path to a ``.safetensors``, ``.pt``/``.pth`` or ``.npz``
file (``.pt``/``.pth``/``.bin`` are torch checkpoints), and yields one `Layer` per floating-point
tensor with at least two dimensions. An htcore model file (what ``htcore compress`` and
``save_compressed`` write) gives the weight of each Linear and Conv2d layer instead, a CSR weight
expanded to the dense matrix it stands for, named as the model names the layer ("0.weight").

Safety: files are read with loaders that cannot run code. ``.pt``/``.pth`` go through
``torch.load(weights_only=True)`` (tensors, containers and plain values only: a pickle naming any
other callable is refused; a tensor on the meta device, which has no data, is refused too);
``.npz`` members through numpy's ``.npy`` reader with ``allow_pickle=False``; ``.safetensors`` through
htcore's own validating reader. Any other suffix, and anything but a regular file (a FIFO would block
forever), is refused. Malformed or truncated files raise ValueError with the path and the reason.

Memory: a ``.safetensors`` file is memory-mapped and each tensor is mapped only while its `Layer`
is alive, so iterating over a model larger than memory keeps one tensor resident at a time. An
``.npz`` is read one member at a time, each inflated whole when its layer is built (its declared
shape is checked against the member's size first; a compressed member can still inflate to ~1000x
its compressed size). A ``.pt`` in torch's zip format is loaded with ``mmap=True``, so a tensor's
pages are read when it is used; the legacy (pre-1.6) format is read whole.
"""
from __future__ import annotations

import json
import math
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from ..sparse import CSRMatrix
from ._safetensors import SafetensorsFile

KINDS = ("linear", "conv", "embedding", "other")
MODEL_FILE_FORMAT = "htcore-compressed-model"  # the "format" of htcore's model file (written by htcore.runtime)


@dataclass(frozen=True, eq=False)
class Layer:
    """One weight tensor and the 2-D matrices whose spectra are analysed.

    Attributes
    ----------
    name : the tensor's name (``"encoder.layer.0.attention.self.query.weight"``).
    kind : ``"linear"``, ``"conv"``, ``"embedding"`` or ``"other"``. From the module type for an
        ``nn.Module`` (Linear, ConvNd, Embedding/EmbeddingBag; anything else is "other"); from the
        name and shape for files and state_dicts (>= 3-D is "conv", a 2-D name containing "embed"
        is "embedding", other 2-D "...weight" tensors are "linear", the rest "other").
    shape : the tensor's original shape.
    weight : the tensor as a numpy array of its stored dtype (bfloat16 is widened to float32);
        read-only views of the file or of the module's parameters, never copies.
    matrices : the 2-D views analysed. A matrix is itself. A convolution kernel of shape
        (out, in, k1[, k2[, k3]]) gives one (out, in) slice ``W[:, :, i, j]`` per kernel position,
        k1*k2 slices in all; their eigenvalues are pooled into one ESD. This is WeightWatcher's
        default (``pool=True``, PyTorch channel order; 0.7.7 ``conv2D_Wmats``), extended to 1-D and
        3-D kernels in the same way.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    weight: np.ndarray
    matrices: tuple[np.ndarray, ...]

    @property
    def num_params(self) -> int:
        return int(self.weight.size)


def conv_slices(weight: np.ndarray) -> tuple[np.ndarray, ...]:
    """The per-kernel-position (out, in) slices of a conv kernel (out, in, *kernel), row-major positions."""
    out_ch, in_ch = weight.shape[:2]
    flat = weight.reshape(out_ch, in_ch, -1)
    return tuple(flat[:, :, p] for p in range(flat.shape[2]))


def load_layers(
    source: Any,
    *,
    include: str | None = None,
    exclude: str | None = None,
) -> Iterator[Layer]:
    """Yield the weight tensors of ``source`` as `Layer` objects, in the source's order.

    Parameters
    ----------
    source : ``torch.nn.Module``, a mapping name -> tensor/array (a state_dict; nested mappings are
        flattened with "."), or a path (str or PathLike) to a ``.safetensors`` (an htcore model file
        included), ``.pt``/``.pth``/``.bin`` or ``.npz`` file. Pickled ``.pt`` files are read with ``torch.load(weights_only=True)``, which
        refuses anything but tensors and plain containers; no code from a file is ever executed.
    include, exclude : regular expressions matched (``re.search``) against tensor names; a tensor
        is kept when it matches ``include`` (if given) and does not match ``exclude`` (if given).

    Tensors with fewer than two dimensions (biases, norms), empty tensors and non-floating tensors
    (integer buffers, masks) are skipped. Conv kernels follow WeightWatcher's default: one
    (out, in) matrix per kernel position, pooled into a single ESD (see `Layer`).

    The source is opened and validated before the first layer is yielded, so a bad file fails
    at the ``load_layers`` call, not halfway through an analysis.
    """
    keep_name = _name_filter(include, exclude)
    return _layers(_open(source), keep_name)


def _layers(entries: Iterator[tuple], keep_name) -> Iterator[Layer]:
    for entry in entries:
        if keep_name(entry[0]):
            layer = _make_layer(*entry)
            if layer is not None:
                yield layer


def _name_filter(include: str | None, exclude: str | None):
    def compile_(pattern: str | None, arg: str):
        if pattern is None:
            return None
        if not isinstance(pattern, str):
            raise TypeError(f"{arg} must be a regular expression string, got {type(pattern).__name__}")
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{arg} is not a valid regular expression ({exc}): {pattern!r}") from None

    inc, exc = compile_(include, "include"), compile_(exclude, "exclude")
    return lambda name: (inc is None or inc.search(name) is not None) and (exc is None or exc.search(name) is None)


# Each opener returns an iterator of (name, kind or None, tensor/array or a thunk reading it, shape).
def _open(source: Any) -> Iterator[tuple]:
    if isinstance(source, (str, os.PathLike)):
        return _open_path(os.fspath(source))
    if _is_module(source):
        return _from_module(source)
    if isinstance(source, Mapping):
        return _from_mapping(source)
    raise TypeError(
        f"source must be an nn.Module, a state_dict mapping, or a path to a .safetensors/.pt/.pth/.npz file, "
        f"got {type(source).__name__}"
    )


def _open_path(path: str) -> Iterator[tuple]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a model file (a directory or special file)")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        return _from_safetensors(path)
    if suffix in (".pt", ".pth", ".bin"):
        return _from_torch_file(path)
    if suffix == ".npz":
        return _from_npz(path)
    raise ValueError(
        f"{path}: unsupported model file type {suffix or '(no suffix)'!r}; expected .safetensors, .pt, .pth, .bin "
        f"(torch, loaded with weights_only=True) or .npz"
    )


def _from_safetensors(path: str) -> Iterator[tuple]:
    f = SafetensorsFile(path)  # validates the whole header now, once
    f.close()  # each tensor gets its own mapping instead (see `SafetensorsFile.map_tensor`)
    if "format" in f.metadata and _json(f.metadata["format"], path, "format") == MODEL_FILE_FORMAT:
        return iter(_from_model_file(f))

    def read(name: str):
        # Unmapped (and its pages leave this process's RSS) as soon as the layer holding the view is
        # released, so memory stays near one tensor.
        return lambda: f.map_tensor(name)

    return ((name, None, read(name), f.info(name).shape) for name in f)


def _json(text: str, path: str, key: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # not JSON: the key means something else in this file
        return None
    except RecursionError:  # json recurses once per nesting level
        raise ValueError(f"{path}: metadata {key!r} is JSON nested too deeply") from None


def _from_model_file(f: SafetensorsFile) -> list[tuple]:
    """The weight of every Linear and Conv2d of an htcore model file (the format is in
    docs/conventions.md), as the dense matrix or kernel it stands for, named after its layer as the
    model names it: "{index}.weight" in a sequential model (compression's per_layer keys), "{node
    name}.weight" in a graph. A CSR weight is expanded (zeros where nothing is kept) when its layer
    is built; a dense one is mapped as any safetensors tensor."""
    where = f.path
    specs = _json(f.metadata.get("architecture", "null"), where, "architecture")
    if not isinstance(specs, list):
        raise ValueError(f"{where}: an htcore model file whose 'architecture' metadata is not a JSON list")
    entries = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or spec.get("type") not in ("linear", "conv2d"):
            continue
        at = f"{where}: architecture[{i}]"
        shape, name, storage = spec.get("shape"), spec.get("name", str(i)), spec.get("storage")
        ndim = 2 if spec["type"] == "linear" else 4
        if type(shape) is not list or len(shape) != ndim or not all(type(d) is int and d >= 1 for d in shape):
            raise ValueError(f"{at}: 'shape' must be {ndim} positive integers, got {shape!r}")
        if not isinstance(name, str) or storage not in ("csr", "dense"):
            raise ValueError(f"{at}: 'name' must be a string and 'storage' 'csr' or 'dense', got {name!r}, {storage!r}")
        kind = "linear" if ndim == 2 else "conv"
        reader = _dense_weight(f, i, tuple(shape)) if storage == "dense" else _csr_weight(f, i, tuple(shape))
        entries.append((f"{name}.weight", kind, reader, tuple(shape)))
    return entries


def _dense_weight(f: SafetensorsFile, i: int, shape: tuple[int, ...]):
    name = f"layers.{i}.weight"
    if name not in f or f.info(name).shape != shape:
        raise ValueError(f"{f.path}: architecture[{i}] is a dense weight of shape {list(shape)}: tensor {name!r} is "
                         f"missing or of another shape")
    return lambda: f.map_tensor(name)


def _csr_weight(f: SafetensorsFile, i: int, shape: tuple[int, ...]):
    names = [f"layers.{i}.{part}" for part in ("data", "indices", "indptr")]
    missing = [n for n in names if n not in f]
    if missing:
        raise ValueError(f"{f.path}: architecture[{i}] is a CSR weight but the file lacks {missing}")
    codebook = f"layers.{i}.codebook" if f"layers.{i}.codebook" in f else None
    rows, cols = shape[0], math.prod(shape[1:])  # a conv kernel is stored as (out, in/groups * kh * kw)

    def expand() -> np.ndarray:
        data, indices, indptr = (f.map_tensor(n) for n in names)
        try:
            csr = CSRMatrix(data, indices, indptr, (rows, cols), codebook=None if codebook is None else f.map_tensor(codebook),
                            index_dtype=indices.dtype, indptr_dtype=indptr.dtype)
            return csr.todense().reshape(shape)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{f.path}: architecture[{i}]: invalid CSR weight: {exc}") from None
        except MemoryError:
            raise ValueError(f"{f.path}: architecture[{i}]: the {rows} x {cols} weight does not fit in memory as a "
                             "dense matrix") from None

    return expand


def _torch_load(path: str) -> Mapping:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path}: reading .pt/.pth files needs torch (pip install torch)") from None
    import pickle

    try:
        # mmap: tensors stay in the file until read (torch's zip format; the legacy format is read whole)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: refused to load: not a plain tensor checkpoint (torch.load weights_only=True: {_reason(exc, 'GLOBAL')}); "
            f"htcore never unpickles arbitrary objects: save a state_dict or use safetensors"
        ) from None
    except Exception as exc:  # torch.load raises RuntimeError, KeyError, EOFError, ... on corrupt files
        raise ValueError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {type(exc).__name__}: {_reason(exc)}") from None
    if _is_module(obj) or not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors), found {type(obj).__name__}")
    return obj


def _from_torch_file(path: str) -> Iterator[tuple]:
    entries = list(_from_mapping(_torch_load(path)))
    for name, _, value, _ in entries:
        if getattr(value, "is_meta", False):
            raise ValueError(f"{path}: tensor {name!r} is on torch's meta device: it has a shape but no data "
                             f"(saved before the model's weights were materialised)")
    return iter(entries)


def _from_npz(path: str) -> Iterator[tuple]:
    """The arrays of an .npz, each read (inflated) only when its layer is built, after its declared
    shape and dtype were checked against the member's size."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [_npz_member(archive, info) for info in archive.infolist()]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz archive of numeric arrays (pickled objects are refused): {_reason(exc)}") from None

    def read(member: str):
        def inflate() -> np.ndarray:
            with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
                return np.lib.format.read_array(stream, allow_pickle=False)
        return inflate

    return ((name, None, read(member), shape) for name, member, shape in members)


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npz_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str, str, tuple[int, ...]]:
    """(array name, member name, shape) of one .npy member, refusing pickled objects and a header
    that declares more (or fewer) bytes than the member holds."""
    if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not an .npy array")
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_HEADER_READERS:
            raise ValueError(f"member {info.filename!r}: unsupported .npy format version {version}")
        shape, _, dtype = _NPY_HEADER_READERS[version](stream)
        header_bytes = stream.tell()
    if dtype.hasobject:
        raise ValueError(f"member {info.filename!r} holds Python objects")
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - header_bytes:
        raise ValueError(f"member {info.filename!r} declares shape {shape} of {dtype} ({declared} bytes) but holds "
                         f"{info.file_size - header_bytes} bytes")
    return info.filename[: -len(".npy")], info.filename, tuple(shape)


def _reason(exc: BaseException, prefer: str | None = None) -> str:
    """A short one-line reason from an exception: the line containing ``prefer`` if any (torch names
    the refused callable on a later line), else the first sentence, at most 160 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    line = next((l for l in lines if prefer and prefer in l), lines[0].split(". ")[0])
    return line if len(line) <= 160 else line[:157] + "..."


def _is_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _from_module(module: Any) -> Iterator[tuple]:
    """Parameters in module order (a shared parameter once, under its first name), and the weight of
    each htcore.nn sparse module (SparseLinear, SparseConv2d) as the dense tensor it stands for."""
    import torch

    entries: list[tuple] = []
    seen: set[int] = set()
    for mod_name, mod in module.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for p_name, p in mod.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                entries.append((prefix + p_name, _module_kind(mod, p_name, torch), p, tuple(p.shape)))
        if isinstance(getattr(mod, "weight_csr", None), CSRMatrix):
            shape = tuple(mod.dense_weight_shape)
            entries.append((prefix + "weight", "linear" if len(shape) == 2 else "conv", _dense_reader(mod), shape))
    return iter(entries)


def _dense_reader(sparse_module: Any):
    """Reads a sparse module's weight densely (zeros where nothing is kept) only when its layer is built."""
    return lambda: sparse_module.to_dense().numpy()


def _module_kind(mod: Any, param_name: str, torch: Any) -> str:
    if param_name != "weight":
        return "other"
    if isinstance(mod, torch.nn.Linear):
        return "linear"
    if isinstance(mod, torch.nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(mod, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
        return "embedding"
    return "other"


def _from_mapping(mapping: Mapping) -> Iterator[tuple]:
    flat: list[tuple[str, Any]] = []

    def walk(prefix: str, obj: Mapping) -> None:
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                walk(name, value)
            elif hasattr(value, "shape") and hasattr(value, "dtype"):
                flat.append((name, value))

    walk("", mapping)
    return ((name, None, value, tuple(value.shape)) for name, value in flat)


def _guess_kind(name: str, ndim: int) -> str:
    if ndim >= 3:
        return "conv"
    if "embed" in name.lower():
        return "embedding"
    return "linear" if name.endswith("weight") else "other"


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device/dtype) or array-like as a numpy array; bfloat16 widens to float32."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(value)


def _is_float_dtype(dtype: Any) -> bool:
    """A real floating dtype, numpy's (any byte order) or torch's."""
    if isinstance(dtype, np.dtype):
        return dtype.kind == "f"
    text = str(dtype)
    return "float" in text and "complex" not in text


def _make_layer(name: str, kind: str | None, value: Any, shape: tuple[int, ...]) -> Layer | None:
    if len(shape) < 2 or 0 in shape:
        return None
    if not callable(value) and not _is_float_dtype(value.dtype):
        return None
    arr = _to_numpy(value() if callable(value) else value)
    if not np.issubdtype(arr.dtype, np.floating):
        return None
    if not arr.dtype.isnative:  # big-endian arrays (an .npz written on such a machine, or ">f4")
        arr = arr.astype(arr.dtype.newbyteorder("="))
    kind = kind or _guess_kind(name, arr.ndim)
    matrices = conv_slices(arr) if arr.ndim >= 3 else (arr,)
    return Layer(name=name, kind=kind, shape=tuple(int(d) for d in arr.shape), weight=arr, matrices=matrices)
