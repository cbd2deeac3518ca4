"""The study: do heavier-tailed weights compress better, certify tighter and generalise better?

Trains a grid of networks on real Fashion-MNIST (MLPs 784-128-10 with `htcore.train.train_mlp`,
the LeNet-style CNN `htcore.nn.lenet` with `htcore.train.train_classifier`: Adam, seeded), varying
batch size and learning rate so that lr / batch size spans more than two decades, two seeds each.
Per network it records, per weight layer: the element tail index (auto-k Hill, seed 0, 95% CI)
and the Clauset fit's tail index, the spectral alpha (ESD pdf exponent, WeightWatcher's), the
likelihood-ratio verdicts of `htcore.compare_tails` (power law against exponential, log-normal,
stretched exponential, truncated power law) on the element sample and on the ESD, the exact
compressibility curve (top-k relative Frobenius error at several keeps); per network: the dense
test error, and the certified kl bound under one fixed bit budget: `htcore.allocate(bits=B,
value_bits=4)` per-layer keeps, then `htcore.search_bound` over three charged settings (codebooks of
4 and 16 levels after 1 epoch of masked and 1 of codebook fine-tuning; 16 levels without
fine-tuning, the "raw" bound of the pruned net as trained).

Then Spearman correlations, each with a percentile bootstrap 95% CI over networks (fixed seed),
within each family (MLP, CNN: their tail measures are not on one scale): lr / batch against the
tail measures (Barsbey et al. 2021), and the tail measures against (a) the relative error at a
fixed keep, (b) the bounds, (c) the test error; per layer position, each layer's own tail measures
against its own relative error. A relation is claimed only where the CI excludes 0.

Network-level tail measure: the size-weighted mean over weight layers of the Hill tail index
(smaller = heavier tail) and the plain mean of the layers' spectral alphas (WeightWatcher's summary);
network-level relative error: the size-weighted mean of the layers' errors at keep 0.1.

Run: nice -n 5 python benchmarks/bench_study.py [--quick] [--out DIR]
Writes DIR/study.md, study.json, study_scatter.png, study_curves.png (``study_quick.*`` with
--quick, a 8-network version on 2,000 training images that tests/test_study.py runs). DIR defaults
to benchmarks/results. The full grid (24 networks) took 4.1 minutes wall, 3.9 of CPU, on a quiet
2-core machine (34 minutes wall for 7.8 of CPU on a slower one at load average 13-17); --quick about
10 s of CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import htcore
from common import machine
from htcore.datasets import load_fashion_mnist
from htcore.nn import lenet
from htcore.train import train_classifier, train_mlp

RESULTS = Path(__file__).resolve().parent / "results"
FIXED_KEEP = 0.1  # the keep of outcome (a)
VALUE_BITS = 4  # allocate's cost per kept value: a 16-level codebook index
LEVELS = (4, 16)
DELTA = 0.05


@dataclass(frozen=True)
class Setup:
    """The grid and the settings every network shares."""

    mlp_batches: tuple[int, ...]
    mlp_lrs: tuple[float, ...]
    cnn_batches: tuple[int, ...]
    cnn_lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    cnn_seeds: tuple[int, ...]
    mlp_hidden: int
    mlp_epochs: int
    cnn_epochs: int
    n_train: int | None  # None: all 60,000 training images (m of the bound)
    n_test: int | None
    bits: dict  # family -> allocate's bit budget
    finetune: dict
    keeps: tuple[float, ...]
    resamples: int
    bootstrap_seed: int = 0


FULL = Setup(mlp_batches=(16, 64, 256, 1024), mlp_lrs=(3e-4, 3e-3), cnn_batches=(32, 512), cnn_lrs=(5e-4, 5e-3),
             seeds=(0, 1), cnn_seeds=(0, 1), mlp_hidden=128, mlp_epochs=3, cnn_epochs=2, n_train=None, n_test=None,
             bits={"mlp": 20000, "cnn": 12000}, finetune=dict(epochs=1, lr=1e-3, codebook_epochs=1, batch_size=256),
             keeps=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5), resamples=2000)
QUICK = Setup(mlp_batches=(16, 128, 1024), mlp_lrs=(1e-3, 1e-2), cnn_batches=(16, 512), cnn_lrs=(1e-3,),
              seeds=(0,), cnn_seeds=(0,), mlp_hidden=128, mlp_epochs=1, cnn_epochs=1, n_train=2000, n_test=2000,
              bits={"mlp": 20000, "cnn": 12000}, finetune=dict(epochs=1, lr=1e-3, codebook_epochs=1, batch_size=256),
              keeps=(0.01, 0.05, 0.1, 0.3, 0.5), resamples=300)


def networks(setup: Setup) -> list[dict]:
    """The grid: one dict (family, batch_size, lr, seed) per network, MLPs first."""
    out = [dict(family="mlp", batch_size=b, lr=lr, seed=s) for b in setup.mlp_batches for lr in setup.mlp_lrs
           for s in setup.seeds]
    out += [dict(family="cnn", batch_size=b, lr=lr, seed=s) for b in setup.cnn_batches for lr in setup.cnn_lrs
            for s in setup.cnn_seeds]
    return out


def load(setup: Setup) -> dict:
    """Fashion-MNIST as images (CNN) and as rows (MLP, the same pixels), cut to the setup's sizes."""
    data = load_fashion_mnist(images=True)
    Xtr, ytr, Xte, yte = data.X_train[:setup.n_train], data.y_train[:setup.n_train], data.X_test[:setup.n_test], data.y_test[:setup.n_test]
    return {"cnn": (Xtr, ytr, Xte, yte),
            "mlp": (Xtr.reshape(len(Xtr), -1), ytr, Xte.reshape(len(Xte), -1), yte)}


def train(net: dict, X: np.ndarray, y: np.ndarray, setup: Setup) -> torch.nn.Module:
    if net["family"] == "mlp":
        return train_mlp(X, y, hidden=(setup.mlp_hidden,), epochs=setup.mlp_epochs, lr=net["lr"],
                         batch_size=net["batch_size"], seed=net["seed"])
    return train_classifier(lenet(seed=net["seed"]), X, y, epochs=setup.cnn_epochs, lr=net["lr"],
                            batch_size=net["batch_size"], seed=net["seed"])


def error(model: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float(np.mean(model(torch.from_numpy(X)).argmax(1).numpy() != y))


def verdicts(sample: np.ndarray, xmin: float) -> dict | None:
    """compare_tails' verdict per alternative ({alternative: {favoured, R, p}}), None when the tail is
    too short to test (fewer than 2 distinct values, or no fit)."""
    if not math.isfinite(xmin):
        return None
    try:
        comparison = htcore.compare_tails(sample, xmin=xmin)
    except ValueError:
        return None
    return {t.alternative: {"favoured": t.favoured, "R": t.R, "p": t.p_value} for t in comparison.tests}


def measure_layers(model: torch.nn.Module, keeps: tuple[float, ...]) -> list[dict]:
    """Per weight layer: tail estimates, spectral alpha, distribution-test verdicts, compressibility curve."""
    report = htcore.analyze(model, keeps=keeps, progress=False)
    layers = []
    for row in report.layers:
        element, spectral = row.elements, row.spectral
        weight = dict(model.named_parameters())[row.name].detach().numpy()
        evals = row.evals[row.evals > 1e-5] if row.evals is not None else np.zeros(0)
        layers.append({
            "name": row.name, "shape": list(row.shape), "size": int(np.prod(row.shape)),
            "hill": element.tail_index, "hill_ci": [element.tail_index_ci_low, element.tail_index_ci_high],
            "hill_k": element.hill_k, "fit_tail_index": element.fit_tail_index,
            "spectral_alpha": spectral.alpha, "num_evals": spectral.num_evals,
            "element_tests": verdicts(htcore.element_sample(weight), element.fit_xmin),
            "spectral_tests": verdicts(evals, spectral.xmin) if evals.size else None,
            "rel_error": list(row.rel_error),
        })
    return layers


def bound(model: torch.nn.Module, family: str, data: tuple, setup: Setup) -> dict:
    """allocate(bits=B) keeps, then search_bound over LEVELS fine-tuned and 16 levels raw (3 settings charged)."""
    Xtr, ytr, Xte, yte = data
    allocation = htcore.allocate(model, bits=setup.bits[family], value_bits=VALUE_BITS)
    keep = dict(allocation)
    grid = [dict(per_layer=keep, levels=r, bias_precision="float16") for r in LEVELS]
    grid.append(dict(per_layer=keep, levels=LEVELS[-1], bias_precision="float16", finetune=None))
    search = htcore.search_bound(model, Xtr, ytr, grid=grid, delta=DELTA, finetune=setup.finetune,
                                 X_test=Xte, y_test=yte, with_original=False)
    settings = [{"levels": g["levels"], "finetuned": "finetune" not in g, "kl": r.kl, "code_bits": r.code_bits,
                 "train_error": r.train_error, "test_error": r.test_error} for g, r in zip(grid, search.reports)]
    return {"keep": keep, "k": dict(allocation.k), "allocation_rel_error": allocation.rel_error,
            "settings": settings, "best_kl": search.best.kl, "best_levels": search.best_settings["levels"],
            "raw_kl": settings[-1]["kl"]}


def study_network(net: dict, data: dict, setup: Setup) -> dict:
    """Train one network and measure everything the study records about it."""
    Xtr, ytr, Xte, yte = data[net["family"]]
    start, cpu_start = time.perf_counter(), time.process_time()
    model = train(net, Xtr, ytr, setup)
    trained = time.perf_counter()
    layers = measure_layers(model, setup.keeps)
    measured = time.perf_counter()
    certified = bound(model, net["family"], data[net["family"]], setup)
    sizes = np.array([layer["size"] for layer in layers], dtype=float)
    at_keep = setup.keeps.index(FIXED_KEEP)
    return {**net, "lr_per_batch": net["lr"] / net["batch_size"],
            "train_error": error(model, Xtr, ytr), "test_error": error(model, Xte, yte),
            "hill": float(np.average([layer["hill"] for layer in layers], weights=sizes)),
            "spectral_alpha": float(np.nanmean([layer["spectral_alpha"] for layer in layers])),
            "rel_error_curve": [float(np.average([layer["rel_error"][i] for layer in layers], weights=sizes))
                                for i in range(len(setup.keeps))],
            "rel_error_at_keep": float(np.average([layer["rel_error"][at_keep] for layer in layers], weights=sizes)),
            "layers": layers, "bound": certified, "best_kl": certified["best_kl"], "raw_kl": certified["raw_kl"],
            "seconds": {"train": trained - start, "measure": measured - trained,
                        "bound": time.perf_counter() - measured, "cpu_total": time.process_time() - cpu_start}}


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of x and y (2-D, one sample per row; average ranks for ties);
    NaN for a row where x or y is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(rx * ry, axis=1) / np.sqrt(np.sum(rx * rx, axis=1) * np.sum(ry * ry, axis=1))


def spearman_ci(x: Any, y: Any, *, resamples: int, seed: int, level: float = 0.95) -> dict:
    """Spearman's rho of (x, y) and its percentile bootstrap CI over the pairs (``resamples`` draws
    with replacement from numpy's generator seeded by ``seed``; draws where either side is constant
    are left out). Pairs with a non-finite value are dropped first."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    n = int(x.size)
    if n < 4:
        return {"n": n, "rho": None, "ci": None, "resamples_used": 0}
    rho = float(spearman_rows(x[None], y[None])[0])
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    draws = spearman_rows(x[index], y[index])
    draws = draws[np.isfinite(draws)]
    tail = (1 - level) / 2
    ci = [float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))] if draws.size else None
    return {"n": n, "rho": rho, "ci": ci, "resamples_used": int(draws.size)}


# (x, y, what the heavy-tail hypothesis predicts for the sign of rho)
NETWORK_PAIRS = (
    ("lr_per_batch", "hill", "-", "larger lr/b gives heavier element tails (Barsbey et al.)"),
    ("lr_per_batch", "spectral_alpha", "-", "larger lr/b gives heavier spectral tails"),
    ("hill", "rel_error_at_keep", "+", "(a) heavier element tails lose less at keep 0.1"),
    ("spectral_alpha", "rel_error_at_keep", "+", "(a) heavier spectral tails lose less at keep 0.1"),
    ("hill", "best_kl", "+", "(b) heavier element tails certify tighter (fine-tuned)"),
    ("spectral_alpha", "best_kl", "+", "(b) heavier spectral tails certify tighter (fine-tuned)"),
    ("hill", "raw_kl", "+", "(b) heavier element tails certify tighter (no fine-tuning)"),
    ("spectral_alpha", "raw_kl", "+", "(b) heavier spectral tails certify tighter (no fine-tuning)"),
    ("hill", "test_error", "+", "(c) heavier element tails generalise better"),
    ("spectral_alpha", "test_error", "+", "(c) heavier spectral tails generalise better (Martin & Mahoney)"),
)


def verdict(row: dict) -> str:
    """'supports' / 'contradicts' (CI excludes 0, sign as predicted / opposite) or 'no relation here'."""
    if row["ci"] is None:
        return "too few networks"
    low, high = row["ci"]
    if low <= 0 <= high:
        return "no relation here"
    sign = "+" if low > 0 else "-"
    return "supports" if sign == row["predicted"] else "contradicts"


def correlations(records: list[dict], setup: Setup) -> list[dict]:
    """Every correlation of the study, per family: network-level pairs, then per-layer pairs."""
    rows = []
    for family in ("mlp", "cnn"):
        nets = [r for r in records if r["family"] == family]
        if not nets:
            continue
        for x, y, predicted, claim in NETWORK_PAIRS:
            row = {"family": family, "level": "network", "x": x, "y": y, "predicted": predicted, "claim": claim,
                   **spearman_ci([r[x] for r in nets], [r[y] for r in nets], resamples=setup.resamples,
                                 seed=setup.bootstrap_seed)}
            rows.append({**row, "verdict": verdict(row)})
        at_keep = setup.keeps.index(FIXED_KEEP)
        for position, layer in enumerate(nets[0]["layers"]):
            for x in ("hill", "spectral_alpha"):
                row = {"family": family, "level": f"layer {layer['name']}", "x": f"layer {x}", "y": "rel_error_at_keep",
                       "predicted": "+", "claim": f"(a) per layer: {x} vs the layer's own error at keep {FIXED_KEEP}",
                       **spearman_ci([r["layers"][position][x] for r in nets],
                                     [r["layers"][position]["rel_error"][at_keep] for r in nets],
                                     resamples=setup.resamples, seed=setup.bootstrap_seed)}
                rows.append({**row, "verdict": verdict(row)})
    return rows


def test_counts(records: list[dict], which: str) -> dict:
    """family -> alternative -> {favoured label: number of layers}; plus 'untestable' layers."""
    out: dict = {}
    for r in records:
        family = out.setdefault(r["family"], {"untestable": 0})
        for layer in r["layers"]:
            tests = layer[which]
            if tests is None:
                family["untestable"] += 1
                continue
            for alternative, t in tests.items():
                label = "power law" if t["favoured"] == "power_law" else (
                    "inconclusive" if t["favoured"] == "inconclusive" else "alternative")
                counts = family.setdefault(alternative, {"power law": 0, "alternative": 0, "inconclusive": 0})
                counts[label] += 1
    return out


LABELS = {"lr_per_batch": "lr / batch size", "hill": "element tail index (Hill, weighted mean)",
          "spectral_alpha": "spectral alpha (mean)", "rel_error_at_keep": f"rel. error at keep {FIXED_KEEP}",
          "best_kl": "best kl bound", "raw_kl": "kl bound, no fine-tuning", "test_error": "test error",
          "layer hill": "the layer's Hill tail index", "layer spectral_alpha": "the layer's spectral alpha"}
MARKERS = {"mlp": "o", "cnn": "^"}


def plot_scatter(records: list[dict], rows: list[dict], path: Path) -> None:
    """Tail measures (rows of panels) against lr/b and the three outcomes, rho [CI] per family in each panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    outcomes = ("lr_per_batch", "rel_error_at_keep", "best_kl", "test_error")
    fig = Figure(figsize=(15, 7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(outcomes))
    colour = np.log10([r["lr_per_batch"] for r in records])
    for i, measure in enumerate(("hill", "spectral_alpha")):
        for j, outcome in enumerate(outcomes):
            ax = axes[i, j]
            notes = []
            for family in MARKERS:
                chosen = [k for k, r in enumerate(records) if r["family"] == family]
                if not chosen:
                    continue
                xs = [records[k][measure] for k in chosen]
                ys = [records[k][outcome] for k in chosen]
                if outcome == "lr_per_batch":  # lr/b on the x axis, the tail measure on y
                    xs, ys = ys, xs
                scatter = ax.scatter(xs, ys, c=colour[chosen], cmap="viridis", marker=MARKERS[family], s=28,
                                     vmin=colour.min(), vmax=colour.max(), label=family.upper())
                key = ("lr_per_batch", measure) if outcome == "lr_per_batch" else (measure, outcome)
                row = next(r for r in rows if r["family"] == family and r["level"] == "network"
                           and (r["x"], r["y"]) == key)
                if row["rho"] is not None:
                    notes.append(f"{family.upper()} rho {row['rho']:+.2f} [{row['ci'][0]:+.2f}, {row['ci'][1]:+.2f}]")
            if measure == "hill":  # auto-k Hill runs to the hundreds on near-Gaussian weights
                (ax.set_yscale if outcome == "lr_per_batch" else ax.set_xscale)("log")
                axis = ax.yaxis if outcome == "lr_per_batch" else ax.xaxis
                axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 2, 5, 10, 20, ... in plain digits
                axis.set_major_formatter(ScalarFormatter())
                axis.set_minor_formatter(NullFormatter())
            if outcome == "lr_per_batch":
                ax.set_xscale("log")
                ax.set_xlabel(LABELS["lr_per_batch"])
                ax.set_ylabel(LABELS[measure])
            else:
                ax.set_xlabel(LABELS[measure])
                ax.set_ylabel(LABELS[outcome])
            ax.set_title("\n".join(notes), fontsize=8)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.colorbar(scatter, ax=axes, label="log10(lr / batch size)", shrink=0.6)
    fig.savefig(path, dpi=80)


def plot_curves(records: list[dict], keeps: tuple[float, ...], path: Path) -> None:
    """Compressibility curves (size-weighted mean relative error vs keep), one line per network."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import viridis
    from matplotlib.figure import Figure

    families = [f for f in MARKERS if any(r["family"] == f for r in records)]
    fig = Figure(figsize=(5 * len(families), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(families)))
    colour = np.log10([r["lr_per_batch"] for r in records])
    span = max(float(np.ptp(colour)), 1e-12)
    for ax, family in zip(axes, families):
        for r, c in zip(records, colour):
            if r["family"] == family:
                ax.plot(keeps, r["rel_error_curve"], marker=MARKERS[family], ms=3, lw=1,
                        color=viridis((c - colour.min()) / span), alpha=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("keep (fraction of entries, top-k per layer)")
        ax.set_ylabel(r"$\|W-W_k\|_F / \|W\|_F$ (size-weighted mean)")
        ax.set_title(f"{family.upper()}: colour = log10(lr / batch) (yellow = largest)", fontsize=9)
    fig.savefig(path, dpi=80)


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def markdown(results: dict) -> str:
    m, s = results["machine"], results["setup"]
    records, rows = results["networks"], results["correlations"]
    spans = {f: results["lr_per_batch_decades"][f] for f in results["lr_per_batch_decades"]}
    out = ["# The study: heavy tails vs compressibility, certified bounds and test error", "",
           f"{len(records)} networks on Fashion-MNIST (m = {results['m']} training images, {results['n_test']} test), "
           f"run {results['date']} in {results['wall_seconds'] / 60:.1f} min wall, {results['cpu_seconds'] / 60:.1f} min CPU "
           f"({m['cpu']}, {m['cores']} cores shared with other jobs, load average {results['load_start']:.1f} at start, "
           f"{results['load_end']:.1f} at end; torch on 1 thread, niced). Seeded; deterministic.", "",
           f"Grid: MLP 784-{s['mlp_hidden']}-10, {s['mlp_epochs']} epochs, batch {s['mlp_batches']} x lr {s['mlp_lrs']}; "
           f"CNN `htcore.nn.lenet`, {s['cnn_epochs']} epochs, batch {s['cnn_batches']} x lr {s['cnn_lrs']}; seeds "
           f"{s['seeds']} (CNN {s['cnn_seeds']}); Adam (`htcore.train`). lr / batch spans "
           + ", ".join(f"{f.upper()} {d:.2f}" for f, d in spans.items()) + " decades. "
           f"Bound: `allocate(bits={s['bits']}, value_bits={VALUE_BITS})` per family, then `search_bound` over "
           f"3 charged settings (levels {LEVELS[0]} and {LEVELS[1]} after fine-tuning {s['finetune']}; "
           f"levels {LEVELS[1]} raw), delta {DELTA}; float16 biases. Bootstrap: {s['resamples']} resamples of the "
           f"networks, seed {s['bootstrap_seed']}, percentile 95% CI.", "",
           "## Correlations (Spearman rho, bootstrap 95% CI)", "",
           "Tail index and spectral alpha: smaller = heavier tail. \"predicted\" is the sign the heavy-tail "
           "hypothesis expects; a verdict other than \"no relation here\" needs the CI to exclude 0. "
           f"{len(rows)} correlations are tested: at 95% each, about {0.05 * len(rows):.1f} would exclude 0 by "
           "chance alone if nothing were related.", "",
           "| family | level | x | y | n | rho | 95% CI | predicted | verdict |", "|---|---|---|---|---:|---:|---|:-:|---|"]
    for r in rows:
        ci = "-" if r["ci"] is None else f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]"
        rho = "-" if r["rho"] is None else f"{r['rho']:+.2f}"
        out.append(f"| {r['family'].upper()} | {r['level']} | {LABELS.get(r['x'], r['x'])} | {LABELS.get(r['y'], r['y'])} "
                   f"| {r['n']} | {rho} | {ci} | {r['predicted']} | {r['verdict']} |")
    out += ["", "## Is it a power law? (`compare_tails`, significance 0.1, layers of all networks)", "",
            "| family | sample | alternative | power law favoured | alternative favoured | inconclusive |",
            "|---|---|---|---:|---:|---:|"]
    for which, label in (("element_tests", "elements abs(w)"), ("spectral_tests", "ESD")):
        for family, counts in results["tail_tests"][which].items():
            for alternative, c in counts.items():
                if alternative != "untestable":
                    out.append(f"| {family.upper()} | {label} | {alternative} | {c['power law']} | {c['alternative']} "
                               f"| {c['inconclusive']} |")
            if counts["untestable"]:
                out.append(f"| {family.upper()} | {label} | (tail too short to test) | {counts['untestable']} layers | | |")
    out += ["", "## Networks", "",
            "Per layer: Hill tail index [95% CI] / spectral alpha. Relative error at keep "
            f"{FIXED_KEEP} (size-weighted). Bound: best kl (codebook levels) and raw kl (no fine-tuning); code bits of the best.", "",
            "| family | batch | lr | lr/b | seed | layers: Hill [CI] / spectral alpha | rel. err @0.1 | test err | "
            "best kl (r) | bits | raw kl | train s |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        layers = "; ".join(f"{fmt(layer['hill'])} [{fmt(layer['hill_ci'][0])}, {fmt(layer['hill_ci'][1])}] / "
                           f"{fmt(layer['spectral_alpha'])}" for layer in r["layers"])
        best = next(st for st in r["bound"]["settings"] if st["kl"] == r["best_kl"])
        out.append(f"| {r['family'].upper()} | {r['batch_size']} | {r['lr']:g} | {r['lr_per_batch']:.2g} | {r['seed']} | "
                   f"{layers} | {r['rel_error_at_keep']:.3f} | {r['test_error']:.4f} | {r['best_kl']:.4f} "
                   f"({r['bound']['best_levels']}) | {best['code_bits']} | {r['raw_kl']:.4f} | {r['seconds']['train']:.0f} |")
    out += ["", "Plots: [study_scatter.png](study_scatter.png) (tail measures against lr/b and the outcomes), "
            "[study_curves.png](study_curves.png) (compressibility curves).", ""]
    return "\n".join(out)


def decades(records: list[dict], family: str) -> float:
    ratios = [r["lr_per_batch"] for r in records if r["family"] == family]
    return float(np.log10(max(ratios) / min(ratios))) if ratios else 0.0


def run(quick: bool, out_dir: Path = RESULTS, log: bool = True) -> dict:
    """Run the study (``quick``: the small grid) and write its files to ``out_dir``; returns the results."""
    setup = QUICK if quick else FULL
    torch.set_num_threads(1)
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), round(os.getloadavg()[0], 2)
    data = load(setup)
    records = []
    for net in networks(setup):
        records.append(study_network(net, data, setup))
        if log:
            r = records[-1]
            print(f"{r['family']} b={r['batch_size']} lr={r['lr']:g} seed={r['seed']}: hill {r['hill']:.2f} "
                  f"spectral {r['spectral_alpha']:.2f} rel@{FIXED_KEEP} {r['rel_error_at_keep']:.3f} "
                  f"kl {r['best_kl']:.4f} raw {r['raw_kl']:.4f} test {r['test_error']:.4f} "
                  f"({r['seconds']['train']:.0f} + {r['seconds']['measure']:.0f} + {r['seconds']['bound']:.0f} s wall, "
                  f"{r['seconds']['cpu_total']:.0f} s CPU)", file=sys.stderr, flush=True)
    rows = correlations(records, setup)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "setup": asdict(setup), "quick": quick, "m": int(len(data["mlp"][1])), "n_test": int(len(data["mlp"][3])),
               "lr_per_batch_decades": {f: decades(records, f) for f in ("mlp", "cnn") if any(r["family"] == f for r in records)},
               "networks": records, "correlations": rows,
               "tail_tests": {which: test_counts(records, which) for which in ("element_tests", "spectral_tests")},
               "wall_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
               "load_start": load_start,
               "load_end": round(os.getloadavg()[0], 2)}
    stem = "study_quick" if quick else "study"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_scatter(records, rows, out_dir / f"{stem}_scatter.png")
    plot_curves(records, setup.keeps, out_dir / f"{stem}_curves.png")
    text = markdown(results)
    if quick:
        text = text.replace("study_scatter.png", "study_quick_scatter.png").replace("study_curves.png", "study_quick_curves.png")
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(text)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 networks on 2,000 images (~20 s), files study_quick.*")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results files")
    args = parser.parse_args()
    results = run(args.quick, args.out)
    print(markdown(results))


if __name__ == "__main__":
    main()
