"""Conversion between torch modules and runtime layers, both directions, and the one mapping
between torch activation modules and the runtime's activation kinds.

- `to_runtime_layers`: an ``nn.Sequential`` -> runtime layers (what `CompressedModel.from_torch` runs).
- `to_torch`: a runtime `CompressedModel` -> an ``nn.Sequential`` (sparse weights densified), so a
  loaded model can be fine-tuned or compressed again.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..runtime import Activation, CompressedModel, Flatten, Linear, RuntimeLayer
from ..sparse import CSRMatrix
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
                                "(Linear, SparseLinear, ReLU, GELU, Tanh, Softmax, Flatten, Dropout, Identity)")
            layers.append(Activation(kind))
    return layers


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
        else:
            modules.append(nn.Flatten())
    return nn.Sequential(*modules).eval()
