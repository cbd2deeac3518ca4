"""What every subcommand shares on the way in and out: argparse ``type=`` converters that check
ranges, help text from module docstrings, and plural wording (`plural`, from htcore._text, which
the lower layers use too).

A converter raises ``argparse.ArgumentTypeError``, so a value out of range is a usage error (exit
code 2) worded as argparse's own: ``htcore compress: error: argument --keep: must be in (0, 1], got 2``.
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Callable, TypeVar

from .._text import plural as plural  # re-exported: the subcommands take it from here with the other helpers
from .._threads import MAX_THREADS

T = TypeVar("T")


class UsageError(ValueError):
    """Options that do not go together (checked after parsing): exit code 2, as argparse's own errors."""


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """A converter to an int in [low, high] (no upper limit when ``high`` is None)."""
    wanted = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    return convert


def real(low: float, high: float, *, closed_high: bool) -> Callable[[str], float]:
    """A converter to a float in (low, high] (``closed_high``) or (low, high); never NaN or infinite."""
    interval = f"({low:g}, {high:g}{']' if closed_high else ')'}"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}") from None
        inside = low < value <= high if closed_high else low < value < high
        if not (inside and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    return convert


positive_int = integer(1)
count = integer(0)  # epochs of fine-tuning, a seed: 0 allowed
threads = integer(1, MAX_THREADS)
fraction = real(0, 1, closed_high=True)  # keep fractions
probability = real(0, 1, closed_high=False)  # the bound's failure probability delta
positive_real = real(0, math.inf, closed_high=False)  # a learning rate


codebook_levels = integer(1, 256)  # codebook levels of k-means quantisation


def comma_list(convert: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A converter of comma-separated values, each by ``convert`` ("4,8" -> [4, 8])."""

    def parse(text: str) -> list[T]:
        return [convert(part) for part in text.split(",")]

    return parse


def fractions(text: str) -> tuple[float, ...]:
    """Comma-separated fractions in (0, 1] ("0.01,0.1"), or "none" for none."""
    if text.strip().lower() == "none":
        return ()
    return tuple(comma_list(fraction)(text))


def dataset(text: str) -> str:
    """A dataset for training or certifying: "fashion-mnist", "digits" or a path to a .npz file."""
    if text in ("fashion-mnist", "digits") or text.endswith(".npz"):
        return text
    raise argparse.ArgumentTypeError(f"must be fashion-mnist, digits or a path to a .npz file, got {text!r}")


def shape(text: str) -> tuple[int, ...]:
    """A per-sample shape such as "1,28,28": comma-separated positive integers."""
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers such as 1,28,28, got {text!r}")
    return dims


def named_fraction(text: str) -> tuple[str, float]:
    """NAME=FRACTION (a layer name or glob pattern and a keep fraction in (0, 1])."""
    name, sep, value = text.partition("=")
    try:
        if sep and name:
            return name, fraction(value)
    except argparse.ArgumentTypeError:
        pass
    raise argparse.ArgumentTypeError("must be NAME=FRACTION (a layer name or glob pattern, and a fraction in (0, 1], "
                                     f"e.g. 0=0.05), got {text!r}")


_LITERAL = re.compile(r"``(.+?)``|(?<![\w`])`([^`]+)`(?!\w)", re.S)


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` shows it: reST literals and references (``x``, `x`) as plain x."""
    return _LITERAL.sub(lambda m: m.group(1) or m.group(2), doc or "").strip()


class ParagraphFormatter(argparse.HelpFormatter):
    """argparse's formatter, but a description keeps its paragraphs (each refilled to the terminal width)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(ParagraphFormatter, self)._fill_text(p, width, indent) for p in text.split("\n\n"))


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, doc: str | None) -> argparse.ArgumentParser:
    """Register subcommand ``name``: ``summary`` in ``htcore --help``, the module docstring ``doc``
    (paragraphs kept, markup dropped) in ``htcore NAME --help``."""
    return sub.add_parser(name, help=summary, description=help_text(doc), formatter_class=ParagraphFormatter)
