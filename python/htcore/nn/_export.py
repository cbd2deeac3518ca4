"""A ``torch.export`` program (an ``ExportedProgram``, or a ``.pt2`` archive of one written by
``torch.export.save``) -> a runtime `CompressedModel`, by mapping its ATen graph node by node.

Mapped ATen operators (the others raise TypeError naming the node, its operator and the module it
came from): ``conv2d``/``convolution`` (not transposed, zero padding), ``linear``, ``addmm``/``mm``
of a constant weight, ``relu``, ``gelu`` (approximate "none"), ``tanh``, ``softmax``/``_softmax`` over
the last dimension of a flat input, ``max_pool2d`` (``_with_indices``, first output), ``avg_pool2d``
(count_include_pad, no divisor_override), ceil_mode False for both, ``adaptive_avg_pool2d``,
``mean.dim`` over (H, W) (as adaptive pooling to 1x1), ``add.Tensor`` of two computed tensors
(alpha 1), ``flatten``/``view``/``reshape`` to (batch, features), ``batch_norm`` (training False)
and ``_native_batch_norm_legit_no_training``; ``dropout`` (train False), ``clone``, ``contiguous``,
``alias``, ``detach`` and ``t``/``permute``/``transpose`` of constants are folded away. BatchNorm is
folded into the conv before it as in `to_runtime_graph`.

Loading a ``.pt2`` runs ``torch.export.load``, which is torch's code, not htcore's: it unpickles
payloads marked as pickled (``torch.load(weights_only=False)``, ``pickle.loads``), retries the
archive's sample inputs with ``weights_only=False`` when the safe load fails, and evaluates the
symbolic-shape expressions with ``sympy.sympify`` (Python ``eval``). Any of these can execute code
from the file. `load_exported` therefore checks the archive first and refuses a pickled weight or
constant, a custom or opaque object, a legacy ``.pt`` payload, an AOTInductor package, sample inputs
that need more than ``torch.load(weights_only=True)`` and a symbolic expression that is not
arithmetic on numbers and size symbols (``s0``, ``Symbol('s0', positive=True, integer=True)``) with
sympy's and torch's shape functions (no attribute access, no other name or string). That closes the paths found in torch
2.13's loader; it cannot vouch for torch's deserializer as a whole, so convert ``.pt2`` files only
from sources you trust, and prefer ONNX (`htcore.runtime.from_onnx`, parsed without executing
anything) for files you do not.
"""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
from typing import Any, Optional

import numpy as np
import torch

from ..runtime import (
    INPUT,
    Activation,
    AdaptiveAvgPool2d,
    Add,
    AvgPool2d,
    CompressedModel,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Node,
)
from ._convert import _Float64BatchNorm, _fold_graph, _live, _plain, _unique

_SUPPORTED = ("conv2d, convolution, linear, addmm, mm, relu, gelu, tanh, softmax, max_pool2d, avg_pool2d, "
              "adaptive_avg_pool2d, mean over (H, W), add, flatten, view/reshape to (batch, features), batch_norm "
              "(inference), dropout (inference), clone")
_NO_OPS = {"clone", "contiguous", "alias", "detach", "lift_fresh_copy", "dropout", "feature_dropout"}
_CONST_OPS = {"t", "permute", "transpose", "numpy_T"}
_TOKEN = re.compile(r"\s+|'[su][0-9]+'|[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?|[A-Za-z_][A-Za-z0-9_]*|[-+*/(),=]")
_SIZE_SYMBOL = re.compile(r"[su][0-9]+")
_SYMPY_NAMES = {"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "True", "False",
                "oo", "positive", "integer", "nonnegative", "real", "finite"}


def load_exported(path: str | os.PathLike) -> Any:
    """``torch.export.load(path)`` after the checks in the module docstring (ValueError naming the
    file and the member on any of them). Read the module docstring before loading untrusted files."""
    where = os.fspath(path)
    try:
        archive = zipfile.ZipFile(where)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{where}: not a torch.export archive (.pt2): {exc}") from None
    with archive:
        names = archive.namelist()
        models = [n for n in names if re.fullmatch(r"(?:[^/]+/)?models/[^/]+\.json", n)]
        if len(models) != 1:
            raise ValueError(f"{where}: a .pt2 archive with exactly one exported program is needed, found {len(models)}")
        for name in names:
            if "/aotinductor/" in name or name.startswith("aotinductor/") or name.endswith((".so", ".pyd", ".dll")):
                raise ValueError(f"{where}: member {name!r}: compiled AOTInductor code is refused (htcore loads graphs only)")
            if re.search(r"data/(weights|constants)/[^/]+\.pt$", name):
                raise ValueError(f"{where}: member {name!r} is a legacy pickled payload, which torch unpickles: refused")
            if re.search(r"data/(weights|constants)/[^/]+config\.json$", name):
                _check_payload_config(archive.read(name), where, name)
            if "/sample_inputs/" in name or name.startswith("sample_inputs/"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as exc:  # the safe unpickler's refusals come as several exception types
                    raise ValueError(f"{where}: member {name!r} needs more than torch.load(weights_only=True), and torch "
                                     f"would then unpickle it unrestricted: refused ({type(exc).__name__})") from None
        _check_expressions(json.loads(archive.read(models[0])), where, models[0])
    return torch.export.load(where)


def _check_payload_config(raw: bytes, where: str, name: str) -> None:
    for fqn, meta in json.loads(raw).get("config", {}).items():
        path_name = str(meta.get("path_name", ""))
        if meta.get("use_pickle") or path_name.startswith(("custom_obj", "opaque_obj")):
            raise ValueError(f"{where}: {name}: {fqn!r} is a pickled payload or a custom object, which torch.export.load "
                             "unpickles (able to run code): refused")


def _check_expressions(node: Any, where: str, name: str) -> None:
    """Every ``expr_str`` (what torch passes to sympy.sympify, i.e. eval) is made of numbers,
    arithmetic, size symbols (``s0``, or ``Symbol('s0', positive=True, integer=True)``) and sympy's
    or torch's shape functions: no attribute access, no other string, no other name."""
    from torch.utils._sympy import functions

    allowed = _SYMPY_NAMES | {n for n in dir(functions) if not n.startswith("_") and isinstance(getattr(functions, n), type)}
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            expr = item.get("expr_str")
            if isinstance(expr, str) and not _safe_expression(expr, allowed):
                raise ValueError(f"{where}: {name}: symbolic expression {expr[:80]!r} is not a size expression "
                                 "(torch evaluates it with sympy.sympify, i.e. Python eval): refused")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _safe_expression(expr: str, allowed: set) -> bool:
    pos = 0
    while pos < len(expr):
        token = _TOKEN.match(expr, pos)
        if token is None:
            return False
        word = token.group()
        if word[0].isalpha() or word[0] == "_":
            if word not in allowed and not _SIZE_SYMBOL.fullmatch(word):
                return False
        pos = token.end()
    return True


def from_exported(program: Any, *, input_shape: Any = None, fold_batchnorm: bool = True,
                  metadata: Optional[dict] = None) -> CompressedModel:
    """Convert a ``torch.export.ExportedProgram`` (or a path to a ``.pt2`` archive, loaded with
    `load_exported`: read its warning) to a `CompressedModel` with dense weights.

    ``input_shape``: the per-sample input shape (no batch dimension); by default the exported
    input's shape without its first dimension, which must then be static. The program must take
    one tensor and return one (the batch dimension may be dynamic). Returns a sequential model when
    the graph is a chain, else a graph of `Node`s named after the ATen nodes. Unsupported
    operators raise TypeError naming the node and its operator (module docstring for the list)."""
    if isinstance(program, (str, os.PathLike)):
        program = load_exported(program)
    if not isinstance(program, torch.export.ExportedProgram):
        raise TypeError(f"program must be a torch.export.ExportedProgram or a path to a .pt2 file, got {type(program).__name__}")
    consts, user_input = _constants(program)
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_input)
    if input_shape is None:
        val = placeholder.meta.get("val")
        dims = list(getattr(val, "shape", ()))[1:]
        if not dims or not all(isinstance(d, int) for d in dims):
            raise ValueError(f"the exported input has shape {list(getattr(val, 'shape', []))}: pass input_shape= "
                             "(per sample, no batch dimension) for a program without a static per-sample shape")
        input_shape = tuple(dims)
    built: list = []
    alias: dict[str, str] = {user_input: INPUT}
    taken = {INPUT}
    output: Optional[str] = None
    for node in program.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            values = node.args[0]
            if not isinstance(values, (tuple, list)) or len(values) != 1 or getattr(values[0], "name", None) not in alias:
                raise TypeError(f"output: the program must return one computed tensor, got {values!r}")
            output = alias[values[0].name]
            continue
        if node.op != "call_function":
            raise TypeError(f"{_where(node)}: {node.op} nodes are not supported")
        if _fold_constant(node, consts):
            continue
        layer, sources = _layer(node, consts)
        refs = []
        for src in sources:
            if getattr(src, "name", None) not in alias:
                raise TypeError(f"{_where(node)}: input {src!r} is not a tensor the runtime computes (a constant "
                                "where the runtime needs an activation?)")
            refs.append(alias[src.name])
        if layer is None:  # a no-op: the node's value is its input's
            alias[node.name] = refs[0]
            continue
        name = _unique(node.name, taken)
        alias[node.name] = name
        built.append((name, layer, refs))
    if output is None or output == INPUT:
        raise TypeError("the program computes nothing the runtime can run (its output is its input)")
    built = _live(built, output)
    if fold_batchnorm:
        built = _fold_graph(built)
    built = [(name, _plain(layer), refs) for name, layer, refs in built]
    meta = {"source": "torch.export", **(metadata or {})}
    if all(refs == [built[i - 1][0] if i else INPUT] for i, (_, _, refs) in enumerate(built)):
        return CompressedModel([layer for _, layer, _ in built], meta, input_shape=input_shape)
    return CompressedModel([Node(name, layer, refs) for name, layer, refs in built], meta, input_shape=input_shape)


def _constants(program: Any) -> tuple[dict[str, np.ndarray], str]:
    """float64 copies of the parameters, buffers and constant tensors by placeholder name, and the
    name of the one user input."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = program.graph_signature
    users = [s.arg.name for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
    if len(users) != 1:
        raise TypeError(f"the program must take exactly one tensor input, got {len(users)}")
    outputs = [s for s in sig.output_specs if s.kind != OutputKind.USER_OUTPUT]
    if outputs:
        raise TypeError(f"the program mutates {outputs[0].target!r} ({outputs[0].kind.name}): export the model in eval "
                        "mode (model.eval()) so BatchNorm uses its running statistics")
    consts: dict[str, np.ndarray] = {}
    for spec in sig.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            value = program.state_dict.get(spec.target, program.constants.get(spec.target))
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{spec.arg.name}: {spec.kind.name} {spec.target!r} is not a tensor")
            consts[spec.arg.name] = value.detach().to("cpu", torch.float64).numpy()
    return consts, users[0]


def _where(node: Any) -> str:
    path = node.meta.get("nn_module_stack")
    module = f", from module {list(path.values())[-1][0]!r}" if path else ""
    return f"node {node.name!r} ({node.target}{module})"


def _bound(node: Any) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    out = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _op(node: Any) -> str:
    """"conv2d" for aten.conv2d.default; "getitem" for operator.getitem."""
    packet = getattr(node.target, "_overloadpacket", None)
    return packet.__name__ if packet is not None else getattr(node.target, "__name__", str(node.target))


def _shape(node: Any) -> tuple:
    return tuple(getattr(node.meta.get("val"), "shape", ()))


def _fold_constant(node: Any, consts: dict) -> bool:
    """Evaluate a transpose/permute of a constant (addmm's weight) into ``consts``; False otherwise."""
    op = _op(node)
    if op not in _CONST_OPS or not node.args or getattr(node.args[0], "name", None) not in consts:
        return False
    value = consts[node.args[0].name]
    args = _bound(node)
    if op in ("t", "numpy_T"):
        consts[node.name] = value.T
    elif op == "permute":
        consts[node.name] = np.transpose(value, args["dims"])
    else:
        consts[node.name] = np.swapaxes(value, args["dim0"], args["dim1"])
    return True


def _const(node: Any, value: Any, what: str, consts: dict) -> Optional[np.ndarray]:
    if value is None:
        return None
    if getattr(value, "name", None) not in consts:
        raise TypeError(f"{_where(node)}: the {what} must be a parameter or constant of the program, got {value!r}")
    return consts[value.name]


def _layer(node: Any, consts: dict) -> tuple[Any, list]:
    """The runtime layer of one ATen node (None for a no-op) and the nodes it reads."""
    op = _op(node)
    a = _bound(node) if op != "getitem" else {}
    x = node.args[0] if node.args else None
    if op in _NO_OPS and not (op in ("dropout", "feature_dropout") and a.get("train")):
        return None, [x]
    if op == "getitem" and node.args[1] == 0 and _op(x) in ("max_pool2d_with_indices", "_native_batch_norm_legit_no_training"):
        return None, [x]
    if op in ("conv2d", "convolution"):
        if op == "convolution" and (a["transposed"] or any(a["output_padding"])):
            raise TypeError(f"{_where(node)}: transposed convolution is not supported")
        if isinstance(a["padding"], str):
            raise TypeError(f"{_where(node)}: padding={a['padding']!r} is not supported; export with integer padding")
        weight = _const(node, a["weight"], "weight", consts)
        if weight is None or weight.ndim != 4:
            raise TypeError(f"{_where(node)}: only 2-d convolution (a 4-d weight) is supported")
        return _built(node, Conv2d, weight, _const(node, a["bias"], "bias", consts), kernel_size=weight.shape[2:],
                      stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"]), [x]
    if op == "linear":
        return _linear(node, x, _const(node, a["weight"], "weight", consts), _const(node, a["bias"], "bias", consts))
    if op in ("addmm", "mm"):
        mat1, mat2 = (a["mat1"], a["mat2"]) if op == "addmm" else (a["self"], a["mat2"])
        if op == "addmm" and (a["beta"] != 1 or a["alpha"] != 1):
            raise TypeError(f"{_where(node)}: addmm with beta or alpha other than 1 is not supported")
        weight_t = _const(node, mat2, "second matrix", consts)
        return _linear(node, mat1, None if weight_t is None else weight_t.T, _const(node, a["self"], "bias", consts) if op == "addmm" else None)
    if op in ("relu", "tanh") or (op == "gelu" and a.get("approximate") == "none"):
        return Activation(op), [x]
    if op in ("softmax", "_softmax") and len(_shape(x)) == 2 and a["dim"] in (-1, 1):
        return Activation("softmax"), [x]
    if op in ("max_pool2d", "max_pool2d_with_indices") and not a["ceil_mode"] and all(d == 1 for d in a["dilation"]):
        return _built(node, MaxPool2d, a["kernel_size"], a["stride"] or None, a["padding"]), [x]
    if op == "avg_pool2d" and not a["ceil_mode"] and a["count_include_pad"] and a["divisor_override"] is None:
        return _built(node, AvgPool2d, a["kernel_size"], a["stride"] or None, a["padding"]), [x]
    if op in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d"):
        return _built(node, AdaptiveAvgPool2d, tuple(a["output_size"])), [x]
    if op == "mean" and len(_shape(x)) == 4 and sorted(d % 4 for d in a["dim"] or ()) == [2, 3] and a["keepdim"]:
        return AdaptiveAvgPool2d(1), [x]
    if op == "add" and a.get("alpha", 1) == 1 and all(hasattr(t, "name") for t in (a["self"], a["other"])):
        return Add(), [a["self"], a["other"]]
    if op in ("flatten", "view", "reshape", "_unsafe_view") and len(_shape(node)) == 2 and _shape(node)[0] == _shape(x)[0]:
        return (Flatten() if len(_shape(x)) > 2 else None), [x]
    if op == "batch_norm" and not a["training"] or op == "_native_batch_norm_legit_no_training":
        return _batchnorm(node, a, consts), [x]
    raise TypeError(f"{_where(node)} is not supported by the runtime (args {node.args!r}, kwargs {node.kwargs!r}); "
                    f"supported: {_SUPPORTED}")


def _built(node: Any, make: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return make(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{_where(node)}: {exc}") from None


def _linear(node: Any, x: Any, weight: Optional[np.ndarray], bias: Optional[np.ndarray]) -> tuple[Any, list]:
    if weight is None or weight.ndim != 2 or len(_shape(x)) != 2:
        raise TypeError(f"{_where(node)}: a linear layer needs a 2-d constant weight and a (batch, features) input, "
                        f"got input shape {list(_shape(x))}")
    return _built(node, Linear, weight, bias), [x]


def _batchnorm(node: Any, a: dict, consts: dict) -> Any:
    mean = _const(node, a["running_mean"], "running mean", consts)
    var = _const(node, a["running_var"], "running variance", consts)
    if mean is None or var is None:
        raise TypeError(f"{_where(node)}: batch norm without running statistics is not supported")
    gamma = _const(node, a["weight"], "weight", consts)
    beta = _const(node, a["bias"], "bias", consts)
    scale = (np.ones_like(mean) if gamma is None else gamma) / np.sqrt(var + a["eps"])
    return _built(node, _Float64BatchNorm, scale, (np.zeros_like(mean) if beta is None else beta) - mean * scale)
