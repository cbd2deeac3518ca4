"""Scale: a 2e8-element top-k and 1e8-sample tail fits (grid Clauset fit, auto-k Hill) complete,
with time and peak memory.

Each case runs in a fresh subprocess: it builds its input (in chunks, so no temporaries), resets
the peak-RSS counter (``echo 5 > /proc/self/clear_refs``), then runs the call; "extra peak" is
VmHWM after the call minus VmRSS before it (the input is not counted; it is listed separately).
Prints a markdown table and writes benchmarks/results/scale.{md,json} (``--quick``: 100x smaller,
written to scale_quick.*). Usage: python benchmarks/bench_scale.py [--quick] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = r"""
import json, sys, time
import numpy as np
import htcore

case, n, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
htcore.set_num_threads(threads)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

rng = np.random.default_rng(0)
chunk = 1 << 22
if case == "topk":
    cols = 10_000
    x = np.empty((n // cols, cols), np.float32)
    flat = x.reshape(-1)
    for s in range(0, flat.size, chunk):
        part = flat[s:s + chunk]
        part[:] = rng.standard_t(3, part.size)
    call = lambda: htcore.topk_sparsify(x, 0.1)
    describe = lambda r: f"nnz {r.nnz}"
else:
    x = np.empty(n, np.float64)
    for s in range(0, n, chunk):
        part = x[s:s + chunk]
        part[:] = np.abs(rng.standard_t(3, part.size)) + 1e-12
    if case == "fit_grid":
        call = lambda: htcore.fit_powerlaw(x, candidates=1000)
        describe = lambda r: f"pdf_exponent {r.pdf_exponent:.4f}, xmin {r.xmin:.4g}, n_tail {r.n_tail}"
    else:
        call = lambda: htcore.hill(x)
        describe = lambda r: f"alpha {r.alpha:.4f}, k {r.k}"

with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset VmHWM to the current RSS
before = status("VmRSS")
times = []
for _ in range(repeats):
    t = time.perf_counter()
    result = call()
    times.append(time.perf_counter() - t)
    summary = describe(result)
    del result  # the next call starts without the previous output held
peak = status("VmHWM")
print(json.dumps({"times": times, "rss_before": before, "extra_peak": peak - before, "input_bytes": x.nbytes,
                  "result": summary}))
"""

CASES = {  # name: (description, full size)
    "topk": ("topk_sparsify, keep 0.1, float32 (2e4 x 1e4)", 200_000_000),
    "fit_grid": ("fit_powerlaw, candidates=1000, float64", 100_000_000),
    "hill_auto": ("hill, k by double bootstrap, float64", 100_000_000),
}


def run_case(case: str, n: int, threads: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, case, str(n), str(threads), str(repeats)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{case} n={n} threads={threads} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100x smaller inputs")
    parser.add_argument("--repeats", type=int, default=3, help="calls per subprocess (median reported)")
    args = parser.parse_args()
    info = machine()
    rows = []
    for case, (what, full) in CASES.items():
        n = full // 100 if args.quick else full
        for threads in (1, 2):
            r = run_case(case, n, threads, args.repeats)
            rows.append({"case": case, "what": what, "n": n, "threads": threads,
                         "median_s": statistics.median(r["times"]), "times_s": r["times"],
                         "input_mib": r["input_bytes"] / 2**20, "extra_peak_mib": r["extra_peak"] / 2**20,
                         "result": r["result"]})
            print(f"{case} n={n:.0e} threads={threads}: {rows[-1]['median_s']:.2f} s, "
                  f"extra peak {rows[-1]['extra_peak_mib']:.0f} MiB", file=sys.stderr)
    lines = [
        f"# Scale benchmark{' (quick)' if args.quick else ''}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores (shared with other jobs: times are noisy); "
        f"htcore build: {info['htcore_build']['build_flags']}, OpenMP {info['htcore_build']['openmp_version']}, "
        f"SIMD {info['htcore_build']['simd']}.",
        f"Median of {args.repeats} calls in one subprocess per row. Extra peak = VmHWM after the calls minus "
        "VmRSS before them (the input array is not included; its size is listed).",
        "",
        "| call | n | threads | median time (s) | speed-up 2 vs 1 thread | input (MiB) | extra peak memory (MiB) | extra / input | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_case = {(r["case"], r["threads"]): r for r in rows}
    for r in rows:
        one = by_case[(r["case"], 1)]["median_s"]
        speed = f"{one / r['median_s']:.2f}x" if r["threads"] == 2 else ""
        lines.append(f"| {r['what']} | {r['n']:.0e} | {r['threads']} | {r['median_s']:.2f} | {speed} | "
                     f"{r['input_mib']:.0f} | {r['extra_peak_mib']:.0f} | {r['extra_peak_mib'] / r['input_mib']:.2f} | {r['result']} |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"scale{suffix}.md").write_text(table)
    (RESULTS / f"scale{suffix}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
