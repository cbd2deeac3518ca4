"""`SparseConv2d`: an inference drop-in for ``nn.Conv2d`` running htcore's sparse convolution kernel."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .._validation import check_int, check_pair
from ..sparse import CSRMatrix, sparse_conv2d
from ._sparse_module import SparseModule

IntOrPair = Union[int, Sequence[int]]  # an int or a pair (h, w)


class SparseConv2d(SparseModule):
    """torch's ``conv2d`` (zero padding) with W a `CSRMatrix` of shape
    (out_channels, in_channels / groups * kh * kw), for inference.

    W's columns are the row-major flattening of torch's (out, in / groups, kh, kw) weight (see
    `htcore.sparse_conv2d`). Inputs of shape (N, C, H, W) or (C, H, W) in any float dtype; the
    convolution runs in float32 in htcore's kernel and is returned in the input's dtype and
    device. No autograd: outputs carry no gradient. ``bias`` (optional) is kept as a float32
    buffer. ``padding`` is an int, a pair, ``"valid"`` (no padding) or ``"same"`` (only where it
    is symmetric: stride 1 and every ``dilation * (kernel - 1)`` even); ``padding_mode`` must be
    ``"zeros"``. Attributes as ``nn.Conv2d``: in_channels, out_channels, kernel_size, stride,
    padding, dilation, groups (sizes as pairs), padding_mode.
    """

    def __init__(self, weight: CSRMatrix, bias: Any = None, *, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding: Union[str, IntOrPair] = 0, dilation: IntOrPair = 1, groups: int = 1,
                 padding_mode: str = "zeros"):
        super().__init__(weight, bias)
        if weight.data.dtype == np.float64:
            raise TypeError('weight has float64 values; SparseConv2d computes in float32: pass '
                            'weight.astype(value_dtype="float32")')
        if padding_mode != "zeros":
            raise ValueError(f"SparseConv2d supports padding_mode='zeros' only, got padding_mode={padding_mode!r}")
        self.kernel_size = check_pair(kernel_size, "kernel_size", low=1)
        self.stride = check_pair(stride, "stride", low=1)
        self.dilation = check_pair(dilation, "dilation", low=1)
        self.groups = check_int(groups, "groups", low=1)
        self.padding_mode = padding_mode
        self.padding: Union[str, tuple[int, int]]
        if isinstance(padding, str):
            self.padding, self._pad = padding, _string_padding(padding, self.kernel_size, self.stride, self.dilation)
        else:
            self.padding = self._pad = check_pair(padding, "padding", low=0)
        self.out_channels, cols = weight.shape
        taps = self.kernel_size[0] * self.kernel_size[1]
        if cols % taps or self.out_channels % self.groups:
            raise ValueError(f"weight of shape {weight.shape} is not (out_channels, in_channels / groups * kh * kw) "
                             f"for kernel_size={self.kernel_size}, groups={self.groups}")
        self.in_channels = cols // taps * self.groups

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, keep: Optional[float] = None, *, k: Optional[int] = None,
                   mode: str = "matrix", value_dtype: Any = np.float32) -> "SparseConv2d":
        """Keep the top-k |w| of ``conv.weight`` seen as the matrix (out, in / groups * kh * kw) (see
        `htcore.topk_sparsify` for ``keep``, ``k`` and ``mode``: "matrix", the default, ranks all
        entries together; "row" keeps the same share of every output channel); values stored as
        ``value_dtype`` (float32, or float16 to halve them)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d supports padding_mode='zeros' only, got padding_mode={conv.padding_mode!r}")
        return cls(cls._topk(conv.weight, keep, k, mode, value_dtype), conv.bias, kernel_size=conv.kernel_size,
                   stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)

    @property
    def dense_weight_shape(self) -> tuple[int, ...]:
        """torch's conv weight shape (out_channels, in_channels / groups, kh, kw)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"input has shape {tuple(x.shape)}, expected (N, {self.in_channels}, H, W) "
                             f"or ({self.in_channels}, H, W)")
        y = sparse_conv2d(self._to_numpy(x), self.weight_csr, kernel_size=self.kernel_size, bias=self._bias_array(),
                          stride=self.stride, padding=self._pad, dilation=self.dilation, groups=self.groups)
        return self._like(y, x)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding!r}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return f"{s}, {self._csr_repr()}"


def _string_padding(padding: str, kernel: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[int, int]:
    """torch's padding="valid" / "same" as (h, w) zeros on both sides; "same" only where it is symmetric."""
    if padding == "valid":
        return 0, 0
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    if stride != (1, 1):
        raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
    extents = [d * (k - 1) for d, k in zip(dilation, kernel)]
    if any(e % 2 for e in extents):
        raise ValueError(f"padding='same' is supported only when it pads both sides equally: dilation * (kernel - 1) "
                         f"must be even, got {tuple(extents)} for kernel_size={kernel}, dilation={dilation}; "
                         f"pad explicitly instead")
    return extents[0] // 2, extents[1] // 2
