"""`output_sensitivity`: how much each layer's pruning error moves the net's output, measured on
calibration inputs, as the per-layer weights of `allocate(sensitivity=...)`.

For layer l with weight W_l (n_l entries) and E_l = W_l - W_l,k its top-k pruning error at
k_l = ceil(keep * n_l) (the entries `compress` keeps), f the net and f_l the net with only layer l
pruned, both on the calibration inputs X:

    s_l = (||f_l(X) - f(X)||_F^2 / ||f(X)||_F^2) / (||E_l||_F^2 / ||W_l||_F^2),

the squared relative output error per unit squared relative weight error of that layer alone.
Under the first-order additive model (each layer's output error grows with its own squared
relative error and the layers' errors add), ``allocate(..., sensitivity=s)`` with the default
``normalize="relative"`` then minimises the modelled squared relative output error
sum_l s_l ||E_l||^2 / ||W_l||^2, instead of treating a layer whose error is amplified downstream like
one whose error is damped. The model is exact for one layer of a linear net; elsewhere it is an
estimate measured at one keep (use the keep of the budget you will allocate, e.g. 1 - sparsity).

A layer that keeps every nonzero entry at ``keep`` (E_l = 0) cannot be measured; it gets the largest
measured sensitivity (so it is not starved). A measured zero (the output ignores the layer) becomes
1e-12 times the largest, as `allocate` needs positive weights.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from .._validation import as_float_array, check_fraction
from ..sparse import topk_sparsify

__all__ = ["output_sensitivity"]


def output_sensitivity(model: Any, inputs: Any, *, keep: float = 0.5, layers: Iterable[str] | None = None) -> dict[str, float]:
    """Per-layer output sensitivity s_l (module docstring), for ``allocate(model, ..., sensitivity=s)``.

    Args:
        model: a torch module; its nn.Linear and nn.Conv2d layers by ``named_modules()`` name (the
            names `allocate` and `compress` use).
        inputs: the calibration batch, an array or tensor passed as ``model(inputs)`` in eval mode
            (cast to the dtype of the model's weights),
            or a callable with no arguments returning the output (any array-like; it runs the
            model, e.g. ``lambda: st_model.encode(sentences)`` for a wrapper around ``model``).
            Use data kept apart from any evaluation set.
        keep: keep fraction at which each layer's pruning error is measured, in (0, 1).
        layers: names to measure (default: every Linear and Conv2d layer).

    Returns name -> s_l > 0. Runs 1 + (number of layers) forward passes; the weights are restored
    after each (also on error). Deterministic when the forward pass is.
    """
    import torch
    import torch.nn as nn

    keep = check_fraction(keep, "keep")
    if keep >= 1.0:
        raise ValueError(f"keep must be below 1 (at keep=1 nothing is pruned), got {keep}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch module, got {type(model).__name__}")
    modules = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    names = list(modules) if layers is None else [str(name) for name in layers]
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"layers names unknown Linear/Conv2d layers {unknown[:5]}; the model has {list(modules)[:10]}")
    if not names:
        raise ValueError("no layer to measure: the model has no nn.Linear or nn.Conv2d layer, or layers is empty")

    if callable(inputs):
        run: Callable[[], Any] = inputs
    else:
        dtype = modules[names[0]].weight.dtype
        X = torch.as_tensor(as_float_array(inputs, "inputs", allow_empty=False)).to(dtype)  # the model's dtype

        def run() -> Any:
            return model(X)

    def output() -> np.ndarray:
        with torch.no_grad():
            out = run()
        out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out
        return np.asarray(out, dtype=np.float64)

    was_training = model.training
    model.eval()
    try:
        dense = output()
        dense_sq = float(np.sum(dense * dense))
        if not np.isfinite(dense_sq) or dense_sq == 0.0:
            raise ValueError(f"the dense output on inputs must be finite and not all zero, got squared norm {dense_sq}")
        measured: dict[str, float] = {}
        for name in names:
            weight = modules[name].weight
            original = weight.detach().clone()
            matrix = original.cpu().numpy().astype(np.float64).reshape(original.shape[0], -1)
            pruned = np.asarray(topk_sparsify(matrix, keep=keep).todense())
            weight_error = float(np.sum((matrix - pruned) ** 2)) / float(np.sum(matrix * matrix) or 1.0)
            if weight_error == 0.0:
                continue
            try:
                with torch.no_grad():
                    weight.copy_(torch.from_numpy(pruned.reshape(original.shape)).to(weight.dtype))
                diff = output() - dense
            finally:
                with torch.no_grad():
                    weight.copy_(original)
            measured[name] = float(np.sum(diff * diff)) / dense_sq / weight_error
    finally:
        model.train(was_training)
    largest = max(measured.values(), default=1.0)
    floor = 1e-12 * largest if largest > 0 else 1.0
    return {name: max(measured.get(name, largest), floor) for name in names}
