"""Accuracy under noise, for several nets side by side: does a compressed net classify as resiliently
as the dense one?

Two kinds of noise, each at a list of levels sigma (0 = clean), each level drawn ``trials`` times:

- **input noise**: X + sigma * s * Z, Z ~ N(0, 1) i.i.d. per entry, s = sqrt(mean(X^2)) the RMS of
  the whole input array, so sigma is a noise-to-signal ratio. Every net sees the same draws
  (common random numbers: differences between nets are not sampling noise of Z).
- **weight noise**: every weight entry w of every Linear and Conv2d becomes w * (1 + sigma * N(0, 1))
  (multiplicative: zeros of a sparse weight stay zero; biases are left alone). Draws are seeded by
  (seed, level, trial), one after another over the layers.

Accuracy is the fraction of argmax(net(x)) == y. Nets are run in float64 through torch
(`htcore.measure._sequential`), so results do not depend on htcore's thread count.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .._validation import as_float_array, check_int, check_labels
from ._report import _maybe_write, data_frame
from ._sequential import WEIGHTED, check_input, forward, maybe_subsample, sequential_ops, to_tensor, torch_module

DEFAULT_INPUT_NOISE = (0.0, 0.1, 0.25, 0.5, 1.0)
DEFAULT_WEIGHT_NOISE = (0.0, 0.1, 0.25, 0.5, 1.0)
_INPUT, _WEIGHT = 0, 1  # seed-sequence tags of the two kinds of noise


@dataclass(frozen=True)
class Resilience:
    """`resilience`'s result. ``input_accuracy[m, l, t]``: accuracy of model ``names[m]`` at input-noise
    level ``input_noise[l]``, trial t; ``weight_accuracy`` likewise for weight noise."""

    names: tuple
    input_noise: tuple
    weight_noise: tuple
    n_samples: int
    trials: int
    input_accuracy: np.ndarray = field(repr=False, compare=False)
    weight_accuracy: np.ndarray = field(repr=False, compare=False)

    def rows(self) -> list[dict[str, Any]]:
        """Long format: one dict per (model, noise kind, sigma) with the mean and standard deviation
        of the accuracy over trials."""
        out = []
        for kind, levels, acc in (("input", self.input_noise, self.input_accuracy),
                                  ("weight", self.weight_noise, self.weight_accuracy)):
            for m, name in enumerate(self.names):
                for l, sigma in enumerate(levels):
                    out.append({"model": name, "noise": kind, "sigma": sigma, "accuracy": float(acc[m, l].mean()),
                                "accuracy_std": float(acc[m, l].std())})
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the settings and the accuracies (mean over trials) per model and level."""
        return {"names": list(self.names), "input_noise": list(self.input_noise), "weight_noise": list(self.weight_noise),
                "n_samples": self.n_samples, "trials": self.trials,
                "input_accuracy": {n: self.input_accuracy[m].mean(1).tolist() for m, n in enumerate(self.names)},
                "weight_accuracy": {n: self.weight_accuracy[m].mean(1).tolist() for m, n in enumerate(self.names)}}

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 2) -> str:
        return _maybe_write(json.dumps(self.as_dict(), indent=indent) + "\n", path)

    def to_pandas(self):
        """`rows` as a pandas DataFrame (needs pandas)."""
        return data_frame(self.rows(), None, "Resilience")

    def to_markdown(self) -> str:
        """Two tables (input noise, weight noise): one row per model, one column per sigma (mean accuracy)."""
        lines = []
        for kind, levels, acc in (("input", self.input_noise, self.input_accuracy),
                                  ("weight", self.weight_noise, self.weight_accuracy)):
            lines += [f"Accuracy under {kind} noise (mean of {self.trials} draws, {self.n_samples} samples):", "",
                      "| model | " + " | ".join(f"sigma {s:g}" for s in levels) + " |",
                      "|---|" + "---:|" * len(levels)]
            lines += [f"| {name} | " + " | ".join(f"{a:.4f}" for a in acc[m].mean(1)) + " |"
                      for m, name in enumerate(self.names)]
            lines.append("")
        return "\n".join(lines).rstrip()

    def summary(self) -> str:
        """One line per model: clean accuracy and the accuracy at the largest input and weight noise."""
        lines = [f"resilience on {self.n_samples} samples ({self.trials} draws per level):"]
        for m, name in enumerate(self.names):
            lines.append(f"  {name:<20} clean {self.input_accuracy[m, 0].mean():.4f}; input noise "
                         f"{self.input_noise[-1]:g}: {self.input_accuracy[m, -1].mean():.4f}; weight noise "
                         f"{self.weight_noise[-1]:g}: {self.weight_accuracy[m, -1].mean():.4f}")
        return "\n".join(lines)

    def plot(self, directory: str | os.PathLike) -> list[str]:
        """Write ``resilience.png`` (accuracy vs input noise and vs weight noise, one curve per model,
        bands of +- one standard deviation over draws) to ``directory``; return its path in a list."""
        from ._plots import plot_resilience

        return plot_resilience(self, directory)


def resilience(models: Mapping[str, Any], X: Any, y: Any, *, input_noise: Sequence[float] = DEFAULT_INPUT_NOISE,
               weight_noise: Sequence[float] = DEFAULT_WEIGHT_NOISE, trials: int = 3,
               max_samples: Optional[int] = None, seed: int = 0) -> Resilience:
    """Accuracy of each named model under Gaussian input noise and multiplicative weight noise (module
    docstring for the noise models).

    Parameters
    ----------
    models : mapping name -> torch ``nn.Sequential`` or `htcore.runtime.CompressedModel`
        e.g. ``{"dense": net, "keep 0.1": htcore.compress(net, keep=0.1)}``; any number, any mix.
    X, y : inputs (n, ...) the models read, and integer labels (n,)
    input_noise, weight_noise : sequences of sigma >= 0 (finite)
    trials : draws per level (accuracies are averaged; `Resilience.rows` gives the spread)
    max_samples : use a seeded subsample of at most this many rows (None: all)
    seed : int, seeds the subsample and every draw

    Returns a `Resilience`. Needs torch.
    """
    torch = torch_module()
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty mapping name -> model, got {type(models).__name__}")
    ops = {}
    for name, model in models.items():
        if not isinstance(name, str):
            raise TypeError(f"models keys must be str names, got {name!r}")
        ops[name] = sequential_ops(model, f"models[{name!r}]")
    X = as_float_array(X, "X", dtype=np.float64, allow_empty=False)
    for net in ops.values():
        check_input(net, X, "X")
    y = check_labels(y, X.shape[0], "y")
    levels_in, levels_w = _levels(input_noise, "input_noise"), _levels(weight_noise, "weight_noise")
    trials = check_int(trials, "trials", low=1)
    seed = check_int(seed, "seed", low=0)
    if max_samples is not None:
        max_samples = check_int(max_samples, "max_samples", low=1)
    rows = maybe_subsample(X.shape[0], max_samples, np.random.default_rng(seed))
    if rows is not None:
        X, y = X[rows], y[rows]
    x = to_tensor(X)
    rms = float(np.sqrt(np.mean(X * X)))
    acc_in = np.empty((len(ops), len(levels_in), trials))
    acc_w = np.empty((len(ops), len(levels_w), trials))
    with torch.no_grad():
        for name, net in ops.items():
            out = forward(net, x)
            if out.ndim != 2 or (y.size and y.max() >= out.shape[1]):
                raise ValueError(f"models[{name!r}] must output (batch, classes) with more classes than max(y) = "
                                 f"{y.max()}, got shape {tuple(out.shape)}")
        for l, sigma in enumerate(levels_in):
            for t in range(trials):
                z = np.random.default_rng([seed, _INPUT, l, t]).standard_normal(X.shape)
                noisy = x + torch.from_numpy(sigma * rms * z)
                for m, net in enumerate(ops.values()):
                    acc_in[m, l, t] = _accuracy(forward(net, noisy), y)
        for l, sigma in enumerate(levels_w):
            for t in range(trials):
                for m, net in enumerate(ops.values()):
                    rng = np.random.default_rng([seed, _WEIGHT, l, t])
                    noisy_net = [op.with_weight(op.weight * (1 + sigma * torch.from_numpy(rng.standard_normal(
                        tuple(op.weight.shape))))) if op.kind in WEIGHTED else op for op in net]
                    acc_w[m, l, t] = _accuracy(forward(noisy_net, x), y)
    return Resilience(names=tuple(ops), input_noise=levels_in, weight_noise=levels_w, n_samples=int(X.shape[0]),
                      trials=trials, input_accuracy=acc_in, weight_accuracy=acc_w)


def _levels(values: Any, name: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be a non-empty sequence of noise levels, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and float(v) >= 0):
            raise ValueError(f"{name} levels must be finite numbers >= 0, got {v!r}")
        out.append(float(v))
    return tuple(out)


def _accuracy(out: Any, y: np.ndarray) -> float:
    return float(np.mean(out.argmax(1).numpy() == y))
