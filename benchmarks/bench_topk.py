"""Benchmark: top-k magnitude sparsification to CSR, htcore vs the usual numpy and torch paths.

For float32 Gaussian matrices of 1e6, 1e7 and 1e8 entries and keep = 1%, 10%, 50% (k over the
whole matrix), at 1 and 2 threads, it times:

- htcore: ``htcore.topk_sparsify(W, keep)`` -> CSRMatrix (exact, ties to the lowest index);
- numpy: ``np.argpartition`` on |W|, a dense boolean mask, ``scipy.sparse.csr_matrix`` of the
  masked matrix (single-threaded whatever the setting);
- torch: ``torch.topk`` on |W| (sorted=False), sort the indices, build ``torch.sparse_csr_tensor``.

Wall time is the median of several runs in one process, each peer measured in the same run.
Peak extra memory is measured in a fresh subprocess per case (2 threads), so no allocator cache
from earlier runs hides it: VmHWM after the call minus VmRSS just before it (Linux, after
resetting the high-water mark through /proc/self/clear_refs). It includes the output and is given
relative to the input's size. Run ``python benchmarks/bench_topk.py [--quick] [--skip-peers-1e8]``; the table is
printed and written to benchmarks/results/topk.md and topk.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import htcore
from common import machine

SHAPES = {"1e6": (1000, 1000), "1e7": (2500, 4000), "1e8": (10000, 10000)}
KEEPS = (0.01, 0.1, 0.5)
RESULTS = Path(__file__).resolve().parent / "results"


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def peak_extra_bytes(fn) -> tuple[int, object]:
    """Run fn once; its peak resident memory above the current level (output included)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    before = _status("VmRSS")
    out = fn()
    return _status("VmHWM") - before, out


def numpy_path(W: np.ndarray, k: int):
    a = np.abs(W).reshape(-1)
    top = np.argpartition(a, a.size - k)[a.size - k:]
    mask = np.zeros(a.size, dtype=bool)
    mask[top] = True
    return sp.csr_matrix(np.where(mask.reshape(W.shape), W, np.float32(0)))


def torch_path(W: np.ndarray, k: int):
    import torch

    flat = torch.from_numpy(W).reshape(-1)
    _, top = torch.topk(flat.abs(), k, sorted=False)
    top = torch.sort(top).values
    rows, cols = top // W.shape[1], top % W.shape[1]
    crow = torch._convert_indices_from_coo_to_csr(rows, W.shape[0])
    return torch.sparse_csr_tensor(crow, cols, flat[top], W.shape, check_invariants=False)


def nnz_of(out) -> int:
    return int(out._nnz()) if hasattr(out, "_nnz") else int(out.nnz)


METHODS = {"htcore": lambda W, keep, k: htcore.topk_sparsify(W, keep),
           "numpy": lambda W, keep, k: numpy_path(W, k),
           "torch": lambda W, keep, k: torch_path(W, k)}


def make_matrix(size: str) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPES[size], dtype=np.float32)


def memory_case(size: str, keep: float, method: str) -> int:
    """Peak extra bytes of one call in a fresh process (the --memory-case mode)."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--memory-case", size, str(keep), method]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def time_case(fn, k: int, reps: int) -> float:
    """Median wall ms over reps runs (after one warm-up run that also checks nnz)."""
    out = fn()
    assert nnz_of(out) == k, (nnz_of(out), k)
    del out
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1e6 and 1e7 only, fewer runs")
    parser.add_argument("--skip-peers-1e8", action="store_true", help="time only htcore at 1e8 entries")
    parser.add_argument("--memory-case", nargs=3, metavar=("SIZE", "KEEP", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.memory_case:
        size, keep, method = args.memory_case
        htcore.set_num_threads(2)
        torch.set_num_threads(2)
        W = make_matrix(size)
        keep = float(keep)
        extra, _ = peak_extra_bytes(lambda: METHODS[method](W, keep, htcore.k_for_keep(keep, W.size)))
        print(extra)
        return

    load_at_start = round(os.getloadavg()[0], 2)
    sizes = ["1e6", "1e7"] if args.quick else ["1e6", "1e7", "1e8"]
    reps = {"1e6": 3 if args.quick else 7, "1e7": 3 if args.quick else 5, "1e8": 3}
    rows = []
    for size in sizes:
        W = make_matrix(size)
        for keep in KEEPS:
            k = htcore.k_for_keep(keep, W.size)
            methods = ["htcore"] if size == "1e8" and args.skip_peers_1e8 else list(METHODS)
            memory = {m: memory_case(size, keep, m) for m in methods}
            for threads in (1, 2):
                htcore.set_num_threads(threads)
                torch.set_num_threads(threads)
                row = {"size": size, "shape": list(W.shape), "keep": keep, "k": k, "threads": threads,
                       "input_bytes": W.nbytes}
                for m in METHODS:
                    n_reps = reps[size] if m == "htcore" or size != "1e8" else 1
                    row[m] = ({"ms": time_case(lambda: METHODS[m](W, keep, k), k, n_reps), "runs": n_reps,
                               "peak_extra_bytes": memory[m]} if m in memory else None)
                rows.append(row)
                print(format_row(row), flush=True)
        W = None  # free the matrix before the next size
    info = machine()
    info["load_average_1min_at_start"] = load_at_start
    report = render(rows, info, args)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "topk.md").write_text(report)
    (RESULTS / "topk.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


def _ms(cell) -> str:
    return f"{cell['ms']:.1f}" if cell else "skipped"


def _ratio(peer, mine) -> str:
    return f"{peer['ms'] / mine['ms']:.1f}x" if peer else "-"


def _mem(cell, input_bytes) -> str:
    return f"{cell['peak_extra_bytes'] / 2**20:.0f} MiB ({cell['peak_extra_bytes'] / input_bytes:.2f}x)" if cell else "-"


def format_row(r: dict) -> str:
    return (f"| {r['size']} | {r['keep']:.0%} | {r['threads']} | {_ms(r['htcore'])} | {_ms(r['numpy'])} | "
            f"{_ms(r['torch'])} | {_ratio(r['numpy'], r['htcore'])} | {_ratio(r['torch'], r['htcore'])} | "
            f"{_mem(r['htcore'], r['input_bytes'])} | {_mem(r['numpy'], r['input_bytes'])} | "
            f"{_mem(r['torch'], r['input_bytes'])} |")


def render(rows: list[dict], info: dict, args) -> str:
    lines = [
        "# Top-k magnitude sparsification to CSR (float32, k over the whole matrix)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, 1-minute load average "
        f"{info['load_average_1min_at_start']} at start and {info['load_average_1min']} at the end (the cores "
        f"are shared with other jobs, so figures are noisy and a second thread often waits for a core: "
        f"compare ratios within a row). htcore build: {info['htcore_build']['build_flags']}, "
        f"{info['htcore_build']['compiler']}; numpy {info['numpy']}, torch {info['torch']}. "
        f"htcore runs one thread below 2^20 entries, so its 1e6 rows are single-threaded at either setting.",
        "",
        "Times: median wall ms after a warm-up run (1e6: 7 runs, 1e7: 5, 1e8: 3 for htcore and 1 for the "
        "peers; --quick: 3). "
        "numpy path = argpartition(|W|) + dense mask + scipy csr_matrix (single-threaded); torch path = "
        "torch.topk(|W|, sorted=False) + index sort + sparse_csr_tensor. Ratios = peer time / htcore time. "
        "Memory (one fresh process per case, 2 threads): peak resident bytes above the level before the "
        "call (VmHWM after resetting it), output included, and as a multiple of the input's size.",
        "",
        "| entries | keep | threads | htcore ms | numpy ms | torch ms | numpy/htcore | torch/htcore | "
        "htcore extra mem | numpy extra mem | torch extra mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [format_row(r) for r in rows]
    if args.skip_peers_1e8:
        lines += ["", "The numpy and torch paths were skipped at 1e8 entries (--skip-peers-1e8)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
