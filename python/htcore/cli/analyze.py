"""``htcore analyze``: the per-layer heavy-tail table of a model file (spectral, element tails, compressibility).

SOURCE is a .safetensors, .pt/.pth/.bin (read with torch.load(weights_only=True)) or .npz file.
The table goes to stdout (markdown by default, or --json / --csv), a progress bar to stderr.
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="per-layer heavy-tail analysis of a model file", description=__doc__)
    p.add_argument("source", metavar="SOURCE", help="model file: .safetensors, .pt, .pth, .bin or .npz")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the table as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the table as CSV")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots (ESD, |w| CCDF, compressibility) to DIR")
    p.add_argument("--threads", type=int, metavar="N", help="threads for htcore's kernels and BLAS (default: all cores)")
    p.add_argument("--include", metavar="REGEX", help="only tensors whose name matches REGEX")
    p.add_argument("--exclude", metavar="REGEX", help="skip tensors whose name matches REGEX")
    p.add_argument("--no-spectral", dest="spectral", action="store_false", help="skip the ESD and WeightWatcher metrics")
    p.add_argument("--no-elements", dest="elements", action="store_false", help="skip the element tail estimates")
    p.add_argument("--keeps", type=_keeps, metavar="K1,K2,...", help="keep fractions for compressibility (default 0.01,0.05,0.1,0.25,0.5; 'none' skips)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _keeps(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from .._threads import set_num_threads
    from ..measure import DEFAULT_KEEPS, analyze

    if args.threads is not None:
        set_num_threads(args.threads)
    report = analyze(
        args.source,
        spectral=args.spectral,
        elements=args.elements,
        keeps=DEFAULT_KEEPS if args.keeps is None else args.keeps,
        include=args.include,
        exclude=args.exclude,
        progress=not args.quiet,
    )
    if not report.layers:
        raise ValueError(f"{args.source}: no weight matrices found (tensors with >= 2 dimensions" + (f" matching {args.include!r}" if args.include else "") + ")")
    if args.json:
        sys.stdout.write(report.to_json())
    elif args.csv:
        sys.stdout.write(report.to_csv())
    else:
        sys.stdout.write(report.to_markdown())
        print()
        print(report.summary())
    if args.plots:
        paths = report.plot(args.plots)
        print(f"htcore analyze: wrote {len(paths)} plots to {args.plots}", file=sys.stderr)
    return 0
