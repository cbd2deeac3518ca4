"""App: ``htcore demo``, the whole pipeline on a small real dataset, and its self-contained HTML report.

- `run_demo` -> a dict of every figure (also written to ``report.json``); `summary` formats it.
- `write_html` / `Section`: the one-page HTML report (plots embedded), usable for any report.
"""
from __future__ import annotations

from ._demo import DATASETS, MODELS, PRESETS, run_demo, summary
from ._html_report import Section, write_html

__all__ = ["DATASETS", "MODELS", "PRESETS", "Section", "run_demo", "summary", "write_html"]
