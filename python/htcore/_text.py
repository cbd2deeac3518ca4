"""Wording shared by every layer's human-readable output (reports, summaries, the command line)."""
from __future__ import annotations


def plural(n: int, word: str, words: str | None = None) -> str:
    """"1 thread", "2 threads" (``words`` for an irregular plural)."""
    return f"{n} {word if n == 1 else words or word + 's'}"
