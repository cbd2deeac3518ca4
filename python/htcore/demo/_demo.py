"""`run_demo`: htcore's whole pipeline on a small real dataset, written as a worked example of the
public API (each step below is what a user would type).

1. **Train** a small net with torch: a ReLU MLP (`htcore.train.train_mlp`) or a LeNet-style CNN
   on (n, 1, H, W) images (`htcore.train.train_classifier`); data from `htcore.datasets`.
2. **Analyze** its heavy tails (`htcore.analyze` -> `ModelReport`, with its PNG plots).
3. **Compress and certify**: a small grid of per-layer keep fractions (one per Linear or Conv2d
   layer; a conv weight is pruned as the matrix (out, in * kh * kw)) x codebook levels, each
   setting compressed (`htcore.compression.compress_grid`: `htcore.compress` per setting, sharing the
   fine-tuning between settings that differ only in levels) and certified (`htcore.certify`, with
   the grid size charged in the code length, so picking the best setting afterwards is paid for).
   This loop is what `htcore.search_bound` does; it is spelled out to keep the chosen model.
4. **Noise stability**: how the chosen net's weight errors act on real activations
   (`htcore.noise_stability` on a training subsample, against the dense net) and the accuracy of
   both nets under input and weight noise (`htcore.resilience` on a test subsample);
   `htcore.measure.stability_section` turns both into a report section with two plots.
5. **Deploy and time**: write the compressed net with `htcore.save_compressed`, load it with
   `htcore.load_compressed` (numpy + C++ kernels, no torch) and time it against the dense torch net.
6. **Report**: ``DIR/report.json`` (every figure), ``DIR/report.html`` (self-contained), PNG plots.

Conventions: element ``tail_index`` is alpha of P(|w| > x) ~ x^-alpha (Hill); the spectral ``alpha``
is WeightWatcher's ESD pdf exponent; ``keep`` is the fraction of a matrix's entries kept (top-k by |w|,
k = ceil(keep * n)); code lengths are in bits; errors are fractions in [0, 1]. Layers and tensors are
named as in the torch model everywhere (layer "0", its tensors "0.weight" and "0.bias"), not by the
runtime's "layers.<i>"; table columns print their numbers alike (`htcore.measure.format_column`).

Digits runs an MLP by default (about 20 s), Fashion-MNIST a LeNet-style CNN (about 5 minutes on a
busy 2-core machine; ``model="mlp"`` gives the MLP). The settings (architecture, epochs, grid,
fine-tuning) follow ``benchmarks/bench_bound.py``, which found non-vacuous bounds on both datasets;
the Fashion-MNIST CNN's are a shorter version of the benchmark's (6 training epochs, 3 of masked
and 1 of codebook fine-tuning; the benchmark's longer fine-tuning tightens the bound by about 0.02).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

import htcore

from .._validation import check_fraction, check_int
from ..measure import MIN_HILL_K, MIN_SPECTRAL_EVALS, MIN_SPECTRAL_TAIL

DATASETS = ("digits", "fashion-mnist")
DELTA = 0.05  # bounds hold with probability >= 1 - DELTA
TIMING_BATCHES = (1, 256)
TIMING_REPEATS = 15
SAVED_INPUTS = 256  # test samples written to DIR/inputs.npy for `htcore run`
STABILITY_SAMPLES = 500  # training rows for noise_stability (seeded subsample; digits' pass ~0.3 s)
RESILIENCE_SAMPLES = 300  # test rows for resilience (each of its noise levels and draws is one pass)


@dataclass(frozen=True)
class Preset:
    """Training and compression settings of one dataset and model kind.

    ``model``: "mlp" (ReLU MLP with ``hidden`` widths) or "cnn" (`_lenet` with ``channels``);
    ``keeps``: candidate keep fractions, one tuple per candidate with one fraction per weight layer
    (Linear or Conv2d, first to last); ``levels``: codebook sizes tried for each; ``finetune``:
    `htcore.compress`'s fine-tuning settings (epochs with the mask fixed, then codebook epochs)."""

    model: str
    hidden: tuple[int, ...]
    epochs: int
    lr: float
    keeps: tuple[tuple[float, ...], ...]
    levels: tuple[int, ...]
    finetune: dict = field(default_factory=dict)
    channels: tuple[int, ...] = ()


MODELS = ("mlp", "cnn")
PRESETS = {
    ("digits", "mlp"): Preset(model="mlp", hidden=(16,), epochs=60, lr=3e-3, keeps=((0.05, 0.5), (0.1, 0.5)),
                              levels=(2, 4), finetune=dict(epochs=30, lr=3e-3, codebook_epochs=10)),
    ("digits", "cnn"): Preset(model="cnn", hidden=(), channels=(4, 8), epochs=30, lr=3e-3,
                              keeps=((0.5, 0.2, 0.3), (0.5, 0.3, 0.3)), levels=(2, 4),
                              finetune=dict(epochs=15, lr=3e-3, codebook_epochs=5)),
    ("fashion-mnist", "mlp"): Preset(model="mlp", hidden=(32,), epochs=10, lr=1e-3, keeps=((0.03, 0.5), (0.05, 0.5)),
                                     levels=(4, 8), finetune=dict(epochs=3, lr=1e-3, codebook_epochs=1)),
    ("fashion-mnist", "cnn"): Preset(model="cnn", hidden=(), channels=(8, 16), epochs=6, lr=2e-3,
                                     keeps=((0.5, 0.15, 0.15),), levels=(4, 8),
                                     finetune=dict(epochs=3, lr=1e-3, codebook_epochs=1)),
}
DEFAULT_MODEL = {"digits": "mlp", "fashion-mnist": "cnn"}


def run_demo(dataset: str = "digits", out: str | os.PathLike = "htcore-demo", keep: float | Sequence[float] | None = None,
             seed: int = 0, progress: bool = True, *, model: str | None = None, hidden: Sequence[int] | None = None,
             epochs: int | None = None, finetune_epochs: int | None = None, threads: int = 1) -> dict[str, Any]:
    """Run the pipeline (module docstring) and return every figure as a JSON-ready dict (also
    written to ``out/report.json``, beside ``report.html``, the PNG plots, the compressed model
    ``model.safetensors`` and ``inputs.npy``, a few test samples for ``htcore run``).

    ``dataset``: "digits" (scikit-learn's, 1,347 train / 450 test) or "fashion-mnist" (Debian package
    ``dataset-fashion-mnist``). ``model``: "mlp" or "cnn" (a LeNet-style CNN on (n, 1, H, W) images);
    default "mlp" for digits (or whenever ``hidden`` is given), "cnn" for fashion-mnist. ``keep``: one
    fraction in (0, 1] for every weight matrix, or one per weight layer (Linear or Conv2d, first to
    last); default: the preset's candidates, searched. ``seed`` seeds the data split, initialisation,
    shuffles and fine-tuning. ``hidden`` (MLP widths), ``epochs``, ``finetune_epochs`` override the
    preset (smaller values give a quicker, looser run). ``threads``: threads for both
    peers in the timing step (default 1: these MLPs are too small to gain from more, and on a busy
    machine every parallel region waits for a preempted thread); training runs torch on one thread.
    Needs torch and matplotlib (and scikit-learn for digits).
    """
    preset = _preset(dataset, model, hidden, epochs, finetune_epochs)
    candidates = _keep_candidates(keep, preset)
    seed = check_int(seed, "seed", low=0)
    threads = check_int(threads, "threads", low=1)
    torch = _require(dataset)
    out = Path(out)
    from tqdm.auto import tqdm

    figures: dict[str, Any] = {"htcore_version": htcore.__version__, "dataset": dataset, "seed": seed, "out": str(out),
                               "delta": DELTA, "machine": _machine(torch), "seconds": {}}
    steps = tqdm(total=5, desc="htcore demo", unit="step", file=sys.stderr, disable=not progress, leave=False)
    with _timed(figures, "train"), _threads(torch, 1):  # these small nets train fastest on one thread
        steps.set_postfix_str("training")
        data, model = _train(figures, dataset, preset, seed)
        steps.update()
    out.mkdir(parents=True, exist_ok=True)  # only once the data has loaded
    with _timed(figures, "analyze"):
        steps.set_postfix_str("analyzing tails")
        _analyze(figures, model, out, progress)
        steps.update()
    with _timed(figures, "compress_certify"), _threads(torch, 1):
        steps.set_postfix_str("compressing and certifying")
        compressed, torch_names = _compress_certify(figures, model, data, preset, candidates, seed, progress)
        steps.update()
    with _timed(figures, "stability"), _threads(torch, 1):
        steps.set_postfix_str("measuring noise stability")
        stability = _stability(figures, model, compressed, data, out, seed, torch_names)
        steps.update()
    with _timed(figures, "runtime"):
        steps.set_postfix_str("timing the runtime")
        _deploy_and_time(figures, model, compressed, data, out, torch, threads)
        steps.update()
    steps.close()
    figures["seconds"]["total"] = sum(figures["seconds"].values())
    _write_report(figures, out, stability)
    return figures


# ---- step 1: data and a dense model -----------------------------------------------------------

def _train(figures: dict, dataset: str, preset: Preset, seed: int):
    from htcore.datasets import load_digits, load_fashion_mnist
    from htcore.train import train_classifier, train_mlp

    images = preset.model == "cnn"
    data = load_digits(random_state=seed, images=images) if dataset == "digits" else load_fashion_mnist(images=images)
    assert data.X_test is not None and data.y_test is not None  # both loaders return a test split
    classes = int(data.y_train.max()) + 1
    if images:
        torch = _require(dataset)
        torch.manual_seed(seed)
        model = train_classifier(_lenet(data.X_train.shape[1:], preset.channels, classes), data.X_train, data.y_train,
                                 epochs=preset.epochs, lr=preset.lr, seed=seed)
        architecture: Any = _describe_cnn(model)
    else:
        model = train_mlp(data.X_train, data.y_train, hidden=preset.hidden, epochs=preset.epochs, lr=preset.lr, seed=seed)
        architecture = [int(data.X_train.shape[1]), *preset.hidden, classes]
    figures["data"] = {"m": int(data.y_train.size), "n_test": int(data.y_test.size),
                       "features": int(np.prod(data.X_train.shape[1:])), "input_shape": list(data.X_train.shape[1:]),
                       "classes": classes}
    figures["model"] = {"kind": preset.model, "architecture": architecture,
                        "epochs": preset.epochs, "lr": preset.lr,
                        "train_error": _error(model, data.X_train, data.y_train),
                        "test_error": _error(model, data.X_test, data.y_test)}
    return data, model


def _lenet(input_shape: Sequence[int], channels: Sequence[int], classes: int) -> Any:
    """A LeNet-style CNN: per entry of ``channels`` a 5x5 Conv2d, ReLU and 2x2 max pooling, then
    Flatten and one Linear to ``classes`` scores. Images of 16 pixels or fewer a side are padded
    (padding 2, size kept) so that two stages fit digits' 8x8; larger ones are not (LeNet's 28 -> 4)."""
    from torch import nn

    in_channels, height, width = input_shape
    padding = 2 if min(height, width) <= 16 else 0
    layers: list = []
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels, height, width = out_channels, (height + 2 * padding - 4) // 2, (width + 2 * padding - 4) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_channels * height * width, classes))


def _describe_cnn(model: Any) -> str:
    """One line naming the weight layers of a CNN: "conv 1->8 5x5, conv 8->16 5x5, linear 256->10"."""
    from torch import nn

    parts = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            parts.append(f"conv {module.in_channels}->{module.out_channels} {module.kernel_size[0]}x{module.kernel_size[1]}")
        elif isinstance(module, nn.Linear):
            parts.append(f"linear {module.in_features}->{module.out_features}")
    return ", ".join(parts)


def _architecture_text(model: dict) -> str:
    if model["kind"] == "cnn":
        return f"CNN ({model['architecture']})"
    return "MLP " + "-".join(map(str, model["architecture"]))


def _error(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Misclassified fraction of a torch model (no_grad) or a runtime CompressedModel."""
    import torch

    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            predictions = model(torch.from_numpy(X)).argmax(dim=1).numpy()
    else:
        predictions = model.predict(X)
    return float(np.mean(predictions != y))


# ---- step 2: heavy tails of the trained weights -----------------------------------------------

def _analyze(figures: dict, model: Any, out: Path, progress: bool) -> None:
    analysis = htcore.analyze(model, progress=progress)
    figures["tails"] = json.loads(analysis.to_json())  # NaN and infinities (e.g. an unbounded CI) as null
    figures["tails"]["plots"] = [os.path.basename(p) for p in analysis.plot(out)]


# ---- step 3: compress by top-k and certify the bound ------------------------------------------

def _compress_certify(figures: dict, model: Any, data: Any, preset: Preset, candidates: list, seed: int,
                      progress: bool):
    from tqdm.auto import tqdm

    from htcore.compression import compress_grid, layer_names

    names = layer_names(model)  # the keys of compress's per_layer: its Linear and Conv2d modules
    grid: list[dict[str, Any]] = [dict(per_layer=dict(zip(names, keeps)), levels=levels, bias_precision="float16")
            for keeps in candidates for levels in preset.levels]
    finetune = {**preset.finetune, "seed": seed}
    models, reports = [], []
    for _, compressed in tqdm(compress_grid(model, grid, finetune=finetune, train_data=(data.X_train, data.y_train)),
                              desc="compress + certify", total=len(grid), unit="setting", disable=not progress,
                              file=sys.stderr, leave=False):
        # the bound charges ceil(log2(len(grid))) bits for picking the best of the grid afterwards
        reports.append(htcore.certify(compressed, data.X_train, data.y_train, delta=DELTA, original=model,
                                      X_test=data.X_test, y_test=data.y_test, settings_tried=len(grid)))
        models.append(compressed)
    chosen = int(np.argmin([r.kl for r in reports]))
    best = reports[chosen]
    # saved with the model, so that `htcore bound model.safetensors` charges this search again
    models[chosen].metadata["search"] = {"settings_tried": len(grid), "index": chosen}
    figures["search"] = [{"keep": list(g["per_layer"].values()), "levels": g["levels"], "code_bits": r.code_bits,
                          "nnz": r.code.nnz, "train_error": r.train_error, "test_error": r.test_error, "kl": r.kl}
                         for g, r in zip(grid, reports)]
    figures["compression"] = {"chosen": chosen, "settings_tried": len(grid), "finetune": finetune,
                              "keep": grid[chosen]["per_layer"], "levels": grid[chosen]["levels"],
                              "nnz": best.code.nnz, "params": sum(t.n for t in best.code.tensors)}
    figures["bound"] = best.as_dict()  # every bound form, the errors and the code length by tensor
    torch_names = _torch_names(names, best.code)
    for tensor in figures["bound"]["code"]["tensors"]:
        tensor["name"] = _renamed(tensor["name"], torch_names)
    figures["layers"] = _layer_table(model, names, grid[chosen]["per_layer"], best.code)
    return models[chosen], torch_names


def _torch_names(names: list, code: Any) -> dict[str, str]:
    """The compressed net's layer names ("layers.<i>", its position in the runtime layer list) ->
    the torch model's (``names``, "0", "2", ...): the report names every layer and tensor as the
    user's model does (layer "0", tensors "0.weight" and "0.bias"). Both list the weight layers
    first to last."""
    weights = [t.name.rsplit(".", 1)[0] for t in code.tensors if t.name.endswith(".weight")]
    return dict(zip(weights, names))


def _renamed(name: str, torch_names: dict[str, str]) -> str:
    """A runtime layer ("layers.0") or tensor ("layers.0.bias") name in the torch model's naming."""
    if name in torch_names:
        return torch_names[name]
    layer, _, tensor = name.rpartition(".")
    return f"{torch_names[layer]}.{tensor}" if layer in torch_names else name


# ---- step 4: noise stability of the chosen net ----------------------------------------------

def _stability(figures: dict, model: Any, compressed: Any, data: Any, out: Path, seed: int,
               torch_names: dict[str, str]) -> dict[str, Any]:
    """`stability_section` of the chosen net against the dense one (its JSON under figures["stability"],
    its plots written to ``out``; layers named as in the torch model); the section is returned for the
    HTML page."""
    from htcore.measure import stability_section

    stability = htcore.noise_stability(model, compressed, data.X_train, data.y_train, max_samples=STABILITY_SAMPLES,
                                       seed=seed)
    stability = replace(stability, layers=tuple(replace(layer, name=_renamed(layer.name, torch_names))
                                                for layer in stability.layers))
    resilience = htcore.resilience({"dense": model, "compressed": compressed}, data.X_test, data.y_test,
                                   max_samples=RESILIENCE_SAMPLES, seed=seed)
    section = stability_section(stability, resilience, directory=out)
    figures["stability"] = section["json"]
    figures["stability"]["plots"] = [os.path.basename(p) for p, _ in section["figures"]]
    return section


def _layer_table(model: Any, names: list, keeps: dict, code: Any) -> list[dict]:
    """One row per Linear/Conv2d layer of the chosen net: its kind and shape, keep, kept entries and
    bits (the weight's and bias's code lengths, in layer order as `code_length` lists them)."""
    from torch import nn

    modules = dict(model.named_modules())
    weights = [t for t in code.tensors if t.name.endswith(".weight")]
    biases = {t.name.rsplit(".", 1)[0]: t.total_bits for t in code.tensors if t.name.endswith(".bias")}
    rows = []
    for name, tensor in zip(names, weights):
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            kind = f"Conv2d {module.in_channels}->{module.out_channels} {module.kernel_size[0]}x{module.kernel_size[1]}"
        else:
            kind = f"Linear {module.in_features}->{module.out_features}"
        rows.append({"layer": name, "kind": kind, "matrix": list(tensor.shape), "keep": keeps.get(name, 1.0),
                     "kept": tensor.k, "of": tensor.n, "values_code": tensor.values_code, "weight_bits": tensor.total_bits,
                     "bias_bits": biases.get(tensor.name.rsplit(".", 1)[0], 0)})
    return rows


# ---- step 5: the torch-free runtime against dense torch ---------------------------------------

def _deploy_and_time(figures: dict, model: Any, compressed: Any, data: Any, out: Path, torch: Any, threads: int) -> None:
    htcore.save_compressed(out / "model.safetensors", compressed, provenance={"demo": figures["dataset"]})
    np.save(out / "inputs.npy", data.X_test[:SAVED_INPUTS])
    runtime = htcore.load_compressed(out / "model.safetensors")
    agree = float(np.mean(runtime.predict(data.X_test) == compressed.predict(data.X_test)))
    rows = []
    with _threads(htcore, threads), _threads(torch, threads), torch.inference_mode():
        for batch in TIMING_BATCHES:
            X = np.resize(data.X_test, (batch, *data.X_test.shape[1:]))  # repeats samples if batch > n_test
            Xt = torch.from_numpy(X)
            dense_s, sparse_s = _median_seconds(lambda Xt=Xt: model(Xt), lambda X=X: runtime(X), calls=max(10, 1024 // batch))
            rows.append({"batch": batch, "dense_torch_ms": dense_s * 1e3, "htcore_ms": sparse_s * 1e3,
                         "speedup": dense_s / sparse_s})
    figures["runtime"] = {"threads": threads, "repeats": TIMING_REPEATS, "batches": rows,
                          "model_file_bytes": (out / "model.safetensors").stat().st_size,
                          "dense_float32_bytes": 4 * sum(p.numel() for p in model.parameters()),
                          "test_error": _error(runtime, data.X_test, data.y_test), "agrees_with_certified": agree}


def _median_seconds(dense: Any, sparse: Any, calls: int) -> tuple[float, float]:
    """Median over TIMING_REPEATS of the mean time per call, the two peers interleaved so that a
    busy machine slows both alike (one warm-up call each)."""
    dense(), sparse()
    times: dict[Any, list[float]] = {dense: [], sparse: []}
    for _ in range(TIMING_REPEATS):
        for fn in (dense, sparse):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[fn].append((time.perf_counter() - start) / calls)
    return float(np.median(times[dense])), float(np.median(times[sparse]))


# ---- step 6: the report -----------------------------------------------------------------------

def _write_report(figures: dict, out: Path, stability: dict[str, Any]) -> None:
    from ._html_report import Section, write_html

    figures["plots"] = (figures["tails"]["plots"] + [_plot_bound(figures, out), _plot_runtime(figures, out)]
                        + figures["stability"]["plots"])
    figures["files"] = ["report.html", "report.json", "model.safetensors", "inputs.npy", *figures["plots"]]
    (out / "report.json").write_text(json.dumps(figures, indent=1, allow_nan=False, default=_plain) + "\n")
    d, m, c, b, r = figures["data"], figures["model"], figures["compression"], figures["bound"], figures["runtime"]
    tails = [{"layer": _layer_of(row["name"]), "shape": row["shape"],
              "element tail index (Hill)": row.get("element_tail_index"),
              "95% CI low": _or(row.get("element_tail_index_ci_low"), 0.0),
              "95% CI high": _or(row.get("element_tail_index_ci_high"), math.inf),
              "Hill k": row.get("element_hill_k"),
              "power-law fit tail index": row.get("element_fit_tail_index"),
              "spectral alpha (ESD pdf exponent)": row.get("alpha"),
              "small sample": _small_sample_text(row)} for row in figures["tails"]["layers"]]
    code = [{"tensor": t["name"], "shape": "x".join(map(str, t["shape"])), "kept": t["k"], "of": t["n"],
             "position bits": t["position_bits"], "value bits": t["value_bits"], "values code": t["values_code"],
             "total bits": t["total_bits"]} for t in b["code"]["tensors"]]
    layers = [{"layer": row["layer"], "kind": row["kind"], "as matrix": "x".join(map(str, row["matrix"])),
               "keep": row["keep"], "kept": row["kept"], "of": row["of"], "values code": row["values_code"],
               "weight bits": row["weight_bits"], "bias bits": row["bias_bits"]} for row in figures["layers"]]
    search = [{"keep per layer": " / ".join(f"{k:g}" for k in row["keep"]), "levels": row["levels"], "stored values": row["nnz"],
               "code bits": row["code_bits"], "train error": row["train_error"], "test error": row["test_error"],
               "kl bound": row["kl"], "chosen": "yes" if i == c["chosen"] else ""} for i, row in enumerate(figures["search"])]
    sections = [
        Section("Run", [f"{figures['dataset']}: m = {d['m']} training and {d['n_test']} test samples of shape "
                        f"{'x'.join(map(str, d['input_shape']))}, {d['classes']} classes; seed {figures['seed']}; {figures['seconds']['total']:.0f} s on "
                        f"{figures['machine']['cpu']} ({figures['machine']['cores']} cores)."]),
        Section(f"1. Train a dense {m['kind'].upper()} (torch)", [f"{_architecture_text(m)}, {m['epochs']} epochs of Adam "
                                                 f"(lr {m['lr']:g}): train error {m['train_error']:.4f}, test error {m['test_error']:.4f}."]),
        Section("2. Heavy tails of the trained weights (htcore.analyze)",
                ["Element tail index alpha: P(|w| > x) ~ x^-alpha over the entries of each matrix (smaller = heavier "
                 "tail). Spectral alpha is WeightWatcher's: the pdf exponent of the power-law tail of the eigenvalues "
                 "of W^T W (about 2-6 for well-trained layers).",
                 f"Small sample: a spectral alpha from fewer than {MIN_SPECTRAL_EVALS} eigenvalues or a tail of fewer "
                 f"than {MIN_SPECTRAL_TAIL}, or a Hill estimate from fewer than {MIN_HILL_K} order statistics, is shown "
                 "but unreliable; the plots hatch its tail and draw no fitted line over fewer points than these."],
                [tails],
                [(str(out / p), _tail_caption(p, figures["tails"]["layers"])) for p in figures["tails"]["plots"]]),
        Section("3. Compress by top-k and certify (htcore.compress, htcore.certify)",
                [f"Each setting keeps the top-k |w| of every weight matrix, fine-tunes with the mask fixed, quantises the "
                 f"kept values to a k-means codebook and rounds biases to float16. The setting with the lowest kl bound is "
                 f"chosen; the code length charges ceil(log2 {c['settings_tried']}) = "
                 f"{b['code']['search_bits']} bits for that choice.",
                 f"Chosen: {_keeps_text(c['keep'])}, {c['levels']}-level codebook: {c['nnz']} stored values of "
                 f"{c['params']} parameters, {b['code_bits']} bits. Compressed net: train error {b['train_error']:.4f}, "
                 f"test error {b['test_error']:.4f}.",
                 f"Bounds on its true error, each with probability >= {1 - figures['delta']:g}: kl {b['kl']:.4f}, binomial "
                 f"{b['binomial']:.4f}, Catoni {b['catoni']:.4f}, Hoeffding {b['hoeffding']:.4f}; Arora et al. Theorem 2.1 "
                 f"{b['arora']:.4f} (gamma = {b['gamma']:.3g}, 2gamma-margin error of the dense net {b['margin_error']:.4f})."],
                [search, layers, code], [(str(out / "bound.png"), "errors of the dense and compressed nets and the bounds")]),
        Section(f"4. {stability['title']} (htcore.noise_stability, htcore.resilience)", stability["paragraphs"],
                stability["tables"], stability["figures"]),
        Section("5. Deploy and time (htcore.save_compressed, htcore.load_compressed)",
                [f"The compressed net, saved to model.safetensors ({r['model_file_bytes']} bytes; dense float32 weights "
                 f"{r['dense_float32_bytes']} bytes), loaded back and run with numpy and htcore's CSR kernels, "
                 f"against the dense net in torch, both with threads = {r['threads']}. Median of "
                 f"{r['repeats']} interleaved repetitions. Its predictions agree with the certified net's on "
                 f"{100 * r['agrees_with_certified']:.1f}% of the test set.",
                 "Try it: htcore run model.safetensors --input inputs.npy"],
                [[{"batch": row["batch"], "dense torch (ms)": row["dense_torch_ms"], "htcore (ms)": row["htcore_ms"],
                   "speed-up": row["speedup"]} for row in r["batches"]]],
                [(str(out / "runtime.png"), "latency per batch, dense torch vs htcore")]),
    ]
    write_html(out / "report.html", f"htcore demo: {figures['dataset']}", sections,
               footer=f"htcore {figures['htcore_version']}; every figure was computed in this run; all of them are in report.json.")


def summary(figures: dict) -> str:
    """The demo's printed summary: a dozen lines from the figures `run_demo` returns."""
    d, m, c, b, r = figures["data"], figures["model"], figures["compression"], figures["bound"], figures["runtime"]
    lines = [f"htcore demo: {figures['dataset']} (m = {d['m']} train, {d['n_test']} test), "
             f"{_architecture_text(m)}, seed {figures['seed']}; pipeline {figures['seconds']['total']:.0f} s",
             f"1. dense net ({m['epochs']} epochs): train error {m['train_error']:.4f}, test error {m['test_error']:.4f}",
             "2. tails: element tail index alpha (Hill, P(|w|>x) ~ x^-alpha) and spectral alpha (ESD pdf exponent, WeightWatcher)"]
    for row in figures["tails"]["layers"]:
        lines.append(f"     {_layer_of(row['name']):<10} {row['shape']:>8}  tail index {_num(row.get('element_tail_index'))} "
                     f"{_tail_ci(row)}  spectral alpha {_num(row.get('alpha'))}"
                     + (f"  (small sample: {flags})" if (flags := _small_sample_text(row)) else ""))
    lines.append(f"3. compressed (best kl of {c['settings_tried']} settings, search charged): {_keeps_text(c['keep'])}, "
                 f"{c['levels']}-level codebook")
    for t in b["code"]["tensors"]:
        kept = f"{t['k']}/{t['n']} kept" if t["kind"] == "sparse" else f"{t['n']} dense"
        lines.append(f"     {t['name']:<18} {kept:>14}  {t['total_bits']:>6} bits")
    lines += [f"     total {c['nnz']} stored values of {c['params']}, {b['code_bits']} bits; "
              f"train error {b['train_error']:.4f}, test error {b['test_error']:.4f}",
              f"   bound on its error (prob. {1 - figures['delta']:g}): kl {b['kl']:.4f}, binomial {b['binomial']:.4f}, "
              f"catoni {b['catoni']:.4f}, hoeffding {b['hoeffding']:.4f}, Arora Thm 2.1 {b['arora']:.4f}",
              _stability_line(figures["stability"]),
              f"5. runtime, htcore CSR vs dense torch (threads={r['threads']}, median of {r['repeats']}): "
              + "; ".join(f"batch {row['batch']}: {row['htcore_ms']:.4f} vs {row['dense_torch_ms']:.4f} ms "
                          f"({row['speedup']:.2f}x)" for row in r["batches"]),
              f"report: {figures['out']}/report.html (+ report.json, {len(figures['plots'])} PNG plots, model.safetensors)"]
    return "\n".join(lines)


def _stability_line(stability: dict) -> str:
    """Step 4 of the summary: per layer, the median relative error on real inputs vs the Frobenius ratio."""
    layers = "; ".join(f"layer {l['name']}: {_num(l['rel_error_median'])} vs {_num(l['frobenius_ratio'])}"
                       for l in stability["noise_stability"]["layers"])
    return (f"4. noise stability (median ||(W - W_hat) x|| / ||W x|| on real inputs vs ||W - W_hat||_F / ||W||_F): {layers}; "
            f"output error {_num(stability['noise_stability']['net']['output_error_all_median'])}")


def _plot_bound(figures: dict, out: Path) -> str:
    b, m = figures["bound"], figures["model"]
    labels = ["dense: train", "dense: test", "compressed: train", "compressed: test", "bound: kl", "bound: binomial",
              "bound: Catoni", "bound: Hoeffding", "bound: Arora 2.1"]
    values = [m["train_error"], m["test_error"], b["train_error"], b["test_error"], b["kl"], b["binomial"], b["catoni"],
              b["hoeffding"], b["arora"]]
    colors = ["#9ab"] * 2 + ["#48a"] * 2 + ["#c64"] * 5
    fig, ax = _figure((7, 4))
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for y, v in enumerate(values[::-1]):
        ax.text(v + 0.01, y, f"{v:.3f}", va="center", fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("error (fraction misclassified)")
    ax.set_title(f"{figures['dataset']}: the compressed net ({b['code_bits']} bits) and bounds on its error\n"
                 f"(each holds with probability {1 - figures['delta']:g}; m = {b['m']} training samples)", fontsize=10)
    return _save(fig, out, "bound.png")


def _plot_runtime(figures: dict, out: Path) -> str:
    rows = figures["runtime"]["batches"]
    fig, axes = _figure((7, 3.2), ncols=len(rows))
    for ax, row in zip(np.atleast_1d(axes), rows):
        ax.bar(["dense torch", "htcore CSR"], [row["dense_torch_ms"], row["htcore_ms"]], color=["#9ab", "#c64"])
        ax.set_title(f"batch {row['batch']}: {row['speedup']:.2f}x", fontsize=10)
        ax.set_ylabel("ms per batch (median)")
    return _save(fig, out, "runtime.png")


def _figure(size: tuple, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _save(fig: Any, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=90)
    return name


def _keeps_text(keep: dict) -> str:
    return "keep " + " / ".join(f"{v:g}" for v in keep.values()) + f" (layers {', '.join(keep)})"


def _num(x: Any, missing: str = "n/a") -> str:
    return missing if x is None else f"{x:.3g}"


def _tail_ci(row: dict) -> str:
    """The Hill tail index's 95% CI of a tails row ("" without an estimate); a None limit (unbounded
    in the JSON) prints as inf."""
    if row.get("element_tail_index") is None:
        return ""
    return f"[{_num(row.get('element_tail_index_ci_low'), '0')}, {_num(row.get('element_tail_index_ci_high'), 'inf')}]"


def _tail_caption(name: str, layers: list[dict]) -> str:
    """The caption of one of `ModelReport.plot`'s files ("NNN_<tensor>.png": row NNN of ``layers``)."""
    if name == "compressibility.png":
        return "relative Frobenius error of keeping the top-k |w|, per layer (htcore.compressibility_curve)"
    tensor = layers[int(name[:3])]["name"]
    return (f"layer {_layer_of(tensor)} ({tensor}): ESD of W^T W with its power-law fit (left), CCDF of |w| with "
            "the Hill tail (right); a hatched tail is a small-sample estimate")


def _layer_of(tensor: str) -> str:
    """The torch module a weight tensor belongs to ("0.weight" -> "0"), the report's name for a layer."""
    return tensor.removesuffix(".weight")


def _or(value: Any, default: float) -> float:
    """``value``, or ``default`` for None (an unbounded CI limit, null in the JSON)."""
    return default if value is None else value


def _small_sample_text(row: dict) -> str:
    """The small-sample flags of a tails row, as words: "spectral alpha", "Hill k", both or ""."""
    return ", ".join(text for column, text in (("alpha_small_sample", "spectral alpha"), ("element_small_sample", "Hill k"))
                     if row.get(column))


# ---- helpers ----------------------------------------------------------------------------------

def _preset(dataset: str, model: Any, hidden: Any, epochs: Any, finetune_epochs: Any) -> Preset:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if model is None:
        model = "mlp" if hidden is not None else DEFAULT_MODEL[dataset]
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model == "cnn" and hidden is not None:
        raise ValueError("hidden gives the widths of an MLP; it does not apply to model='cnn'")
    preset = PRESETS[dataset, model]
    if hidden is not None:
        if isinstance(hidden, (int, str)) or not hasattr(hidden, "__iter__"):
            raise TypeError(f"hidden must be a sequence of layer widths, got {hidden!r}")
        hidden = tuple(check_int(h, "hidden width", low=1) for h in hidden)
        # the preset's per-layer keeps: first layer's for every hidden layer, the output layer's last
        keeps = tuple(k[:1] * len(hidden) + k[-1:] for k in preset.keeps)
        preset = replace(preset, hidden=hidden, keeps=keeps)
    if epochs is not None:
        preset = replace(preset, epochs=check_int(epochs, "epochs", low=1))
    if finetune_epochs is not None:
        n = check_int(finetune_epochs, "finetune_epochs", low=0)
        preset = replace(preset, finetune={**preset.finetune, "epochs": n, "codebook_epochs": min(n, preset.finetune["codebook_epochs"])})
    return preset


def _keep_candidates(keep: Any, preset: Preset) -> list[tuple[float, ...]]:
    layers = len(preset.hidden or preset.channels) + 1
    if keep is None:
        return list(preset.keeps)
    if isinstance(keep, (int, float)) and not isinstance(keep, bool):
        return [(check_fraction(keep, "keep"),) * layers]
    if isinstance(keep, str) or not hasattr(keep, "__iter__"):
        raise TypeError(f"keep must be a fraction or a sequence of fractions, got {keep!r}")
    keep = tuple(check_fraction(k, "keep") for k in keep)
    if len(keep) == 1:
        return [keep * layers]
    if len(keep) != layers:
        raise ValueError(f"keep must give one fraction or one per weight layer ({layers}), got {len(keep)}: {keep}")
    return [keep]


def _require(dataset: str) -> Any:
    """Import torch (returned) and check the other packages the demo needs, with one-line reasons."""
    try:
        import torch
    except ImportError:
        raise ImportError("htcore demo needs torch: install the torch extra, pip install 'htcore[torch]'") from None
    needs = {"matplotlib": "matplotlib (pip install 'htcore[plot]')"}
    if dataset == "digits":
        needs["sklearn"] = "scikit-learn for the digits dataset (pip install scikit-learn)"
    for module, what in needs.items():
        try:
            __import__(module)
        except ImportError:
            raise ImportError(f"htcore demo needs {what}") from None
    return torch


@contextlib.contextmanager
def _threads(library: Any, n: int) -> Iterator[None]:
    """Run the block with ``library`` (torch or htcore) on ``n`` threads, then restore its setting."""
    before = library.get_num_threads()
    library.set_num_threads(n)
    try:
        yield
    finally:
        library.set_num_threads(before)


@contextlib.contextmanager
def _timed(figures: dict, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    figures["seconds"][name] = time.perf_counter() - start


def _machine(torch: Any) -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "htcore_threads": htcore.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def _plain(value: Any) -> Any:
    """JSON fallback: numpy scalars and arrays, tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
