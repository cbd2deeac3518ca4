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


def plot_report(report: "ModelReport", directory: str | os.PathLike) -> list[str]:
    """Write ``NNN_<layer>.png`` per layer and ``compressibility.png``; return the paths written."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("ModelReport.plot needs matplotlib (pip install matplotlib)") from None
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
