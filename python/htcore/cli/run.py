"""``htcore run``: run a compressed-model file on inputs from a .npy file, with a latency summary.

Predictions (argmax labels) go to stdout one per line, or to ``--output`` as .npy (``--scores``
writes the float32 outputs instead); the latency summary (median and p90 per batch, samples/s)
goes to stderr, or everything into one JSON object on stdout with ``--json``. One untimed batch runs
first as a warm-up.

Input shape: each sample of the .npy file must have the model's per-sample input shape. A model
file that records it ("input_shape", always there for graph models such as ResNets) reshapes
flat samples to it, e.g. (samples, 784) to (samples, 1, 28, 28); for a file without it (a sequential
CNN saved without ``input_shape``) pass ``--input-shape 1,28,28`` or store the images in the .npy
as (samples, C, H, W).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional

import numpy as np

from .._threads import get_num_threads, set_num_threads
from ..runtime import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d
from ._args import add_command, plural, positive_int, shape, threads
from ._model import read_model

_IMAGE_LAYERS = (Conv2d, MaxPool2d, AvgPool2d, BatchNorm2d, AdaptiveAvgPool2d)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "run", "run a compressed model on a .npy input and time it", __doc__)
    p.add_argument("model", help="compressed model file (.safetensors, from htcore.save_compressed), or a .pt2 or "
                                 ".onnx model (converted in memory as by htcore convert)")
    p.add_argument("--input", required=True, help="inputs as .npy, shape (samples, ...)")
    p.add_argument("--input-shape", type=shape, metavar="C,H,W",
                   help="per-sample input shape, e.g. 1,28,28 (default: the model file's input_shape)")
    p.add_argument("--batch", type=positive_int, default=64, metavar="N", help="samples per batch (default 64)")
    p.add_argument("--threads", type=threads, default=None, metavar="N", help="threads for the kernels (default: htcore's setting)")
    p.add_argument("--output", help="write predictions (or --scores) to this .npy file instead of printing them")
    p.add_argument("--scores", action="store_true", help="with --output or --json: the float32 outputs, not labels")
    p.add_argument("--json", action="store_true", help="print one JSON object with predictions and timings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        set_num_threads(args.threads)
    model = read_model(args.model, input_shape=args.input_shape)
    X = _load_input(args.input)
    if X.ndim < 2 or X.shape[0] == 0:
        raise ValueError(f"--input must hold a non-empty (samples, ...) array, got shape {X.shape}")
    X = _shaped(X, _input_shape(args.input_shape, model.input_shape), model)
    model(X[: args.batch])  # warm-up, untimed: thread start-up and first allocations are not a batch's cost
    outputs, seconds = [], []
    for start in range(0, X.shape[0], args.batch):
        chunk = X[start : start + args.batch]
        t0 = time.perf_counter()
        outputs.append(model(chunk))
        seconds.append(time.perf_counter() - t0)
    scores = np.concatenate(outputs)
    result = scores if args.scores else np.argmax(scores, axis=1)
    ms = np.array(seconds) * 1e3
    summary = {"samples": int(X.shape[0]), "batch": args.batch, "batches": len(seconds), "threads": get_num_threads(),
               "latency_ms_median": float(np.median(ms)), "latency_ms_p90": float(np.percentile(ms, 90)),
               "samples_per_s": float(X.shape[0] / sum(seconds)) if sum(seconds) > 0 else float("inf")}
    if args.output:
        np.save(args.output, result)
    if args.json:
        if not args.output:
            summary["predictions"] = result.tolist()
        print(json.dumps(summary))
        return 0
    if not args.output:
        np.savetxt(sys.stdout, result, fmt="%d" if not args.scores else "%.7g")
    print(f"{plural(summary['samples'], 'sample')} in {plural(summary['batches'], 'batch', 'batches')} of {args.batch} "
          f"on {plural(summary['threads'], 'thread')}: "
          f"latency per batch median {summary['latency_ms_median']:.3f} ms, p90 {summary['latency_ms_p90']:.3f} ms; "
          f"{summary['samples_per_s']:.0f} samples/s", file=sys.stderr)
    return 0


def _input_shape(given: Optional[tuple], recorded: Optional[tuple]) -> Optional[tuple]:
    """The per-sample shape from --input-shape, else the one the model file records."""
    if given is None:
        return recorded
    if recorded is not None and given != recorded:
        raise ValueError(f"--input-shape {','.join(map(str, given))} differs from the model's input_shape {list(recorded)}")
    return given


def _shaped(X: np.ndarray, shape: Optional[tuple], model: Any) -> np.ndarray:
    """``X`` with samples of ``shape`` (flat samples of the same size are reshaped)."""
    if shape is None:
        if X.ndim == 2 and isinstance(model.layers[0] if model.layers else None, _IMAGE_LAYERS):
            raise ValueError(f"--input holds flat samples (shape {X.shape}) but the model starts with image layers "
                             "and its file records no input_shape: pass --input-shape C,H,W (e.g. 1,28,28)")
        return X
    if X.shape[1:] == shape:
        return X
    if int(np.prod(X.shape[1:])) == int(np.prod(shape)):
        return X.reshape(X.shape[0], *shape)
    raise ValueError(f"--input has samples of shape {X.shape[1:]} but the model takes {shape} "
                     f"({int(np.prod(shape))} values per sample)")


def _load_input(path: str) -> np.ndarray:
    """The array of a .npy file, never unpickling anything; clear errors for empty files and .npz."""
    try:
        X = np.load(path, allow_pickle=False)
    except EOFError:
        raise ValueError(f"--input {path} is empty or truncated") from None
    if not isinstance(X, np.ndarray):  # a .npz archive
        X.close()
        raise ValueError(f"--input {path} must be a .npy file holding one array, not an .npz archive")
    return X
