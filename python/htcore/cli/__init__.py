"""The ``htcore`` command line. Each subcommand lives in its own module in this package and
provides ``add_parser(subparsers)``, which registers it with ``func=run`` as its handler.

Exit codes: 0 success, 1 the job failed (a one-line reason on stderr), 2 bad usage.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .._version import __version__
from . import analyze, bound, compress, convert, demo, info, run

# Order here is the order in --help: the pipeline's steps, then the whole pipeline.
SUBCOMMANDS = [info, convert, analyze, compress, bound, run, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htcore",
        description="Measure heavy tails in neural-network weights, compress by top-k, certify a "
        "generalization bound, and run the compressed network fast on CPUs.",
    )
    parser.add_argument("--version", action="version", version=f"htcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("htcore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`htcore info --json | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"htcore {args.command}: error: {exc}", file=sys.stderr)
        return 1
