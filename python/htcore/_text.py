"""Wording shared by every layer's human-readable output (reports, summaries, the command line)."""
from __future__ import annotations

from typing import Any, Sequence


def plural(n: int, word: str, words: str | None = None) -> str:
    """"1 thread", "2 threads" (``words`` for an irregular plural)."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int) -> str:
    """A markdown table, the first ``left`` columns left-aligned (text), the others right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
