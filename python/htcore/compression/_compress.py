"""`compress`: top-k sparsification, optional fine-tuning with the mask fixed, optional k-means
quantisation of the kept values, producing a runtime `CompressedModel`.

Order of operations: (1) keep the top-k |w| of each chosen weight matrix (`htcore.topk_sparsify`,
ties by lowest flat index); (2) with ``finetune``, train the surviving weights and all biases with
the mask fixed (Adam, cross-entropy, seeded shuffles); (3) with ``levels``, replace the kept values of
each sparse matrix by an r-level codebook from one-dimensional k-means (Lloyd's algorithm from the
deterministic init at the (j + 1/2)/r quantiles of the kept values, j = 0..r-1; no randomness), and,
with ``finetune``, train the codebook values and biases with the assignments fixed (the shared-weight
fine-tuning of Han et al. 2016, "Deep Compression") for ``finetune["codebook_epochs"]`` epochs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .._validation import check_fraction, check_int
from ..runtime import CompressedModel, Linear
from ..sparse import CSRMatrix, topk_sparsify
from ..train import as_training_tensors, fit
from ._codebook import kmeans_1d


def _as_sequential(model: Any) -> Any:
    """`htcore.nn.to_torch`, imported on first use so that ``import htcore`` never imports torch."""
    from ..nn import to_torch

    return to_torch(model)


def _linear_layers(model: Any) -> list[tuple[str, Any]]:
    """The nn.Linear modules of a Sequential in depth-first order (the order of the runtime's Linear
    layers), with their dotted names ("0", "2", or "1.0" inside a nested Sequential)."""
    import torch.nn as nn

    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be a torch.nn.Sequential, got {type(model).__name__}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("model has no nn.Linear layer to compress")
    return layers


def linear_names(model: Any) -> list[str]:
    """Names of the Linear layers of a torch Sequential or runtime model, the keys of ``per_layer``."""
    return [name for name, _ in _linear_layers(_as_sequential(model))]


def _keep_fractions(names: list[str], keep: Any, per_layer: Mapping[Any, Any] | None) -> dict[str, float]:
    """Keep fraction per Linear layer (by its name in the Sequential); layers without one stay dense."""
    if keep is None and not per_layer:
        raise ValueError("give keep= (a fraction for every weight matrix) and/or per_layer= (a mapping)")
    fractions = {} if keep is None else {name: check_fraction(keep, "keep") for name in names}
    for key, value in (per_layer or {}).items():
        name = str(key)
        if name not in names:
            raise ValueError(f"per_layer key {key!r} is not a Linear layer of the model; layers are {names}")
        fractions[name] = check_fraction(value, f"per_layer[{key!r}]")
    return fractions


def _check_finetune(finetune: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"epochs", "lr", "batch_size", "codebook_epochs", "seed"}
    unknown = set(finetune) - allowed
    if unknown:
        raise ValueError(f"finetune has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    out: dict[str, Any] = {"epochs": check_int(finetune.get("epochs", 3), "finetune['epochs']", low=0),
           "batch_size": check_int(finetune.get("batch_size", 128), "finetune['batch_size']", low=1),
           "codebook_epochs": check_int(finetune.get("codebook_epochs", 1), "finetune['codebook_epochs']", low=0),
           "seed": check_int(finetune.get("seed", 0), "finetune['seed']", low=0)}
    lr = finetune.get("lr", 1e-3)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"finetune['lr'] must be a positive finite number, got {lr!r}")
    out["lr"] = float(lr)
    return out


def _shared_weight_finetune(model: Any, quantised: dict, X: Any, y: Any, settings: dict) -> dict:
    """Train codebook values and biases with the assignments fixed (weight = codebook[assignment] on
    the mask). Returns ``quantised`` with the trained codebooks."""
    import torch

    books = {name: torch.nn.Parameter(torch.from_numpy(book.astype(np.float32))) for name, (book, _, _) in quantised.items()}
    scatter = {name: (torch.from_numpy(np.flatnonzero(mask.ravel())), torch.from_numpy(assignment), mask.shape)
               for name, (_, assignment, mask) in quantised.items()}

    def weight_of(name: str):
        index, assignment, shape = scatter[name]
        flat = torch.zeros(shape[0] * shape[1], dtype=torch.float32)
        return flat.index_put((index,), books[name][assignment]).view(shape)

    def forward(h):
        return torch.func.functional_call(model, {f"{name}.weight": weight_of(name) for name in books}, (h,))

    biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
    fit(forward, list(books.values()) + biases, X, y, epochs=settings["codebook_epochs"], lr=settings["lr"],
        batch_size=settings["batch_size"], seed=settings["seed"])
    return {name: (books[name].detach().numpy().astype(np.float64), assignment, mask)
            for name, (_, assignment, mask) in quantised.items()}


def compress(model: Any, *, keep: float | None = None, per_layer: Mapping[Any, float] | None = None,
             levels: int | None = None, finetune: Mapping[str, Any] | None = None,
             train_data: tuple[Any, Any] | None = None, bias_precision: str = "float32") -> Any:
    """Compress a ``torch.nn.Sequential`` of Linear/activation/Flatten layers (or a dense runtime
    `CompressedModel`, rebuilt by `htcore.nn.to_torch`) into a runtime model.

    Parameters
    ----------
    keep : float in (0, 1], optional
        Fraction of entries kept in every weight matrix (k = ceil(keep * n)).
    per_layer : mapping, optional
        Keep fraction per Linear layer, keyed by its name in the Sequential (``"0"`` or ``0``);
        overrides ``keep`` for those layers. Layers with neither stay dense.
    levels : int, optional
        Quantise each sparse matrix's kept values to this many codebook values (1-D k-means,
        deterministic quantile init; see the module docstring). Biases stay float32.
    finetune : dict, optional
        ``epochs`` (default 3) of Adam at ``lr`` (1e-3) on the kept weights and biases with the mask
        fixed, ``batch_size`` (128), ``seed`` (0); with ``levels``, then ``codebook_epochs`` (1) of
        shared-weight fine-tuning. Needs ``train_data=(X, y)``. The input model is not modified.
    bias_precision : "float32" or "float16"
        "float16" rounds every bias to the nearest float16 value at the end (still stored as float32
        for the runtime); `code_length` then charges 16 bits per bias instead of 32.

    Returns a `htcore.runtime.CompressedModel` whose sparse layers hold `CSRMatrix` weights: float32
    values, or for quantised matrices uint8 codes into a float32 codebook of <= ``levels`` values.
    Its ``metadata`` records the settings.
    """
    if levels is not None:
        levels = check_int(levels, "levels", low=1, high=256)
    if bias_precision not in ("float32", "float16"):
        raise ValueError(f"bias_precision must be 'float32' or 'float16', got {bias_precision!r}")
    return _finish(_prune(_as_sequential(model), keep, per_layer, finetune, train_data), levels, bias_precision)


def compress_grid(model: Any, grid: Sequence[Mapping[str, Any]], *, finetune: Mapping[str, Any] | None = None,
                  train_data: tuple[Any, Any] | None = None) -> Iterator[tuple[dict, Any]]:
    """Yield ``(settings, compress(model, **settings))`` for every dict of `compress` keywords in
    ``grid`` (``finetune`` and ``train_data`` are the defaults for settings that do not give their own),
    pruning and fine-tuning once per distinct (keep, per_layer, finetune): settings that differ only
    in ``levels`` or ``bias_precision`` share that work. Results equal separate `compress` calls."""
    model = _as_sequential(model)
    cache: dict[str, _Pruned] = {}
    for settings in grid:
        kwargs = {"finetune": finetune, "train_data": train_data, **settings}
        levels = kwargs.pop("levels", None)
        bias_precision = kwargs.pop("bias_precision", "float32")
        key = repr((kwargs.get("keep"), sorted((str(k), v) for k, v in (kwargs.get("per_layer") or {}).items()),
                    sorted((kwargs.get("finetune") or {}).items()), id(kwargs.get("train_data"))))
        if key not in cache:
            cache[key] = _prune(model, **kwargs)
        yield dict(settings), _finish(cache[key], levels, bias_precision)


@dataclass(frozen=True)
class _Pruned:
    """A masked (and possibly fine-tuned) copy of the model with what the next stage needs."""

    model: Any
    masks: dict
    fractions: dict
    settings: dict | None
    data: tuple[Any, Any] | None  # (X, y) training tensors when fine-tuning


def _prune(model: Any, keep: Any = None, per_layer: Any = None, finetune: Any = None, train_data: Any = None) -> _Pruned:
    """Stage 1: validate, keep the top-k entries, fine-tune with the mask fixed."""
    import torch

    fractions = _keep_fractions([name for name, _ in _linear_layers(model)], keep, per_layer)
    settings = None if finetune is None else _check_finetune(finetune)
    if settings is not None and train_data is None:
        raise ValueError("finetune needs train_data=(X, y)")
    model = copy.deepcopy(model).float().eval()
    linears = dict(_linear_layers(model))
    if settings is None:
        data = None
    else:
        first, last = next(iter(linears.values())), list(linears.values())[-1]
        data = as_training_tensors(*train_data, n_features=first.in_features, n_classes=last.out_features)
    masks = {}
    with torch.no_grad():
        for name, fraction in fractions.items():
            weight = linears[name].weight.detach().numpy()
            sparse = topk_sparsify(weight, keep=fraction)
            mask = np.zeros(weight.shape, bool)
            mask[np.repeat(np.arange(weight.shape[0]), np.diff(sparse.indptr)), sparse.indices.astype(np.intp)] = True
            masks[name] = mask
            linears[name].weight.mul_(torch.from_numpy(mask.astype(np.float32)))

    if settings is not None:
        assert data is not None  # made above whenever there are settings
        tensor_masks = [(linears[name].weight, torch.from_numpy(mask.astype(np.float32))) for name, mask in masks.items()]

        def reapply() -> None:
            with torch.no_grad():
                for weight, mask in tensor_masks:
                    weight.mul_(mask)

        model.train()
        fit(model, list(model.parameters()), *data, epochs=settings["epochs"], lr=settings["lr"],
            batch_size=settings["batch_size"], seed=settings["seed"], after_step=reapply)
        model.eval()
    return _Pruned(model, masks, fractions, settings, data)


def _finish(pruned: _Pruned, levels: int | None, bias_precision: str) -> Any:
    """Stage 2 (on a copy of the stage-1 model): quantise, shared-weight fine-tune, round biases, build."""
    import torch

    from ..nn import to_runtime_layers

    model = copy.deepcopy(pruned.model)
    linears = dict(_linear_layers(model))
    masks, settings = pruned.masks, pruned.settings

    quantised = {}
    if levels is not None:
        for name, mask in masks.items():
            values = linears[name].weight.detach().numpy()[mask]
            book, assignment = kmeans_1d(values, levels)
            quantised[name] = (book, assignment, mask)
        if settings is not None:
            assert pruned.data is not None  # stage 1 kept the training data for fine-tuning
            model.train()
            quantised = _shared_weight_finetune(model, quantised, *pruned.data, settings)
    model.eval()
    if bias_precision == "float16":
        with torch.no_grad():
            for module in linears.values():
                if module.bias is not None:
                    module.bias.copy_(module.bias.half().float())

    layers = to_runtime_layers(model)
    linear_names = iter(name for name, _ in _linear_layers(model))
    for position, layer in enumerate(layers):
        if not isinstance(layer, Linear):
            continue
        name = next(linear_names)
        if name not in masks:
            continue
        mask = masks[name]
        rows, cols = np.nonzero(mask)  # row-major: the order of weight[mask] and of the k-means assignment
        indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
        if name in quantised:
            book, assignment, _ = quantised[name]
            csr = CSRMatrix(assignment.astype(np.uint8), cols, indptr, mask.shape, codebook=book.astype(np.float32))
        else:
            weight = linears[name].weight.detach().numpy().astype(np.float32)
            csr = CSRMatrix(weight[rows, cols], cols, indptr, mask.shape)
        layers[position] = Linear(csr, layer.bias)
    metadata = {"compress": {"keep": dict(pruned.fractions), "levels": levels,
                             "finetune": settings, "bias_precision": bias_precision}}
    return CompressedModel(layers, metadata=metadata)
