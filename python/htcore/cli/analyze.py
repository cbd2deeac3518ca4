"""``htcore analyze``: the per-layer heavy-tail table of model files (spectral, element tails, compressibility).

Each SOURCE is a .safetensors, .pt/.pth/.bin (read with torch.load(weights_only=True)) or .npz file,
a directory (every such file below it) or a quoted glob pattern ('runs/*.pt'). One file: its table.
Several models, or --workers / --scheduler / --out: `htcore.analyze_many` on a local process pool
(--workers N, default one per core) or a Dask cluster (--scheduler tcp://host:8786, needs
htcore[dask]), one table with a `model` column and a summary row per model; a model that fails
is an error row (exit code 1 once all are done); --out DIR keeps one JSON per model and a re-run
skips those done. The table goes to stdout (markdown by default, or --json / --csv), a progress
bar to stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._args import UsageError, add_command, fractions, plural, positive_int, threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "analyze", "per-layer heavy-tail analysis of model files", __doc__)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="model file (.safetensors, .pt, .pth, .bin, .npz), directory or glob pattern")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the table as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the table as CSV")
    p.add_argument("--wide", action="store_true", help="print every column (the default table has the key ones, fits 100 characters)")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots (ESD, |w| CCDF, compressibility) to DIR")
    p.add_argument("--threads", type=threads, metavar="N", help="threads for htcore's kernels and BLAS (default: all cores; shared out between local --workers)")
    p.add_argument("--include", metavar="REGEX", help="only tensors whose name matches REGEX")
    p.add_argument("--exclude", metavar="REGEX", help="skip tensors whose name matches REGEX")
    p.add_argument("--no-spectral", dest="spectral", action="store_false", help="skip the ESD and WeightWatcher metrics")
    p.add_argument("--no-elements", dest="elements", action="store_false", help="skip the element tail estimates")
    p.add_argument("--keeps", type=fractions, metavar="K1,K2,...",
                   help="keep fractions in (0, 1] for compressibility (default 0.01,0.05,0.1,0.25,0.5; 'none' skips)")
    p.add_argument("--tail-tests", action="store_true",
                   help="one model: also test whether each element and spectral tail is a power law (htcore.compare_tails; slower)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="several models: N local worker processes (default: one per core)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="several models: run on the Dask cluster at ADDRESS (tcp://host:8786; needs htcore[dask])")
    p.add_argument("--out", metavar="DIR", help="several models: one JSON per model in DIR as it finishes; a re-run skips those done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._threads import set_num_threads
    from ..measure import DEFAULT_KEEPS, analyze

    if args.threads is not None:
        set_num_threads(args.threads)
    options = dict(
        spectral=args.spectral,
        elements=args.elements,
        keeps=DEFAULT_KEEPS if args.keeps is None else args.keeps,
        include=args.include,
        exclude=args.exclude,
    )
    many = len(args.sources) > 1 or not os.path.isfile(args.sources[0])
    if many or args.workers is not None or args.scheduler is not None or args.out is not None:
        if args.tail_tests:
            raise UsageError("--tail-tests analyses one model file (without --workers, --scheduler or --out)")
        return _run_many(args, options)
    source = args.sources[0]
    report = analyze(source, progress=not args.quiet, tail_tests=args.tail_tests, **options)
    if not report.layers:
        raise ValueError(f"{source}: no weight matrices found (tensors with >= 2 dimensions" + (f" matching {args.include!r}" if args.include else "") + ")")
    if args.json:
        sys.stdout.write(report.to_json())
    elif args.csv:
        sys.stdout.write(report.to_csv())
    else:
        sys.stdout.write(report.to_markdown(compact=not args.wide))
        print()
        print(report.summary())
    if args.plots:
        paths = report.plot(args.plots)
        print(f"htcore analyze: wrote {plural(len(paths), 'plot')} to {args.plots}", file=sys.stderr)
    return 0


def _run_many(args: argparse.Namespace, options: dict[str, Any]) -> int:
    from ..measure import analyze_many, executor_for

    if args.plots:
        raise UsageError("--plots draws one model's layers; give a single model file")
    with executor_for(scheduler=args.scheduler, workers=args.workers) as executor:
        report = analyze_many(args.sources, executor=executor, out=args.out, progress=not args.quiet, **options)
    if args.json:
        sys.stdout.write(report.to_json())
    elif args.csv:
        sys.stdout.write(report.to_csv())
    else:
        sys.stdout.write(report.to_markdown(row_types=("model", "error"), compact=not args.wide))
        print()
        print(report.summary())
    for model, error in report.errors.items():
        print(f"htcore analyze: {model}: {error}", file=sys.stderr)
    return 1 if report.errors else 0
