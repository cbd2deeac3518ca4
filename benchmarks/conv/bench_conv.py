"""Sparse conv2d (htcore kernel, direct and tiled loops) against torch's dense conv2d, interleaved.

The kernel is loaded from the standalone build's libconv_capi.so (ctypes; see README.md), so it
runs in the same process as torch. Every method is timed in rounds: round i times each method once,
as a block of calls lasting ~2 ms; the table gives each method's median over the rounds and the
ratios of medians. torch and the kernel share the process's OpenMP pool setting: GOMP_SPINCOUNT
is lowered (as in ../bench_spmv.py) and each block is preceded by one untimed call and a short
idle gap, so no pool is still spinning from another method when a block starts.

    python bench_conv.py --lib /tmp/conv-build/libconv_capi.so [--budget 0.3] [--out results.md]
"""

import os

os.environ.setdefault("GOMP_SPINCOUNT", "30000")  # before torch loads its pool

import argparse
import ctypes
import json
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

LAYERS = [
    # name, C_in, C_out, H (= W), k, padding, stride
    ("LeNet 1->8 5x5 28x28", 1, 8, 28, 5, 0, 1),
    ("LeNet 8->16 5x5 12x12", 8, 16, 12, 5, 0, 1),
    ("VGG 32->64 3x3 14x14 p1", 32, 64, 14, 3, 1, 1),
    ("VGG 64->128 3x3 7x7 p1", 64, 128, 7, 3, 1, 1),
    ("VGG 64->128 3x3 14x14 p1", 64, 128, 14, 3, 1, 1),
    ("1x1 64->128 7x7", 64, 128, 7, 1, 0, 1),
]
STRIDED = [  # --strided: ResNet-style downsampling layers
    ("3x3 s2 64->128 14x14 p1", 64, 128, 14, 3, 1, 2),
    ("1x1 s2 64->128 14x14", 64, 128, 14, 1, 0, 2),
]
GAP = 0.002  # idle seconds before each block (longer than the pools' spinning)


def load(lib_path):
    lib = ctypes.CDLL(lib_path)
    lib.htconv_set_num_threads.argtypes = [ctypes.c_int]
    P = ctypes.c_void_p
    lib.htconv_conv2d.argtypes = [P, P, ctypes.c_int, P, ctypes.c_int64, P, P, ctypes.c_int64, P, ctypes.c_int, P,
                                  ctypes.c_int64, ctypes.c_int]
    lib.htconv_conv2d.restype = ctypes.c_int
    return lib


def topk_sparsify(w, sparsity, rng):
    """Keeps the largest-magnitude (1 - sparsity) of each output channel's weights (top-k per row)."""
    co = w.shape[0]
    flat = w.reshape(co, -1).copy()
    keep = max(1, int(round(flat.shape[1] * (1 - sparsity))))
    order = np.argsort(-np.abs(flat), axis=1)
    mask = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(mask, order[:, :keep], True, axis=1)
    flat[~mask] = 0
    return flat.reshape(w.shape)


def to_csr(flat):
    rows, cols = flat.shape
    indptr = np.zeros(rows + 1, np.int32)
    idx, val = [], []
    for r in range(rows):
        nz = np.nonzero(flat[r])[0]
        idx.append(nz)
        val.append(flat[r, nz])
        indptr[r + 1] = indptr[r] + len(nz)
    return indptr, np.concatenate(idx).astype(np.uint16), np.concatenate(val).astype(np.float32)


def interleaved(methods, budget, min_rounds=11, max_rounds=300):
    """methods: name -> callable. Rounds time every method once each (a block of calls of ~1 ms),
    in alternating order. Returns (name -> median seconds per call, name -> per-round times, rounds)."""
    reps = {}
    for name, f in methods.items():
        f()
        t0 = time.perf_counter()
        f()
        one = time.perf_counter() - t0
        reps[name] = max(1, min(1000, int(0.001 / max(one, 1e-7))))
    times = {name: [] for name in methods}
    names = list(methods)
    end = time.perf_counter() + budget
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < end and rounds < max_rounds):
        for name in names if rounds % 2 == 0 else names[::-1]:
            f = methods[name]
            f()  # wakes this method's pool
            time.sleep(GAP)
            f()
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                f()
            times[name].append((time.perf_counter() - t0) / reps[name])
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}, times, rounds


def paired(times, a, b):
    """Median over rounds of time[a] / time[b] (the two blocks of one round saw the same machine load)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="/tmp/conv-build/libconv_capi.so")
    ap.add_argument("--budget", type=float, default=0.3, help="seconds of interleaved rounds per case")
    ap.add_argument("--out", default=None, help="write the markdown table here (and a .json beside it)")
    ap.add_argument("--quick", action="store_true", help="70%% and 95%% only")
    ap.add_argument("--strided", action="store_true", help="the stride-2 layers instead of the main grid")
    args = ap.parse_args()
    lib = load(args.lib)
    rng = np.random.default_rng(0)
    rows = []
    load0 = os.getloadavg()
    sparsities = [0.7, 0.95] if args.quick else [0.7, 0.8, 0.9, 0.95]
    for name, cin, cout, hw, k, pad, stride in STRIDED if args.strided else LAYERS:
        w_dense = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
        for sp in sparsities:
            w = topk_sparsify(w_dense, sp, rng)
            indptr, idx, val = to_csr(w.reshape(cout, -1))
            wt = torch.from_numpy(w)
            b = rng.standard_normal(cout).astype(np.float32)
            bt = torch.from_numpy(b)
            for batch in (1, 32):
                x = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
                xt = torch.from_numpy(x)
                ho = (hw + 2 * pad - k) // stride + 1
                y = np.empty((batch, cout, ho, ho), np.float32)
                params = np.array([batch, cin, hw, hw, cout, k, k, stride, stride, pad, pad, 1, 1, 1], np.int64)
                ptrs = [a.ctypes.data for a in (indptr, idx, val, params, x, b, y)]

                def kernel(algo):
                    def f():
                        rc = lib.htconv_conv2d(ptrs[0], ptrs[1], 1, ptrs[2], len(val), ptrs[3], ptrs[4], x.size, ptrs[5],
                                               1, ptrs[6], y.size, algo)
                        assert rc == 0

                    return f

                ref = torch.relu(F.conv2d(xt, wt, bt, stride=stride, padding=pad)).numpy()
                for algo in (1, 2):
                    kernel(algo)()
                    err = np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30)
                    assert err < 1e-5, (name, sp, batch, algo, err)
                with torch.inference_mode():
                    torch_f = lambda: torch.relu_(F.conv2d(xt, wt, bt, stride=stride, padding=pad))
                    for threads in (1, 2):
                        lib.htconv_set_num_threads(threads)
                        torch.set_num_threads(threads)
                        med, times, rounds = interleaved(
                            {"direct": kernel(1), "tiled": kernel(2), "torch dense": torch_f}, args.budget)
                        # the rule conv2d.cpp's automatic choice applies
                        wq = -(-(hw + 2 * pad) // stride)  # the prepared row length
                        auto = "tiled" if (ho - 1) * wq + ho <= 64 or wq == ho else "direct"
                        best = min(("direct", "tiled"), key=lambda m: med[m])
                        row = dict(layer=name, sparsity=sp, batch=batch, threads=threads, nnz=int(len(val)),
                                   rounds=rounds, **{k2: v * 1e6 for k2, v in med.items()},
                                   tiled_over_direct=paired(times, "tiled", "direct"),
                                   torch_over_auto=paired(times, "torch dense", auto), auto=auto,
                                   auto_over_best=paired(times, auto, best))
                        rows.append(row)
                        print(f"{name:26s} {sp:.0%} b{batch:<3d} t{threads}  direct {row['direct']:9.1f} us  "
                              f"tiled {row['tiled']:9.1f} us  torch {row['torch dense']:9.1f} us  "
                              f"tiled/direct {row['tiled_over_direct']:.2f}  auto={auto} auto/best {row['auto_over_best']:.2f}  "
                              f"torch/auto {row['torch_over_auto']:.2f}  ({rounds} rounds)", flush=True)
    meta = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), load_start=load0, load_end=os.getloadavg(), budget=args.budget,
                gomp_spincount=os.environ.get("GOMP_SPINCOUNT"))
    if args.out:
        with open(args.out.replace(".md", ".json"), "w") as fh:
            json.dump(dict(meta=meta, rows=rows), fh, indent=1)
        with open(args.out, "w") as fh:
            fh.write(f"Interleaved rounds; times are medians over rounds (us per call), ratios are medians of the "
                     f"per-round ratios. {meta}\n\n")
            fh.write("| layer | sparsity | batch | threads | direct | tiled | torch dense | tiled/direct | auto | "
                     "auto/best | torch/auto | rounds |\n")
            fh.write("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
            for r in rows:
                fh.write(f"| {r['layer']} | {r['sparsity']:.0%} | {r['batch']} | {r['threads']} | {r['direct']:.1f} | "
                         f"{r['tiled']:.1f} | {r['torch dense']:.1f} | {r['tiled_over_direct']:.2f} | {r['auto']} | "
                         f"{r['auto_over_best']:.2f} | {r['torch_over_auto']:.2f} | {r['rounds']} |\n")


if __name__ == "__main__":
    main()
