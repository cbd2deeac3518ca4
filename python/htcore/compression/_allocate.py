"""`allocate`: per-layer keep fractions under one total budget, from measured compressibility.

The problem (separable): choose k_l entries to keep in each weight matrix W_l (the top-k_l |w|, as
`compress` and `sparsify_model` keep them; 1 <= k_l <= n_l, so no layer is cut off) to minimise

    E(k) = sum_l s_l * D_l(k_l) / N_l,   D_l(k) = sum of squares of the entries top-k drops,

where s_l is the layer's sensitivity (1 unless given; `htcore.output_sensitivity` measures the
squared relative output error per unit squared relative weight error of each layer on calibration
inputs, which makes E the modelled squared relative output error of the net: a layer whose error the
net amplifies downstream then keeps more) and N_l = ||W_l||_F^2 with
``normalize="relative"`` (the default: every layer's squared relative Frobenius error counts alike,
whatever its scale) or N_l = 1 with ``normalize="absolute"``. D_l is each matrix's exact
compressibility curve, squared: `htcore.compressibility_curve` gives sqrt(D_l(k) / ||W_l||^2).

Keeping the j-th largest |w| of layer l lowers E by its gain s_l w_(j)^2 / N_l, and gains fall
with j, so E is separable convex in k: taking entries in order of decreasing gain (after each
layer's largest, which is forced) is optimal for every count. Budgets:

- ``nnz=B``: exactly B entries in total; the greedy is exact (it is one global threshold on the
  weighted w^2), equal gains going to the earlier layer, then the higher-ranked entry.
- ``bits=B``: each kept entry of W_l costs c_l = value_bits + ceil(log2 n_l) bits (its value and its
  index in the matrix: an upper bound on `code_length`'s ceil log2 C(n_l, k_l) position code; k_l
  itself, biases and architecture are not counted). Items are taken by decreasing gain / c_l while
  they fit. This is a knapsack, and the greedy is optimal only for the budget it uses (``bits``
  of the result; no allocation costing at most that has a lower E), falling short of the optimum at
  B by at most the gain of the first entry that did not fit.
- ``rel_error=t``: the fewest entries (in the same order as ``nnz``, so the minimum total nnz) with
  sqrt(E / E_0) <= t, E_0 = sum_l s_l ||W_l||^2 / N_l the error with nothing kept.

Methods (the order entries are taken in; the budget rule is the same):

- "curve": decreasing gain (/ cost for ``bits``): the optimum above.
- "global": decreasing |w| over all layers, one magnitude threshold (normalize, sensitivity and,
  for ``bits``, the costs ignored for the order), as `htcore.sparsify_global` (but every layer
  keeps >= 1).
- "uniform": the same keep fraction everywhere: entries taken by increasing (rank / n_l), so each
  k_l is within one of B n_l / sum n (earlier layers first on equal fractions).
- "tail": from each layer's element tail index alone, alpha_l = `htcore.hill` (auto-k) of its
  element sample, no other use of the weights: a Pareto magnitude law with tail index alpha keeps
  the fraction q^(1 - 2/alpha) of ||W||^2 in its top fraction q, so the modelled gain of the j-th
  entry of n is s_l ((j/n)^g - ((j-1)/n)^g), g = 1 - 2 / max(alpha_l, 2.1) (alpha <= 2 has no finite
  variance; a light tail, alpha = inf, gives g = 1, a uniform allocation). Needs >= 20 nonzero
  entries per layer. ``normalize`` does not enter its order (the model is relative).

E and the per-layer errors reported are always the true ones, whatever the method.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from .._validation import as_float_array, check_fraction, check_int, check_positive
from ..measure import element_sample, hill

__all__ = ["METHODS", "Allocation", "allocate", "weight_layers"]

METHODS = ("curve", "global", "uniform", "tail")
_MIN_TAIL_ALPHA = 2.1  # below 2 the Pareto model has no finite second moment


@dataclass(frozen=True)
class Allocation(Mapping[str, float]):
    """Result of `allocate`: a mapping layer name -> keep fraction, ready for
    ``htcore.compress(per_layer=...)`` and ``htcore.nn.sparsify_model(model, keep=...)``.

    Attributes:
        keep: keep fraction per layer, k / n (``ceil(keep * n)`` gives k back exactly).
        k: entries kept per layer.
        size: entries per layer.
        method, normalize: as given.
        nnz: total entries kept.
        bits: the total under the ``bits`` cost model (value_bits + ceil log2 n per entry).
        error: the objective E (module docstring).
        rel_error: sqrt(E / E_0), E_0 the objective with nothing kept.
        layer_rel_error: ||W - W_k||_F / ||W||_F per layer (0 for an all-zero layer).
    """

    keep: dict[str, float]
    k: dict[str, int]
    size: dict[str, int]
    method: str
    normalize: str
    nnz: int
    bits: int
    error: float
    rel_error: float
    layer_rel_error: dict[str, float]

    def __getitem__(self, name: str) -> float:
        return self.keep[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keep)

    def __len__(self) -> int:
        return len(self.keep)

    def as_dict(self) -> dict[str, Any]:
        """Plain types, for JSON."""
        return {"method": self.method, "normalize": self.normalize, "nnz": self.nnz, "bits": self.bits,
                "error": self.error, "rel_error": self.rel_error,
                "layers": {name: {"keep": self.keep[name], "k": self.k[name], "size": self.size[name],
                                  "rel_error": self.layer_rel_error[name]} for name in self.keep}}


def weight_layers(model_or_layers: Any) -> dict[str, np.ndarray]:
    """name -> weight array: a mapping's own names, or the ``named_modules()`` names of a torch
    module's nn.Linear and nn.Conv2d layers (the names `compress` and `sparsify_model` take)."""
    if isinstance(model_or_layers, Mapping):
        items = [(str(name), w) for name, w in model_or_layers.items()]
    elif hasattr(model_or_layers, "named_modules"):
        import torch.nn as nn

        items = [(name, m.weight.detach().cpu().numpy()) for name, m in model_or_layers.named_modules()
                 if isinstance(m, (nn.Linear, nn.Conv2d))]
    else:
        raise TypeError("model_or_layers must be a torch module or a mapping name -> weight array, "
                        f"got {type(model_or_layers).__name__}")
    if not items:
        raise ValueError("model_or_layers has no weight matrix (no nn.Linear or nn.Conv2d, or an empty mapping)")
    layers = {}
    for name, w in items:
        arr = as_float_array(w, f"weights[{name!r}]", dtype=np.float64, allow_empty=False)
        layers[name] = arr.reshape(-1)
    return layers


def _check_sensitivity(sensitivity: Mapping[str, float] | None, names: list[str]) -> np.ndarray:
    if sensitivity is None:
        return np.ones(len(names))
    if not isinstance(sensitivity, Mapping):
        raise TypeError(f"sensitivity must be a mapping layer name -> positive weight, got {type(sensitivity).__name__}")
    unknown = sorted(set(map(str, sensitivity)) - set(names))
    if unknown:
        raise ValueError(f"sensitivity names unknown layers {unknown[:5]}; layers are {names}")
    values = {str(name): value for name, value in sensitivity.items()}
    out = np.ones(len(names))
    for i, name in enumerate(names):
        if name in values:
            out[i] = check_positive(values[name], f"sensitivity[{name!r}]")
    return out


def _tail_gains(weight_values: np.ndarray, name: str, weight: float) -> np.ndarray:
    """Modelled gains of the Pareto law with the layer's Hill tail index (module docstring)."""
    sample = element_sample(weight_values)
    if sample.size < 20:
        raise ValueError(f"method='tail' needs >= 20 nonzero entries per layer; layer {name!r} has {sample.size}")
    g = 1.0 - 2.0 / max(hill(sample).alpha, _MIN_TAIL_ALPHA)
    fractions = np.arange(weight_values.size + 1) / weight_values.size
    return weight * np.diff(fractions**g)


def allocate(
    model_or_layers: Any,
    *,
    nnz: int | None = None,
    bits: int | None = None,
    rel_error: float | None = None,
    method: str = "curve",
    normalize: str = "relative",
    sensitivity: Mapping[str, float] | None = None,
    value_bits: int = 32,
) -> Allocation:
    """Per-layer keep fractions minimising the summed squared pruning error under one budget.

    Args:
        model_or_layers: a torch module (its nn.Linear and nn.Conv2d weights, by module name) or a
            mapping name -> weight array (any shape; all entries of a tensor compete).
        nnz: total entries kept (between the number of layers and the number of weights).
        bits: total bits of kept values and positions (module docstring's cost model).
        rel_error: target sqrt(E / E_0) in [0, 1]; the fewest entries reaching it.
        method: "curve" (optimal), "global", "uniform" or "tail" (module docstring).
        normalize: "relative" (each layer's error over its ||W||_F^2) or "absolute".
        sensitivity: optional positive weight s_l per layer name; missing layers weigh 1. With
            ``htcore.output_sensitivity(model, calibration_inputs, keep=...)`` (and the default
            normalize) E models the squared relative output error instead of the weights' error.
        value_bits: bits per kept value in the ``bits`` cost model (32 for float32).

    Give exactly one of nnz, bits and rel_error. Returns an `Allocation` (a mapping name -> keep).
    Deterministic: no randomness except the seeded Hill bootstrap of method="tail".
    """
    budgets = [name for name, v in (("nnz", nnz), ("bits", bits), ("rel_error", rel_error)) if v is not None]
    if len(budgets) != 1:
        raise ValueError(f"give exactly one budget of nnz, bits and rel_error, got {budgets or 'none'}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if normalize not in ("relative", "absolute"):
        raise ValueError(f"normalize must be 'relative' or 'absolute', got {normalize!r}")
    value_bits = check_int(value_bits, "value_bits", low=1)
    layers = weight_layers(model_or_layers)
    names = list(layers)
    weights = _check_sensitivity(sensitivity, names)

    # each layer's squared magnitudes, largest first, and the per-entry weights of the objective
    squares = [np.sort(w * w)[::-1] for w in layers.values()]
    sizes = np.array([sq.size for sq in squares], dtype=np.int64)
    totals = np.array([float(np.sum(sq)) for sq in squares])
    scale = weights / np.where(totals > 0, totals, 1.0) if normalize == "relative" else weights
    costs = np.array([value_bits + (int(n) - 1).bit_length() for n in sizes], dtype=np.int64)
    gains = [sq * c for sq, c in zip(squares, scale)]

    if method == "curve":
        priority = gains
    elif method == "global":
        priority = squares
    elif method == "uniform":
        priority = [-np.arange(1, n + 1) / n for n in sizes]
    else:
        priority = [_tail_gains(w, name, s) for w, name, s in zip(layers.values(), names, weights)]
    if bits is not None and method in ("curve", "tail"):
        priority = [p / c for p, c in zip(priority, costs)]  # gain per bit

    # the pool: every entry but each layer's largest (always kept), in the order the method takes them
    layer_of = np.repeat(np.arange(len(names)), sizes - 1)
    pool_priority = np.concatenate([p[1:] for p in priority])
    order = np.argsort(-pool_priority, kind="stable")  # ties: earlier layer, then higher rank
    taken_layers = layer_of[order]
    n_layers, n_total = len(names), int(sizes.sum())

    if nnz is not None:
        nnz = check_int(nnz, "nnz")
        if not n_layers <= nnz <= n_total:
            raise ValueError(f"nnz must be between the number of layers ({n_layers}: each keeps at least one "
                             f"entry) and the number of weights ({n_total}), got {nnz}")
        count = nnz - n_layers
    elif bits is not None:
        bits = check_int(bits, "bits")
        least, most = int(costs.sum()), int(costs @ sizes)
        if not least <= bits <= most:
            raise ValueError(f"bits must be between {least} (one entry per layer) and {most} (every weight) "
                             f"at value_bits={value_bits}, got {bits}")
        spent = np.cumsum(costs[taken_layers])
        count = int(np.searchsorted(spent, bits - least, side="right"))
    else:
        target = check_fraction(rel_error, "rel_error", include_zero=True)
        pool_gains = np.concatenate([g[1:] for g in gains])[order]
        # remaining error after taking the first i pool entries, i = 0..len, summed from the back
        remaining = np.concatenate([np.cumsum(pool_gains[::-1])[::-1], [0.0]])
        empty = float(np.sum(scale * totals))
        count = int(np.argmax(remaining <= target * target * empty))

    k = 1 + np.bincount(taken_layers[:count], minlength=n_layers)
    dropped = np.array([float(np.sum(sq[int(kl):])) for sq, kl in zip(squares, k)])
    error = float(np.sum(scale * dropped))
    empty_error = float(np.sum(scale * totals))
    return Allocation(
        keep={name: int(kl) / int(n) for name, kl, n in zip(names, k, sizes)},
        k={name: int(kl) for name, kl in zip(names, k)},
        size={name: int(n) for name, n in zip(names, sizes)},
        method=method,
        normalize=normalize,
        nnz=int(k.sum()),
        bits=int(costs @ k),
        error=error,
        rel_error=math.sqrt(error / empty_error) if empty_error > 0 else 0.0,
        layer_rel_error={name: math.sqrt(d / t) if t > 0 else 0.0 for name, d, t in zip(names, dropped, totals)},
    )
