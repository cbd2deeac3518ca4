"""Wall time of htcore.search_bound: serial vs 2 local worker processes vs a 2-worker Dask LocalCluster.

    python benchmarks/bench_search.py [--quick] [--reps N]

A small but real search: an MLP 784-128-10 trained (2 epochs, seeded) on the first 20,000
Fashion-MNIST training images, then a grid of 6 settings (keep 3%, 5% or 10% of the hidden
layer and 50% of the output layer, times 4 or 8 codebook levels, float16 biases), so 3 groups of
two settings that share one pruning and 3 epochs of masked fine-tuning, each certified on the
20,000 rows. Each repetition runs, in turn (a change in the shared machine's load reaches all
three alike):

- serial: ``search_bound(...)`` in this process (every group on one torch thread, as always);
- local pool: ``search_bound(..., executor=local_executor(2))``, the pool's start-up (spawning two
  processes that import torch) inside the timing, as a user pays it;
- Dask: ``search_bound(..., executor=client.get_executor())`` on a LocalCluster of 2 worker
  processes x 1 thread, started once before the timings, its workers having imported torch and
  htcore (that start-up is reported apart).

Every mode's chosen setting, code bits and kl bound are checked equal to the serial run's. CPU
time is this process's only (the workers' is not counted). Writes benchmarks/results/search.md
and .json.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import htcore  # noqa: E402
from bench_analyze import machine_info, write_results  # noqa: E402
from htcore.datasets import load_fashion_mnist  # noqa: E402
from htcore.measure import local_executor  # noqa: E402

ROWS = 20_000
FINETUNE = dict(epochs=3, codebook_epochs=1)


def problem(rows: int):
    import torch

    data = load_fashion_mnist()
    X, y = data.X_train[:rows], data.y_train[:rows]
    torch.manual_seed(0)
    model = htcore.train.train_mlp(X, y, hidden=(128,), epochs=2, lr=1e-3, seed=0)
    grid = [dict(per_layer={"0": keep, "2": 0.5}, levels=levels, bias_precision="float16")
            for keep in (0.03, 0.05, 0.1) for levels in (4, 8)]
    return model, X, y, grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition on 5,000 rows")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    reps, rows = (1, 5_000) if args.quick else (args.reps, ROWS)
    from dask.distributed import Client, LocalCluster

    info = machine_info()
    model, X, y, grid = problem(rows)
    environ = dict(os.environ)  # Dask sets OMP_NUM_THREADS=1 & co. in this process for its workers
    start = time.perf_counter()
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    client.run(lambda: __import__("htcore.certification") and __import__("torch"))  # imports belong to the start-up
    cluster_start = time.perf_counter() - start
    os.environ.clear()
    os.environ.update(environ)

    def search(executor=None):
        return htcore.search_bound(model, X, y, grid=grid, finetune=FINETUNE, executor=executor)

    def pool():
        with local_executor(2) as executor:
            return search(executor)

    modes = {"serial": search, "local pool, 2 workers": pool, "Dask LocalCluster, 2 workers": lambda: search(client.get_executor())}
    walls: dict = {name: [] for name in modes}
    cpus: dict = {name: [] for name in modes}
    results: dict = {}
    try:
        for _ in range(reps):
            for name, fn in modes.items():
                c, t = time.process_time(), time.perf_counter()
                results[name] = fn()
                walls[name].append(time.perf_counter() - t)
                cpus[name].append(time.process_time() - c)
    finally:
        client.close()
        cluster.close()
    reference = results["serial"]
    for name, result in results.items():
        same = (result.best_index == reference.best_index
                and [r.as_dict() for r in result.reports] == [r.as_dict() for r in reference.reports])
        if not same:
            raise SystemExit(f"{name}: the search differs from the serial run")
    load_end = os.getloadavg()[0]
    serial_wall = statistics.median(walls["serial"])
    lines = ["| mode | wall (s, median) | speed-up vs serial | this process's CPU (s) | same result as serial |",
             "|---|---:|---:|---:|---|"]
    for name in modes:
        wall = statistics.median(walls[name])
        lines.append(f"| {name} | {wall:.1f} | {serial_wall / wall:.2f}x | {statistics.median(cpus[name]):.1f} | yes |")
    best = reference.best
    table = (
        f"MLP 784-128-10 on {rows:,} Fashion-MNIST rows; grid of {len(grid)} settings in 3 groups sharing a pruning "
        f"and fine-tuning ({FINETUNE}); {reps} repetition(s), modes interleaved. Dask LocalCluster start-up "
        f"(outside the timings): {cluster_start:.1f} s. Load average at the end: {load_end:.1f}.\n\n"
        + "\n".join(lines)
        + f"\n\nBest setting {reference.best_index + 1}: kl {best.kl:.4f}, {best.code_bits} bits, train error "
        f"{best.train_error:.4f}, identical in every mode (all reports compared field by field). The machine is "
        "shared: at the load average above every process gets a small share of the 2 cores, so the wall times measure "
        "that contention as much as the search; with free cores the groups run side by side. Linux autogroup "
        "scheduling (on here) gives all processes of one session one share together, so on a busy machine worker "
        "processes started from the same session add no CPU, only their start-up and data shipping.\n"
    )
    write_results("search", "htcore.search_bound: serial vs local process pool vs Dask LocalCluster", table,
                  {"machine": info, "load_average_end": load_end, "reps": reps, "rows": rows, "settings": len(grid),
                   "cluster_start_s": cluster_start, "walls": walls, "cpus": cpus, "best_kl": best.kl,
                   "best_bits": best.code_bits})


if __name__ == "__main__":
    main()
