"""The ``htcore`` command line. Each subcommand lives in its own module in this package and
provides ``add_parser(subparsers)``, which registers it with ``func=run`` as its handler.

Exit codes: 0 success, 1 the job failed (a one-line reason on stderr), 2 bad usage (argparse's
message: an unknown option, or a value out of range via the converters in `_args`), 141 when the
reader of stdout left early (``htcore run ... | head``), as for a process a shell's pipe ended.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable, Sequence, TextIO

from .._version import __version__
from . import analyze, bound, compress, convert, demo, info, run
from ._args import UsageError

# Order here is the order in --help: the pipeline's steps, then the whole pipeline.
SUBCOMMANDS = [info, convert, analyze, compress, bound, run, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htcore",
        description="Measure heavy tails in neural-network weights, compress by top-k, certify a "
        "generalization bound, and run the compressed network fast on CPUs.",
        epilog="'htcore COMMAND --help' shows a command's options. Exit codes: 0 success, 1 the job failed "
        "(the reason on stderr), 2 bad usage.",
    )
    parser.add_argument("--version", action="version", version=f"htcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The Python docs' recipe for SIGPIPE: flush stdout inside the try (output still buffered would
    # otherwise fail at the interpreter's exit, printing "Exception ignored ... Broken pipe" with exit
    # code 120), and point stdout at devnull so that exit's flush has nothing left to fail on.
    try:
        try:
            return _dispatch(argv)
        finally:  # also after argparse's SystemExit (--help, --version, usage errors)
            sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`htcore run ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():  # the filters stay the caller's; only how a warning is shown changes
            warnings.showwarning = _one_line(args.command)
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("htcore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # an OSError, but not a failure of the job: main ends quietly
    except UsageError as exc:
        print(f"htcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"htcore {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _one_line(command: str) -> Callable[..., None]:
    """A `warnings.showwarning` that prints "htcore COMMAND: warning: MESSAGE" on stderr: what a
    user of the command line needs, without the library's file, line and source text."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        print(f"htcore {command}: warning: {message}", file=sys.stderr if file is None else file)

    return show
