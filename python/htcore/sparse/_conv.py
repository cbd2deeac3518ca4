"""`sparse_conv2d`: torch's conv2d with a sparse (CSR) weight, in the C++ kernel of cpp/conv2d.cpp."""
from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from .._core import Conv2dAlgo
from .._core import sparse_conv2d as _conv2d_kernel
from .._validation import check_int, check_pair
from ._csr import ACTIVATION_CODES, ACTIVATIONS, CSRMatrix, as_kernel_array

IntOrPair = Union[int, tuple[int, int]]


def sparse_conv2d(
    X: Any,
    A: CSRMatrix,
    *,
    kernel_size: IntOrPair,
    bias: Any = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    activation: Optional[str] = None,
) -> np.ndarray:
    """torch's ``conv2d`` with a sparse weight: ``act(conv2d(X, W) + bias)``.

    The semantics are ``torch.nn.functional.conv2d(X, W, bias, stride, padding, dilation, groups)``
    followed by the activation: NCHW layout, zero padding, and the output size
    ``H_out = floor((H + 2 padding_h - dilation_h (kh - 1) - 1) / stride_h) + 1`` (``W_out`` likewise).

    Parameters
    ----------
    X : array_like, shape (batch, C_in, H, W) or (C_in, H, W)
        The input images, channels first. float32 is used as is; float16, float64 and integer
        input is converted to float32, and any strides are accepted (copied to C order).
    A : CSRMatrix, shape (C_out, C_in / groups * kh * kw)
        The weight: row ``co`` holds output channel ``co``'s kept weights, and its columns are the
        row-major flattening of torch's ``(C_out, C_in / groups, kh, kw)`` weight, so column
        ``c`` is input channel ``c // (kh * kw)`` of ``co``'s group at kernel tap
        ``((c // kw) % kh, c % kw)``. Build it with
        ``htcore.topk_sparsify(W.reshape(C_out, -1), keep)`` from a conv weight ``W`` (numpy array
        or torch tensor; ``mode="row"`` keeps the same share of every output channel); no
        separate helper is needed. Values may be float32, float16 or uint8
        codebook codes (all accumulated in float32); float64 values are refused: convert with
        ``A.astype(value_dtype="float32")``. Column indices uint16 or int32.
    kernel_size : int or (kh, kw)
        The kernel's height and width (A does not record them).
    bias : array_like, shape (C_out,), optional
        Added to every output position of its channel before the activation.
    stride, padding, dilation : int or (h, w)
        In input elements: stride >= 1, padding >= 0 (zeros on both sides), dilation >= 1.
    groups : int
        Divides C_in and C_out; output channel ``co`` sees input channels
        ``[g * C_in / groups, (g + 1) * C_in / groups)`` with ``g = co // (C_out / groups)``
        (``groups = C_in`` is a depthwise convolution).
    activation : None, "relu", "gelu" or "tanh"
        Fused into the kernel. "gelu" is the exact form x * Phi(x), torch's default
        (``approximate="none"``).

    Returns
    -------
    numpy.ndarray, float32, shape (batch, C_out, H_out, W_out), or (C_out, H_out, W_out) for a 3-D X.

    Raises
    ------
    TypeError
        A is not a CSRMatrix or has float64 values; X or bias is not real numeric; a size
        parameter is not an integer.
    ValueError
        Wrong X dimensions, C_in or A's column count inconsistent with ``kernel_size`` and
        ``groups``, a non-positive stride, dilation or kernel size, a negative padding, groups
        not dividing the channel counts, a kernel extent larger than the padded input (an empty
        output), a bias of the wrong length, an unknown activation. Unlike torch, NaN or Inf in
        X or bias raise ValueError (the kernel checks in one pass, before writing anything).

    Notes
    -----
    Threads: ``htcore.get_num_threads()``, (image, output channel) pairs split between them by
    kept weights; small convolutions ((nnz + C_out) * batch * H_out * W_out below about 16k
    multiply-adds) run on the calling thread. The GIL is released. Every output is a chain of
    multiply-adds in CSR order, so results are bitwise identical at any thread count. Which loop
    runs for which shape, and the measurements behind it: docs/performance.md, "Sparse
    convolution", and benchmarks/conv/results.md. A weight holding every entry (a dense layer
    as a CSR matrix, groups 1) runs a dense loop, 4 output channels at a time, with the same
    result; a top-k weight at 40% sparsity is already 1.1-1.5x faster than the dense one, so a
    layer kept dense is a choice for accuracy, not speed (benchmarks/results/conv.md, "When to
    keep a layer dense"). Each calling thread keeps its decoded weights
    (12 bytes per kept weight) and, with padding or stride > 1, one padded image per thread (up to
    4 MiB) between calls.
    """
    if not isinstance(A, CSRMatrix):
        raise TypeError(f"A must be a CSRMatrix, got {type(A).__name__}")
    if A.data.dtype == np.float64:
        raise TypeError('A has float64 values; sparse_conv2d computes in float32: pass A.astype(value_dtype="float32")')
    kh, kw = check_pair(kernel_size, "kernel_size", low=1)
    sh, sw = check_pair(stride, "stride", low=1)
    ph, pw = check_pair(padding, "padding", low=0)
    dh, dw = check_pair(dilation, "dilation", low=1)
    groups = check_int(groups, "groups", low=1)
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")
    X = as_kernel_array(X, "X", (3, 4), np.float32)
    x4 = X[np.newaxis] if X.ndim == 3 else X
    _, c_in, height, width = x4.shape
    c_out, cols = A.shape
    if min(c_in, height, width) < 1:
        raise ValueError(f"X must have C_in, H, W >= 1, got shape {X.shape}")
    if c_out < 1:
        raise ValueError(f"A must have at least one row (output channel), got shape {A.shape}")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both C_in = {c_in} (X's channels) and C_out = {c_out} (A's rows)")
    taps = kh * kw
    if cols != c_in // groups * taps:
        raise ValueError(
            f"A has {cols} columns but C_in / groups * kh * kw = {c_in} / {groups} * {kh} * {kw} = "
            f"{c_in // groups * taps} (X has C_in = {c_in} channels; A is (C_out, C_in / groups * kh * kw) = {A.shape})"
        )
    for axis, size, pad, dil, k in (("H", height, ph, dh, kh), ("W", width, pw, dw, kw)):
        if dil * (k - 1) + 1 > size + 2 * pad:
            raise ValueError(
                f"the output would be empty: the kernel's extent along {axis}, dilation * (kernel - 1) + 1 = "
                f"{dil * (k - 1) + 1}, exceeds the padded input {size} + 2 * {pad} = {size + 2 * pad}"
            )
    if bias is not None:
        bias = as_kernel_array(bias, "bias", 1, np.float32)
        if bias.shape[0] != c_out:
            raise ValueError(f"bias has {bias.shape[0]} entries but A has C_out = {c_out} rows")
    out = _conv2d_kernel(
        A.indptr, A.indices, A.data, A.codebook, c_out, cols, x4, kh, kw, sh, sw, ph, pw, dh, dw, groups, bias,
        ACTIVATION_CODES[activation or "none"], Conv2dAlgo.automatic,
    )
    return out[0] if X.ndim == 3 else out
