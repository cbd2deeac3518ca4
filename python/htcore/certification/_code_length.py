"""Description length, in bits, of a compressed network: the L(g) that the Occam bounds charge.

The code is prefix-free and fixed before seeing data; every choice that picks g is paid for:

- architecture: the number of layers (Elias gamma), each layer's kind (3 bits), and for a linear layer
  its shape (Elias gamma of rows and of columns), a sparse/dense flag and a has-bias flag; an image
  layer spends one more kind code (the 3 bits, then 2 bits for conv2d, maxpool2d or avgpool2d),
  then Elias gamma of (size + 1) for each size: a conv's out, in_per_group, kh, kw, stride, padding,
  dilation (pairs) and groups plus the sparse/dense and has-bias flags, a pool's kernel, stride and
  padding pairs (an MLP's figure does not change); the last 3-bit kind code escapes to 2 bits for
  batchnorm2d (then Elias gamma of channels + 1; its scale and shift are charged as dense tensors),
  adaptiveavgpool2d (Elias gamma of oh + 1 and ow + 1) or add;
- graph models (`htcore.runtime.Node`s): a count of zero layers (Elias gamma of 1, the one bit no
  non-empty sequential model starts with) announces a graph, then the same layer code (count, kinds,
  sizes) plus, for node i (0-based), each input reference in ceil log2(i + 1) bits (one of the
  model input and the i earlier nodes; an add has two, every other kind one; names are not charged,
  they do not change the function). Sequential figures do not change;
- per sparse matrix with n = rows * cols entries and k kept: k itself (ceil log2(n + 1) bits), the set
  of kept positions (ceil log2 C(n, k) bits, an enumerative code; `elias_fano_encode` is a real
  encoder whose size is reported beside it), and the kept values by the cheapest of three codes, plus
  2 bits saying which: raw at the stored precision (k * bits of the dtype); a codebook of the r
  distinct values at stored precision + r (Elias gamma) + ceil log2 r bits per value; or the same
  codebook + r - 1 counts (ceil log2(k + 1) bits each) + ceil log2 of the multinomial k! / prod c_j!
  (an enumerative code, never longer than k times the empirical entropy);
- dense tensors (dense weights, biases) at their stored precision, or 16 bits per entry when every
  entry is exactly a float16 value (1 flag bit);
- 2 floor(log2 B) + 1 bits for the Elias gamma code of the body length B (self-delimiting);
- ceil log2(settings_tried) bits for a search over compression settings (keep, levels, ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .._text import markdown_table, plural
from .._validation import check_int
from ..runtime import AdaptiveAvgPool2d, Add, BatchNorm2d
from ..sparse import CSRMatrix

_KIND_BITS = 3  # linear, flatten, relu, gelu, tanh, softmax, the image-layer escape and the graph-op escape
_IMAGE_KIND_BITS = 2  # after the image escape: conv2d, maxpool2d, avgpool2d
_GRAPH_OP_BITS = 2  # after the graph-op escape: batchnorm2d, adaptiveavgpool2d, add


def elias_gamma_bits(value: int) -> int:
    """Length of the Elias gamma code of a positive integer: 2 floor(log2 value) + 1."""
    value = check_int(value, "value", low=1)
    return 2 * (value.bit_length() - 1) + 1


def ceil_log2(value: int) -> int:
    """ceil(log2(value)) for an integer value >= 1, exact (0 for 1)."""
    value = check_int(value, "value", low=1)
    return (value - 1).bit_length()


def log2_binomial(n: int, k: int) -> float:
    """log2 C(n, k) via lgamma (accurate to ~1e-12 relative for n up to 1e12)."""
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2.0)


def _ceil_bits(x: float) -> int:
    # lgamma sums carry relative error ~1e-15; round values that sit on an integer to it, then round up
    nearest = round(x)
    return int(nearest) if abs(x - nearest) < 1e-9 * max(1.0, abs(x)) else math.ceil(x)


def _elias_fano_low_bits(n: int, k: int) -> int:
    return max(0, (n // k).bit_length() - 1) if k else 0  # floor(log2(n / k))


def elias_fano_size(n: int, k: int) -> int:
    """Bits of the Elias–Fano code of k sorted distinct positions in [0, n) (n and k known to the decoder):
    k * l low bits + k + ((n - 1) >> l) + 1 high bits with l = floor(log2(n / k))."""
    if k == 0:
        return 0
    low = _elias_fano_low_bits(n, k)
    return k * low + k + ((n - 1) >> low) + 1


def elias_fano_encode(positions: Any, n: int) -> tuple[np.ndarray, int]:
    """Elias–Fano code of strictly increasing integer ``positions`` in [0, n).

    Returns ``(buffer, nbits)``: the bits packed big-endian into uint8 (low parts first, then the
    unary-coded high parts) and the number of meaningful bits, equal to `elias_fano_size`.
    """
    pos = np.asarray(positions)
    if pos.ndim != 1 or (pos.size and not np.issubdtype(pos.dtype, np.integer)):
        raise ValueError(f"positions must be a 1-D integer array, got shape {pos.shape} and dtype {pos.dtype}")
    n = check_int(n, "n", low=0)
    pos = pos.astype(np.int64)
    k = pos.size
    if k and (pos[0] < 0 or pos[-1] >= n or (np.diff(pos) <= 0).any()):
        raise ValueError(f"positions must be strictly increasing and lie in [0, {n})")
    if k == 0:
        return np.zeros(0, np.uint8), 0
    low = _elias_fano_low_bits(n, k)
    low_part = ((pos[:, None] >> np.arange(low - 1, -1, -1, dtype=np.int64)) & 1).astype(np.uint8).ravel()
    high = np.zeros(k + ((n - 1) >> low) + 1, dtype=np.uint8)
    high[(pos >> low) + np.arange(k)] = 1
    bits = np.concatenate([low_part, high])
    return np.packbits(bits), int(bits.size)


def elias_fano_decode(buffer: Any, n: int, k: int) -> np.ndarray:
    """Inverse of `elias_fano_encode`: the k positions (int64) from the packed buffer."""
    n = check_int(n, "n", low=0)
    k = check_int(k, "k", low=0, high=n)
    if k == 0:
        return np.zeros(0, np.int64)
    low = _elias_fano_low_bits(n, k)
    nbits = elias_fano_size(n, k)
    bits = np.unpackbits(np.asarray(buffer, dtype=np.uint8))
    if bits.size < nbits:
        raise ValueError(f"buffer holds {bits.size} bits, the code needs {nbits}")
    low_vals = np.zeros(k, np.int64)
    if low:
        low_bits = bits[: k * low].reshape(k, low).astype(np.int64)
        low_vals = (low_bits << np.arange(low - 1, -1, -1, dtype=np.int64)).sum(axis=1)
    ones = np.flatnonzero(bits[k * low: nbits])
    if ones.size != k:
        raise ValueError(f"corrupt Elias–Fano code: {ones.size} high bits set, expected {k}")
    return ((ones - np.arange(k)) << low) | low_vals


@dataclass(frozen=True)
class TensorCodeLength:
    """Bits charged for one tensor of a compressed model.

    ``kind`` is "sparse" (a CSRMatrix: count + positions + values) or "dense" (every entry at its stored
    precision). For dense tensors the count/position fields are 0 and ``values_code`` is "raw".
    ``position_bits`` is the enumerative charge ceil log2 C(n, k); ``elias_fano_bits`` the size of a
    real Elias–Fano code of the same positions, for comparison (the smaller is not chosen adaptively:
    the enumerative charge is the one used). ``value_bits_raw/codebook/entropy`` are the three value
    codes; ``value_bits`` is the cheapest plus its 2-bit selector (dense tensors: "raw" or "float16"
    plus a 1-bit selector).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    n: int
    k: int
    levels: int
    count_bits: int
    position_bits: int
    elias_fano_bits: int
    value_bits_raw: int
    value_bits_codebook: int
    value_bits_entropy: int
    values_code: str
    value_bits: int
    total_bits: int


@dataclass(frozen=True)
class CodeLength:
    """Total description length of a compressed model; ``total_bits`` is the L charged by the bounds."""

    tensors: tuple[TensorCodeLength, ...]
    architecture_bits: int
    self_delimiting_bits: int
    settings_tried: int
    search_bits: int
    total_bits: int

    @property
    def nnz(self) -> int:
        """Values stored: kept entries of sparse matrices plus every dense entry."""
        return sum(t.k for t in self.tensors)

    def table(self) -> str:
        """A markdown table in bits, one row per tensor, then the fixed charges and the total. A sparse
        tensor pays for k (its count of stored values), their positions among its n entries
        (ceil log2 C(n, k)) and the values in the cheapest code; Elias-Fano, a real position code,
        is shown for comparison and not charged."""
        rows: list[list[Any]] = [
            [t.name, t.kind, "x".join(map(str, t.shape)), f"{t.k:,}", t.count_bits, f"{t.position_bits:,}",
             f"{t.elias_fano_bits:,}", f"{t.value_bits:,} ({t.values_code})", f"{t.total_bits:,}"] for t in self.tensors]
        rows += [["architecture", *[""] * 7, self.architecture_bits],
                 ["self-delimiting length", *[""] * 7, self.self_delimiting_bits],
                 [f"search ({plural(self.settings_tried, 'setting')})", *[""] * 7, self.search_bits],
                 ["**total**", "", "", f"{self.nnz:,}", *[""] * 4, f"**{self.total_bits:,}**"]]
        return markdown_table(["tensor", "kind", "shape", "stored values k", "bits for k", "positions",
                               "(Elias-Fano)", "values (code)", "total"], rows, left=3)


def _value_bits(values: np.ndarray, precision_bits: int) -> tuple[int, int, int, int]:
    """(levels r, raw bits, codebook bits, enumerative bits) for a 1-D array of stored values."""
    k = values.size
    raw = k * precision_bits
    if k == 0:
        return 0, 0, 0, 0
    _, counts = np.unique(values, return_counts=True)
    r = counts.size
    header = r * precision_bits + elias_gamma_bits(r)
    codebook = header + k * ceil_log2(r)
    log2_multinomial = (math.lgamma(k + 1) - sum(math.lgamma(c + 1) for c in counts)) / math.log(2.0)
    entropy = header + (r - 1) * ceil_log2(k + 1) + _ceil_bits(log2_multinomial)
    return r, raw, codebook, entropy


def _precision_bits(dtype: np.dtype) -> int:
    return 8 * np.dtype(dtype).itemsize


def sparse_code_length(matrix: CSRMatrix, name: str = "weight") -> TensorCodeLength:
    """Bits for one sparse matrix (count, positions, values); see the module docstring.

    Values are the decoded ``matrix.values()``; the raw and codebook codes charge them at the stored
    precision of the matrix's codebook (codebook matrices) or of ``data``. A codebook matrix whose
    codebook has unused or repeated entries is charged for the distinct values it uses.
    """
    if not isinstance(matrix, CSRMatrix):
        raise TypeError(f"{name} must be a CSRMatrix, got {type(matrix).__name__}")
    rows, cols = matrix.shape
    n, k = rows * cols, matrix.nnz
    values = matrix.values()
    precision = _precision_bits(matrix.codebook.dtype if matrix.codebook is not None else matrix.data.dtype)
    levels, raw, cb, ent = _value_bits(values, precision)
    choices = {"raw": raw, "codebook": cb, "entropy": ent}
    code = min(choices, key=lambda c: (choices[c], c != "raw"))
    value_bits = choices[code] + 2
    count_bits = ceil_log2(n + 1) if n else 0
    position_bits = _ceil_bits(log2_binomial(n, k)) if n else 0
    return TensorCodeLength(
        name=name, kind="sparse", shape=(rows, cols), n=n, k=k, levels=levels, count_bits=count_bits,
        position_bits=position_bits, elias_fano_bits=elias_fano_size(n, k), value_bits_raw=raw,
        value_bits_codebook=cb, value_bits_entropy=ent, values_code=code, value_bits=value_bits,
        total_bits=count_bits + position_bits + value_bits)


def dense_code_length(array: np.ndarray, name: str = "tensor") -> TensorCodeLength:
    """Bits for a dense tensor: every entry at its stored precision, or at 16 bits ("float16" code)
    when every entry of a wider float tensor is exactly a float16 value; plus 1 bit saying which."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}")
    raw = array.size * _precision_bits(array.dtype)
    code, bits = "raw", raw
    if array.dtype.itemsize > 2 and np.array_equal(array.astype(np.float16).astype(array.dtype), array):
        code, bits = "float16", array.size * 16
    levels = int(np.unique(array).size)
    return TensorCodeLength(
        name=name, kind="dense", shape=tuple(array.shape), n=array.size, k=array.size, levels=levels,
        count_bits=0, position_bits=0, elias_fano_bits=0, value_bits_raw=raw, value_bits_codebook=raw,
        value_bits_entropy=raw, values_code=code, value_bits=bits + 1, total_bits=bits + 1)


def _layers_of(compressed: Any) -> Sequence[Any]:
    layers = getattr(compressed, "layers", compressed)
    if not isinstance(layers, (list, tuple)):
        raise TypeError(f"compressed must be a CompressedModel or a sequence of layers, got {type(compressed).__name__}")
    return layers


def code_length(compressed: Any, *, settings_tried: int = 1) -> CodeLength:
    """The description length L(g) of a compressed model, per tensor and in total (bits).

    ``compressed`` is a `htcore.runtime.CompressedModel` (sequential or graph) or a sequence of
    layers: layers with a ``weight`` (CSRMatrix -> sparse code, ndarray -> dense; Linear and Conv2d)
    and optional ``bias`` are charged in full, as are a BatchNorm2d's ``scale`` and ``shift``; other
    layers (activations, flatten, pools, add) cost only their architecture bits, and a graph its
    input references. ``settings_tried`` is the number of compression settings searched over to
    pick this model; ceil log2 of it is charged.
    """
    settings_tried = check_int(settings_tried, "settings_tried", low=1)
    layers = _layers_of(compressed)
    nodes = getattr(compressed, "nodes", None)
    tensors: list[TensorCodeLength] = []
    architecture = elias_gamma_bits(len(layers) + 1)
    if nodes is not None:  # the zero-count escape, then each node's input references
        architecture += elias_gamma_bits(1)
        index = {node.name: i for i, node in enumerate(nodes)}
        architecture += sum(ceil_log2(index[node.name] + 1) * len(node.inputs) for node in nodes)
    for i, layer in enumerate(layers):
        architecture += _KIND_BITS
        if isinstance(layer, (BatchNorm2d, AdaptiveAvgPool2d, Add)):
            architecture += _GRAPH_OP_BITS
            if isinstance(layer, AdaptiveAvgPool2d):
                architecture += sum(elias_gamma_bits(v + 1) for v in layer.output_size)
            elif isinstance(layer, BatchNorm2d):
                architecture += elias_gamma_bits(layer.channels + 1)
                tensors += [dense_code_length(layer.scale, f"layers.{i}.scale"),
                            dense_code_length(layer.shift, f"layers.{i}.shift")]
            continue
        weight = getattr(layer, "weight", None)
        kernel_size = getattr(layer, "kernel_size", None)
        if kernel_size is not None:  # Conv2d, MaxPool2d, AvgPool2d (htcore.runtime)
            architecture += _IMAGE_KIND_BITS
            sizes = [*kernel_size, *layer.stride, *layer.padding]
            if weight is not None:
                sizes += [layer.out_channels, layer.in_channels // layer.groups, *layer.dilation, layer.groups]
                architecture += 2
            architecture += sum(elias_gamma_bits(int(v) + 1) for v in sizes)
        if weight is None:
            continue
        if kernel_size is None:
            rows, cols = weight.shape
            architecture += elias_gamma_bits(rows + 1) + elias_gamma_bits(cols + 1) + 2
        if isinstance(weight, CSRMatrix):
            tensors.append(sparse_code_length(weight, f"layers.{i}.weight"))
        else:
            tensors.append(dense_code_length(weight, f"layers.{i}.weight"))
        bias = getattr(layer, "bias", None)
        if bias is not None:
            tensors.append(dense_code_length(bias, f"layers.{i}.bias"))
    search = ceil_log2(settings_tried)
    body = architecture + search + sum(t.total_bits for t in tensors)
    self_delimiting = elias_gamma_bits(body)
    return CodeLength(tensors=tuple(tensors), architecture_bits=architecture, self_delimiting_bits=self_delimiting,
                      settings_tried=settings_tried, search_bits=search, total_bits=body + self_delimiting)
