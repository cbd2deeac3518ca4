"""The runtime on a busy machine: 1 vs 2 threads per batch while other work holds the cores.

Two models run through htcore's torch-free runtime: the "demo" MLP (784-32-10, keep 3 % / 50 %, the
Fashion-MNIST demo's shape) and the "mlp" 784-1024-1024-10 at keep 10 %, weights random (seed 0;
only the sparsity pattern's size matters for time). Each (model, threads) pair runs in a fresh
process, so the first call (thread start-up included) is timed as a user's first call is; then
the median of the following calls per batch size. Scenarios: "quiet" (nothing else started) and
"contended": a competing OpenMP process (htcore top-k on 2 threads, in a loop) and a Python busy
loop, both started before and stopped after the measurements.

Target: 2 threads never more than 1.25x slower than 1 thread (median and first call) in either
scenario. Writes results/contention.md and .json.

    python benchmarks/bench_contention.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import machine

MODELS = {"demo": ((784, 32, 10), (0.03, 0.5)), "mlp": ((784, 1024, 1024, 10), (0.1, 0.1, 0.1))}
BATCHES = (1, 8, 64, 256)
RESULTS = Path(__file__).parent / "results"

# One (model, threads) measurement, in a fresh process: first call per batch size, then medians.
_MEASURE = r"""
import json, sys, time
import numpy as np, torch
from torch import nn
import htcore
from htcore.nn import sparsify_model
from htcore.runtime import CompressedModel

sizes, keeps, threads, batches, calls = json.loads(sys.argv[1])
htcore.set_num_threads(threads)
torch.manual_seed(0)
layers = []
for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
    layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
net = nn.Sequential(*layers)
sparsify_model(net, keep={str(2 * i): k for i, k in enumerate(keeps)})
model = CompressedModel.from_torch(net)
X = np.random.default_rng(0).standard_normal((max(batches), sizes[0])).astype(np.float32)
out = {}
for batch in batches:
    x = X[:batch]
    t = time.perf_counter(); model(x); first = time.perf_counter() - t
    times = []
    for _ in range(calls):
        t = time.perf_counter(); model(x); times.append(time.perf_counter() - t)
    out[batch] = {"first_ms": first * 1e3, "median_ms": float(np.median(times)) * 1e3}
print(json.dumps(out))
"""

_OPENMP_LOAD = ("import numpy as np, htcore\nhtcore.set_num_threads(2)\n"
                "w = np.random.default_rng(1).standard_normal(4_000_000).astype(np.float32)\n"
                "while True: htcore.topk_sparsify(w.reshape(2000, 2000), 0.1)\n")
_BUSY_LOOP = "while True: pass\n"


def measure(model: str, threads: int, calls: int) -> dict:
    sizes, keeps = MODELS[model]
    arg = json.dumps([sizes, keeps, threads, BATCHES, calls])
    out = subprocess.run([sys.executable, "-c", _MEASURE, arg], capture_output=True, text=True, check=True)
    return {int(b): v for b, v in json.loads(out.stdout).items()}


def scenario(name: str, calls: int, rounds: int) -> list[dict]:
    """Rows (model, batch, 1- and 2-thread first/median ms, ratios); medians over ``rounds`` processes."""
    load = []
    if name == "contended":
        load = [subprocess.Popen([sys.executable, "-c", code]) for code in (_OPENMP_LOAD, _BUSY_LOOP)]
        time.sleep(2.0)  # let the competitors reach their loops
    try:
        runs = {(m, t): [measure(m, t, calls) for _ in range(rounds)] for m in MODELS for t in (1, 2)}
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    rows = []
    for m in MODELS:
        for b in BATCHES:
            row = {"scenario": name, "model": m, "batch": b}
            for t in (1, 2):
                for key in ("first_ms", "median_ms"):
                    values = sorted(r[b][key] for r in runs[(m, t)])
                    row[f"{key}_{t}"] = values[len(values) // 2]
            row["ratio_median"] = row["median_ms_2"] / row["median_ms_1"]
            row["ratio_first"] = row["first_ms_2"] / row["first_ms_1"]
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| scenario | model | batch | 1 thread median ms | 2 threads median ms | 2t/1t median | "
             "1 thread first ms | 2 threads first ms | 2t/1t first |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['model']} | {r['batch']} | {r['median_ms_1']:.4f} | {r['median_ms_2']:.4f} | "
                     f"{r['ratio_median']:.2f} | {r['first_ms_1']:.4f} | {r['first_ms_2']:.4f} | {r['ratio_first']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    args = parser.parse_args()
    calls, rounds = (50, 1) if args.quick else (200, 3)
    rows = scenario("quiet", calls, rounds) + scenario("contended", calls, rounds)
    worst = max(max(r["ratio_median"], r["ratio_first"]) for r in rows)
    text = (f"# Runtime under contention (1 vs 2 threads)\n\n{table(rows)}\n\nWorst 2-thread / 1-thread ratio: "
            f"{worst:.2f} (target <= 1.25). Medians of {rounds} process(es) x {calls} calls; the first call is the "
            f"first of a fresh process. Load average at the start: {os.getloadavg()[0]:.2f} "
            f"(the machine is shared: read the ratios).\n")
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "contention.md").write_text(text)
    (RESULTS / "contention.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
