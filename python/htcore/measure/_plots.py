"""PNG plots of a `ModelReport` (matplotlib, Agg canvas; imported only when plotting).

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, so
plotting never touches pyplot's global state or the user's interactive backend.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import re
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from ._report import LayerReport, ModelReport
    from ._resilience import Resilience
    from ._stability import NoiseStability


# Font sizes (points; saved at DPI = 90) that stay readable when a figure is shown at its own width,
# one figure per row of the report: legends and tick labels of 9 pt are 11 px.
DPI = 90
STYLE: dict[Any, Any] = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "figure.titlesize": 12}


def _matplotlib(owner: str):
    """(Figure, FigureCanvasAgg), or an ImportError naming matplotlib and the method that needs it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"{owner} needs matplotlib (pip install matplotlib)") from None
    return Figure, FigureCanvasAgg


def _styled() -> contextlib.AbstractContextManager:
    """A context in which figures are made and saved with `STYLE` (none without matplotlib: the
    plotting function then raises `_matplotlib`'s ImportError)."""
    try:
        import matplotlib
    except ImportError:
        return contextlib.nullcontext()
    return matplotlib.rc_context(STYLE)


def _in_style(plot: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """``plot`` run inside `_styled`."""
    @functools.wraps(plot)
    def styled(*args: Any, **kwargs: Any) -> list[str]:
        with _styled():
            return plot(*args, **kwargs)
    return styled


def plot_report(report: "ModelReport", directory: str | os.PathLike) -> list[str]:
    """Write ``NNN_<layer>.png`` per layer and ``compressibility.png``; return the paths written.

    A fitted tail is drawn only over enough points: the ESD's power law over at least
    `MIN_SPECTRAL_TAIL` eigenvalues, Hill's tail over at least `MIN_HILL_K` order statistics. A
    small-sample estimate (`spectral_small_sample`, `element_small_sample`) has its tail region
    hatched and a legend entry saying so, and the panel says when its line was left out."""
    Figure, FigureCanvasAgg = _matplotlib("ModelReport.plot")
    os.makedirs(directory, exist_ok=True)
    paths = []
    with _styled():
        for i, layer in enumerate(report.layers):
            if layer.evals is None and layer.element_ccdf is None:
                continue
            fig = Figure(figsize=(11, 4.4), layout="constrained")
            FigureCanvasAgg(fig)
            left, right = fig.subplots(1, 2)
            _plot_esd(left, layer)
            _plot_ccdf(right, layer)
            fig.suptitle(f"{layer.name}  ({layer.kind}, {'x'.join(map(str, layer.shape))})")
            path = os.path.join(os.fspath(directory), f"{i:03d}_{_safe(layer.name)}.png")
            fig.savefig(path, dpi=DPI)
            paths.append(path)
        if report.keeps and any(layer.rel_error is not None for layer in report.layers):
            fig = Figure(figsize=(8, 5), layout="constrained")
            FigureCanvasAgg(fig)
            _plot_compressibility(fig.subplots(), report)
            path = os.path.join(os.fspath(directory), "compressibility.png")
            fig.savefig(path, dpi=DPI)
            paths.append(path)
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100]


SMALL_SAMPLE_HATCH = dict(facecolor="none", edgecolor="tab:gray", hatch="//", lw=0)


def _plot_esd(ax, layer: "LayerReport") -> None:
    from ._report import MIN_SPECTRAL_EVALS, MIN_SPECTRAL_TAIL, spectral_small_sample

    ax.set_title("ESD (eigenvalues of $W^TW$)")
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
    ax.loglog(centers[shown], density[shown], "o", ms=4, color="tab:blue", label="ESD (log bins)")
    s = layer.spectral
    if s is not None and not math.isnan(s.alpha):
        if s.num_spikes >= MIN_SPECTRAL_TAIL:
            frac = np.count_nonzero(positive >= s.xmin) / positive.size
            x = np.geomspace(s.xmin, s.xmax, 50)
            pdf = frac * (s.alpha - 1) / s.xmin * (x / s.xmin) ** (-s.alpha)
            ax.loglog(x, pdf, "-", color="tab:red", label=f"power law, alpha = {s.alpha:.3g} (pdf exponent)")
        ax.axvline(s.xmin, color="tab:red", ls=":", lw=1, label=f"xmin = {s.xmin:.3g}")
        if spectral_small_sample(s):
            ax.axvspan(s.xmin, s.xmax, **SMALL_SAMPLE_HATCH,
                       label=f"small sample: {s.num_evals} eigenvalues (< {MIN_SPECTRAL_EVALS}), tail of {s.num_spikes}"
                             f"\nalpha = {s.alpha:.3g}: read with care")
        if s.num_spikes < MIN_SPECTRAL_TAIL:
            _note(ax, f"fit line not drawn: tail of {s.num_spikes} eigenvalues < {MIN_SPECTRAL_TAIL}")
    ax.set_xlabel(r"$\lambda = \sigma^2$")
    ax.set_ylabel("density")
    _legend_below(ax)


def _plot_ccdf(ax, layer: "LayerReport") -> None:
    from ._report import MIN_HILL_K, element_small_sample

    ax.set_title("CCDF of |w|")
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
        label = f"Hill tail index {e.tail_index:.3g} [{e.tail_index_ci_low:.3g}, {e.tail_index_ci_high:.3g}], k = {e.hill_k}"
        if e.hill_k >= MIN_HILL_K:
            xs = np.geomspace(u, x[-1], 30)
            ax.loglog(xs, share * (xs / u) ** (-e.tail_index), "--", color="tab:red", label=label)
        if element_small_sample(e):
            # the hatch over the k largest |w| can be a sliver on log axes: a ring marks where it starts
            ax.axvspan(u, x[-1], **SMALL_SAMPLE_HATCH)
            ax.loglog([u], [share], "o", ms=12, mfc="none", mec="tab:gray", mew=1.5,
                      label=f"small sample: {label}\n(k < {MIN_HILL_K}): read with care")
            _note(ax, f"Hill tail line not drawn: k = {e.hill_k} < {MIN_HILL_K}")
    ax.set_xlabel("|w|")
    ax.set_ylabel("fraction of entries")
    _legend_below(ax)


def _note(ax, text: str) -> None:
    """A line of text at the bottom left inside the axes (what the panel leaves out, and why)."""
    ax.text(0.02, 0.03, text, transform=ax.transAxes, fontsize=9, color="0.25",
            bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.7"))


def _legend_below(ax) -> None:
    """The legend under the axes, where it hides no data."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)


def _plot_compressibility(ax, report: "ModelReport") -> None:
    keeps = np.array(report.keeps)
    order = np.argsort(keeps)
    curves = [layer for layer in report.layers if layer.rel_error is not None]
    for layer in curves:
        ax.plot(keeps[order], np.array(layer.rel_error)[order], "o-", ms=3, lw=0.8, alpha=0.7, label=layer.name[-40:])
    if len(curves) <= 12:  # a legend is only readable for a few layers
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("keep fraction (top-k by |w|)")
    ax.set_ylabel(r"$\|W - W_k\|_F / \|W\|_F$")
    ax.set_title(f"Compressibility of {len(report.layers)} layers")
    ax.grid(True, which="both", alpha=0.3)


@_in_style
def plot_stability(result: "NoiseStability", directory: str | os.PathLike, filename: str = "noise_stability.png") -> list[str]:
    """Write one PNG with three panels: per-layer relative errors ||E x|| / ||W x|| (median, 90th
    percentile, max) against the Frobenius ratio and the random-input median; layer cushions against
    1/sqrt(h); margin histograms of the original and compressed nets. Return its path in a list."""
    Figure, FigureCanvasAgg = _matplotlib("NoiseStability.plot")
    os.makedirs(directory, exist_ok=True)
    fig = Figure(figsize=(13, 4.8), layout="constrained")
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
    errors.set_title("Relative error of each compressed layer")
    errors.set_ylim(bottom=0)
    cushion_data = [l.cushion if l.cushion.size else np.array([np.nan]) for l in layers]
    cushions.boxplot(cushion_data, positions=pos, widths=0.5, showfliers=False)
    cushions.plot(pos, [l.cushion_reference for l in layers], "_", color="tab:red", ms=20, mew=2,
                  label=r"$1/\sqrt{h}$ (random)")
    cushions.set_yscale("log")
    cushions.set_ylabel(r"layer cushion $\|Wx\| / (\|W\|_F \|x\|)$")
    cushions.set_title("Layer cushions on real inputs")
    for ax in (errors, cushions):
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, rotation=45 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center")
        ax.grid(True, alpha=0.3)
        ax.legend()
    both = np.concatenate([result.margins_original, result.margins_compressed])
    both = both[np.isfinite(both)]
    if both.size:
        bins = np.linspace(both.min(), both.max(), 50)
        margins.hist(result.margins_original, bins=bins, alpha=0.5, color="tab:blue", label="original")
        margins.hist(result.margins_compressed, bins=bins, alpha=0.5, color="tab:orange", label="compressed")
        margins.axvline(0, color="k", lw=0.8)
        margins.axvline(2 * result.gamma, color="tab:red", ls=":", label=f"2 gamma = {2 * result.gamma:.3g}")
        margins.legend()
    margins.set_xlabel(r"margin $f(x)_y - \max_{j \neq y} f(x)_j$")
    margins.set_title(f"Margins ({result.n_samples} samples, labels: {result.labels})")
    path = os.path.join(os.fspath(directory), filename)
    fig.savefig(path, dpi=DPI)
    return [path]


@_in_style
def plot_resilience(result: "Resilience", directory: str | os.PathLike, filename: str = "resilience.png") -> list[str]:
    """Write one PNG: accuracy vs input-noise sigma and vs weight-noise sigma, one curve per model with
    a band of +- one standard deviation over draws. Return its path in a list."""
    Figure, FigureCanvasAgg = _matplotlib("Resilience.plot")
    os.makedirs(directory, exist_ok=True)
    fig = Figure(figsize=(11, 4.4), layout="constrained")
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
        ax.set_title(f"Accuracy under {kind} noise")
        ax.grid(True, alpha=0.3)
    panels[0].set_ylabel("accuracy")
    panels[0].legend()
    path = os.path.join(os.fspath(directory), filename)
    fig.savefig(path, dpi=DPI)
    return [path]
