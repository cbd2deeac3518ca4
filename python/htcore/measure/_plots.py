"""PNG plots of a `ModelReport` (matplotlib, Agg canvas; imported only when plotting).

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, so
plotting never touches pyplot's global state or the user's interactive backend.
"""
from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._report import LayerReport, ModelReport
    from ._resilience import Resilience
    from ._stability import NoiseStability


def _matplotlib(owner: str):
    """(Figure, FigureCanvasAgg), or an ImportError naming matplotlib and the method that needs it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"{owner} needs matplotlib (pip install matplotlib)") from None
    return Figure, FigureCanvasAgg


def plot_report(report: "ModelReport", directory: str | os.PathLike) -> list[str]:
    """Write ``NNN_<layer>.png`` per layer and ``compressibility.png``; return the paths written."""
    Figure, FigureCanvasAgg = _matplotlib("ModelReport.plot")
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, layer in enumerate(report.layers):
        if layer.evals is None and layer.element_ccdf is None:
            continue
        fig = Figure(figsize=(10, 4), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        _plot_esd(left, layer)
        _plot_ccdf(right, layer)
        fig.suptitle(f"{layer.name}  ({layer.kind}, {'x'.join(map(str, layer.shape))})", fontsize=10)
        path = os.path.join(os.fspath(directory), f"{i:03d}_{_safe(layer.name)}.png")
        fig.savefig(path, dpi=90)
        paths.append(path)
    if report.keeps and any(layer.rel_error is not None for layer in report.layers):
        fig = Figure(figsize=(6, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        _plot_compressibility(fig.subplots(), report)
        path = os.path.join(os.fspath(directory), "compressibility.png")
        fig.savefig(path, dpi=90)
        paths.append(path)
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100]


def _plot_esd(ax, layer: "LayerReport") -> None:
    ax.set_title("ESD (eigenvalues of $W^TW$)", fontsize=9)
    evals = layer.evals
    if evals is None:
        ax.set_axis_off()
        return
    positive = evals[evals > 1e-5]
    if positive.size < 2 or positive.min() == positive.max():
        ax.text(0.5, 0.5, "too few nonzero eigenvalues", ha="center", transform=ax.transAxes)
        return
    bins = np.geomspace(positive.min(), positive.max(), min(100, max(10, positive.size // 5)))
    density, edges = np.histogram(positive, bins=bins, density=True)
    centers = np.sqrt(edges[:-1] * edges[1:])
    shown = density > 0
    ax.loglog(centers[shown], density[shown], "o", ms=3, color="tab:blue", label="ESD (log bins)")
    s = layer.spectral
    if s is not None and not math.isnan(s.alpha):
        frac = np.count_nonzero(positive >= s.xmin) / positive.size
        x = np.geomspace(s.xmin, s.xmax, 50)
        pdf = frac * (s.alpha - 1) / s.xmin * (x / s.xmin) ** (-s.alpha)
        ax.loglog(x, pdf, "-", color="tab:red", label=f"power law, alpha={s.alpha:.3g} (pdf exponent)")
        ax.axvline(s.xmin, color="tab:red", ls=":", lw=1, label=f"xmin={s.xmin:.3g}")
    ax.set_xlabel(r"$\lambda = \sigma^2$")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)


def _plot_ccdf(ax, layer: "LayerReport") -> None:
    ax.set_title("CCDF of |w|", fontsize=9)
    if layer.element_ccdf is None:
        ax.set_axis_off()
        return
    x, p = layer.element_ccdf
    ax.loglog(x, p, "-", color="tab:blue", label="P(|w| >= x)")
    e = layer.elements
    if e is not None and not math.isnan(e.tail_index):
        # Hill's tail: P(|w| > x) = (k/n) (x/u)^-alpha above the threshold u where the CCDF is k/n.
        share = e.hill_k / e.n
        u = float(np.exp(np.interp(-math.log(share), -np.log(p), np.log(x))))
        xs = np.geomspace(u, x[-1], 30)
        ax.loglog(xs, share * (xs / u) ** (-e.tail_index), "--", color="tab:red",
                  label=f"Hill tail index {e.tail_index:.3g} [{e.tail_index_ci_low:.3g}, {e.tail_index_ci_high:.3g}], k={e.hill_k}")
    ax.set_xlabel("|w|")
    ax.set_ylabel("fraction of entries")
    ax.legend(fontsize=7)


def _plot_compressibility(ax, report: "ModelReport") -> None:
    keeps = np.array(report.keeps)
    order = np.argsort(keeps)
    curves = [layer for layer in report.layers if layer.rel_error is not None]
    for layer in curves:
        ax.plot(keeps[order], np.array(layer.rel_error)[order], "o-", ms=3, lw=0.8, alpha=0.7, label=layer.name[-40:])
    if len(curves) <= 12:  # a legend is only readable for a few layers
        ax.legend(fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("keep fraction (top-k by |w|)")
    ax.set_ylabel(r"$\|W - W_k\|_F / \|W\|_F$")
    ax.set_title(f"Compressibility of {len(report.layers)} layers", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def plot_stability(result: "NoiseStability", directory: str | os.PathLike, filename: str = "noise_stability.png") -> list[str]:
    """Write one PNG with three panels: per-layer relative errors ||E x|| / ||W x|| (median, 90th
    percentile, max) against the Frobenius ratio and the random-input median; layer cushions against
    1/sqrt(h); margin histograms of the original and compressed nets. Return its path in a list."""
    Figure, FigureCanvasAgg = _matplotlib("NoiseStability.plot")
    os.makedirs(directory, exist_ok=True)
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    errors, cushions, margins = fig.subplots(1, 3)
    layers = result.layers
    pos = np.arange(len(layers))
    labels = [layer.name for layer in layers]
    med = np.array([l.rel_error_median for l in layers])
    errors.errorbar(pos, med, yerr=[np.zeros_like(med), np.array([l.rel_error_p90 for l in layers]) - med],
                    fmt="o", color="tab:blue", capsize=3, label="real inputs: median, 90th pct")
    errors.plot(pos, [l.rel_error_max for l in layers], "v", color="tab:blue", ms=4, alpha=0.6, label="real inputs: max")
    errors.plot(pos, [l.frobenius_ratio for l in layers], "s", mfc="none", color="tab:red", ms=9,
                label=r"$\|W-\hat W\|_F / \|W\|_F$")
    errors.plot(pos, [l.random_median for l in layers], "x", color="tab:orange", ms=8, label="random x: median")
    errors.set_ylabel(r"$\|(W-\hat W)x\| / \|Wx\|$")
    errors.set_title("Relative error of each compressed layer", fontsize=10)
    errors.set_ylim(bottom=0)
    cushion_data = [l.cushion if l.cushion.size else np.array([np.nan]) for l in layers]
    cushions.boxplot(cushion_data, positions=pos, widths=0.5, showfliers=False)
    cushions.plot(pos, [l.cushion_reference for l in layers], "_", color="tab:red", ms=20, mew=2,
                  label=r"$1/\sqrt{h}$ (random)")
    cushions.set_yscale("log")
    cushions.set_ylabel(r"layer cushion $\|Wx\| / (\|W\|_F \|x\|)$")
    cushions.set_title("Layer cushions on real inputs", fontsize=10)
    for ax in (errors, cushions):
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, rotation=45 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center",
                           fontsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    both = np.concatenate([result.margins_original, result.margins_compressed])
    both = both[np.isfinite(both)]
    if both.size:
        bins = np.linspace(both.min(), both.max(), 50)
        margins.hist(result.margins_original, bins=bins, alpha=0.5, color="tab:blue", label="original")
        margins.hist(result.margins_compressed, bins=bins, alpha=0.5, color="tab:orange", label="compressed")
        margins.axvline(0, color="k", lw=0.8)
        margins.axvline(2 * result.gamma, color="tab:red", ls=":", label=f"2 gamma = {2 * result.gamma:.3g}")
        margins.legend(fontsize=7)
    margins.set_xlabel(r"margin $f(x)_y - \max_{j \neq y} f(x)_j$")
    margins.set_title(f"Margins ({result.n_samples} samples, labels: {result.labels})", fontsize=10)
    path = os.path.join(os.fspath(directory), filename)
    fig.savefig(path, dpi=90)
    return [path]


def plot_resilience(result: "Resilience", directory: str | os.PathLike, filename: str = "resilience.png") -> list[str]:
    """Write one PNG: accuracy vs input-noise sigma and vs weight-noise sigma, one curve per model with
    a band of +- one standard deviation over draws. Return its path in a list."""
    Figure, FigureCanvasAgg = _matplotlib("Resilience.plot")
    os.makedirs(directory, exist_ok=True)
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 2, sharey=True)
    for ax, kind, levels, acc in ((panels[0], "input", result.input_noise, result.input_accuracy),
                                  (panels[1], "weight", result.weight_noise, result.weight_accuracy)):
        for m, name in enumerate(result.names):
            mean, std = acc[m].mean(1), acc[m].std(1)
            line, = ax.plot(levels, mean, "o-", ms=4, label=name)
            ax.fill_between(levels, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel(r"$\sigma$ (input: relative to the input RMS)" if kind == "input"
                      else r"$\sigma$ ($w \to w(1 + \sigma N(0,1))$)")
        ax.set_title(f"Accuracy under {kind} noise", fontsize=10)
        ax.grid(True, alpha=0.3)
    panels[0].set_ylabel("accuracy")
    panels[0].legend(fontsize=7)
    path = os.path.join(os.fspath(directory), filename)
    fig.savefig(path, dpi=90)
    return [path]
