"""The per-layer table `htcore.analyze` returns, and its CSV / JSON / markdown / pandas / plot outputs.

Column conventions (docs/conventions.md). ``alpha`` is WeightWatcher's alpha: the **pdf exponent** of the
power-law tail fitted to the layer's ESD (eigenvalues of W^T W), so it compares directly with
``weightwatcher``'s tables. Element columns are tail indices of |w| (P(|w| > x) ~ x^-alpha, pdf
exponent = tail index + 1) and say so in their names.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from ._compare_tails import TailVerdict
from ._spectra import SpectralMetrics


@dataclass(frozen=True)
class ElementTails:
    """Tail of the element magnitudes |w| of one layer (zeros dropped).

    ``tail_index`` is the Hill estimate alpha (P(|w| > x) ~ x^-alpha) at the double-bootstrap k,
    with its confidence interval; ``fit_tail_index`` is the Clauset power-law fit's tail index
    (its pdf exponent minus 1) above ``fit_xmin``.
    """

    n: int  #: number of nonzero entries
    tail_index: float  #: Hill tail index alpha at the automatic k
    tail_index_ci_low: float
    tail_index_ci_high: float
    hill_k: int  #: order statistics used by Hill
    fit_tail_index: float  #: power-law fit: pdf exponent - 1
    fit_xmin: float
    fit_ks_distance: float


@dataclass(frozen=True, eq=False)
class LayerReport:
    """One row of a `ModelReport`, plus what its plots need (the ESD and a CCDF summary of |w|)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    spectral: SpectralMetrics | None
    elements: ElementTails | None
    rel_error: tuple[float, ...] | None  #: ||W - W_k||_F / ||W||_F at each of the report's keeps
    evals: np.ndarray | None = None  #: the ESD, ascending
    element_ccdf: tuple[np.ndarray, np.ndarray] | None = None  #: (x, P(|w| > x)) at log-spaced x
    element_tail: TailVerdict | None = None  #: power law or not, |w| above ``elements.fit_xmin``
    spectral_tail: TailVerdict | None = None  #: power law or not, eigenvalues above ``spectral.xmin``

    @property
    def num_params(self) -> int:
        return int(np.prod(self.shape))


_SPECTRAL = [f.name for f in fields(SpectralMetrics)]
_ELEMENT = ["element_" + f.name for f in fields(ElementTails)]
_VERDICT = [f.name for f in fields(TailVerdict)]  # columns <prefix>_verdict, _alternative, _R, _p
_TAIL_TESTS = {"element_tail": "el", "spectral_tail": "sp"}  # LayerReport attribute -> compact header
# Short verdicts for the compact table.
_SHORT_VERDICT = {"power law": "PL", "exponential": "exp", "log-normal": "LN", "stretched exponential": "SE",
                  "truncated power law": "TPL", "inconclusive": "?"}

# Below these sample sizes an estimate is printed but flagged (``*_small_sample`` columns, a note in
# `ModelReport.summary`): a spectral alpha from an ESD of fewer than 50 eigenvalues (a 10-class
# output layer has 10) or a tail fit over fewer than 10 of them (its standard error
# (a - 1) / sqrt(n) is then a third of a - 1 or more, and the KS choice of xmin is unstable); a Hill
# estimate from fewer than 20 order statistics (95 % CI wider than about +-45 %).
MIN_SPECTRAL_EVALS = 50
MIN_SPECTRAL_TAIL = 10
MIN_HILL_K = 20

COMPACT_WIDTH = 100  #: characters a line of `ModelReport.to_markdown(compact=True)` may take


def spectral_small_sample(metrics: SpectralMetrics) -> bool:
    """Whether ``metrics.alpha`` comes from fewer than `MIN_SPECTRAL_EVALS` eigenvalues or a tail of
    fewer than `MIN_SPECTRAL_TAIL`."""
    return metrics.num_evals < MIN_SPECTRAL_EVALS or metrics.num_spikes < MIN_SPECTRAL_TAIL


def element_small_sample(tails: ElementTails) -> bool:
    """Whether the Hill estimate uses fewer than `MIN_HILL_K` order statistics."""
    return tails.hill_k < MIN_HILL_K


def _keep_column(keep: float) -> str:
    return f"rel_error_keep_{keep:g}"


@dataclass(frozen=True, eq=False)
class ModelReport:
    """Per-layer heavy-tail analysis of a model (the result of `htcore.analyze`).

    Columns: ``name``, ``kind``, ``shape``, ``num_params``; spectral (WeightWatcher 0.7.7
    definitions, `htcore.measure.SpectralMetrics`): ``num_evals``, ``alpha`` (ESD pdf exponent),
    ``xmin``, ``xmax``, ``ks_distance``, ``num_spikes``, ``alpha_weighted``, ``log_norm``,
    ``log_spectral_norm``, ``stable_rank``; elements (`ElementTails`): ``element_n``,
    ``element_tail_index`` (Hill) with ``element_tail_index_ci_low/high`` and ``element_hill_k``,
    ``element_fit_tail_index``, ``element_fit_xmin``, ``element_fit_ks_distance``; small-sample flags
    ``alpha_small_sample`` (an ESD of fewer than `MIN_SPECTRAL_EVALS` = 50 eigenvalues, or a fitted
    tail of fewer than `MIN_SPECTRAL_TAIL` = 10)
    and ``element_small_sample`` (Hill's k < `MIN_HILL_K` = 20): such estimates are printed but
    noted in `summary` as unreliable; compressibility:
    ``rel_error_keep_<keep>`` for each keep; with ``analyze(tail_tests=True)``, whether each tail is
    a power law (`htcore.compare_tails` on |w| above ``element_fit_xmin`` and on the eigenvalues above
    ``xmin``, decided by `htcore.tail_verdict`): ``element_tail_verdict`` and
    ``spectral_tail_verdict`` ("power law", "exponential", "log-normal", "stretched exponential",
    "truncated power law" or "inconclusive"), each with the deciding test's ``*_alternative``,
    ``*_R`` (normalised log-likelihood ratio, > 0 favours the power law) and ``*_p``. Missing
    values are NaN (null in JSON, empty in CSV).
    """

    source: str
    keeps: tuple[float, ...]
    layers: tuple[LayerReport, ...]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, name_or_index: str | int) -> LayerReport:
        if isinstance(name_or_index, str):
            for layer in self.layers:
                if layer.name == name_or_index:
                    return layer
            raise KeyError(f"no layer named {name_or_index!r} in this report")
        return self.layers[name_or_index]

    @property
    def columns(self) -> list[str]:
        cols = ["name", "kind", "shape", "num_params"]
        if any(layer.spectral is not None for layer in self.layers):
            cols += _SPECTRAL + ["alpha_small_sample"]
        if any(layer.elements is not None for layer in self.layers):
            cols += _ELEMENT + ["element_small_sample"]
        if any(layer.rel_error is not None for layer in self.layers):
            cols += [_keep_column(k) for k in self.keeps]
        for attribute in _TAIL_TESTS:
            if any(getattr(layer, attribute) is not None for layer in self.layers):
                cols += [f"{attribute}_{f}" for f in _VERDICT]
        return cols

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer, keyed by `columns`; missing values are NaN."""
        cols = self.columns
        out = []
        for layer in self.layers:
            row: dict[str, Any] = {
                "name": layer.name,
                "kind": layer.kind,
                "shape": "x".join(map(str, layer.shape)),
                "num_params": layer.num_params,
            }
            if layer.spectral is not None:
                row.update({f: getattr(layer.spectral, f) for f in _SPECTRAL})
                row["alpha_small_sample"] = spectral_small_sample(layer.spectral)
            if layer.elements is not None:
                row.update({c: getattr(layer.elements, f.name) for c, f in zip(_ELEMENT, fields(ElementTails))})
                row["element_small_sample"] = element_small_sample(layer.elements)
            if layer.rel_error is not None:
                row.update({_keep_column(k): e for k, e in zip(self.keeps, layer.rel_error)})
            for attribute in _TAIL_TESTS:
                verdict = getattr(layer, attribute)
                if verdict is not None:
                    row.update({f"{attribute}_{f}": getattr(verdict, f) for f in _VERDICT})
            out.append({c: row.get(c, math.nan) for c in cols})
        return out

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The table as CSV (header row first; NaN as an empty field). Written to ``path`` if given."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: ("" if _is_nan(v) else _plain(v)) for k, v in row.items()})
        return _maybe_write(buf.getvalue(), path)

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 2) -> str:
        """``{"source", "keeps", "columns", "layers": [row, ...]}`` as JSON (NaN and +-inf as null;
        log_norm is -inf for an all-zero matrix)."""
        doc = {
            "source": self.source,
            "keeps": list(self.keeps),
            "columns": self.columns,
            "layers": [{k: (None if _not_finite(v) else _plain(v)) for k, v in row.items()} for row in self.rows()],
        }
        return _maybe_write(json.dumps(doc, indent=indent, allow_nan=False) + "\n", path)

    def to_markdown(self, columns: list[str] | None = None, *, compact: bool = False) -> str:
        """A GitHub-flavoured markdown table with aligned columns, each column's floats formatted
        alike (`format_column`, 4 significant digits). ``compact``: the table a terminal has room
        for, at most `COMPACT_WIDTH` (100) characters a line, followed by a line explaining its
        headers: layer name (shortened in the middle if needed), shape, spectral ``alpha``, the Hill
        tail index with its 95 % CI and k, the relative error at the middle keep, the element (``el``)
        and spectral (``sp``) tail verdicts when tested (PL power law, exp exponential, LN
        log-normal, SE stretched exponential, TPL truncated power law, ? inconclusive), and
        ``flags`` ("few evals" for ``alpha_small_sample``, "small k" for ``element_small_sample``)."""
        if compact:
            return self._compact_markdown()
        cols = columns or self.columns
        rows = self.rows()
        return _aligned_markdown(cols, [format_column([row[c] for row in rows]) for c in cols])

    def _compact_markdown(self) -> str:
        rows = self.rows()
        headers, cells, notes = ["shape"], [[r["shape"] for r in rows]], []
        if "alpha" in self.columns:
            headers.append("alpha")
            cells.append(format_column([r["alpha"] for r in rows], 3))
            notes.append("alpha: ESD pdf exponent (WeightWatcher)")
        if "element_tail_index" in self.columns:
            headers += ["hill", "ci low", "ci high", "k"]
            cells += [format_column([r[c] for r in rows], 3) for c in
                      ("element_tail_index", "element_tail_index_ci_low", "element_tail_index_ci_high")]
            cells.append(format_column([r["element_hill_k"] for r in rows]))
            notes.append("hill: tail index of |w| with its 95% CI and k order statistics")
        if self.keeps and any(layer.rel_error is not None for layer in self.layers):
            keep = sorted(self.keeps)[len(self.keeps) // 2]
            headers.append(f"err@{keep:g}")
            cells.append(format_column([r[_keep_column(keep)] for r in rows], 3))
            notes.append(f"err@{keep:g}: ||W - W_k||_F / ||W||_F keeping {keep:g} of the entries")
        tested = [a for a in _TAIL_TESTS if f"{a}_verdict" in self.columns]
        for attribute in tested:
            headers.append(_TAIL_TESTS[attribute])
            cells.append([_SHORT_VERDICT.get(r[f"{attribute}_verdict"], "") for r in rows])
        if tested:
            notes.append("el/sp: is the |w| / ESD tail a power law (PL), exponential (exp), log-normal (LN), stretched "
                         "exponential (SE), truncated power law (TPL) or undecided (?), likelihood-ratio tests at p < 0.1")
        flags = [", ".join(text for column, text in (("alpha_small_sample", "few evals"), ("element_small_sample", "small k"))
                           if r.get(column) is True) for r in rows]
        if any(flags):
            headers.append("flags")
            cells.append(flags)
            notes.append(f"few evals: alpha from < {MIN_SPECTRAL_EVALS} eigenvalues or a tail of < {MIN_SPECTRAL_TAIL}; "
                         f"small k: Hill k < {MIN_HILL_K}")
        return _compact_table("name", [r["name"] for r in rows], headers, cells, notes, len(self.columns))

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas)."""
        return data_frame(self.rows(), self.columns, "ModelReport")

    def summary(self) -> str:
        """A few lines: layers, parameters, spread of alpha and of the element tail index,
        WeightWatcher's warning ranges (alpha < 2 over-trained, alpha > 6 under-trained), and the
        parameter-weighted compressibility at each keep."""
        params = sum(layer.num_params for layer in self.layers)
        lines = [f"{self.source}: {len(self.layers)} layers, {params:,} parameters analysed"]
        alphas = {l.name: l.spectral.alpha for l in self.layers if l.spectral is not None and not math.isnan(l.spectral.alpha)}
        if alphas:
            values = np.array(list(alphas.values()))
            lines.append(
                f"spectral alpha (ESD pdf exponent, WeightWatcher): mean {values.mean():.3f}, median {np.median(values):.3f}, "
                f"range {values.min():.3f}..{values.max():.3f} over {values.size} layers"
            )
            low = [n for n, a in alphas.items() if a < 2]
            high = [n for n, a in alphas.items() if a > 6]
            lines.append(f"  alpha < 2 (WeightWatcher: over-trained): {len(low)}" + (f" ({', '.join(low[:5])}{', ...' if len(low) > 5 else ''})" if low else ""))
            lines.append(f"  alpha > 6 (WeightWatcher: under-trained): {len(high)}" + (f" ({', '.join(high[:5])}{', ...' if len(high) > 5 else ''})" if high else ""))
            small = [l.name for l in self.layers if l.name in alphas and l.spectral is not None and spectral_small_sample(l.spectral)]
            if small:
                lines.append(f"  small sample: {len(small)} alpha(s) from fewer than {MIN_SPECTRAL_EVALS} eigenvalues or a tail of "
                             f"fewer than {MIN_SPECTRAL_TAIL}, read with care ({_names(small)}; column alpha_small_sample)")
        tails = np.array([l.elements.tail_index for l in self.layers if l.elements is not None and not math.isnan(l.elements.tail_index)])
        if tails.size:
            lines.append(
                f"element tail index (Hill, P(|w|>x) ~ x^-alpha): median {np.median(tails):.3f}, range {tails.min():.3f}..{tails.max():.3f}"
            )
            small = [l.name for l in self.layers if l.elements is not None and element_small_sample(l.elements)]
            if small:
                lines.append(f"  small sample: {len(small)} Hill estimate(s) from fewer than {MIN_HILL_K} order statistics, "
                             f"read with care ({_names(small)}; column element_small_sample)")
        with_errors = [l for l in self.layers if l.rel_error is not None]
        if with_errors:
            weights = np.array([l.num_params for l in with_errors], dtype=np.float64)
            errors = np.array([l.rel_error for l in with_errors])
            mean = weights @ errors / weights.sum()
            lines.append("relative Frobenius error of top-k (parameter-weighted mean): " + ", ".join(f"keep {k:g}: {e:.3f}" for k, e in zip(self.keeps, mean)))
        return "\n".join(lines)

    def plot(self, directory: str | os.PathLike) -> list[str]:
        """Write PNGs to ``directory`` (created if needed) and return their paths: one per layer
        (ESD on log-log axes with the fitted power-law tail; CCDF of |w| with the Hill fit) and
        ``compressibility.png`` (relative error vs keep, every layer). Needs matplotlib."""
        from ._plots import plot_report

        return plot_report(self, directory)


def _aligned_markdown(headers: list[str], columns: list[list[str]]) -> str:
    """A markdown table from its headers and its columns of cell texts, each column padded to its widest cell."""
    widths = [_width(h, col) for h, col in zip(headers, columns)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    lines = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line([col[i] for col in columns]) for i in range(len(columns[0]) if columns else 0)]
    return "\n".join(lines) + "\n"


def _width(header: str, cells: list[str]) -> int:
    """Characters of a table column: its widest cell or header."""
    return max([len(header), *(len(c) for c in cells)])


def _compact_table(first: str, names: list[str], headers: list[str], cells: list[list[str]], notes: list[str],
                   n_columns: int) -> str:
    """A table at most `COMPACT_WIDTH` characters wide and its notes: the first column (``first``,
    cells ``names``) is shortened to what the other columns leave of the width."""
    others = sum(_width(h, col) for h, col in zip(headers, cells)) + 3 * len(headers)  # "| " + cells joined by " | " + " |"
    room = max(12, COMPACT_WIDTH - 4 - others)
    table = _aligned_markdown([first, *headers], [[_shorten(n, room) for n in names], *cells])
    notes = [*notes, f"all {n_columns} columns: --wide, --csv or --json"]
    return table + "\n" + textwrap.fill("; ".join(notes), COMPACT_WIDTH) + "\n"


def _shorten(name: str, width: int) -> str:
    """``name`` cut to ``width`` characters by an ellipsis after its first four (the end of a layer
    name, its block and role, tells layers apart)."""
    return name if len(name) <= width else name[:4] + "…" + name[len(name) - (width - 5):]


def _names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _is_nan(v: Any) -> bool:
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def _not_finite(v: Any) -> bool:
    return isinstance(v, (float, np.floating)) and not math.isfinite(v)


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars (json and csv print them plainly)."""
    return v.item() if isinstance(v, np.generic) else v


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def format_column(values: Sequence[Any], digits: int = 4) -> list[str]:
    """The cells of one table column as text, every float of the column with the same number of
    decimals: enough for ``digits`` significant digits of the column's largest magnitude, then the
    zeros every cell ends with dropped (keeps 0.1, 0.5 stay "0.1", "0.5"; 0.30000000000000004 prints
    "0.3"; rounding noise such as 1.1e-16 beside 0.12 prints "0.0000"). A nonzero float the fixed
    decimals would print as zero, yet larger than 1e-9 of the column's largest, and every float of a
    column whose largest magnitude is >= 1e6 or < 1e-3, print in ``.{digits}g`` form instead.
    NaN and None print as "", +-inf as "inf" / "-inf"; ints, bools and strings as ``str``."""
    floats = [float(v) for v in values if _is_float(v) and math.isfinite(v)]
    largest = max((abs(v) for v in floats), default=0.0)
    general = largest >= 1e6 or 0 < largest < 1e-3
    decimals = 0 if largest == 0 else max(0, digits - 1 - math.floor(math.log10(largest)))
    cells = []
    for v in values:
        if v is None or _is_nan(v):
            cells.append("")
        elif not _is_float(v):
            cells.append(str(_plain(v)))
        elif not math.isfinite(v):
            cells.append("inf" if v > 0 else "-inf")
        else:
            text = f"{v:.{decimals}f}"
            if general or (v != 0 and float(text) == 0 and abs(v) > 1e-9 * largest):
                text = f"{v:.{digits}g}"
            cells.append(text.lstrip("-") if float(text) == 0 else text)  # no "-0.000"
    fixed = [i for i, (v, text) in enumerate(zip(values, cells)) if _is_float(v) and "." in text and "e" not in text]
    while fixed and all(cells[i].endswith("0") for i in fixed):
        for i in fixed:
            cells[i] = cells[i][:-1]
    for i in fixed:
        cells[i] = cells[i].rstrip(".")
    return cells


def _is_float(v: Any) -> bool:
    return isinstance(v, (float, np.floating))


def data_frame(rows: list, columns: list | None, owner: str) -> Any:
    """``rows`` (dicts) as a pandas DataFrame, for the ``to_pandas`` of ``owner``; pandas is the
    optional extra htcore[pandas]."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(f"{owner}.to_pandas needs pandas (pip install 'htcore[pandas]')") from None
    return pd.DataFrame(rows, columns=columns)


def _maybe_write(text: str, path: str | os.PathLike | None) -> str:
    if path is not None:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    return text
