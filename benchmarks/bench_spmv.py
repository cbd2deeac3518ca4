#!/usr/bin/env python
"""SpMV / SpMM: htcore's CSR kernels (every storage format) against scipy.sparse, torch CSR (int32
indices), Intel MKL (sparse-dot-mkl), dense numpy and dense torch, plus a STREAM triad and an
MLP through the runtime, all measured in one run.

Grid: 768x3072, 3072x768, 4096x4096, 11008x4096 at 1/5/10/30% density, two patterns, batch 1
(both cache-hot and streamed), 32 and 256 (cache-hot; 256 at 10% only, to bound the run time),
1 and 2 threads.

- "uniform": top-k |w| of iid Gaussian weights (a uniformly random pattern, exactly k entries).
- "student-t": top-k |w| of W_ij = r_i c_j t_ij with t, r, c Student-t (df=3): heavy-tailed row and
  column scales, so rows are very uneven (some nearly full, many empty), as in trained layers.
- cache-hot: the same matrix every call. streamed: calls rotate through copies of the matrix
  totalling >= 64 MiB (2x the 32 MiB L3), so every call reads it from memory.
- Timing: methods are interleaved round-robin (round i times every method once), so machine
  load hits all of them alike; the table gives medians over the rounds.
- Peers get their favourite layout (scipy/torch/MKL multiply (cols, batch) X^T prepared in
  advance); htcore is timed through its public API, sparse_linear(X, A) on (batch, cols) X, with
  both transposes included (X to X^T, and the result back to (batch, rows)), and also as
  A.matmat(X^T) on the peers' own X^T (column "htcore f32-i32 A@XT").

Thread pools: htcore, torch and MKL (its GNU threading layer) share this process's libgomp pool;
numpy's OpenBLAS has its own. A pool whose workers are still spinning after one library's block
takes a core from the next library's 2-thread regions, and a worker that has gone to sleep costs
the next region a wake-up (5-15 ms when the machine is loaded). So every pool is made to go idle
soon (GOMP_SPINCOUNT=30000 spins, OPENBLAS_THREAD_TIMEOUT=20, set before any library loads unless
already set), and each block of a method's calls starts after a GAP of idle time (longer than the
pools' spinning) with one untimed call that wakes its pool: every method is timed with its own
pool warm and nobody else's spinning. Same process, same machine state, interleaved.

Usage: python benchmarks/bench_spmv.py [--quick] [--budget SECONDS] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import copy
import json
import os

os.environ.setdefault("GOMP_SPINCOUNT", "30000")  # before numpy/torch/htcore load their pools; see above
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
import platform
import sys
import time

import numpy as np

import htcore
from htcore import CSRMatrix, sparse_linear
from htcore.sparse import SellMatrix

SIZES = [(768, 3072), (3072, 768), (4096, 4096), (11008, 4096)]
DENSITIES = [0.01, 0.05, 0.10, 0.30]
PATTERNS = ["uniform", "student-t"]
THREADS = [1, 2]
STREAM_BYTES = 64 << 20
FORMATS = ["f32-i32", "f32-u16", "f16-u16", "u8cb-u16"]
SELL = "htcore sell f32-u16"  # the runtime's batch-1 layout for short rows (htcore.sparse.SellMatrix), batch 1 only
SAME_LAYOUT = "htcore f32-i32 A@XT"  # batch > 1: A.matmat on the peers' prepared (cols, batch) X^T
PEERS = ["torch-csr", "mkl", "scipy", "numpy-dense", "torch-dense"]
GAP = 0.002  # idle seconds before each block: longer than the pools' spinning (see the module docstring)


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import scipy
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "htcore": htcore.__version__,
            "build": htcore._core.build_info(), "avx2_kernels": htcore._core.csr_uses_avx2(),
            "numpy": np.__version__, "scipy": scipy.__version__, "torch": torch.__version__,
            "load_average_start": os.getloadavg(),
            "pool_settings": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")},
            "gap_s": GAP}


def weights(rng: np.random.Generator, rows: int, cols: int, pattern: str) -> np.ndarray:
    if pattern == "uniform":
        return rng.standard_normal((rows, cols), dtype=np.float32)
    t = rng.standard_t(3, size=(rows, cols)).astype(np.float32)
    r = np.abs(rng.standard_t(3, size=rows)).astype(np.float32)
    c = np.abs(rng.standard_t(3, size=cols)).astype(np.float32)
    return t * r[:, None] * c[None, :]


def codebook_format(A: CSRMatrix, levels: int = 256) -> CSRMatrix:
    """256 quantile levels, each value mapped to the nearest."""
    cb = np.unique(np.quantile(A.data, np.linspace(0, 1, levels)).astype(np.float32))
    mid = (cb[1:] + cb[:-1]) / 2
    codes = np.searchsorted(mid, A.data).astype(np.uint8)
    return CSRMatrix(codes, A.indices, A.indptr, A.shape, codebook=cb, check=False)


def copies(make, nbytes: int, streamed: bool) -> list:
    n = max(1, -(-STREAM_BYTES // max(nbytes, 1))) if streamed else 1
    return [make() for _ in range(n)]


def csr_copy(A: CSRMatrix) -> CSRMatrix:
    cb = None if A.codebook is None else A.codebook.copy()
    return CSRMatrix(A.data.copy(), A.indices.copy(), A.indptr.copy(), A.shape, codebook=cb,
                     index_dtype=A.indices.dtype, indptr_dtype=A.indptr.dtype, check=False)


def interleaved(methods: dict, budget: float, min_rounds: int, max_rounds: int, block: float = 0.01) -> dict:
    """(median, 10th percentile) seconds per call of each method; each method is a list of callables
    (copies) used in turn.

    Methods take turns in blocks of about ``block`` seconds of consecutive calls (the order rotates
    every round), so machine load hits all alike. Each block starts after ``GAP`` seconds of idle
    time (every thread pool has gone to sleep) and one untimed call (its own pool wakes up); then
    each call is timed.
    """
    est = {}
    for name, fns in methods.items():  # warm-up, and a time estimate
        fns[0]()
        t0 = time.perf_counter()
        fns[0]()
        est[name] = max(time.perf_counter() - t0, 1e-7)
    inner = {name: int(np.clip(block / e, 1, 1000)) for name, e in est.items()}
    per_round = sum(est[n] * (inner[n] + 1) + GAP for n in methods)
    rounds = int(np.clip(budget / per_round, min_rounds, max_rounds))
    times: dict = {name: [] for name in methods}
    names = list(methods)
    calls = {name: 0 for name in methods}
    start = time.perf_counter()
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() - start > 2 * budget:
            break  # a loaded machine made the calls slower than estimated
        for name in names[r % len(names):] + names[: r % len(names)]:
            fns = methods[name]
            time.sleep(GAP)
            fns[calls[name] % len(fns)]()
            for _ in range(inner[name]):
                f = fns[calls[name] % len(fns)]
                calls[name] += 1
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    return {name: (float(np.median(ts)), float(np.percentile(ts, 10))) for name, ts in times.items()}


def triad(threads: int, n: int = 16 << 20) -> float:
    """STREAM triad a = b + s c with torch (one pass, multithreaded) on 3 x 64 MiB arrays: GB/s
    counting 3 x 4 bytes per element, best of 20 as STREAM does."""
    import torch

    torch.set_num_threads(threads)
    b, c, a = torch.rand(n), torch.rand(n), torch.empty(n)
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        ts.append(time.perf_counter() - t0)
    return 12 * n / min(ts) / 1e9  # STREAM reports the best time


def set_threads(t: int) -> None:
    import sparse_dot_mkl
    import torch
    from threadpoolctl import threadpool_limits

    htcore.set_num_threads(t)
    torch.set_num_threads(t)
    sparse_dot_mkl.mkl_set_num_threads(t)
    threadpool_limits(t)


def spmv_methods(As: dict, S, W, x, streamed: bool) -> dict:
    import sparse_dot_mkl
    import torch

    xt = torch.from_numpy(x)
    m = {}
    for fmt, A in As.items():
        m[f"htcore {fmt}"] = [lambda A=A: A.matvec(x) for A in copies(lambda A=A: csr_copy(A), A.nbytes, streamed)]
    base = As["f32-u16"]
    m[SELL] = [lambda S=S: S.matvec_into(x, None, "none", np.empty(base.shape[0], np.float32))
               for S in copies(lambda: SellMatrix(base), base.nbytes, streamed)]
    scis = copies(lambda: S.copy(), S.data.nbytes + S.indices.nbytes + S.indptr.nbytes, streamed)
    tors = [torch.sparse_csr_tensor(torch.from_numpy(s.indptr), torch.from_numpy(s.indices), torch.from_numpy(s.data),
                                    size=s.shape, check_invariants=False) for s in scis]
    dens = copies(lambda: W.copy(), W.nbytes, streamed)
    m["torch-csr"] = [lambda T=T: torch.mv(T, xt) for T in tors]
    m["mkl"] = [lambda s=s: sparse_dot_mkl.dot_product_mkl(s, x) for s in scis]
    m["scipy"] = [lambda s=s: s @ x for s in scis]
    m["numpy-dense"] = [lambda D=D: D @ x for D in dens]
    m["torch-dense"] = [lambda D=D: torch.mv(D, xt) for D in map(torch.from_numpy, dens)]
    return m


def spmm_methods(As: dict, S, W, X) -> dict:
    import sparse_dot_mkl
    import torch

    XT = np.ascontiguousarray(X.T)
    Xt, XTt, Wt = torch.from_numpy(X), torch.from_numpy(XT), torch.from_numpy(W)
    T = torch.sparse_csr_tensor(torch.from_numpy(S.indptr), torch.from_numpy(S.indices), torch.from_numpy(S.data),
                                size=S.shape, check_invariants=False)
    m = {f"htcore {fmt}": [lambda A=A: sparse_linear(X, A)] for fmt, A in As.items()}
    m[SAME_LAYOUT] = [lambda: As["f32-i32"].matmat(XT)]
    m["torch-csr"] = [lambda: torch.mm(T, XTt)]
    m["mkl"] = [lambda: sparse_dot_mkl.dot_product_mkl(S, XT)]
    m["scipy"] = [lambda: S @ XT]
    m["numpy-dense"] = [lambda: X @ W.T]
    m["torch-dense"] = [lambda: torch.nn.functional.linear(Xt, Wt)]
    return m


def check_outputs(methods: dict, batch: int, As: dict, x: np.ndarray) -> None:
    """Every method computes the product of its own stored values (float16 and codebook formats
    are checked against their decoded values, the rest against htcore f32-i32)."""
    ref = np.asarray(methods["htcore f32-i32"][0]())
    for name, fns in methods.items():
        y = np.asarray(fns[0]())
        y = y.T if batch > 1 and name in ("torch-csr", "mkl", "scipy", SAME_LAYOUT) else y
        want = ref
        if name in ("htcore f16-u16", "htcore u8cb-u16"):
            S = As[name.split()[1]].to_scipy()
            want = S @ x if batch == 1 else (S @ x.T).T
        err = np.linalg.norm(y - want) / max(np.linalg.norm(want), 1e-30)
        if not err <= 1e-4:
            raise AssertionError(f"{name} disagrees with the reference: relative error {err:.3g}")


def mlp_rows(threads_list: list, budget: float) -> list:
    import torch
    from torch import nn

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).eval()
    sparse_torch = copy.deepcopy(dense)
    report = htcore.nn.sparsify_model(sparse_torch, keep=0.1)
    model = htcore.runtime.CompressedModel.from_torch(sparse_torch)
    rows = []
    for batch in (1, 32):
        x = np.random.default_rng(1).standard_normal((batch, 784)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            np.testing.assert_allclose(model(x), sparse_torch(xt).numpy(), rtol=1e-4, atol=1e-4)
            for t in threads_list:
                set_threads(t)
                res = interleaved({"htcore runtime (10%)": [lambda: model(x)], "torch dense": [lambda: dense(xt)]},
                                  budget, 20, 3000)
                rows.append({"batch": batch, "threads": t, **{k: v[0] * 1e6 for k, v in res.items()},
                             **{f"{k} p10": v[1] * 1e6 for k, v in res.items()},
                             "speedup": res["torch dense"][0] / res["htcore runtime (10%)"][0],
                             "speedup_p10": res["torch dense"][1] / res["htcore runtime (10%)"][1]})
    return rows, report.sparse_bytes, report.dense_bytes


def run(args: argparse.Namespace) -> dict:
    import scipy.sparse as sp

    sizes = SIZES[::2] if args.quick else SIZES
    densities = [0.01, 0.10] if args.quick else DENSITIES
    budget = args.budget if args.budget is not None else (0.15 if args.quick else 0.25)
    info = machine()
    info["budget_s"] = budget
    info["triad_GBps"] = {}
    for t in THREADS:
        info["triad_GBps"][t] = triad(t)
    print(f"# {info['cpu']}, {info['cores']} cores; triad {info['triad_GBps']} GB/s", file=sys.stderr)
    rows = []
    rng = np.random.default_rng(0)
    for rows_, cols in sizes:
        for pattern in PATTERNS:
            W = weights(rng, rows_, cols, pattern)
            for density in densities:
                base = htcore.topk_sparsify(W, density)
                As = {"f32-i32": base.astype(index_dtype=np.int32), "f32-u16": base,
                      "f16-u16": base.astype(value_dtype=np.float16), "u8cb-u16": codebook_format(base)}
                S = sp.csr_matrix((base.data, base.indices.astype(np.int32), base.indptr), shape=base.shape)
                Wd = base.todense()
                cases = [(1, False), (1, True), (32, False)]
                if density == 0.10 and not args.quick:
                    cases.append((256, False))
                for batch, streamed in cases:
                    if batch == 1:
                        x = rng.standard_normal(cols).astype(np.float32)
                        methods = spmv_methods(As, S, Wd, x, streamed)
                    else:
                        x = rng.standard_normal((batch, cols)).astype(np.float32)
                        methods = spmm_methods(As, S, Wd, x)
                    check_outputs(methods, batch, As, x)
                    for t in THREADS:
                        set_threads(t)
                        res = interleaved(methods, budget if batch == 1 else 2 * budget, 3, 400)
                        row = {"shape": f"{rows_}x{cols}", "density": density, "pattern": pattern, "batch": batch,
                               "threads": t, "mode": "streamed" if streamed else "hot", "nnz": base.nnz, "load1": os.getloadavg()[0],
                               "us": {k: v[0] * 1e6 for k, v in res.items()}, "us_p10": {k: v[1] * 1e6 for k, v in res.items()}}
                        traffic = As["f32-i32"].nbytes + 4 * (cols + rows_) * batch
                        for suffix, us in (("", row["us"]), ("_p10", row["us_p10"])):
                            ht = us["htcore f32-i32"]
                            row["vs_best_of_mkl_torch" + suffix] = min(us["mkl"], us["torch-csr"]) / ht
                            row["vs_scipy" + suffix] = us["scipy"] / ht
                            row["vs_torch_dense" + suffix] = us["torch-dense"] / ht
                            row["f16_speedup" + suffix] = ht / us["htcore f16-u16"]
                            if SELL in us:
                                row["sell_speedup" + suffix] = us["htcore f32-u16"] / us[SELL]
                            row["triad_fraction" + suffix] = traffic / ht * 1e6 / 1e9 / info["triad_GBps"][t]
                        rows.append(row)
                        print(_line(row), file=sys.stderr)
                    del methods
    mlp, sparse_bytes, dense_bytes = mlp_rows(THREADS, 1.0 if not args.quick else 0.3)
    info["load_average_end"] = os.getloadavg()
    return {"machine": info, "rows": rows, "mlp": mlp, "mlp_bytes": {"sparse": sparse_bytes, "dense": dense_bytes},
            "quick": bool(args.quick)}


def _line(r: dict) -> str:
    return (f"{r['shape']:>10} {r['density']:>5.0%} {r['pattern']:>9} b={r['batch']:<3} t={r['threads']} {r['mode']:>8}: "
            f"htcore {r['us']['htcore f32-i32']:9.1f} us, x{r['vs_best_of_mkl_torch']:.2f} best(MKL,torch), "
            f"x{r['vs_scipy']:.1f} scipy, f16 x{r['f16_speedup']:.2f}, {r['triad_fraction']:.0%} triad")


def markdown(res: dict) -> str:
    m = res["machine"]
    out = ["# SpMV / SpMM benchmark (bench_spmv.py)", "",
           f"Machine: {m['cpu']}, {m['cores']} cores; htcore {m['htcore']} built with {m['build']['build_flags']} "
           f"({m['build']['compiler']}), AVX2 kernels: {m['avx2_kernels']}; torch {m['torch']}, scipy {m['scipy']}, "
           f"numpy {m['numpy']}; pools {m['pool_settings']}, {m['gap_s'] * 1e3:.0f} ms idle gap before each block of calls, {m['budget_s']} s of rounds per case. Load average at start {tuple(round(v, 1) for v in m['load_average_start'])}, "
           f"end {tuple(round(v, 1) for v in m['load_average_end'])} (machine shared; medians of interleaved rounds).",
           "", "STREAM triad (torch, 3 x 4 bytes/element): " + ", ".join(f"{t} thread(s) {v:.1f} GB/s" for t, v in m["triad_GBps"].items()),
           "", *_targets(res), "", "## MLP 784-1024-1024-10, all layers top-k 10% (runtime) vs dense torch", "",
           "| batch | threads | htcore runtime µs (p10) | torch dense µs (p10) | speedup median (p10) |", "|---|---|---|---|---|"]
    for r in res["mlp"]:
        out.append(f"| {r['batch']} | {r['threads']} | {r['htcore runtime (10%)']:.1f} ({r['htcore runtime (10%) p10']:.1f}) | "
                   f"{r['torch dense']:.1f} ({r['torch dense p10']:.1f}) | {r['speedup']:.2f} ({r['speedup_p10']:.2f}) |")
    cols = [f"htcore {f}" for f in FORMATS] + [SELL, SAME_LAYOUT] + PEERS
    out += ["", "## All cases (µs per call, median)", "",
            "Ratios: `best/ht` = min(MKL, torch CSR) / htcore f32-i32 (> 1: htcore faster); `scipy/ht`; "
            "`tdense/ht` = dense torch / htcore f32-i32; `f16` = f32-i32 / f16-u16 time; `triad` = htcore f32-i32 "
            "bytes moved (matrix + x + y) per second / triad bandwidth; `sell` = htcore f32-u16 / htcore sell f32-u16 time "
            "(SELL-8, the runtime's layout for batch 1 on short rows; batch 1 only); `A@XT` = A.matmat on the peers' "
            "(cols, batch) X^T, no transposes (batch > 1 only); `load` = 1-minute load average after the case. Medians; the JSON file also has 10th percentiles.", "",
            "| shape | density | pattern | batch | thr | mode | " + " | ".join(cols) + " | best/ht | scipy/ht | tdense/ht | f16 | sell | triad | load |",
            "|" + "---|" * (6 + len(cols) + 7)]
    for r in res["rows"]:
        sell = f"{r['sell_speedup']:.2f}" if "sell_speedup" in r else "–"
        out.append(f"| {r['shape']} | {r['density']:.0%} | {r['pattern']} | {r['batch']} | {r['threads']} | {r['mode']} | "
                   + " | ".join(f"{r['us'][c]:.1f}" if c in r["us"] else "–" for c in cols)
                   + f" | {r['vs_best_of_mkl_torch']:.2f} | {r['vs_scipy']:.2f} | {r['vs_torch_dense']:.2f} | "
                   f"{r['f16_speedup']:.2f} | {sell} | {r['triad_fraction']:.0%} | {r['load1']:.1f} |")
    return "\n".join(out) + "\n"


def _targets(res: dict) -> list:
    lines = []
    for threads in (2, 1):
        for suffix, label in (("", "medians"), ("_p10", "10th percentiles (uncontended)")):
            lines += _targets_for(res, threads, suffix, label)
    return lines


def _targets_for(res: dict, threads: int, suffix: str, label: str) -> list:
    rows = [{k[: -len(suffix)] if suffix and k.endswith(suffix) else k: v for k, v in r.items()}
            for r in res["rows"] if r["threads"] == threads]
    spmv = [r for r in rows if r["batch"] == 1]
    lines = [f"## Targets, {threads} thread(s), {label}", ""]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    within = [r["vs_best_of_mkl_torch"] for r in spmv]
    if within:
        n_ok = sum(v >= 1 / 1.05 for v in within)
        lines.append(f"- float32/int32 SpMV within 5% of the faster of MKL and torch CSR: {n_ok}/{len(within)} cases; "
                     f"worst ratio {min(within):.2f}, median {np.median(within):.2f} -> {verdict(n_ok == len(within))}")
    at10 = [r["vs_scipy"] for r in spmv if r["density"] == 0.10]
    if at10:
        lines.append(f"- >= 2x scipy at 10%: min {min(at10):.2f}x over {len(at10)} cases -> {verdict(min(at10) >= 2)}")
    big = [r["triad_fraction"] for r in spmv if r["mode"] == "streamed" and r["shape"] in ("4096x4096", "11008x4096")]
    if big:
        lines.append(f"- 4096x4096 and larger, streamed: {min(big):.0%}..{max(big):.0%} of triad bandwidth "
                     f"(median {np.median(big):.0%}) -> {verdict(min(big) >= 0.7)} for >= 70% everywhere")
    f16 = [(r["mode"], r["pattern"], r["f16_speedup"]) for r in spmv if r["shape"] == "4096x4096" and r["density"] == 0.10]
    if f16:
        lines.append("- uint16+float16 vs int32+float32 at 4096x4096 10%: "
                     + ", ".join(f"{m}/{p} {v:.2f}x" for m, p, v in f16) + f" -> {verdict(min(v for *_, v in f16) >= 1.5)}")
    batched = [r for r in rows if r["batch"] > 1]
    if batched:
        same = [min(r["us"]["mkl"], r["us"]["torch-csr"]) / r["us"][SAME_LAYOUT] for r in batched]
        linear = [r["vs_best_of_mkl_torch"] for r in batched]
        lines.append(f"- (no target) batch 32/256 vs the faster of MKL and torch CSR: A X^T in their layout "
                     f"{min(same):.2f}x..{max(same):.2f}x (median {np.median(same):.2f}x, {sum(v >= 1 / 1.05 for v in same)}/"
                     f"{len(same)} within 5%); sparse_linear with both transposes {min(linear):.2f}x..{max(linear):.2f}x")
    b32 = [r["vs_torch_dense"] for r in rows if r["batch"] == 32 and r["density"] == 0.10]
    if b32:
        lines.append(f"- batch 32 at 10% vs dense torch: {min(b32):.2f}x..{max(b32):.2f}x -> {verdict(min(b32) > 1)}")
    mlp = [r["speedup" + suffix] for r in res["mlp"] if r["batch"] == 1 and r["threads"] == threads]
    if mlp:
        lines.append(f"- MLP batch 1 through the runtime vs dense torch: {mlp[0]:.2f}x -> {verdict(mlp[0] >= 4)}")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced grid (2 sizes, 1%% and 10%%, no batch 256)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of interleaved rounds per case and thread count (default 0.25; 0.15 with --quick); "
                             "more rounds average out a noisy host")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    import warnings

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    t0 = time.perf_counter()
    res = run(args)
    res["seconds"] = time.perf_counter() - t0
    text = markdown(res) + f"\nTotal run time {res['seconds']:.0f} s{' (--quick)' if args.quick else ''}.\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    name = "spmv_quick" if args.quick else "spmv"
    with open(os.path.join(args.out, f"{name}.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.out, f"{name}.json"), "w") as fh:
        json.dump(res, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
