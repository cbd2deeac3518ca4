"""Read and write the safetensors format with numpy only (no torch, no pickle, no code execution).

Layout: an 8-byte little-endian header length N, N bytes of JSON, then the raw tensor bytes.
The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the start of the data), plus an optional ``"__metadata__"`` of string to string.

`SafetensorsFile` validates the whole header before any tensor is read and memory-maps the file,
so a tensor is only paged in when asked for: a model larger than memory is read one tensor at a
time. Files written here load with the ``safetensors`` package and vice versa.
"""
from __future__ import annotations

import json
import math
import os
import stat
import struct
from typing import Iterator, Mapping

import numpy as np

from ..errors import SafetensorsError

# safetensors dtype code -> numpy dtype (little-endian). BF16 has no numpy dtype: it is widened
# to float32 on read.
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {np.dtype(v).newbyteorder("<") if v.itemsize > 1 else np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}

# A header larger than this is refused rather than parsed (the reference implementation uses 100 MB).
MAX_HEADER_BYTES = 100_000_000


def regular_file_size(path: str) -> int:
    """The size in bytes of ``path``, which must be a regular file: opening a FIFO or a device to
    read it would block forever or never end. Raises FileNotFoundError, IsADirectoryError or
    ValueError."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{path}: a directory, not a model file")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file (a FIFO, socket or device?); model files must be regular files")
    return info.st_size


class TensorInfo:
    """Where one tensor lives in the file: dtype code, shape and absolute byte range."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], begin: int, end: int):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def __repr__(self) -> str:
        return f"TensorInfo({self.name!r}, dtype={self.dtype}, shape={self.shape})"


class SafetensorsFile:
    """A validated, memory-mapped safetensors file.

    >>> with SafetensorsFile("model.safetensors") as f:          # doctest: +SKIP
    ...     for name in f: print(name, f.info(name).shape, f[name].dtype)

    Indexing returns a read-only numpy array backed by the mapping (BF16 tensors come back as
    float32 copies). Raises `SafetensorsError` (a ValueError) when the file is malformed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = regular_file_size(self.path)
        with open(self.path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: too short for a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise SafetensorsError(
                    f"{self.path}: header length {header_len} does not fit a file of {size} bytes (truncated or not safetensors)"
                )
            raw = fh.read(header_len)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SafetensorsError(f"{self.path}: header is not valid JSON ({exc})") from None
        except RecursionError:  # JSON nested deeper than Python's recursion limit
            raise SafetensorsError(f"{self.path}: header JSON is nested too deeply to be a safetensors header") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header must be a JSON object")
        self._data_start = 8 + header_len
        self.metadata: dict[str, str] = self._parse_metadata(header.pop("__metadata__", None))
        self._infos = self._parse_tensors(header, size - self._data_start)
        self._map: np.memmap | None = None
        if size > self._data_start:
            try:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as exc:  # e.g. [Errno 12] when the address space runs out
                raise SafetensorsError(f"{self.path}: cannot memory-map the file ({exc})") from None

    def _parse_metadata(self, meta: object) -> dict[str, str]:
        if meta is None:
            return {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise SafetensorsError(f"{self.path}: __metadata__ must map strings to strings")
        return dict(meta)

    def _parse_tensors(self, header: dict, data_size: int) -> dict[str, TensorInfo]:
        infos: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            where = f"{self.path}: tensor {name!r}"
            if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"}:
                raise SafetensorsError(f"{where}: entry must have exactly dtype, shape, data_offsets")
            dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            if not isinstance(dtype, str) or dtype not in _DTYPES:
                raise SafetensorsError(f"{where}: unsupported dtype {dtype!r}")
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise SafetensorsError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
                raise SafetensorsError(f"{where}: data_offsets must be two integers, got {offsets!r}")
            begin, end = offsets
            expected = math.prod(shape) * _DTYPES[dtype].itemsize  # exact (np.prod overflows on huge shapes)
            if not (0 <= begin <= end <= data_size):
                raise SafetensorsError(f"{where}: bytes [{begin}, {end}) lie outside the {data_size}-byte data section (truncated?)")
            if end - begin != expected:
                raise SafetensorsError(f"{where}: holds {end - begin} bytes but dtype {dtype} and shape {shape} need {expected}")
            infos[name] = TensorInfo(name, dtype, tuple(shape), self._data_start + begin, self._data_start + end)
        spans = sorted((i.begin, i.end, i.name) for i in infos.values() if i.end > i.begin)
        for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise SafetensorsError(f"{self.path}: tensors {a!r} and {b!r} overlap")
        return infos

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._map = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def keys(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {name!r}") from None

    def __getitem__(self, name: str) -> np.ndarray:
        info = self.info(name)
        return _as_tensor(None if self._map is None else self._map[info.begin : info.end], info)

    def map_tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` backed by a memory mapping of its own bytes only, which is released
        with the array (``f[name]`` keeps the whole file's mapping alive instead). The header is
        not read again."""
        info = self.info(name)
        if info.nbytes == 0:
            return _as_tensor(None, info)
        try:
            raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.begin, shape=(info.nbytes,))
        except (OSError, ValueError) as exc:  # the file shrank since its header was read, or no address space
            raise SafetensorsError(f"{self.path}: tensor {name!r}: cannot map its bytes ({exc})") from None
        return _as_tensor(raw, info)


def _as_tensor(raw: np.ndarray | None, info: TensorInfo) -> np.ndarray:
    """The bytes of a tensor (None when it has none) as a read-only array of its dtype and shape
    (BF16 widened to float32)."""
    dtype = _DTYPES[info.dtype]
    if raw is None or info.nbytes == 0:
        arr = np.zeros(info.shape, dtype=dtype)
    else:
        arr = raw.view(dtype).reshape(info.shape)
    if info.dtype == "BF16":  # bfloat16 is the top half of a float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    arr.flags.writeable = False
    return arr


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> numpy array) and string ``metadata`` to ``path`` in safetensors format."""
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise TypeError(f"metadata must map str to str; offending keys: {bad[:3]}")
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        arr = np.asarray(value, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
        code = _CODES.get(arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype)
        if code is None:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors")
        arr = arr.astype(_DTYPES[code], copy=False)
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        arrays.append(arr)
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as the reference writer does
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for arr in arrays:
            fh.write(arr.reshape(-1).view(np.uint8).data)
    os.replace(tmp, path)
