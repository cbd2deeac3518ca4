"""Noise stability of a compressed net on the vectors its layers actually see (Arora, Ge, Neyshabur &
Zhang 2018, "Stronger generalization bounds for deep nets via a compression approach", arXiv:1802.05296).

Notation (Arora et al., Section 4). The net computes x^0 = x, x^i = A^i phi(x^(i-1)) (+ bias) for
layers i = 1..L, phi the activation after a layer (the identity where there is none); x^i is the
*pre-activation* output of layer i and phi(x^(i-1)) the vector reaching layer i. For a Conv2d, A^i is
the (out, in * kh * kw) matrix applied to each zero-padded input patch (block diagonal over groups), and
every patch of every image is one vector. W = A^i of the original net, W_hat of the compressed net,
E = W - W_hat, h = the number of columns of W (the input dimension of a Linear, in * kh * kw of a
Conv2d), x a vector reaching the layer.

Per layer (`LayerStability`):

- **relative error** ||E x|| / ||W x|| per vector (median, 90th percentile, max), beside the
  **Frobenius ratio** ||E||_F / ||W||_F, which is what an isotropic random x sees on average:
  E||E x||^2 / E||W x||^2 = ||E||_F^2 / ||W||_F^2 for x with E[x x^T] = c I. The **random prediction**
  is the median and 90th percentile of ||E g|| / ||W g|| over ``probes`` Gaussian vectors g ~ N(0, I_h)
  (seeded); it differs from the Frobenius ratio when few singular values dominate. Real inputs are
  "kinder" than random ones when the measured median is below it.
- **layer cushion** mu(x) = ||W x|| / (||W||_F ||x||) per vector; Arora et al.'s mu_i (Definition 4.1)
  is its minimum over the data. Reference: 1/sqrt(h), the value for a Gaussian random W and any
  fixed x (and, in expectation of the squares, for any W and an isotropic random x). A large cushion
  means W acts on x much more strongly than on a random vector, so noise (E x) is relatively small.
- **interlayer cushion** from layer i to the output (Definition 4.2 with j = L): with J the Jacobian
  of the map x^i -> x^L at the data point, mu_{i,L}(x) = ||J x^i|| / (||J||_F ||x^i||); Arora's
  mu_{i,L} is the minimum over the data. Reference 1/sqrt(dim x^i). For ReLU nets without biases
  J x^i = x^L. ||J||_F^2 is summed over the output units (one backward pass per output unit, batched
  over samples). For the last layer J = I and mu = 1/sqrt(dim x^L).
- **activation contraction** (Definition 4.3): c(x) = ||x^i|| / ||phi(x^i)|| for a layer followed by
  an element-wise activation (ReLU, GELU, tanh; NaN otherwise; inf where phi(x^i) = 0); Arora's c is
  the maximum over layers and data.
- **error propagation**: the relative output error ||g_i(x) - f(x)|| / ||f(x)|| when only this layer
  is replaced by its compressed version (weight and bias), its median, and the **gain**: the median
  over samples of that output error divided by the layer's own relative error on the sample
  ||E * x|| / ||W * x|| (the whole output map for a Conv2d; biases left out). Gain < 1: the error is
  damped on its way to the output.

For the net (`NoiseStability`): the relative output error with every layer compressed against the sum
over layers of the single-layer errors (per sample), and the **margins** f(x)[y] - max_{j != y} f(x)[j]
of the original f and the compressed g, with gamma = max_x ||f(x) - g(x)||_inf and the 2 gamma-margin
error of f (the fraction with margin <= 2 gamma), the pair `htcore.certify`'s Arora bound uses.
Vectors with ||x|| = 0 or ||W x|| = 0 (e.g. all-zero image patches) are left out of the
per-vector statistics and counted in ``n_dropped``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

import numpy as np

from .._validation import as_float_array, check_int, check_labels, make_rng
from ._report import _maybe_write, data_frame
from ._sequential import (
    ELEMENTWISE,
    WEIGHTED,
    Op,
    apply,
    check_corresponds,
    check_input,
    forward,
    layer_matrix,
    layer_vectors,
    maybe_subsample,
    sequential_ops,
    to_tensor,
    torch_module,
)


@dataclass(frozen=True)
class LayerStability:
    """Noise-stability figures of one compressed layer (definitions: module docstring). Fields that need
    the whole net (interlayer cushion, contraction, output error, gain) are NaN from `layer_stability`."""

    name: str  #: "layers.<i>", i the position in the runtime layer list (`CompressedModel.layers`)
    kind: str  #: "linear" or "conv2d"
    shape: tuple  #: (out, h) of the matrix acting on each vector
    n_vectors: int  #: vectors measured (samples, or samples x positions for a Conv2d)
    n_dropped: int  #: vectors left out: ||x|| = 0 or ||W x|| = 0
    density: float  #: nonzero fraction of W_hat
    frobenius_ratio: float  #: ||W - W_hat||_F / ||W||_F
    random_median: float  #: median of ||E g|| / ||W g|| over Gaussian probes g
    random_p90: float
    rel_error_median: float  #: ||E x|| / ||W x|| over the real vectors x
    rel_error_p90: float
    rel_error_max: float
    cushion_min: float  #: ||W x|| / (||W||_F ||x||); Arora's layer cushion is the minimum
    cushion_median: float
    cushion_reference: float  #: 1/sqrt(h)
    interlayer_cushion_min: float = math.nan  #: ||J x^i|| / (||J||_F ||x^i||), J: d x^L / d x^i
    interlayer_cushion_median: float = math.nan
    interlayer_reference: float = math.nan  #: 1/sqrt(dim x^i)
    contraction_median: float = math.nan  #: ||x^i|| / ||phi(x^i)||
    contraction_max: float = math.nan
    output_error_median: float = math.nan  #: ||g_i(x) - f(x)|| / ||f(x)||, only this layer compressed
    gain_median: float = math.nan  #: output error / the layer's own relative error, per sample
    rel_error: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)  #: per vector
    cushion: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)  #: per vector

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields, JSON-ready (NaN and inf as None; the per-vector arrays left out)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("rel_error", "cushion")}
        out["shape"] = list(self.shape)
        return out


@dataclass(frozen=True)
class NoiseStability:
    """`noise_stability`'s result: one `LayerStability` per compressed layer (every Linear/Conv2d) and the
    net's output errors and margins, per sample (definitions: `htcore.measure._stability` docstring)."""

    layers: tuple
    n_samples: int
    labels: str  #: "given" (y) or "original predictions" (argmax of f, when y is None)
    gamma: float  #: max over samples of ||f(x) - g(x)||_inf
    output_error_all: np.ndarray = field(repr=False, compare=False)  #: ||g(x) - f(x)|| / ||f(x)||, all compressed
    output_error_sum: np.ndarray = field(repr=False, compare=False)  #: sum over layers of the single-layer errors
    margins_original: np.ndarray = field(repr=False, compare=False)  #: f(x)[y] - max_{j != y} f(x)[j]
    margins_compressed: np.ndarray = field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name_or_index: str | int) -> LayerStability:
        if isinstance(name_or_index, str):
            for layer in self.layers:
                if layer.name == name_or_index:
                    return layer
            raise KeyError(f"no layer named {name_or_index!r}; layers are {[l.name for l in self.layers]}")
        return self.layers[name_or_index]

    def net_figures(self) -> dict[str, Any]:
        """Net-level figures: median output errors (all compressed; sum of single-layer errors), the
        fraction of samples where the joint error is at most the sum, margins and gamma."""
        mo, mc = self.margins_original, self.margins_compressed
        return {
            "n_samples": self.n_samples,
            "labels": self.labels,
            "output_error_all_median": _median(self.output_error_all),
            "output_error_all_p90": _quantile(self.output_error_all, 0.9),
            "output_error_sum_median": _median(self.output_error_sum),
            "subadditive_fraction": float(np.mean(self.output_error_all <= self.output_error_sum * (1 + 1e-12))),
            "margin_original_median": _median(mo),
            "margin_compressed_median": _median(mc),
            "margin_original_p10": _quantile(mo, 0.1),
            "margin_compressed_p10": _quantile(mc, 0.1),
            "nonpositive_margin_original": float(np.mean(mo <= 0)),
            "nonpositive_margin_compressed": float(np.mean(mc <= 0)),
            "gamma": self.gamma,
            "margin_error_2gamma_original": float(np.mean(mo <= 2 * self.gamma)),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One dict of scalar fields per layer (NaN kept, for tables)."""
        return [{f.name: getattr(l, f.name) for f in fields(l) if f.name not in ("rel_error", "cushion")}
                for l in self.layers]

    def as_dict(self) -> dict[str, Any]:
        """Everything but the per-sample arrays, JSON-ready (NaN and inf as None)."""
        return {"layers": [l.as_dict() for l in self.layers], "net": {k: _plain(v) for k, v in self.net_figures().items()}}

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 2) -> str:
        return _maybe_write(json.dumps(self.as_dict(), indent=indent) + "\n", path)

    def to_pandas(self):
        """The per-layer table as a pandas DataFrame (needs pandas)."""
        return data_frame(self.rows(), None, "NoiseStability")

    def to_markdown(self) -> str:
        """The per-layer table (relative errors vs the random-input predictions, cushions, propagation)
        followed by the net-level line."""
        head = ("| layer | kind | shape | density | rel err median | p90 | max | Frobenius | random median "
                "| cushion median | min | 1/sqrt(h) | interlayer median | contraction max | output err (this layer) "
                "| gain |")
        lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for l in self.layers:
            cells = [l.density, l.rel_error_median, l.rel_error_p90, l.rel_error_max, l.frobenius_ratio, l.random_median,
                     l.cushion_median, l.cushion_min, l.cushion_reference, l.interlayer_cushion_median,
                     l.contraction_max, l.output_error_median, l.gain_median]
            lines.append(f"| {l.name} | {l.kind} | {'x'.join(map(str, l.shape))} | " + " | ".join(map(_fmt, cells)) + " |")
        n = self.net_figures()
        lines += ["", f"All layers compressed: median relative output error {_fmt(n['output_error_all_median'])} "
                  f"(sum of single-layer errors {_fmt(n['output_error_sum_median'])}); margins median "
                  f"{_fmt(n['margin_original_median'])} -> {_fmt(n['margin_compressed_median'])}, non-positive "
                  f"{_fmt(n['nonpositive_margin_original'])} -> {_fmt(n['nonpositive_margin_compressed'])}; gamma "
                  f"{_fmt(n['gamma'])}, 2gamma-margin error of the original {_fmt(n['margin_error_2gamma_original'])} "
                  f"({n['n_samples']} samples, labels: {n['labels']})."]
        return "\n".join(lines)

    def summary(self) -> str:
        """A few lines: per layer, measured median relative error vs the Frobenius ratio and the cushion
        vs 1/sqrt(h); then the net's output errors and margins."""
        lines = [f"noise stability on {self.n_samples} samples, {len(self.layers)} compressed layers:"]
        for l in self.layers:
            verdict = "kinder" if l.rel_error_median < l.frobenius_ratio else "harsher"
            lines.append(f"  {l.name:<12} {l.kind:<6} {'x'.join(map(str, l.shape)):>10}  rel error median "
                         f"{l.rel_error_median:.3g} vs Frobenius {l.frobenius_ratio:.3g} ({verdict} than random); "
                         f"cushion median {l.cushion_median:.3g} vs 1/sqrt(h) {l.cushion_reference:.3g}")
        n = self.net_figures()
        lines.append(f"  output error, all compressed: median {n['output_error_all_median']:.3g} (sum of single layers "
                     f"{n['output_error_sum_median']:.3g}); margin median {n['margin_original_median']:.3g} -> "
                     f"{n['margin_compressed_median']:.3g}; gamma {n['gamma']:.3g}")
        return "\n".join(lines)

    def plot(self, directory: str | os.PathLike) -> list[str]:
        """Write ``noise_stability.png`` to ``directory`` (per-layer relative errors vs the Frobenius and
        random predictions; cushions vs 1/sqrt(h); margin histograms) and return its path in a list.
        Needs matplotlib."""
        from ._plots import plot_stability

        return plot_stability(self, directory)


def layer_stability(weight: Any, compressed_weight: Any, inputs: Any, *, name: str = "layer", probes: int = 256,
                    seed: Any = 0) -> LayerStability:
    """Relative errors and layer cushions of one matrix on given input vectors (the per-layer part of
    `noise_stability`, for nets that are not sequential, e.g. a transformer's Linear layers fed
    their captured inputs).

    ``weight``, ``compressed_weight``: (out, h) arrays or `CSRMatrix`; ``inputs``: (n, h), one vector per
    row. ``probes`` Gaussian vectors (seeded by ``seed``: None, an int or a numpy Generator) give the
    random-input prediction. Needs torch. Definitions: `htcore.measure._stability`'s docstring.
    """
    from ..sparse import CSRMatrix

    def matrix(w: Any, arg: str) -> np.ndarray:
        return as_float_array(w.todense() if isinstance(w, CSRMatrix) else w, arg, ndim=2, dtype=np.float64,
                              allow_empty=False)

    W, W_hat = matrix(weight, "weight"), matrix(compressed_weight, "compressed_weight")
    if W.shape != W_hat.shape:
        raise ValueError(f"compressed_weight has shape {W_hat.shape} but weight has {W.shape}")
    V = as_float_array(inputs, "inputs", ndim=2, dtype=np.float64, allow_empty=False)
    if V.shape[1] != W.shape[1]:
        raise ValueError(f"inputs must be (n, {W.shape[1]}) (weight has {W.shape[1]} columns), got shape {V.shape}")
    probes = check_int(probes, "probes", low=1)
    return _local_stats(to_tensor(W), to_tensor(W_hat), to_tensor(V), name, "linear", make_rng(seed), probes)


def noise_stability(original: Any, compressed: Any, X: Any, y: Any = None, *, max_samples: Optional[int] = 2000,
                    probes: int = 256, seed: Any = 0) -> NoiseStability:
    """How the compressed net's weight errors act on the real activations of ``X`` (definitions and
    references: the `htcore.measure._stability` module docstring).

    Parameters
    ----------
    original, compressed : torch ``nn.Sequential`` or `htcore.runtime.CompressedModel`
        Sequential MLPs or CNNs whose layers correspond one to one (same kinds, shapes, conv and pool
        sizes); every Linear and Conv2d is measured (a layer the compression left alone shows zeros).
    X : array (n, ...)
        Inputs, as the nets read them (finite).
    y : int array (n,), optional
        Labels for the margins; None uses the original net's predictions (margins then measure how
        confidently g agrees with f).
    max_samples : int or None
        At most this many rows of X (a seeded subsample without replacement); None uses all.
    probes : int
        Gaussian vectors per layer for the random-input prediction.
    seed : None, int or numpy Generator
        Seeds the subsample and the probes.

    Returns a `NoiseStability`. One batched pass per net, plus one pass from each layer onward for the
    single-layer errors and one backward pass per output unit for the interlayer cushions. Needs
    torch; computed in float64 (deterministic, no htcore kernels: identical at any thread count).
    """
    torch = torch_module()
    ops_f = sequential_ops(original, "original")
    ops_g = sequential_ops(compressed, "compressed")
    check_corresponds(ops_f, ops_g, ("original", "compressed"))
    X = as_float_array(X, "X", dtype=np.float64, allow_empty=False)
    check_input(ops_f, X, "X")
    if y is not None:
        y = check_labels(y, X.shape[0], "y")
    if max_samples is not None:
        max_samples = check_int(max_samples, "max_samples", low=1)
    probes = check_int(probes, "probes", low=1)
    rng = make_rng(seed)
    rows = maybe_subsample(X.shape[0], max_samples, rng)
    if rows is not None:
        X = X[rows]
        y = None if y is None else y[rows]
    n = X.shape[0]
    weighted = [i for i, op in enumerate(ops_f) if op.kind in WEIGHTED]

    # Original net, graph kept: the inputs of every op and the pre-activations x^i of weighted ops.
    x = to_tensor(X).requires_grad_(True)
    inputs, h = [], x
    pre: dict[int, Any] = {}
    for i, op in enumerate(ops_f):
        inputs.append(h)
        h = apply(op, h)
        if i in weighted:
            pre[i] = h
    f_out = h
    if f_out.ndim != 2:
        raise ValueError(f"the nets' output must be (batch, classes), got shape {tuple(f_out.shape)}")
    classes = f_out.shape[1]
    jac_sq = {i: torch.zeros(n, dtype=torch.float64) for i in weighted}
    jac_x = {i: torch.zeros(n, classes, dtype=torch.float64) for i in weighted}
    for k in range(classes):  # one backward pass per output unit gives row k of every J, per sample
        grads = torch.autograd.grad(f_out[:, k].sum(), [pre[i] for i in weighted], retain_graph=k < classes - 1)
        for i, g in zip(weighted, grads):
            g = g.reshape(n, -1)
            jac_sq[i] += (g * g).sum(1)
            jac_x[i][:, k] = (g * pre[i].detach().reshape(n, -1)).sum(1)

    with torch.no_grad():
        f = f_out.detach()
        f_norm = torch.linalg.vector_norm(f, dim=1)
        g_out = forward(ops_g, x.detach())
        if y is None:
            labels, labels_from = f.argmax(1).numpy(), "original predictions"
        else:
            if y.size and y.max() >= classes:
                raise ValueError(f"y labels must lie in [0, {classes}) (the nets' outputs), got max {y.max()}")
            labels, labels_from = y, "given"
        single_errors = []
        layers = []
        for i in weighted:
            op, op_hat = ops_f[i], ops_g[i]
            inp = inputs[i].detach()
            W, W_hat = layer_matrix(op), layer_matrix(op_hat)
            stats = _local_stats(W, W_hat, layer_vectors(op, inp), f"layers.{i}", op.kind, rng, probes)
            # single-layer compression, from this layer's input onward
            g_i = forward(ops_f[:i] + [op_hat] + ops_f[i + 1:], inp, start=i)
            out_err = _ratio(torch.linalg.vector_norm(g_i - f, dim=1), f_norm)
            single_errors.append(out_err)
            clean = apply(Op(op.kind, op.weight, None, op.params), inp).reshape(n, -1)
            noise = apply(Op(op.kind, op.weight - op_hat.weight, None, op.params), inp).reshape(n, -1)
            layer_err = _ratio(torch.linalg.vector_norm(noise, dim=1), torch.linalg.vector_norm(clean, dim=1))
            xi = pre[i].detach().reshape(n, -1)
            xi_norm = torch.linalg.vector_norm(xi, dim=1)
            inter = _ratio(torch.linalg.vector_norm(jac_x[i], dim=1), torch.sqrt(jac_sq[i]) * xi_norm)
            nxt = ops_f[i + 1].kind if i + 1 < len(ops_f) else None
            contraction = (_ratio(xi_norm, torch.linalg.vector_norm(apply(ops_f[i + 1], xi), dim=1))
                           if nxt in ELEMENTWISE else np.full(n, math.nan))
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = out_err / layer_err
            layers.append(replace(
                stats,
                interlayer_cushion_min=_min(inter), interlayer_cushion_median=_median(inter),
                interlayer_reference=1 / math.sqrt(xi.shape[1]),
                contraction_median=_median(contraction), contraction_max=_max(contraction),
                output_error_median=_median(out_err), gain_median=_median(gain[np.isfinite(gain)])))
        all_err = _ratio(torch.linalg.vector_norm(g_out - f, dim=1), f_norm)
        gamma = float((g_out - f).abs().max()) if n else math.nan
        return NoiseStability(
            layers=tuple(layers), n_samples=n, labels=labels_from, gamma=gamma,
            output_error_all=all_err, output_error_sum=np.sum(single_errors, axis=0),
            margins_original=_margins(f.numpy(), labels), margins_compressed=_margins(g_out.numpy(), labels))


def _local_stats(W: Any, W_hat: Any, V: Any, name: str, kind: str, rng: np.random.Generator,
                 probes: int) -> LayerStability:
    """Relative errors, cushions and the random-input prediction of one matrix on the rows of V."""
    torch = torch_module()

    E = W - W_hat
    w_fro = float(torch.linalg.matrix_norm(W))
    clean = torch.linalg.vector_norm(V @ W.T, dim=1)
    noise = torch.linalg.vector_norm(V @ E.T, dim=1)
    v_norm = torch.linalg.vector_norm(V, dim=1)
    keep = (v_norm > 0) & (clean > 0)
    rel = (noise[keep] / clean[keep]).numpy()
    cushion = (clean[keep] / (w_fro * v_norm[keep])).numpy()
    G = torch.from_numpy(rng.standard_normal((probes, W.shape[1])))
    random_ratio = _ratio(torch.linalg.vector_norm(G @ E.T, dim=1), torch.linalg.vector_norm(G @ W.T, dim=1))
    return LayerStability(
        name=name, kind=kind, shape=tuple(W.shape), n_vectors=int(V.shape[0]), n_dropped=int((~keep).sum()),
        density=float(torch.count_nonzero(W_hat)) / W_hat.numel(),
        frobenius_ratio=float(torch.linalg.matrix_norm(E)) / w_fro if w_fro > 0 else math.nan,
        random_median=_median(random_ratio), random_p90=_quantile(random_ratio, 0.9),
        rel_error_median=_median(rel), rel_error_p90=_quantile(rel, 0.9), rel_error_max=_max(rel),
        cushion_min=_min(cushion), cushion_median=_median(cushion), cushion_reference=1 / math.sqrt(W.shape[1]),
        rel_error=rel, cushion=cushion)


def _ratio(num: Any, den: Any) -> np.ndarray:
    """num / den elementwise as numpy (NaN where both are 0, inf where only den is)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num.numpy() / den.numpy(), dtype=np.float64)


def _margins(out: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """f(x)[y] - max_{j != y} f(x)[j] per row (NaN for a single output unit)."""
    if out.shape[1] < 2:
        return np.full(out.shape[0], math.nan)
    rows = np.arange(out.shape[0])
    true = out[rows, labels]
    others = out.copy()
    others[rows, labels] = -np.inf
    return true - others.max(axis=1)


def _finite(a: np.ndarray) -> np.ndarray:
    return a[~np.isnan(a)]


def _median(a: np.ndarray) -> float:
    a = _finite(np.asarray(a))
    return float(np.median(a)) if a.size else math.nan


def _quantile(a: np.ndarray, q: float) -> float:
    a = _finite(np.asarray(a))
    return float(np.quantile(a, q)) if a.size else math.nan


def _min(a: np.ndarray) -> float:
    a = _finite(np.asarray(a))
    return float(a.min()) if a.size else math.nan


def _max(a: np.ndarray) -> float:
    a = _finite(np.asarray(a))
    return float(a.max()) if a.size else math.nan


def _plain(v: Any) -> Any:
    """JSON-ready scalar: numpy -> Python, NaN and inf -> None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.3g}"
    return str(v)
