#!/usr/bin/env python
"""Whole CNNs through htcore's torch-free runtime against the same dense nets in torch, in one run.

Nets (`htcore.nn` builders, seed 0, eval mode, 28x28 single-channel input):

- LeNet: Conv 1->8 5x5, ReLU, MaxPool 2, Conv 8->16 5x5, ReLU, MaxPool 2, Linear 256->10;
- VGG: three stages of two 3x3 convolutions (32, 64, 128 channels), max pooling 2 after each, Linear head;
- ResNet: stem + three stages (16-32-64) of basic blocks with BatchNorm and residual adds (needs the
  runtime's graph support; skipped with a note when `CompressedModel.from_torch` refuses it).

For each net, batch 1 and 32, 1 and 2 threads (`torch.set_num_threads` = `htcore.set_num_threads`):

- "torch": the dense net, ``model.eval()`` under ``torch.no_grad()`` (oneDNN convolutions);
- "htcore s%": `htcore.nn.sparsify_model(model, keep=1 - s)` (top-k of every Conv2d and Linear
  weight, each layer ranked as one matrix), then `htcore.runtime.CompressedModel.from_torch`;
  at 0% the dense net itself goes through the runtime (its dense Conv2d layers run the CSR kernel
  over every entry);
- "first dense s%": the same with the first convolution left dense (absent from the keep mapping).

Timing: the methods of one (net, batch, threads) case are interleaved in rounds (round i times
every method once, a block of consecutive calls of about ``BLOCK`` seconds each, the order rotating
between rounds); each block starts after an idle gap (so no thread pool is still spinning from the
previous method) and one untimed call. Per-call time of a block = its time / its calls; the tables
give each method's median over the rounds, and ratios torch / htcore as the median of the per-round
ratios (both sides of a ratio saw the same machine load). Clock: at 1 thread, the calling thread's
CPU time (torch, htcore and numpy all compute on the calling thread then, so this leaves out the
time other processes held the core: on a shared, overloaded host wall times swing 2-10x between
rounds); wall time is kept beside it. At 2 threads, wall time (CPU time would count the spinning
of waiting workers); those rows are only as good as the host was quiet.

Per-layer shares (1 thread, CPU time): each layer alone, on its own input captured from the dense net:
htcore runs a one-layer runtime model (a Conv2d with the ReLU after it fused, as the runtime fuses
it; a pool; a Linear), torch the module itself. "rest" is the whole net minus the sum of its layers
(Python between layers, unfused activations, residual adds, flatten; BatchNorm is folded into the
convolutions by the runtime, so its torch time has no htcore counterpart). Beside each max pool
with stride = kernel, the maximum of its k * k strided slices in numpy is timed too (equal to
torch's result, checked), beside the runtime's C++ ``max_pool2d`` (a scalar loop per output).

Usage: python benchmarks/bench_conv.py [--quick] [--rounds 7] [--nets LeNet,VGG,ResNet] [--out benchmarks/results]
(about a minute on a quiet 2-core host, 5-10 on a loaded one; --quick: 0% and 90% sparsity, 3 rounds, about a minute,
written to conv_quick.md / .json).
"""
from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "30000")  # before torch/htcore load their OpenMP pools (see bench_spmv.py)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

import htcore
from htcore import _core
from htcore.nn import lenet, resnet_small, sparsify_model, vgg_small
from htcore.runtime import CompressedModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

NETS: dict[str, Callable[[], nn.Module]] = {"LeNet": lenet, "VGG": vgg_small, "ResNet": resnet_small}
SPARSITIES = [0.0, 0.7, 0.8, 0.9, 0.95]
BATCHES = [1, 32]
THREADS = [1, 2]
BLOCK = 0.004  # seconds of consecutive calls per method and round
GAP = 0.002  # idle seconds before each block: longer than the pools' spinning


def set_threads(t: int) -> None:
    torch.set_num_threads(t)
    htcore.set_num_threads(t)


def sparsified(dense: nn.Module, sparsity: float, first_dense: bool = False) -> nn.Module:
    """A copy of ``dense`` with every Conv2d and Linear top-k sparsified to keep 1 - sparsity (the
    first Conv2d left dense when ``first_dense``); the dense copy itself at sparsity 0."""
    model = copy.deepcopy(dense)
    if sparsity == 0:
        return model
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if first_dense:
        names = names[1:]
    report = sparsify_model(model, {n: 1.0 - sparsity for n in names})
    assert len(report.layers) == len(names) and len(report.skipped) == int(first_dense), report
    return model.eval()


def runtime_model(model: nn.Module, x: np.ndarray, reference: np.ndarray) -> Optional[CompressedModel]:
    """`CompressedModel.from_torch(model)`, checked against torch's output; None when refused."""
    try:
        compiled = CompressedModel.from_torch(model)
    except (TypeError, ValueError, NotImplementedError) as error:
        print(f"  (runtime refuses {type(model).__name__}: {error})", file=sys.stderr)
        return None
    out = compiled(x)
    scale = float(np.abs(reference).max()) or 1.0
    assert np.abs(out - reference).max() <= 1e-3 * scale, "runtime output differs from torch's"
    return compiled


def interleaved(methods: dict, rounds: int, cpu_clock: bool) -> tuple[dict, dict]:
    """Per-call seconds of each method in each round, ({name: [seconds per round]}, the same in wall
    time). With ``cpu_clock`` the first is the calling thread's CPU time (at one thread every
    library computes on the calling thread, so it leaves out the time other processes held the
    core); else it is wall time too."""
    inner = {}
    for name, fn in methods.items():  # warm-up and a time estimate
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = int(np.clip(BLOCK / max(time.perf_counter() - t0, 1e-7), 1, 200))
    names = list(methods)
    times: dict = {name: [] for name in names}
    wall: dict = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = methods[name]
            time.sleep(GAP)
            fn()
            c0, t0 = time.thread_time(), time.perf_counter()
            for _ in range(inner[name]):
                fn()
            t1, c1 = time.perf_counter(), time.thread_time()
            wall[name].append((t1 - t0) / inner[name])
            times[name].append((c1 - c0) / inner[name] if cpu_clock else wall[name][-1])
    return times, wall


def p10(times: list) -> float:
    """10th percentile of per-round times: the rounds least hit by other processes."""
    return float(np.percentile(times, 10))


def ratio(num: list, den: list) -> float:
    """Median over rounds of num / den (same rounds)."""
    return statistics.median(a / b for a, b in zip(num, den))


def leaf_calls(model: nn.Module, x: torch.Tensor) -> list:
    """(name, module, input) of every leaf module call of ``model(x)``, in call order."""
    calls: list = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: calls.append((name, mod, args[0])))
             for name, m in model.named_modules() if not list(m.children())]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return calls


def layer_table(net: str, dense: nn.Module, sparsity: float, batch: int, x: torch.Tensor, rounds: int) -> list:
    """Per-layer times (1 thread) of the htcore runtime and torch, and the rest of the whole net."""
    set_threads(1)
    model = sparsified(dense, sparsity)
    modules = dict(model.named_modules())
    calls = leaf_calls(dense, x)
    whole = runtime_model(model, x.numpy(), _torch_out(model, x))
    if whole is None:
        return []
    methods: dict = {}
    rows: list = []
    for i, (name, module, inp) in enumerate(calls):
        kind = type(module).__name__
        if isinstance(module, (nn.ReLU, nn.Identity, nn.Flatten, nn.BatchNorm2d)):
            continue  # fused, folded or free in the runtime: their torch time is in "torch rest"
        ours = modules[name]
        layer: list = [ours]
        nxt = next((c for c in calls[i + 1:] if not isinstance(c[1], nn.BatchNorm2d)), None)
        if isinstance(module, nn.Conv2d) and nxt is not None and isinstance(nxt[1], nn.ReLU):
            layer.append(nn.ReLU())  # the runtime fuses it
        inp_np = inp.numpy()
        if isinstance(module, nn.Linear):
            inp_np = inp_np.reshape(inp_np.shape[0], -1)
        try:
            one = CompressedModel.from_torch(nn.Sequential(*layer))
        except (TypeError, ValueError, NotImplementedError):
            continue  # no one-layer runtime model for it (counted in "rest")
        key = f"{name}#{i}"
        methods[f"htcore {key}"] = lambda one=one, a=inp_np: one(a)
        methods[f"torch {key}"] = lambda m=module, a=inp: _no_grad(m, a)
        if _tiling_max_pool(module):
            assert np.array_equal(slice_max_pool(inp_np, module.kernel_size), _torch_out(module, inp))
            methods[f"slices {key}"] = lambda a=inp_np, k=module.kernel_size: slice_max_pool(a, k)
        shape = tuple(inp.shape[1:])
        desc = kind
        if isinstance(module, nn.Conv2d):
            desc = (f"Conv {module.in_channels}->{module.out_channels} {module.kernel_size[0]}x{module.kernel_size[1]}"
                    f"{' s' + str(module.stride[0]) if module.stride[0] > 1 else ''} on {shape[1]}x{shape[2]}")
        elif isinstance(module, nn.Linear):
            desc = f"Linear {module.in_features}->{module.out_features}"
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            desc = f"{kind} on {shape[0]}x{shape[1]}x{shape[2]}"
        rows.append({"layer": name or kind, "desc": desc, "key": key})
    xn = x.numpy()
    methods["htcore whole"] = lambda: whole(xn)
    methods["torch whole"] = lambda: _no_grad(dense, x)
    times, _ = interleaved(methods, rounds, cpu_clock=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    total_h, total_t = med["htcore whole"], med["torch whole"]
    out = []
    for r in rows:
        h, t = med[f"htcore {r['key']}"], med[f"torch {r['key']}"]
        out.append({"net": net, "sparsity": sparsity, "batch": batch, "layer": r["layer"], "desc": r["desc"],
                    "htcore_us": h * 1e6, "htcore_share": h / total_h, "torch_us": t * 1e6, "torch_share": t / total_t,
                    "torch_over_htcore": ratio(times[f"torch {r['key']}"], times[f"htcore {r['key']}"]),
                    "slice_pool_us": med[f"slices {r['key']}"] * 1e6
                    if f"slices {r['key']}" in times else None})
    rest_h = total_h - sum(med[f"htcore {r['key']}"] for r in rows)
    rest_t = total_t - sum(med[f"torch {r['key']}"] for r in rows)
    out.append({"net": net, "sparsity": sparsity, "batch": batch, "layer": "rest", "desc": "whole minus the layers",
                "htcore_us": rest_h * 1e6, "htcore_share": rest_h / total_h, "torch_us": rest_t * 1e6,
                "torch_share": rest_t / total_t, "torch_over_htcore": None})
    out.append({"net": net, "sparsity": sparsity, "batch": batch, "layer": "whole", "desc": "",
                "htcore_us": total_h * 1e6, "htcore_share": 1.0, "torch_us": total_t * 1e6, "torch_share": 1.0,
                "torch_over_htcore": ratio(times["torch whole"], times["htcore whole"])})
    return out


def _tiling_max_pool(module: nn.Module) -> bool:
    return (isinstance(module, nn.MaxPool2d) and isinstance(module.kernel_size, int)
            and module.stride == module.kernel_size and module.padding == 0 and module.dilation == 1)


def slice_max_pool(x: np.ndarray, k: int) -> np.ndarray:
    """A k x k max pool with stride k, no padding, as the maximum of its k * k strided slices (numpy):
    timed beside the runtime's pooling as a candidate (it equals torch's max_pool2d)."""
    n, c, h, w = x.shape
    ho, wo = h // k, w // k
    out = np.array(x[:, :, 0:k * ho:k, 0:k * wo:k])
    for a in range(k):
        for b in range(k):
            if a or b:
                np.maximum(out, x[:, :, a:a + k * ho:k, b:b + k * wo:k], out=out)
    return out


def _no_grad(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _torch_out(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return _no_grad(model, x).numpy()


def whole_case(net: str, dense: nn.Module, sparsities: list, batch: int, threads: int, x: torch.Tensor,
               rounds: int) -> list:
    """Rows of one (net, batch, threads) case: torch and every htcore variant, interleaved."""
    set_threads(threads)
    xn = x.numpy()
    reference = _torch_out(dense, x)
    methods: dict = {"torch": lambda: _no_grad(dense, x)}
    for s in sparsities:
        for first_dense in ((False, True) if s > 0 else (False,)):
            model = sparsified(dense, s, first_dense)
            compiled = runtime_model(model, xn, _torch_out(model, x) if s > 0 else reference)
            if compiled is None:
                return []
            methods[("first dense " if first_dense else "htcore ") + f"{s:.0%}"] = lambda c=compiled: c(xn)
    times, wall = interleaved(methods, rounds, cpu_clock=threads == 1)
    torch_med = statistics.median(times["torch"])
    rows = []
    for s in sparsities:
        row = {"net": net, "batch": batch, "threads": threads, "sparsity": s, "torch_us": torch_med * 1e6,
               "htcore_us": statistics.median(times[f"htcore {s:.0%}"]) * 1e6,
               "torch_over_htcore": ratio(times["torch"], times[f"htcore {s:.0%}"]), "rounds": rounds,
               "clock": "cpu" if threads == 1 else "wall",
               "wall_torch_over_htcore": ratio(wall["torch"], wall[f"htcore {s:.0%}"]),
               "torch_p10_us": p10(times["torch"]) * 1e6, "htcore_p10_us": p10(times[f"htcore {s:.0%}"]) * 1e6}
        if s > 0:
            fd = times[f"first dense {s:.0%}"]
            row["first_dense_us"] = statistics.median(fd) * 1e6
            row["torch_over_first_dense"] = ratio(times["torch"], fd)
        rows.append(row)
    return rows


CROSSOVER_LAYERS = [  # (what, C_in, C_out, H = W, kernel, padding): layers of the VGG and LeNet above
    ("Conv 8->16 5x5 on 12x12", 8, 16, 12, 5, 0),
    ("Conv 64->64 3x3 on 14x14 p1", 64, 64, 14, 3, 1),
    ("Conv 128->128 3x3 on 7x7 p1", 128, 128, 7, 3, 1),
]
CROSSOVER_DENSITIES = [0.6, 0.5, 0.4, 0.3, 0.2]


def crossover_table(rounds: int, batches: list) -> list:
    """When to keep a layer dense (1 thread): one convolution (+ ReLU) with a dense weight (the
    runtime's dense Conv2d: every entry, which the kernel's dense loop runs) against the same layer
    top-k sparsified to each density, and torch's dense conv2d + relu."""
    set_threads(1)
    rng = np.random.default_rng(1)
    rows = []
    for what, c_in, c_out, hw, k, pad in CROSSOVER_LAYERS:
        for batch in batches:
            w = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
            x = rng.standard_normal((batch, c_in, hw, hw)).astype(np.float32)
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            flat = w.reshape(c_out, -1)
            cols = flat.shape[1]
            weights = {"dense": htcore.CSRMatrix(flat.ravel(), np.tile(np.arange(cols), c_out),
                                                 np.arange(0, c_out * cols + 1, cols), flat.shape)}
            for density in CROSSOVER_DENSITIES:
                weights[f"{density:.0%}"] = htcore.topk_sparsify(flat, density)
            methods: dict = {"torch": lambda: torch.relu(torch.nn.functional.conv2d(xt, wt, padding=pad))}
            for name, A in weights.items():
                methods[name] = lambda A=A: htcore.sparse_conv2d(x, A, kernel_size=k, padding=pad, activation="relu")
            full = weights["dense"]  # the same weight through the sparse (tiled) loop, as before the dense loop
            methods["dense, tiled loop"] = lambda: _core.sparse_conv2d(
                full.indptr, full.indices, full.data, None, c_out, cols, x, k, k, 1, 1, pad, pad, 1, 1, 1, None,
                _core.Activation.relu, _core.Conv2dAlgo.tiled)
            times, _ = interleaved(methods, rounds, cpu_clock=True)
            row = {"layer": what, "batch": batch, "torch_us": statistics.median(times["torch"]) * 1e6,
                   "dense_us": statistics.median(times["dense"]) * 1e6,
                   "torch_over_dense": ratio(times["torch"], times["dense"]),
                   "tiled_over_dense_loop": ratio(times["dense, tiled loop"], times["dense"])}
            for density in CROSSOVER_DENSITIES:
                row[f"dense_over_sparse_{density:.0%}"] = ratio(times["dense"], times[f"{density:.0%}"])
            rows.append(row)
    return rows


def pooling_estimates(layers: list) -> list:
    """Per (net, sparsity, batch) with max pools: the whole net's htcore time with the runtime's
    pools replaced by the strided-slice maximum (times from the per-layer table)."""
    out = []
    for key in dict.fromkeys((r["net"], r["sparsity"], r["batch"]) for r in layers):
        rows = [r for r in layers if (r["net"], r["sparsity"], r["batch"]) == key]
        pools = [r for r in rows if r.get("slice_pool_us") is not None]
        whole = next(r for r in rows if r["layer"] == "whole")
        if pools:
            saved = sum(r["htcore_us"] - r["slice_pool_us"] for r in pools)
            out.append({"net": key[0], "sparsity": key[1], "batch": key[2], "torch_us": whole["torch_us"],
                        "htcore_us": whole["htcore_us"], "estimate_us": whole["htcore_us"] - saved})
    return out


def markdown(info: dict, whole: list, layers: list, skipped: list, crossover: list) -> str:
    lines = ["# Whole CNNs: htcore runtime vs dense torch (`benchmarks/bench_conv.py`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             f"CPU: {info['cpu']} ({info['cores']} cores); torch {info.get('torch')}, numpy {info['numpy']}, "
             f"htcore {info['htcore']} ({info['htcore_build']['compiler']}, {info['htcore_build']['simd']}). Load average (1 min): "
             f"{info['load_average_1min']} at the start, {info['load_average_end']} at the end. "
             f"Times in µs per call (medians over rounds); ratios = torch time / htcore time, medians of "
             f"per-round ratios (> 1: htcore faster).", ""]
    if skipped:
        lines += [f"Not measured: {', '.join(skipped)} (the runtime refused the net).", ""]
    lines += ["Goal: faster than dense torch from 80% sparsity, >= 2x at 90% for batch 1.", "",
              "| net | batch | threads | worst torch/htcore at 80-95% | at 90% | met |", "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["net"], r["batch"], r["threads"]) for r in whole):
        rows = [r for r in whole if (r["net"], r["batch"], r["threads"]) == key and r["sparsity"] >= 0.8]
        if not rows:
            continue
        worst = min(r["torch_over_htcore"] for r in rows)
        at90 = next((r["torch_over_htcore"] for r in rows if abs(r["sparsity"] - 0.9) < 1e-9), float("nan"))
        met = worst > 1 and (key[1] != 1 or at90 >= 2)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {worst:.2f} | {at90:.2f} | {'yes' if met else 'no'} |")
    lines += ["", "clock: cpu = the calling thread's CPU time (1 thread), wall = wall time (2 threads); "
              "wall ratio: the 1-thread ratio in wall time; p10: ratio of the 10th percentiles of the per-round "
              "times.", "",
              "| net | batch | threads | clock | torch µs | sparsity | htcore µs | torch/htcore | wall ratio | p10 ratio "
              "| first conv dense µs | torch/first dense | rounds |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in whole:
        fd = (f"{r['first_dense_us']:.0f} | {r['torch_over_first_dense']:.2f}" if "first_dense_us" in r else "- | -")
        lines.append(f"| {r['net']} | {r['batch']} | {r['threads']} | {r['clock']} | {r['torch_us']:.0f} | "
                     f"{r['sparsity']:.0%} | {r['htcore_us']:.0f} | {r['torch_over_htcore']:.2f} | "
                     f"{r['wall_torch_over_htcore']:.2f} | {r['torch_p10_us'] / r['htcore_p10_us']:.2f} | {fd} | "
                     f"{r['rounds']} |")
    lines += ["", "## Per-layer times and shares (1 thread)", "",
              "One layer alone on its own input; htcore: a one-layer runtime model (ReLU fused into the "
              "convolution), torch: the module. CPU time of the calling thread, medians over the rounds; shares "
              "of the whole net; rest = whole net minus its layers; torch/htcore is the median of per-round "
              "ratios. max of slices: the numpy pooling candidate (see the module docstring).",
              "",
              "| net | sparsity | batch | layer | what | htcore µs | share | torch µs | share | torch/htcore "
              "| max of slices µs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in layers:
        ratio_text = "-" if r["torch_over_htcore"] is None else f"{r['torch_over_htcore']:.2f}"
        slices = "" if r.get("slice_pool_us") is None else f"{r['slice_pool_us']:.0f}"
        lines.append(f"| {r['net']} | {r['sparsity']:.0%} | {r['batch']} | {r['layer']} | {r['desc']} | "
                     f"{r['htcore_us']:.0f} | {r['htcore_share']:.0%} | {r['torch_us']:.0f} | {r['torch_share']:.0%} | "
                     f"{ratio_text} | {slices} |")
    estimates = pooling_estimates(layers)
    if estimates:
        lines += ["", "## With the candidate pooling (estimate, 1 thread)", "",
                  "The whole net's htcore time with each max pool's runtime time replaced by the strided-slice "
                  "maximum's, both measured above (an estimate: the runtime does not run it).", "",
                  "| net | sparsity | batch | torch µs | htcore µs | torch/htcore | htcore with slice pooling µs "
                  "| torch/estimate |", "|---|---|---|---|---|---|---|---|"]
        for e in estimates:
            lines.append(f"| {e['net']} | {e['sparsity']:.0%} | {e['batch']} | {e['torch_us']:.0f} | "
                         f"{e['htcore_us']:.0f} | {e['torch_us'] / e['htcore_us']:.2f} | {e['estimate_us']:.0f} | "
                         f"{e['torch_us'] / e['estimate_us']:.2f} |")
    lines += ["", "## When to keep a layer dense (1 thread)", "",
              "One convolution + ReLU: htcore with a dense weight (the kernel's dense loop) against the same layer "
              "top-k sparsified to each density (dense time / sparse time: > 1, the sparse weight is faster), "
              "torch's dense conv2d + relu, and the same dense weight through the sparse (tiled) loop, which ran "
              "dense weights before the dense loop.", "",
              "| layer | batch | torch µs | htcore dense µs | torch/htcore dense | tiled loop/dense loop | "
              + " | ".join(f"dense/sparse at {d:.0%}" for d in CROSSOVER_DENSITIES) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(CROSSOVER_DENSITIES)]
    for r in crossover:
        lines.append(f"| {r['layer']} | {r['batch']} | {r['torch_us']:.0f} | {r['dense_us']:.0f} | "
                     f"{r['torch_over_dense']:.2f} | {r['tiled_over_dense_loop']:.2f} | "
                     + " | ".join(f"{r[f'dense_over_sparse_{d:.0%}']:.2f}" for d in CROSSOVER_DENSITIES) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="0%% and 90%% sparsity only, 3 rounds (conv_quick.md)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (>= 7 for the record)")
    parser.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of " + ",".join(NETS))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    sparsities = [0.0, 0.9] if args.quick else SPARSITIES
    rounds = 3 if args.quick else args.rounds
    info = machine()
    rng = np.random.default_rng(0)
    whole: list = []
    layers: list = []
    skipped: list = []
    for net in args.nets.split(","):
        dense = NETS[net]().eval()
        xs = {b: torch.from_numpy(rng.standard_normal((b, 1, 28, 28)).astype(np.float32)) for b in BATCHES}
        for batch in BATCHES:
            for threads in THREADS:
                rows = whole_case(net, dense, sparsities, batch, threads, xs[batch], rounds)
                if not rows:
                    skipped.append(net)
                    break
                whole += rows
                for r in rows:
                    print(f"{net:6s} b{batch:<2d} t{threads} {r['sparsity']:4.0%}: torch {r['torch_us']:8.0f} µs  "
                          f"htcore {r['htcore_us']:8.0f} µs  torch/htcore {r['torch_over_htcore']:5.2f}"
                          + (f"  first dense {r['torch_over_first_dense']:5.2f}" if "first_dense_us" in r else ""),
                          flush=True)
            if net in skipped:
                break
            for s in ([0.0, 0.9] if args.quick else [0.0, 0.8, 0.9]):
                layers += layer_table(net, dense, s, batch, xs[batch], rounds)
    crossover = crossover_table(rounds, BATCHES)
    info["load_average_end"] = round(os.getloadavg()[0], 2)
    info["threads"] = THREADS
    info["method"] = {"rounds": rounds, "block_s": BLOCK, "gap_s": GAP,
                      "pool_settings": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "conv_quick" if args.quick else "conv"
    text = markdown(info, whole, layers, skipped, crossover)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"machine": info, "whole": whole, "layers": layers,
                                                   "skipped": skipped, "crossover": crossover}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
