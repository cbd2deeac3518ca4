"""`compress`: top-k sparsification, optional fine-tuning with the mask fixed, optional k-means
quantisation of the kept values, producing a runtime `CompressedModel`.

The model is any torch module the runtime converts (`htcore.runtime.CompressedModel.from_torch`)
whose weight layers are ``nn.Linear`` and ``nn.Conv2d``. A Linear weight (out, in) is compressed as
that matrix; a Conv2d weight (out, in / groups, kh, kw) as the matrix (out, in / groups * kh * kw)
(its row-major flattening, the layout of `htcore.sparse_conv2d`). Every step below treats the two
alike.

Order of operations: (1) keep the top-k |w| of each chosen weight matrix (`htcore.topk_sparsify`,
ties by lowest flat index); (2) with ``finetune``, train the surviving weights and every other
parameter with the mask fixed (with ``finetune["prune_epochs"]`` > 1 the mask shrinks at the start
of each of those epochs, each time to the top-k of the current weights, before it is fixed; Adam, cross-entropy, seeded shuffles; the model in train mode, so
BatchNorm and Dropout behave as in training); (3) with ``levels``, replace the kept values of each
sparse matrix by an r-level codebook from one-dimensional k-means (Lloyd's algorithm from the
deterministic init at the (j + 1/2)/r quantiles of the kept values, j = 0..r-1; no randomness), and,
with ``finetune``, train the codebook values and the Linear/Conv2d biases with the assignments fixed
(the shared-weight fine-tuning of Han et al. 2016, "Deep Compression") for
``finetune["codebook_epochs"]`` epochs; (4) in eval mode, replace each pruned module by a
`htcore.nn.SparseLinear` / `SparseConv2d` holding its CSR weight and convert the model with
`CompressedModel.from_torch`.

Per-layer keep fractions (``per_layer``) are keyed by module name (as in ``model.named_modules()``:
"0", "features.3", "layer1.0.conv1") or by a glob pattern on those names (`fnmatch.fnmatchcase`:
"layer*.conv*"). Which fraction a layer gets: ``keep`` if given, then every matching pattern in the
mapping's order (a later pattern overrides an earlier one), then its exact name, which always wins.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .._validation import check_fraction, check_int, check_positive
from ..runtime import CompressedModel
from ..sparse import CSRMatrix, topk_sparsify
from ..train import as_training_tensors, check_schedule, fit
from ._codebook import kmeans_1d

_GLOB_CHARACTERS = frozenset("*?[")


def _as_torch(model: Any) -> Any:
    """A torch module as is; a runtime model rebuilt by `htcore.nn.to_torch` (imported on first use
    so that ``import htcore`` never imports torch)."""
    import torch

    from ..nn import to_torch

    return model if isinstance(model, torch.nn.Module) else to_torch(model)


def _weight_layers(model: Any) -> list[tuple[str, Any]]:
    """The nn.Linear and nn.Conv2d modules of a torch module with their qualified names, in
    ``named_modules()`` order."""
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a htcore CompressedModel, got {type(model).__name__}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ValueError("model has no nn.Linear or nn.Conv2d layer to compress")
    if layers[0][0] == "":
        raise TypeError(f"model itself is an nn.{type(model).__name__}: wrap it in an nn.Sequential")
    return layers


def layer_names(model: Any) -> list[str]:
    """Names of the Linear and Conv2d layers of a torch module or runtime model, the keys of
    ``per_layer`` (runtime models are rebuilt as an nn.Sequential: "0", "2", ...)."""
    return [name for name, _ in _weight_layers(_as_torch(model))]


def _keep_fractions(names: list[str], keep: Any, per_layer: Mapping[Any, Any] | None) -> dict[str, float]:
    """Keep fraction per weight layer (rules in the module docstring); layers without one stay dense."""
    if keep is None and not per_layer:
        raise ValueError("give keep= (a fraction for every weight matrix) and/or per_layer= (a mapping)")
    fractions = {} if keep is None else {name: check_fraction(keep, "keep") for name in names}
    exact = {}
    for key, value in (per_layer or {}).items():
        pattern = str(key)
        fraction = check_fraction(value, f"per_layer[{key!r}]")
        if pattern in names:
            exact[pattern] = fraction
            continue
        matched = [name for name in names if _GLOB_CHARACTERS & set(pattern) and fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise ValueError(f"per_layer key {key!r} names no Linear or Conv2d layer of the model and matches none "
                             f"as a glob pattern; the layers are {names}")
        fractions.update(dict.fromkeys(matched, fraction))
    fractions.update(exact)
    return {name: fractions[name] for name in names if name in fractions}


def _check_finetune(finetune: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"epochs", "lr", "batch_size", "codebook_epochs", "codebook_lr", "schedule", "prune_epochs", "seed"}
    unknown = set(finetune) - allowed
    if unknown:
        raise ValueError(f"finetune has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    out: dict[str, Any] = {"epochs": check_int(finetune.get("epochs", 3), "finetune['epochs']", low=0),
           "batch_size": check_int(finetune.get("batch_size", 128), "finetune['batch_size']", low=1),
           "codebook_epochs": check_int(finetune.get("codebook_epochs", 1), "finetune['codebook_epochs']", low=0),
           "seed": check_int(finetune.get("seed", 0), "finetune['seed']", low=0)}
    out["lr"] = check_positive(finetune.get("lr", 1e-3), "finetune['lr']")
    codebook_lr = finetune.get("codebook_lr")  # the codebook stage runs at the masked stage's rate unless told otherwise
    out["codebook_lr"] = out["lr"] if codebook_lr is None else check_positive(codebook_lr, "finetune['codebook_lr']")
    out["schedule"] = check_schedule(finetune.get("schedule", "constant"), "finetune['schedule']")
    out["prune_epochs"] = check_int(finetune.get("prune_epochs", 1), "finetune['prune_epochs']", low=1,
                                    high=max(out["epochs"], 1))
    return out


def _biases(model: Any) -> list:
    """The bias parameters of the Linear and Conv2d layers."""
    return [m.bias for _, m in _weight_layers(model) if m.bias is not None]


def _shared_weight_finetune(model: Any, quantised: dict, X: Any, y: Any, settings: dict) -> dict:
    """Train codebook values and biases with the assignments fixed (weight = codebook[assignment] on
    the mask). Returns ``quantised`` with the trained codebooks."""
    import torch

    modules = dict(_weight_layers(model))
    books = {name: torch.nn.Parameter(torch.from_numpy(book.astype(np.float32))) for name, (book, _, _) in quantised.items()}
    scatter = {name: (torch.from_numpy(np.flatnonzero(mask.ravel())), torch.from_numpy(assignment))
               for name, (_, assignment, mask) in quantised.items()}

    def weight_of(name: str):
        index, assignment = scatter[name]
        shape = modules[name].weight.shape  # (out, in) or (out, in / groups, kh, kw): the mask's rows, flattened
        flat = torch.zeros(shape.numel(), dtype=torch.float32)
        return flat.index_put((index,), books[name][assignment]).view(shape)

    def forward(h):
        return torch.func.functional_call(model, {f"{name}.weight": weight_of(name) for name in books}, (h,))

    fit(forward, list(books.values()) + _biases(model), X, y, epochs=settings["codebook_epochs"],
        lr=settings["codebook_lr"], batch_size=settings["batch_size"], seed=settings["seed"], schedule=settings["schedule"])
    return {name: (books[name].detach().numpy().astype(np.float64), assignment, mask)
            for name, (_, assignment, mask) in quantised.items()}


def compress(model: Any, *, keep: float | None = None, per_layer: Mapping[Any, float] | None = None,
             levels: int | None = None, finetune: Mapping[str, Any] | None = None,
             train_data: tuple[Any, Any] | None = None, bias_precision: str = "float32",
             input_shape: Sequence[int] | None = None) -> Any:
    """Compress a torch module with nn.Linear and nn.Conv2d layers (an MLP, a CNN, or, where
    `CompressedModel.from_torch` converts it, any graph) or a dense runtime `CompressedModel`
    (rebuilt by `htcore.nn.to_torch`) into a runtime model. See the module docstring.

    Parameters
    ----------
    keep : float in (0, 1], optional
        Fraction of entries kept in every weight matrix (k = ceil(keep * n); a conv weight counts as
        the matrix (out, in / groups * kh * kw)).
    per_layer : mapping, optional
        Keep fraction per layer, keyed by module name (``"0"`` or ``0``, ``"features.3"``) or glob
        pattern (``"layer*.conv*"``); overrides ``keep`` (precedence in the module docstring). A key
        matching no Linear/Conv2d layer is a ValueError. Layers with no fraction stay dense.
    levels : int, optional
        Quantise each sparse matrix's kept values to this many codebook values (1-D k-means,
        deterministic quantile init; see the module docstring).
    finetune : dict, optional
        ``epochs`` (default 3) of Adam at ``lr`` (1e-3) on the kept weights and every other parameter
        with the mask fixed, ``batch_size`` (128), ``seed`` (0); with ``levels``, then
        ``codebook_epochs`` (1) of shared-weight fine-tuning at ``codebook_lr`` (default ``lr``).
        ``schedule`` ("constant", default, or "cosine") is each stage's learning-rate schedule
        (`htcore.train.fit`): "cosine" anneals from the stage's rate to 0 over its epochs.
        ``prune_epochs`` (default 1, at most ``epochs``): prune gradually, re-taking the top-k of the
        current weights at the start of each of the first ``prune_epochs`` epochs with keep fractions
        falling on a cubic schedule to the target (Zhu and Gupta 2017); 1 prunes once, before training. Needs ``train_data=(X, y)``: X of the
        model's input shape, (n, features) or images (n, C, H, W). The input model is not modified.
    bias_precision : "float32" or "float16"
        "float16" rounds every Linear/Conv2d bias to the nearest float16 value at the end (still
        stored as float32 for the runtime); `code_length` then charges 16 bits per bias instead of 32.
    input_shape : tuple, optional
        Per-sample input shape recorded in the runtime model (needed to save a graph model); by
        default that of a runtime ``model`` or of the fine-tuning data, if any.

    Returns a `htcore.runtime.CompressedModel` whose sparse layers hold `CSRMatrix` weights: float32
    values, or for quantised matrices uint8 codes into a float32 codebook of <= ``levels`` values.
    Its ``metadata`` records the settings.
    """
    if levels is not None:
        levels = check_int(levels, "levels", low=1, high=256)
    if bias_precision not in ("float32", "float16"):
        raise ValueError(f"bias_precision must be 'float32' or 'float16', got {bias_precision!r}")
    pruned = _prune(_as_torch(model), keep, per_layer, finetune, train_data, _input_shape(model, input_shape, train_data))
    return _finish(pruned, levels, bias_precision)


def compress_grid(model: Any, grid: Sequence[Mapping[str, Any]], *, finetune: Mapping[str, Any] | None = None,
                  train_data: tuple[Any, Any] | None = None, input_shape: Sequence[int] | None = None
                  ) -> Iterator[tuple[dict, Any]]:
    """Yield ``(settings, compress(model, **settings))`` for every dict of `compress` keywords in
    ``grid`` (``finetune`` and ``train_data`` are the defaults for settings that do not give their own),
    pruning and fine-tuning once per distinct (keep, per_layer, finetune): settings that differ only
    in ``levels`` or ``bias_precision`` share that work. Results equal separate `compress` calls."""
    torch_model = _as_torch(model)
    cache: dict[str, _Pruned] = {}
    for settings in grid:
        kwargs = {"finetune": finetune, "train_data": train_data, **settings}
        levels = kwargs.pop("levels", None)
        bias_precision = kwargs.pop("bias_precision", "float32")
        key = repr((kwargs.get("keep"), [(str(k), v) for k, v in (kwargs.get("per_layer") or {}).items()],
                    sorted((kwargs.get("finetune") or {}).items()), id(kwargs.get("train_data"))))
        if key not in cache:
            cache[key] = _prune(torch_model, **kwargs, input_shape=_input_shape(model, input_shape, kwargs["train_data"]))
        yield dict(settings), _finish(cache[key], levels, bias_precision)


@dataclass(frozen=True)
class _Pruned:
    """A masked (and possibly fine-tuned) copy of the model with what the next stage needs. Masks
    are boolean matrices (out, in) or (out, in / groups * kh * kw), keyed by layer name."""

    model: Any
    masks: dict
    fractions: dict
    settings: dict | None
    data: tuple[Any, Any] | None  # (X, y) training tensors when fine-tuning
    input_shape: tuple | None


def _input_shape(model: Any, input_shape: Any, train_data: Any) -> tuple | None:
    """The per-sample input shape: given, else the runtime model's, else the training data's."""
    if input_shape is not None:
        return tuple(input_shape)
    if isinstance(model, CompressedModel) and model.input_shape is not None:
        return model.input_shape
    if train_data is not None:
        return tuple(np.shape(train_data[0])[1:]) or None
    return None


def _matrix(weight: Any) -> np.ndarray:
    """A Linear or Conv2d weight tensor as the float32 numpy matrix (out, everything else) it is compressed as."""
    return weight.detach().reshape(weight.shape[0], -1).numpy()


def _prune(model: Any, keep: Any = None, per_layer: Any = None, finetune: Any = None, train_data: Any = None,
           input_shape: tuple | None = None) -> _Pruned:
    """Stage 1: validate, keep the top-k entries, fine-tune with the mask fixed."""
    import torch

    fractions = _keep_fractions([name for name, _ in _weight_layers(model)], keep, per_layer)
    settings = None if finetune is None else _check_finetune(finetune)
    if settings is not None and train_data is None:
        raise ValueError("finetune needs train_data=(X, y)")
    model = copy.deepcopy(model).float().eval()
    data = None if settings is None else as_training_tensors(*train_data, model=model)
    CompressedModel.from_torch(model, input_shape=input_shape)  # refuse what the runtime cannot run before training
    layers = dict(_weight_layers(model))
    prune_epochs = 1 if settings is None else settings["prune_epochs"]
    masks = _impose_top_k(layers, _gradual_fractions(fractions, 0, prune_epochs))

    if settings is not None:
        assert data is not None  # made above whenever there are settings
        steps_per_epoch = -(-data[0].shape[0] // settings["batch_size"])
        step = 0
        tensor_masks = {name: _as_weight_mask(mask, layers[name].weight) for name, mask in masks.items()}

        def reapply() -> None:
            """Keep pruned weights at zero; at the start of each later pruning epoch, prune further."""
            nonlocal step
            step += 1
            with torch.no_grad():
                for name, mask in tensor_masks.items():
                    layers[name].weight.mul_(mask)
            epoch, within = divmod(step, steps_per_epoch)
            if within == 0 and epoch < prune_epochs:
                masks.update(_impose_top_k(layers, _gradual_fractions(fractions, epoch, prune_epochs)))
                tensor_masks.update({name: _as_weight_mask(mask, layers[name].weight) for name, mask in masks.items()})

        model.train()
        fit(model, list(model.parameters()), *data, epochs=settings["epochs"], lr=settings["lr"],
            batch_size=settings["batch_size"], seed=settings["seed"], after_step=reapply, schedule=settings["schedule"])
        model.eval()
    return _Pruned(model, masks, fractions, settings, data, input_shape)


def _gradual_fractions(fractions: dict[str, float], epoch: int, prune_epochs: int) -> dict[str, float]:
    """Keep fractions imposed at the start of ``epoch`` (< prune_epochs) of gradual pruning: the cubic
    schedule of Zhu and Gupta (2017), f + (1 - f)(1 - (epoch + 1) / prune_epochs)^3 for target f, so
    most weights go early while the net still adapts and the last pruning epoch reaches f."""
    left = (1 - (epoch + 1) / prune_epochs) ** 3
    return {name: fraction + (1 - fraction) * left for name, fraction in fractions.items()}


def _as_weight_mask(mask: np.ndarray, weight: Any) -> Any:
    """A boolean matrix mask as a float32 tensor of the weight's shape."""
    import torch

    return torch.from_numpy(mask.reshape(weight.shape).astype(np.float32))


def _impose_top_k(layers: dict, fractions: dict[str, float]) -> dict[str, np.ndarray]:
    """Zero all but the top-k |w| of each named layer's weight matrix (k = ceil(fraction * n)); return
    the boolean masks (out, in) or (out, in / groups * kh * kw)."""
    import torch

    masks = {}
    with torch.no_grad():
        for name, fraction in fractions.items():
            weight = _matrix(layers[name].weight)
            sparse = topk_sparsify(weight, keep=fraction)
            mask = np.zeros(weight.shape, bool)
            mask[np.repeat(np.arange(weight.shape[0]), np.diff(sparse.indptr)), sparse.indices.astype(np.intp)] = True
            masks[name] = mask
            layers[name].weight.mul_(_as_weight_mask(mask, layers[name].weight))
    return masks


def _finish(pruned: _Pruned, levels: int | None, bias_precision: str) -> Any:
    """Stage 2 (on a copy of the stage-1 model): quantise, shared-weight fine-tune, round biases,
    swap in the sparse modules, convert."""
    import torch

    from ..nn import SparseConv2d, SparseLinear

    model = copy.deepcopy(pruned.model)
    layers = dict(_weight_layers(model))
    masks, settings = pruned.masks, pruned.settings

    quantised = {}
    if levels is not None:
        for name, mask in masks.items():
            book, assignment = kmeans_1d(_matrix(layers[name].weight)[mask], levels)
            quantised[name] = (book, assignment, mask)
        if settings is not None:
            assert pruned.data is not None  # stage 1 kept the training data for fine-tuning
            model.train()
            quantised = _shared_weight_finetune(model, quantised, *pruned.data, settings)
    model.eval()
    if bias_precision == "float16":
        with torch.no_grad():
            for bias in _biases(model):
                bias.copy_(bias.half().float())

    for name, mask in masks.items():
        module = layers[name]
        cols = np.nonzero(mask)[1]  # row-major: the order of weight[mask] and of the k-means assignment
        indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
        if name in quantised:
            book, assignment, _ = quantised[name]
            csr = CSRMatrix(assignment.astype(np.uint8), cols, indptr, mask.shape, codebook=book.astype(np.float32))
        else:
            csr = CSRMatrix(_matrix(module.weight)[mask].astype(np.float32), cols, indptr, mask.shape)
        bias = None if module.bias is None else module.bias.detach()
        if isinstance(module, torch.nn.Linear):
            sparse: torch.nn.Module = SparseLinear(csr, bias)
        else:
            sparse = SparseConv2d(csr, bias, kernel_size=module.kernel_size, stride=module.stride,
                                  padding=module.padding, dilation=module.dilation, groups=module.groups,
                                  padding_mode=module.padding_mode)
        model.set_submodule(name, sparse)
    metadata = {"compress": {"keep": dict(pruned.fractions), "levels": levels,
                             "finetune": settings, "bias_precision": bias_precision}}
    return CompressedModel.from_torch(model, metadata, input_shape=pruned.input_shape)
