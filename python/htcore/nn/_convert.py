"""Conversion between torch modules and runtime layers, both directions, and the one mapping
between torch activation modules and the runtime's activation kinds.

- `to_runtime_layers`: an ``nn.Sequential`` -> runtime layers (what `CompressedModel.from_torch` runs);
  nn.Conv2d (zero padding: int, pair or "valid"), `SparseConv2d`, nn.MaxPool2d (dilation 1) and
  nn.AvgPool2d (count_include_pad=True, no divisor_override), all with ceil_mode False, included.
- `to_torch`: a runtime `CompressedModel` -> an ``nn.Sequential`` (sparse weights densified), so a
  loaded model can be fine-tuned or compressed again.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..runtime import Activation, AvgPool2d, CompressedModel, Conv2d, Flatten, Linear, MaxPool2d, RuntimeLayer
from ..sparse import CSRMatrix
from ._sparse_conv import SparseConv2d
from ._sparse_linear import SparseLinear

# Runtime activation kind -> a fresh torch module computing it. The reverse direction is
# `activation_kind`, which also checks the module's settings are the ones these modules have.
TORCH_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,  # approximate="none": the exact erf form the runtime computes
    "softmax": lambda: nn.Softmax(dim=-1),
}


def activation_kind(module: nn.Module, name: str = "module") -> Optional[str]:
    """The runtime activation kind of a torch activation module, or None if ``module`` is not one.
    Raises ValueError for an activation whose settings the runtime does not compute."""
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise ValueError(f"{name}: only the exact GELU (approximate='none') is supported, got {module.approximate!r}")
        return "gelu"
    if isinstance(module, nn.Softmax):
        if module.dim not in (-1, 1):
            raise ValueError(f"{name}: Softmax must be over the features (dim=-1 or 1), got dim={module.dim}")
        return "softmax"
    return None


def to_runtime_layers(module: nn.Module) -> list[RuntimeLayer]:
    """Runtime layers (`htcore.runtime`) for an ``nn.Sequential``; see `CompressedModel.from_torch`."""
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Sequential, got {type(module).__name__}")
    layers: list[RuntimeLayer] = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            layers.extend(to_runtime_layers(child))
        elif isinstance(child, nn.Linear):
            bias = None if child.bias is None else child.bias.detach().to("cpu", torch.float32).numpy()
            layers.append(Linear(child.weight.detach().to("cpu", torch.float32).numpy(), bias))
        elif isinstance(child, SparseLinear):
            layers.append(Linear(child.weight_csr, None if child.bias is None else child.bias.numpy()))
        elif isinstance(child, nn.Conv2d):
            layers.append(_conv(child, name))
        elif isinstance(child, SparseConv2d):
            layers.append(Conv2d(child.weight_csr, None if child.bias is None else child.bias.numpy(),
                                 kernel_size=child.kernel_size, stride=child.stride, padding=child._pad,
                                 dilation=child.dilation, groups=child.groups))
        elif isinstance(child, (nn.MaxPool2d, nn.AvgPool2d)):
            layers.append(_pool(child, name))
        elif isinstance(child, nn.Flatten):
            if child.start_dim != 1 or child.end_dim != -1:
                raise ValueError(f"{name}: only Flatten(start_dim=1, end_dim=-1) is supported")
            layers.append(Flatten())
        elif isinstance(child, (nn.Dropout, nn.Identity)):
            continue  # no-ops at inference
        else:
            kind = activation_kind(child, name)
            if kind is None:
                raise TypeError(f"{name}: {type(child).__name__} is not supported by the runtime "
                                "(Linear, SparseLinear, Conv2d, SparseConv2d, MaxPool2d, AvgPool2d, ReLU, GELU, "
                                "Tanh, Softmax, Flatten, Dropout, Identity)")
            layers.append(Activation(kind))
    return layers


def _conv(child: nn.Conv2d, name: str) -> Conv2d:
    if child.padding_mode != "zeros":
        raise ValueError(f"{name}: only Conv2d(padding_mode='zeros') is supported, got {child.padding_mode!r}")
    padding: Any = child.padding
    if isinstance(padding, str):
        if padding != "valid":
            raise ValueError(f"{name}: Conv2d padding must be an int, a pair or 'valid', got {padding!r}")
        padding = 0
    bias = None if child.bias is None else child.bias.detach().to("cpu", torch.float32).numpy()
    return Conv2d(child.weight.detach().to("cpu", torch.float32).numpy(), bias, kernel_size=child.kernel_size,
                  stride=child.stride, padding=padding, dilation=child.dilation, groups=child.groups)


def _pool(child: nn.Module, name: str) -> RuntimeLayer:
    kind = type(child).__name__
    if child.ceil_mode:
        raise ValueError(f"{name}: {kind}(ceil_mode=True) is not supported")
    if isinstance(child, nn.MaxPool2d):
        if child.dilation not in (1, (1, 1)):
            raise ValueError(f"{name}: MaxPool2d with dilation != 1 is not supported, got dilation={child.dilation}")
        if child.return_indices:
            raise ValueError(f"{name}: MaxPool2d(return_indices=True) is not supported")
        return MaxPool2d(child.kernel_size, child.stride, child.padding)
    if not child.count_include_pad:
        raise ValueError(f"{name}: AvgPool2d(count_include_pad=False) is not supported")
    if child.divisor_override is not None:
        raise ValueError(f"{name}: AvgPool2d(divisor_override=...) is not supported")
    return AvgPool2d(child.kernel_size, child.stride, child.padding)


def to_torch(model: Any) -> nn.Sequential:
    """``model`` as a torch ``nn.Sequential``: returned as is when it is one; a runtime
    `CompressedModel` (e.g. from `htcore.load_compressed`) is rebuilt layer by layer (sparse weights
    densified, float32) and returned in eval mode."""
    if isinstance(model, nn.Sequential):
        return model
    if not isinstance(model, CompressedModel):
        raise TypeError(f"model must be a torch.nn.Sequential or a htcore CompressedModel, got {type(model).__name__}")
    modules: list[nn.Module] = []
    for layer in model.layers:
        if isinstance(layer, Linear):
            weight = layer.weight.todense() if isinstance(layer.weight, CSRMatrix) else layer.weight
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.array(weight, np.float32)))
                if layer.bias is not None:
                    linear.bias.copy_(torch.from_numpy(np.array(layer.bias)))
            modules.append(linear)
        elif isinstance(layer, Activation):
            modules.append(TORCH_ACTIVATIONS[layer.kind]())
        elif isinstance(layer, Conv2d):
            weight = layer.weight.todense() if isinstance(layer.weight, CSRMatrix) else layer.weight
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                             padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                             bias=layer.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(np.array(weight, np.float32).reshape(conv.weight.shape)))
                if conv.bias is not None and layer.bias is not None:
                    conv.bias.copy_(torch.from_numpy(np.array(layer.bias)))
            modules.append(conv)
        elif isinstance(layer, MaxPool2d):
            modules.append(nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, AvgPool2d):
            modules.append(nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding))
        else:
            modules.append(nn.Flatten())
    return nn.Sequential(*modules).eval()
