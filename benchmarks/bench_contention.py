"""The runtime on a busy machine: 1 vs 2 threads per batch, quiet and while other work holds the cores,
for this checkout and (A/B, same run) another build of htcore.

Three models run through htcore's torch-free runtime, built once with torch (seed 0; weights random,
only the sparsity pattern's size matters for time) and saved as model files: "demo" (784-32-10 MLP,
keep 3 % / 50 %, the Fashion-MNIST demo's shape), "mlp" (784-1024-1024-10 at keep 10 %) and
"lenet" (`htcore.nn.lenet`, every layer at keep 30 %, 28x28 inputs). Each (build, model, threads)
measurement is a fresh process that loads the model file, sets the thread count and then, per
batch size (1, 8, 64, 256), times the first call (as a user's first call is timed: thread wake-up,
allocation, cold caches) and the median of the calls that follow (at least 5, up to ~0.3 s or
1000 calls: a batch-1 call takes 0.01-0.1 ms, so 200 calls, the cap before, spanned only 2-20 ms
of a shared machine's load).
Each figure is the median over ``--rounds`` such processes; builds, models and thread counts are
interleaved within each round, so a change in the machine's load hits all of them alike.

Scenarios: "quiet" (nothing started by the benchmark; the machine is shared, so its load average
is recorded) and "contended": a competing OpenMP process (htcore top-k on 2 threads, in a loop) and
a Python busy loop, both started before and stopped after the measurements.

Targets (issue #21): with this checkout, 2 threads never more than 1.25x slower than 1 thread
(median and first call) in either scenario; quiet medians within 10 % of the reference build's.
Writes results/contention.md and .json.

    python benchmarks/bench_contention.py [--reference PYTHONPATH] [--rounds N] [--quick]

``--reference`` is the ``python`` directory of another htcore checkout with its extension built
(e.g. main's), measured beside this one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

BATCHES = (1, 8, 64, 256)
MODELS = ("demo", "mlp", "lenet")
RESULTS = Path(__file__).parent / "results"
THIS = str(Path(__file__).resolve().parent.parent / "python")

# One (build, model, threads) measurement, in a fresh process without torch: first call and median
# per batch size.
_MEASURE = r"""
import json, sys, time
import numpy as np
import htcore

path, threads, batches, budget = json.loads(sys.argv[1])
htcore.set_num_threads(threads)
model = htcore.load_compressed(path)
X = np.random.default_rng(0).standard_normal((max(batches),) + tuple(model.input_shape)).astype(np.float32)
out = {}
for batch in batches:
    x = X[:batch]
    t = time.perf_counter(); model(x); first = time.perf_counter() - t
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget and len(times) < 1000):
        t = time.perf_counter(); model(x); times.append(time.perf_counter() - t)
    out[batch] = {"first_ms": first * 1e3, "median_ms": float(np.median(times)) * 1e3}
print(json.dumps(out))
"""

_OPENMP_LOAD = ("import numpy as np, htcore\nhtcore.set_num_threads(2)\n"
                "w = np.random.default_rng(1).standard_normal(4_000_000).astype(np.float32)\n"
                "while True: htcore.topk_sparsify(w.reshape(2000, 2000), 0.1)\n")
_BUSY_LOOP = "while True: pass\n"


def build_models(directory: Path) -> dict[str, str]:
    """The three benchmark models as htcore model files in ``directory`` (needs torch)."""
    import torch
    from torch import nn

    import htcore
    from htcore.nn import lenet, sparsify_model
    from htcore.runtime import CompressedModel

    paths = {}
    specs = {"demo": ((784, 32, 10), (0.03, 0.5)), "mlp": ((784, 1024, 1024, 10), (0.1, 0.1, 0.1))}
    for name, (sizes, keeps) in specs.items():
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        net = nn.Sequential(*layers)
        sparsify_model(net, keep={str(2 * i): k for i, k in enumerate(keeps)})
        paths[name] = str(directory / f"{name}.safetensors")
        htcore.save_compressed(paths[name], CompressedModel.from_torch(net, input_shape=(sizes[0],)))
    net = lenet(seed=0)
    sparsify_model(net, keep=0.3)
    paths["lenet"] = str(directory / "lenet.safetensors")
    htcore.save_compressed(paths["lenet"], CompressedModel.from_torch(net, input_shape=(1, 28, 28)))
    return paths


def measure(pythonpath: str, path: str, threads: int, budget: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env["PYTHONPATH"] = pythonpath
    arg = json.dumps([path, threads, BATCHES, budget])
    out = subprocess.run([sys.executable, "-c", _MEASURE, arg], capture_output=True, text=True, check=True, env=env)
    return {int(b): v for b, v in json.loads(out.stdout).items()}


def scenario(name: str, builds: dict[str, str], paths: dict[str, str], rounds: int, budget: float) -> dict:
    """Rows (build, model, batch: 1- and 2-thread first/median ms and their ratios, each the median
    over ``rounds`` processes) and the load average before and after."""
    load = []
    if name == "contended":
        env = dict(os.environ, PYTHONPATH=THIS)
        load = [subprocess.Popen([sys.executable, "-c", code], env=env) for code in (_OPENMP_LOAD, _BUSY_LOOP)]
        time.sleep(2.0)  # let the competitors reach their loops
    load_before = os.getloadavg()[0]
    runs: dict[tuple, list] = {}
    try:
        for r in range(rounds):
            order = list(builds) if r % 2 == 0 else list(reversed(builds))  # alternate who goes first
            for build in order:
                for model in MODELS:
                    for threads in (1, 2):
                        runs.setdefault((build, model, threads), []).append(
                            measure(builds[build], paths[model], threads, budget))
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    rows = []
    for build in builds:
        for model in MODELS:
            for b in BATCHES:
                row: dict = {"scenario": name, "build": build, "model": model, "batch": b}
                for t in (1, 2):
                    for key in ("first_ms", "median_ms"):
                        row[f"{key}_{t}"] = statistics.median(run[b][key] for run in runs[(build, model, t)])
                row["ratio_median"] = row["median_ms_2"] / row["median_ms_1"]
                row["ratio_first"] = row["first_ms_2"] / row["first_ms_1"]
                rows.append(row)
    return {"rows": rows, "load_before": load_before, "load_after": os.getloadavg()[0]}


def table(rows: list[dict]) -> str:
    lines = ["| scenario | build | model | batch | 1t median ms | 2t median ms | 2t/1t median | "
             "1t first ms | 2t first ms | 2t/1t first |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['build']} | {r['model']} | {r['batch']} | {r['median_ms_1']:.4f} | "
                     f"{r['median_ms_2']:.4f} | {r['ratio_median']:.2f} | {r['first_ms_1']:.4f} | "
                     f"{r['first_ms_2']:.4f} | {r['ratio_first']:.2f} |")
    return "\n".join(lines)


def against_reference(rows: list[dict]) -> str:
    """Quiet medians of this checkout over the reference build's, per model, batch and thread count."""
    ref = {(r["model"], r["batch"]): r for r in rows if r["scenario"] == "quiet" and r["build"] == "reference"}
    lines = ["| model | batch | 1 thread: this / reference | 2 threads: this / reference |", "|---|---|---|---|"]
    for r in rows:
        if r["scenario"] == "quiet" and r["build"] == "this" and (r["model"], r["batch"]) in ref:
            base = ref[(r["model"], r["batch"])]
            lines.append(f"| {r['model']} | {r['batch']} | {r['median_ms_1'] / base['median_ms_1']:.2f} | "
                         f"{r['median_ms_2'] / base['median_ms_2']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="PYTHONPATH of another htcore build to measure beside this one")
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per (build, model, threads)")
    parser.add_argument("--quick", action="store_true", help="1 round, short timing budget")
    args = parser.parse_args()
    rounds, budget = (1, 0.05) if args.quick else (args.rounds, 0.3)
    builds = {"this": THIS}
    if args.reference:
        builds["reference"] = str(Path(args.reference).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_models(Path(tmp))
        scenarios = {name: scenario(name, builds, paths, rounds, budget) for name in ("quiet", "contended")}
    rows = [r for s in scenarios.values() for r in s["rows"]]
    mine = [r for r in rows if r["build"] == "this"]
    worst = max(max(r["ratio_median"], r["ratio_first"]) for r in mine)
    loads = ", ".join(f"{name} {s['load_before']:.1f} -> {s['load_after']:.1f}" for name, s in scenarios.items())
    text = (f"# Runtime under contention (1 vs 2 threads)\n\n{table(rows)}\n\nWorst 2-thread / 1-thread ratio of "
            f"this checkout: {worst:.2f} (target <= 1.25). Each figure is the median of {rounds} fresh "
            f"process(es); \"median\" is the median call after the first within a process, \"first\" the "
            f"process's first call at that batch. Load average (1 min) before -> after each scenario: {loads} "
            f"(2 cores, shared with other users: read the ratios).\n")
    if args.reference:
        text += f"\n## Quiet medians against the reference build, same run\n\n{against_reference(rows)}\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "contention.md").write_text(text)
    (RESULTS / "contention.json").write_text(json.dumps(
        {"machine": machine(), "rounds": rounds, "builds": builds,
         "load": {n: [s["load_before"], s["load_after"]] for n, s in scenarios.items()}, "rows": rows},
        indent=1, default=str))


if __name__ == "__main__":
    main()
