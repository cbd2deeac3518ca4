"""What every benchmark shares: the machine it ran on and a median timer.

Benchmarks report ratios against peers measured in the same run; these facts go into each
results file so a figure can be traced to the machine and the build that produced it.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

import htcore
from htcore import _core


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


def machine() -> dict:
    """CPU, cores, load average, versions (torch only if the benchmark imported it) and htcore's build."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "htcore": htcore.__version__,
        "htcore_build": _build(),
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def _build() -> dict:
    """htcore's build facts as JSON-ready fields (`build_info` returns a bound struct)."""
    build = _core.build_info()
    return {"compiler": build.compiler, "build_flags": build.build_flags, "openmp_version": build.openmp_version,
            "simd": list(build.simd)}


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls of ``fn`` and the last call's value."""
    times, value = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), value
