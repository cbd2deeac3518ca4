"""A self-contained HTML page (plots embedded as base64 PNG, no external assets) from sections of
text, tables and images. Used by ``htcore demo``; usable for any report a script wants to share."""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..measure import format_column

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #345; padding-bottom: .2em; }
h2 { margin-top: 1.8em; color: #345; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccd; padding: .25em .6em; text-align: right; }
th { background: #eef1f5; }
td:first-child, th:first-child { text-align: left; }
figure { display: block; margin: .8em 0 1.2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
.note { color: #555; font-size: .9em; }
"""


@dataclass
class Section:
    """One titled part of the page: paragraphs, then tables (lists of row dicts), then figures (PNG paths with captions)."""

    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Sequence[dict[str, Any]]] = ()
    figures: Sequence[tuple[str, str]] = field(default_factory=tuple)


def _table(rows: Sequence[dict[str, Any]]) -> str:
    """An HTML table of ``rows`` (the first row's keys are the columns), each column's numbers
    formatted alike by `htcore.measure.format_column`."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [format_column([r.get(c, "") for r in rows]) for c in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(col[i])}</td>" for col in cells) + "</tr>" for i in range(len(rows)))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: str, caption: str) -> str:
    with open(path, "rb") as fh:
        data = base64.b64encode(fh.read()).decode("ascii")
    alt = html.escape(caption or os.path.basename(path))
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def write_html(path: str | os.PathLike, title: str, sections: Sequence[Section], *, footer: str = "") -> None:
    """Write ``sections`` as one self-contained HTML file at ``path``."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in s.paragraphs)
        parts.extend(_table(t) for t in s.tables)
        parts.extend(_figure(p, c) for p, c in s.figures)
    if footer:
        parts.append(f"<p class='note'>{html.escape(footer)}</p>")
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
