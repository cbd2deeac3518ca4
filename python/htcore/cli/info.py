"""``htcore info``: what this installation is (version, compiler, OpenMP, threads, SIMD, extras).

``simd`` lists what the compiler targeted for the whole build (portable: often just sse2);
``kernels`` says which code path the hot kernels chose at run time on this CPU (AVX2 + FMA + F16C
for the sparse products and convolutions, AVX2 + FMA for the eigenvalue solver, AVX-512 or AVX2
for the tail statistics (same bits on every path), else portable)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform

from .._core import build_info, csr_uses_avx2, symmetric_eigenvalues_uses_avx2, tail_kernels_path
from .._threads import get_num_threads
from .._version import __version__
from ._args import add_command

OPTIONAL_PACKAGES = ["torch", "safetensors", "matplotlib", "sklearn", "powerlaw", "weightwatcher", "sparse_dot_mkl"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "info", "show version, build, threads and optional extras", __doc__)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def collect() -> dict:
    build = build_info()
    return {
        "version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "compiler": build.compiler,
        "build_flags": build.build_flags,
        "openmp": build.openmp_version,
        "threads": get_num_threads(),
        "simd": list(build.simd),
        "kernels": {
            "sparse products": "avx2+fma+f16c" if csr_uses_avx2() else "portable",
            "eigenvalues": "avx2+fma" if symmetric_eigenvalues_uses_avx2() else "portable",
            "tail statistics": tail_kernels_path(),
        },
        "optional": {name: importlib.util.find_spec(name) is not None for name in OPTIONAL_PACKAGES},
    }


def run(args: argparse.Namespace) -> int:
    facts = collect()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    width = max(map(len, facts))
    for key, value in facts.items():
        if key == "optional":
            value = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in value.items())
        elif key == "simd":
            value = f"{' '.join(value) or 'none'} (compile flags)"
        elif key == "kernels":
            value = ", ".join(f"{k} {v}" for k, v in value.items()) + " (chosen at run time)"
        elif key == "openmp":
            value = f"{value} (OpenMP {_openmp_release(value)})"
        print(f"{key:<{width}}  {value}")
    return 0


def _openmp_release(macro: int) -> str:
    releases = {200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0", 201511: "4.5", 201811: "5.0", 202011: "5.1", 202111: "5.2"}
    return releases.get(macro, "unknown")
