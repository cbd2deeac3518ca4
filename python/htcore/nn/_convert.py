"""Conversion between torch modules and runtime layers, both directions, and the one mapping
between torch activation modules and the runtime's activation kinds.

- `to_runtime_layers`: a torch module -> runtime layers (what `CompressedModel.from_torch` runs): an
  ``nn.Sequential`` layer by layer (nested ones flattened) into a sequential model, any other module
  through `to_runtime_graph`. nn.Conv2d (zero padding: int, pair or "valid"), `SparseConv2d`,
  nn.MaxPool2d (dilation 1), nn.AvgPool2d (count_include_pad=True, no divisor_override), all with
  ceil_mode False, nn.BatchNorm2d and nn.AdaptiveAvgPool2d included.
- `to_runtime_graph`: any module ``torch.fx`` can trace symbolically (the htcore sparse modules are
  leaves) -> graph `Node`s, or plain layers when the traced graph is a chain.
- `to_torch`: a runtime `CompressedModel` -> an ``nn.Sequential`` (sequential models) or a
  ``torch.fx.GraphModule`` (graph models), sparse weights densified, so a loaded model can be
  fine-tuned or compressed again.

BatchNorm2d uses its running statistics (inference semantics, whatever the module's mode): scale =
gamma / sqrt(running_var + eps), shift = beta - running_mean * scale, in float64. It is folded into
the Conv2d before it when that conv's output feeds only the BatchNorm (a dense weight's rows and a
CSR weight's stored values scaled per output channel, bias = bias * scale + shift, rounded once to
float32); a CSR weight with a codebook (shared values cannot be scaled per row) or a conv whose
output is also used elsewhere keeps the BatchNorm as a `BatchNorm2d` op.
"""
from __future__ import annotations

import operator
import re
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..runtime import (
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
)
from ..sparse import CSRMatrix
from ._sparse_conv import SparseConv2d
from ._sparse_linear import SparseLinear
from ._sparse_module import SparseModule

# Runtime activation kind -> a fresh torch module computing it. The reverse direction is
# `activation_kind`, which also checks the module's settings are the ones these modules have.
TORCH_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,  # approximate="none": the exact erf form the runtime computes
    "softmax": lambda: nn.Softmax(dim=-1),
}

_SUPPORTED = ("Linear, SparseLinear, Conv2d, SparseConv2d, BatchNorm2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, "
              "ReLU, GELU, Tanh, Softmax, Flatten, Dropout, Identity")


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


def to_runtime_layers(module: nn.Module, *, fold_batchnorm: bool = True) -> list[Any]:
    """Runtime layers (`htcore.runtime`) for an ``nn.Sequential``, or for any other module the
    result of `to_runtime_graph` (graph `Node`s, or layers when its graph is a chain); see
    `CompressedModel.from_torch`. ``fold_batchnorm``: fold each BatchNorm2d into the Conv2d before
    it where possible (module docstring); False keeps every one as a `BatchNorm2d` op."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(module, nn.Sequential):
        if isinstance(module, SparseModule) or _Tracer().is_leaf_module(module, ""):  # one layer, e.g. an nn.Linear
            layer = _module_layer(module, type(module).__name__)
            return [] if layer is None else [_plain(layer)]
        return to_runtime_graph(module, fold_batchnorm=fold_batchnorm)
    layers: list[RuntimeLayer] = []
    for name, child in _sequential_children(module, ""):
        layer = _module_layer(child, name)
        if layer is None:
            continue  # no-ops at inference
        if isinstance(layer, BatchNorm2d) and fold_batchnorm and layers and _foldable(layers[-1]):
            layers[-1] = _fold(layers[-1], layer)  # type: ignore[arg-type]
            continue
        layers.append(layer)
    return [_plain(layer) for layer in layers]


def _sequential_children(module: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        out += _sequential_children(child, f"{path}.") if isinstance(child, nn.Sequential) else [(path, child)]
    return out


def _module_layer(child: nn.Module, name: str) -> Optional[RuntimeLayer]:
    """The runtime layer computing torch module ``child`` (None for a no-op); TypeError if none does."""
    if isinstance(child, nn.Linear):
        bias = None if child.bias is None else child.bias.detach().to("cpu", torch.float32).numpy()
        return Linear(child.weight.detach().to("cpu", torch.float32).numpy(), bias)
    if isinstance(child, SparseLinear):
        return Linear(child.weight_csr, None if child.bias is None else child.bias.numpy())
    if isinstance(child, nn.Conv2d):
        return _conv(child, name)
    if isinstance(child, SparseConv2d):
        if child.padding_mode != "zeros":
            raise ValueError(f"{name}: only SparseConv2d(padding_mode='zeros') is supported, got {child.padding_mode!r}")
        return Conv2d(child.weight_csr, None if child.bias is None else child.bias.numpy(),
                      kernel_size=child.kernel_size, stride=child.stride, padding=child._pad,
                      dilation=child.dilation, groups=child.groups)
    if isinstance(child, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pool(child, name)
    if isinstance(child, nn.BatchNorm2d):
        return _batchnorm(child, name)
    if isinstance(child, nn.AdaptiveAvgPool2d):
        size = child.output_size
        if size is None or (isinstance(size, tuple) and None in size):
            raise ValueError(f"{name}: AdaptiveAvgPool2d with a None output size is not supported, got {size}")
        return AdaptiveAvgPool2d(size)
    if isinstance(child, nn.Flatten):
        if child.start_dim != 1 or child.end_dim != -1:
            raise ValueError(f"{name}: only Flatten(start_dim=1, end_dim=-1) is supported")
        return Flatten()
    if isinstance(child, (nn.Dropout, nn.Identity)):
        return None
    kind = activation_kind(child, name)
    if kind is None:
        raise TypeError(f"{name}: {type(child).__name__} is not supported by the runtime ({_SUPPORTED})")
    return Activation(kind)


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


def _batchnorm(child: nn.BatchNorm2d, name: str) -> BatchNorm2d:
    """The per-channel scale and shift of a BatchNorm2d's inference form, computed in float64."""
    if child.running_mean is None or child.running_var is None:
        raise ValueError(f"{name}: BatchNorm2d(track_running_stats=False) normalises by batch statistics, which the "
                         "runtime does not compute")
    mean = child.running_mean.detach().to("cpu", torch.float64).numpy()
    var = child.running_var.detach().to("cpu", torch.float64).numpy()
    gamma = np.ones_like(mean) if child.weight is None else child.weight.detach().to("cpu", torch.float64).numpy()
    beta = np.zeros_like(mean) if child.bias is None else child.bias.detach().to("cpu", torch.float64).numpy()
    scale = gamma / np.sqrt(var + child.eps)
    return _Float64BatchNorm(scale, beta - mean * scale)


class _Float64BatchNorm(BatchNorm2d):
    """A BatchNorm2d that also keeps its float64 scale and shift, so folding rounds only once."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray):
        super().__init__(scale, shift)
        object.__setattr__(self, "exact", (scale, shift))


def _plain(layer: RuntimeLayer) -> RuntimeLayer:
    """A BatchNorm2d left unfolded as the plain runtime layer (its float64 copy dropped)."""
    return BatchNorm2d(layer.scale, layer.shift) if isinstance(layer, _Float64BatchNorm) else layer


def _foldable(layer: Any) -> bool:
    return isinstance(layer, Conv2d) and not (isinstance(layer.weight, CSRMatrix) and layer.weight.codebook is not None)


def _fold(conv: Conv2d, bn: BatchNorm2d) -> Conv2d:
    """``conv`` followed by ``bn`` as one Conv2d: weight rows scaled by scale, bias * scale + shift."""
    scale, shift = getattr(bn, "exact", (bn.scale.astype(np.float64), bn.shift.astype(np.float64)))
    bias = shift if conv.bias is None else conv.bias.astype(np.float64) * scale + shift
    w = conv.weight
    if isinstance(w, CSRMatrix):
        rows = np.repeat(scale, np.diff(w.indptr).astype(np.int64))
        weight: Any = CSRMatrix((w.data.astype(np.float64) * rows).astype(np.float32), w.indices, w.indptr, w.shape,
                                index_dtype=w.indices.dtype, indptr_dtype=w.indptr.dtype)
    else:
        weight = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
    return Conv2d(weight, bias.astype(np.float32), kernel_size=conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer with the htcore sparse modules as leaves (their forward calls numpy)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, SparseModule) or super().is_leaf_module(m, module_qualified_name)


_ADD = {operator.add, torch.add}
_RELU = {torch.relu, F.relu}
_FLATTEN_METHODS = {"view", "reshape"}


def to_runtime_graph(module: nn.Module, *, fold_batchnorm: bool = True) -> list[Any]:
    """Trace ``module`` with ``torch.fx`` (SparseLinear, SparseConv2d and the other htcore sparse
    modules are leaves) and map every node to a runtime layer: graph `Node`s in the traced order,
    named by the module's qualified name for module calls (e.g. "layer1.0.conv1", with a suffix "_1",
    "_2", ... when a module is called again) and by fx's node name otherwise; or plain layers (a
    sequential model) when the graph is a chain from the input to the output.

    Mapped: the modules `to_runtime_layers` maps; the functions ``operator.add``/``torch.add`` (two
    tensors, alpha 1), ``torch.relu``/``F.relu``, ``torch.flatten(x, 1)``,
    ``F.adaptive_avg_pool2d``, ``F.max_pool2d``/``F.avg_pool2d`` (default dilation, ceil_mode);
    the methods ``add``, ``relu``, ``flatten(1)`` and ``view``/``reshape(x.size(0), -1)``. Anything
    else raises TypeError naming the node, its target and the module path. Nodes that do not feed
    the output are dropped; BatchNorm2d folding: module docstring."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...) on data-dependent control flow
        raise TypeError(f"{type(module).__name__} cannot be traced by torch.fx ({type(exc).__name__}: {exc}); "
                        "convert a module whose forward has no data-dependent control flow") from None
    built: list[tuple[str, RuntimeLayer, list[str]]] = []  # (name, layer, input names)
    alias: dict[str, str] = {}  # fx node name -> the runtime name of its value
    batch_sizes: set[str] = set()  # fx nodes computing x.size(0)
    taken = {INPUT}
    output: Optional[str] = None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TypeError(f"{type(module).__name__}.forward must take exactly one tensor, got {len(placeholders)} inputs")
    for node in graph.nodes:
        if node.op == "placeholder":
            alias[node.name] = INPUT
            continue
        if node.op == "output":
            value = node.args[0]
            if not isinstance(value, torch.fx.Node) or value.name not in alias:
                raise TypeError(f"output: the model must return one tensor, got {value!r}")
            output = alias[value.name]
            continue
        if node.op == "call_method" and node.target == "size" and _args(node, 1) == [0] and not node.kwargs:
            batch_sizes.add(node.name)
            continue
        layer, sources = _fx_layer(module, node, batch_sizes)
        refs = []
        for src in sources:
            if src.name not in alias:
                raise TypeError(f"{_where(node)}: input {src.name!r} is not a tensor the runtime computes")
            refs.append(alias[src.name])
        if layer is None:  # a no-op: the node's value is its input's
            alias[node.name] = refs[0]
            continue
        name = _unique(str(node.target) if node.op == "call_module" else node.name, taken)
        alias[node.name] = name
        built.append((name, layer, refs))
    if output is None or output == INPUT:
        raise TypeError(f"{type(module).__name__} computes nothing the runtime can run (its output is its input)")
    built = _live(built, output)
    if fold_batchnorm:
        built = _fold_graph(built)
    built = [(name, _plain(layer), refs) for name, layer, refs in built]
    if all(refs == [built[i - 1][0] if i else INPUT] for i, (_, _, refs) in enumerate(built)):
        return [layer for _, layer, _ in built]
    return [Node(name, layer, refs) for name, layer, refs in built]


def _where(node: torch.fx.Node) -> str:
    path = node.meta.get("nn_module_stack")
    module_path = f", in module {list(path)[-1]!r}" if path else ""
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
    return f"node {node.name!r} ({node.op} {target}{module_path})"


def _args(node: torch.fx.Node, start: int) -> list:
    return list(node.args[start:])


def _tensor_args(node: torch.fx.Node, count: int) -> list[torch.fx.Node]:
    args = node.args[:count]
    if len(args) != count or not all(isinstance(a, torch.fx.Node) for a in args):
        raise TypeError(f"{_where(node)}: expects {count} tensor argument{'s' if count > 1 else ''}, got {node.args!r}")
    return list(args)  # type: ignore[arg-type]


def _fx_layer(root: nn.Module, node: torch.fx.Node, batch_sizes: set) -> tuple[Optional[RuntimeLayer], list]:
    """The runtime layer of one fx node (None for a no-op) and the fx nodes it reads."""
    if node.op == "call_module":
        sub = root.get_submodule(str(node.target))
        try:
            layer = _module_layer(sub, str(node.target))
        except TypeError:
            raise TypeError(f"{_where(node)}: module {node.target!r} is a {type(sub).__name__}, not supported by the "
                            f"runtime ({_SUPPORTED})") from None
        if node.kwargs or len(node.args) != 1:
            raise TypeError(f"{_where(node)}: module calls must take one tensor, got args {node.args!r}, kwargs {node.kwargs!r}")
        return layer, _tensor_args(node, 1)
    target = node.target
    extra, kwargs = _args(node, 1), dict(node.kwargs)
    if node.op == "call_function":
        if target in _ADD and kwargs.get("alpha", 1) == 1 and not extra[1:]:
            kwargs.pop("alpha", None)
            if not kwargs:
                return Add(), _tensor_args(node, 2)
        if target in _RELU and not extra and kwargs.get("inplace", False) in (False, True) and set(kwargs) <= {"inplace"}:
            return Activation("relu"), _tensor_args(node, 1)
        if target is torch.flatten and _flatten_from_one(extra, kwargs):
            return Flatten(), _tensor_args(node, 1)
        if target is F.adaptive_avg_pool2d and (extra or "output_size" in kwargs) and set(kwargs) <= {"output_size"}:
            size = extra[0] if extra else kwargs["output_size"]
            if isinstance(size, (int, tuple, list)) and not (isinstance(size, (tuple, list)) and None in size):
                return AdaptiveAvgPool2d(tuple(size) if isinstance(size, list) else size), _tensor_args(node, 1)
        if target in (F.max_pool2d, F.avg_pool2d):
            pool = _functional_pool(node, target is F.max_pool2d, extra, kwargs)
            if pool is not None:
                return pool, _tensor_args(node, 1)
    elif node.op == "call_method":
        if target == "add" and len(extra) == 1 and not kwargs:
            return Add(), _tensor_args(node, 2)
        if target == "relu" and not extra and not kwargs:
            return Activation("relu"), _tensor_args(node, 1)
        if target == "flatten" and _flatten_from_one(extra, kwargs):
            return Flatten(), _tensor_args(node, 1)
        if (target in _FLATTEN_METHODS and not kwargs and len(extra) == 2 and isinstance(extra[0], torch.fx.Node)
                and extra[0].name in batch_sizes and extra[1] == -1):
            return Flatten(), _tensor_args(node, 1)
    raise TypeError(f"{_where(node)} is not supported by the runtime (args {node.args!r}, kwargs {node.kwargs!r}); "
                    "supported functions: x + y, torch.add, torch.relu, F.relu, torch.flatten(x, 1), "
                    "F.adaptive_avg_pool2d, F.max_pool2d, F.avg_pool2d; methods add, relu, flatten(1), "
                    "view/reshape(x.size(0), -1)")


_POOL_PARAMETERS = {  # parameter order of F.max_pool2d / F.avg_pool2d after the input, with the defaults the runtime computes
    True: (("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1), ("ceil_mode", False),
           ("return_indices", False)),
    False: (("kernel_size", None), ("stride", None), ("padding", 0), ("ceil_mode", False),
            ("count_include_pad", True), ("divisor_override", None)),
}


def _functional_pool(node: torch.fx.Node, is_max: bool, extra: list, kwargs: dict) -> Optional[RuntimeLayer]:
    """The pool of an F.max_pool2d / F.avg_pool2d call, or None when its settings are not the runtime's."""
    names = [name for name, _ in _POOL_PARAMETERS[is_max]]
    if len(extra) > len(names) or not set(kwargs) <= set(names) or set(kwargs) & set(names[:len(extra)]):
        return None
    given = {**dict(zip(names, extra)), **kwargs}
    if "kernel_size" not in given:
        return None
    for name, default in _POOL_PARAMETERS[is_max][3:]:
        value = given.get(name, default)
        if value != default and not (name == "dilation" and value in ((1, 1), [1, 1])):
            return None
    stride = given.get("stride")
    stride = None if stride in (None, []) else stride  # torch's "default: kernel_size"
    try:
        return (MaxPool2d if is_max else AvgPool2d)(given["kernel_size"], stride, given.get("padding", 0))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{_where(node)}: {exc}") from None


def _flatten_from_one(extra: list, kwargs: dict) -> bool:
    start = extra[0] if extra else kwargs.get("start_dim", 0)
    end = extra[1] if len(extra) > 1 else kwargs.get("end_dim", -1)
    return start == 1 and end == -1 and len(extra) <= 2 and set(kwargs) <= {"start_dim", "end_dim"}


def _unique(name: str, taken: set) -> str:
    """``name``, or ``name_1``, ``name_2``, ... when it is taken (a module called twice)."""
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def _live(built: list, output: str) -> list:
    """The nodes the output depends on, in order (dead branches of the traced graph dropped)."""
    needed = {output}
    for name, _, refs in reversed(built):
        if name in needed:
            needed.update(refs)
    return [entry for entry in built if entry[0] in needed]


def _fold_graph(built: list) -> list:
    """Fold each BatchNorm2d into the Conv2d before it when the conv's only user is that BatchNorm."""
    users: dict[str, int] = {}
    for _, _, refs in built:
        for r in refs:
            users[r] = users.get(r, 0) + 1
    index = {name: i for i, (name, _, _) in enumerate(built)}
    rename: dict[str, str] = {}
    out: list = []
    for name, layer, refs in built:
        refs = [rename.get(r, r) for r in refs]
        src = refs[0]
        if isinstance(layer, BatchNorm2d) and src != INPUT and users[src] == 1 and _foldable(built[index[src]][1]):
            pos = next(i for i, entry in enumerate(out) if entry[0] == src)
            out[pos] = (src, _fold(out[pos][1], layer), out[pos][2])
            rename[name] = src
            continue
        out.append((name, layer, refs))
    return out


def to_torch(model: Any) -> nn.Module:
    """``model`` as a torch module: returned as is when it is an ``nn.Module``; a runtime
    `CompressedModel` (e.g. from `htcore.load_compressed`) is rebuilt layer by layer (sparse weights
    densified, float32) in eval mode: an ``nn.Sequential`` for a sequential model, a
    ``torch.fx.GraphModule`` (one submodule per node, named after it where the name is a valid
    module path, and ``operator.add`` for `Add`) for a graph model."""
    if isinstance(model, nn.Module):
        return model
    if not isinstance(model, CompressedModel):
        raise TypeError(f"model must be a torch.nn.Module or a htcore CompressedModel, got {type(model).__name__}")
    if model.nodes is None:
        return nn.Sequential(*(_torch_module(layer) for layer in model.layers)).eval()
    graph = torch.fx.Graph()
    values = {INPUT: graph.placeholder("x")}
    targets = _module_paths([n.name for n in model.nodes])
    modules: dict[str, nn.Module] = {}
    for node, target in zip(model.nodes, targets):
        args = tuple(values[r] for r in node.inputs)
        if isinstance(node.layer, Add):
            values[node.name] = graph.call_function(operator.add, args)
        else:
            modules[target] = _torch_module(node.layer)
            values[node.name] = graph.call_module(target, args)
    graph.output(values[model.nodes[-1].name])
    return torch.fx.GraphModule(modules, graph).eval()


def _module_paths(names: list[str]) -> list[str]:
    """The node names as GraphModule submodule paths when they all are valid, distinct and none is
    a prefix of another (e.g. "layer1.0.conv1"); else "node0", "node1", ..."""
    valid = all(re.fullmatch(r"[A-Za-z_0-9]+(\.[A-Za-z_0-9]+)*", n) and n not in ("training", "graph", "code")
                for n in names)
    prefixes = {".".join(n.split(".")[:k]) for n in names for k in range(1, n.count(".") + 1)}
    if valid and not prefixes & set(names):
        return list(names)
    return [f"node{i}" for i in range(len(names))]


def _torch_module(layer: RuntimeLayer) -> nn.Module:
    """A float32 torch module computing one runtime layer."""
    if isinstance(layer, Linear):
        weight = layer.weight.todense() if isinstance(layer.weight, CSRMatrix) else layer.weight
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(weight, np.float32)))
            if layer.bias is not None:
                linear.bias.copy_(torch.from_numpy(np.array(layer.bias)))
        return linear
    if isinstance(layer, Activation):
        return TORCH_ACTIVATIONS[layer.kind]()
    if isinstance(layer, Conv2d):
        weight = layer.weight.todense() if isinstance(layer.weight, CSRMatrix) else layer.weight
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                         padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                         bias=layer.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.array(weight, np.float32).reshape(conv.weight.shape)))
            if conv.bias is not None and layer.bias is not None:
                conv.bias.copy_(torch.from_numpy(np.array(layer.bias)))
        return conv
    if isinstance(layer, MaxPool2d):
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, AvgPool2d):
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, BatchNorm2d):
        # running_mean 0, running_var 1, eps 0: the eval-mode output is x * scale + shift as stored
        bn = nn.BatchNorm2d(layer.channels, eps=0.0)
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(np.array(layer.scale)))
            bn.bias.copy_(torch.from_numpy(np.array(layer.shift)))
        return bn.eval()
    if isinstance(layer, AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool2d(layer.output_size)
    return nn.Flatten()
