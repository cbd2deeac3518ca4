"""The C runtime (libhtcore, htcore-run) against the Python runtime and dense torch, in one run.

    python benchmarks/bench_embedded.py --prefix PREFIX [--repeats N]

PREFIX is an installed C library (cmake -S . -B build/c -DHTCORE_PYTHON=OFF && cmake --build build/c
&& cmake --install build/c --prefix PREFIX). Reports:
- sizes: htcore-run and libhtcore.a, as installed and stripped (strip --strip-unneeded on copies);
- per model: load time (C htcore_model_load vs load_compressed, medians), peak RSS (GNU time) of a process
  that loads the model and runs 64 samples at batch 1 (htcore-run vs python with the Python
  runtime), and batch-1 latency (median per call over blocks of calls, all three timed in turn
  in every repetition, so a change in the shared machine's load reaches each alike; 5 x N blocks of
  20 calls) at 1 and 2 threads. The C runtime is timed through ctypes, whose call overhead (~1 us) counts against it.
Models: the demo's Fashion-MNIST MLP shape (784-32-10, 5% / 50% kept, 8-level codebook on the
first layer), an MLP 784-300-100-10 at 10%, a LeNet-5 CNN at 30% (all sparse; weights random:
timing does not depend on their values). A last table backs the choice for dense Linear layers (the
Python runtime multiplies them with numpy's BLAS, the C runtime with the CSR kernel holding every
entry, so they agree to float32 rounding rather than bitwise): numpy's W @ X against that kernel.
Writes benchmarks/results/embedded.md and embedded.json.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import htcore
from htcore import CSRMatrix, load_compressed, save_compressed
from htcore.runtime import Activation, CompressedModel, Linear

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STALL_NOTE = ("On a loaded machine a 2-thread call that forks can wait milliseconds for a descheduled worker "
              "(docs/performance.md, \"Threads and forking\"); such stalls, not the kernels, make the 2-thread rows "
              "scatter (both runtimes fork in the same kernels), so read the 1-thread rows and the load average.")


def demo_mlp() -> CompressedModel:
    rng = np.random.default_rng(0)
    first = htcore.topk_sparsify(rng.standard_normal((32, 784)).astype(np.float32), 0.05)
    codes = rng.integers(0, 8, first.nnz).astype(np.uint8)
    first = CSRMatrix(codes, first.indices, first.indptr, first.shape, codebook=np.linspace(-1, 1, 8).astype(np.float32))
    second = htcore.topk_sparsify(rng.standard_normal((10, 32)).astype(np.float32), 0.5)
    return CompressedModel([Linear(first, np.zeros(32)), Activation("relu"), Linear(second, np.zeros(10))])


def mlp() -> CompressedModel:
    rng = np.random.default_rng(1)
    sizes = [784, 300, 100, 10]
    layers: list = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [Linear(htcore.topk_sparsify(rng.standard_normal((b, a)).astype(np.float32), 0.1), np.zeros(b)),
                   Activation("relu")]
    return CompressedModel(layers[:-1])


def lenet() -> CompressedModel:
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                        nn.Linear(84, 10)).eval()
    htcore.nn.sparsify_model(net, keep=0.3)
    return CompressedModel.from_torch(net)


MODELS = {"demo MLP 784-32-10": (demo_mlp, (784,)), "MLP 784-300-100-10, 10%": (mlp, (784,)),
          "LeNet-5 CNN, 30%": (lenet, (1, 28, 28))}


def stripped_size(path: Path, tmp: Path) -> int:
    copy = tmp / path.name
    shutil.copy(path, copy)
    subprocess.run(["strip", "--strip-unneeded", str(copy)], check=True)
    return copy.stat().st_size


def peak_rss_mib(cmd: list) -> float:
    """Peak resident set of a command, as GNU time (/usr/bin/time) reports it. (This process's own
    wait4 would not do: Linux starts a child's peak at its parent's resident size, fork or vfork.)"""
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=True)
    return int(done.stderr.strip().splitlines()[-1]) / 1024


def per_call(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def dense_linear_rows(repeats: int) -> list:
    """numpy's W @ X (what the Python runtime runs for a dense Linear) against the CSR kernel on a
    matrix holding every entry (what a shared kernel would have to be), per call, at 1 and 2 threads."""
    rng = np.random.default_rng(2)
    rows = []
    for out, inp in ((10, 300), (300, 784)):
        w = rng.standard_normal((out, inp)).astype(np.float32)
        full = CSRMatrix(w.ravel(), np.tile(np.arange(inp), out), np.arange(0, out * inp + 1, inp), (out, inp))
        for batch in (1, 64):
            x = rng.standard_normal((inp, batch)).astype(np.float32)
            y = np.empty((out, batch), np.float32)
            for threads in (1, 2):
                htcore.set_num_threads(threads)
                with threadpool_limits(threads):
                    peers = {"numpy": lambda: w @ x, "csr": lambda: full.product_into(x, batch, None, "none", y, batch, 1)}
                    times: dict = {k: [] for k in peers}
                    for _ in range(repeats):
                        for k, fn in peers.items():
                            times[k].append(per_call(fn, 50))
                rows.append({"shape": f"{out}x{inp}", "batch": batch, "threads": threads,
                             **{f"us_{k}": statistics.median(v) * 1e6 for k, v in times.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import torch

    lib = ctypes.CDLL(str(args.prefix / "lib" / "libhtcore.so"))
    lib.htcore_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.htcore_model_free.argtypes = [ctypes.c_void_p]
    f32p, i64p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int64)
    lib.htcore_model_run.argtypes = [ctypes.c_void_p, f32p, ctypes.c_int64, i64p, ctypes.c_int, f32p, ctypes.c_int64]
    runner = args.prefix / "bin" / "htcore-run"
    tmp = Path(tempfile.mkdtemp())
    sizes = {"htcore-run": (runner.stat().st_size, stripped_size(runner, tmp)),
             "libhtcore.a": ((args.prefix / "lib" / "libhtcore.a").stat().st_size,
                             stripped_size(args.prefix / "lib" / "libhtcore.a", tmp))}
    rows = []
    for name, (make, sample) in MODELS.items():
        model = make()
        path = tmp / "model.safetensors"
        save_compressed(path, model)
        x1 = np.random.default_rng(0).standard_normal((1, *sample)).astype(np.float32)
        np.save(tmp / "x.npy", np.repeat(x1, 64, axis=0))
        handle = ctypes.c_void_p()

        def c_load():
            h = ctypes.c_void_p()
            assert lib.htcore_model_load(str(path).encode(), ctypes.byref(h)) == 0
            lib.htcore_model_free(h)

        load_c = statistics.median(per_call(c_load, 5) for _ in range(args.repeats))
        load_py = statistics.median(per_call(lambda: load_compressed(path), 5) for _ in range(args.repeats))
        rss_c = peak_rss_mib([str(runner), str(path), str(tmp / "x.npy"), str(tmp / "y.npy"), "--batch", "1"])
        script = ("import sys, numpy as np, htcore; m = htcore.load_compressed(sys.argv[1]); x = np.load(sys.argv[2]); "
                  "[m(x[i:i + 1]) for i in range(len(x))]")
        rss_py = peak_rss_mib([sys.executable, "-c", script, str(path), str(tmp / "x.npy")])
        assert lib.htcore_model_load(str(path).encode(), ctypes.byref(handle)) == 0
        out = np.zeros_like(model(x1))
        dims = (ctypes.c_int64 * len(sample))(*sample)
        xp, yp = x1.ctypes.data_as(f32p), out.ctypes.data_as(f32p)
        dense = htcore.nn.to_torch(model).eval()
        xt = torch.from_numpy(x1)
        peers = {
            "C runtime": lambda: lib.htcore_model_run(handle, xp, 1, dims, len(sample), yp, out.size),
            "Python runtime": lambda: model(x1),
            "dense torch": lambda: dense(xt),
        }
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            assert lib.htcore_set_num_threads(threads) == 0
            torch.set_num_threads(threads)
            calls = 20  # short blocks, many repetitions: on a shared machine a preemption spoils fewer blocks
            with torch.no_grad():
                for fn in peers.values():
                    per_call(fn, 20)
                times: dict = {k: [] for k in peers}
                for _ in range(5 * args.repeats):
                    for k, fn in peers.items():
                        times[k].append(per_call(fn, calls))
            med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
            rows.append({"model": name, "threads": threads, "load_ms_c": load_c * 1e3, "load_ms_python": load_py * 1e3,
                         "peak_rss_mib_runner": rss_c, "peak_rss_mib_python": rss_py,
                         **{f"latency_us_{k}": v for k, v in med.items()}})
        lib.htcore_model_free(handle)
    dense_rows = dense_linear_rows(args.repeats)
    info = machine()
    (RESULTS / "embedded.json").write_text(json.dumps({"machine": info, "sizes": sizes, "rows": rows,
                                                       "dense_linear": dense_rows}, indent=1, default=str))
    lines = ["# The C runtime (htcore-run, libhtcore) against the Python runtime and dense torch", "",
             f"Machine: {info['cpu']}, {info['cores']} cores (shared; 1-min load average {info['load_average_1min']} "
             f"at the end), torch {torch.__version__}. `python benchmarks/bench_embedded.py --prefix PREFIX`; "
             f"medians of {args.repeats} repetitions. The C library was built with CMake's Release flags.", "",
             "| file | installed bytes | stripped bytes |", "|---|---:|---:|"]
    lines += [f"| {k} | {a:,} | {b:,} |" for k, (a, b) in sizes.items()]
    lines += ["", "Load: median time to open and fully validate the file (C: htcore_model_load; Python: "
              "load_compressed). Peak RSS: a process loading the model and running 64 samples one at a time "
              "(htcore-run --batch 1; python with numpy and the Python runtime). Latency: one sample (batch 1), "
              "median per call; ratio = Python runtime / C runtime (above 1: C faster). " + STALL_NOTE, "",
              "| model | threads | load C ms | load Python ms | peak RSS runner MiB | peak RSS Python MiB | C us | "
              "Python us | dense torch us | Python / C | torch / C |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c, p, t = r["latency_us_C runtime"], r["latency_us_Python runtime"], r["latency_us_dense torch"]
        lines.append(f"| {r['model']} | {r['threads']} | {r['load_ms_c']:.3f} | {r['load_ms_python']:.3f} | "
                     f"{r['peak_rss_mib_runner']:.1f} | {r['peak_rss_mib_python']:.1f} | {c:.1f} | {p:.1f} | {t:.1f} | "
                     f"{p / c:.2f} | {t / c:.2f} |")
    lines += ["", "Dense Linear layers: numpy's W @ X (the Python runtime) against the CSR kernel holding every "
              "entry (the C runtime), per call. Sharing one kernel would make dense layers bitwise equal too, but "
              "moving the Python runtime onto the CSR kernel costs where it is slower; a dense C kernel as fast as "
              "BLAS is a project of its own. So dense Linear layers agree to float32 rounding (tests: rtol 1e-5), "
              "everything else bitwise.", "",
              "| W | batch | threads | numpy us | CSR kernel us | CSR / numpy |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['batch']} | {r['threads']} | {r['us_numpy']:.1f} | {r['us_csr']:.1f} | "
              f"{r['us_csr'] / r['us_numpy']:.2f} |" for r in dense_rows]
    (RESULTS / "embedded.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
