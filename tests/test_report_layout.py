"""What a user sees in htcore's reports (issue #21 items 13-15): figures readable at the size they are
shown, no fitted tail line over too few points, small-sample estimates marked on the plots, one
number format per table column, and `htcore analyze`'s default table within 100 columns."""
import contextlib
import io
import math
import re

import numpy as np
import pytest

import htcore
from htcore.cli import main
from htcore.measure import MIN_HILL_K, MIN_SPECTRAL_TAIL, format_column

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402

READABLE_PT = 9  # at dpi 90 and shown at its own width, 9 pt is 11 px


@contextlib.contextmanager
def _saved_figures():
    """Every matplotlib Figure saved in the block (still open, to inspect its artists)."""
    figures = []
    savefig = Figure.savefig

    def record(self, *args, **kwargs):
        figures.append(self)
        return savefig(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", record)
        yield figures


def _state():
    """A tiny layer (16 eigenvalues, a fitted tail of 4, Hill's k = 2), a small one (16 eigenvalues,
    a fitted tail of 10, Hill's k = 2) and a large one; seeded."""
    return {"tiny": np.random.default_rng(2).standard_normal((16, 64)),
            "small": np.random.default_rng(0).standard_t(3, (16, 64)),
            "large": np.random.default_rng(0).standard_t(3, (120, 80))}


@pytest.fixture(scope="module")
def report():
    return htcore.analyze(_state(), progress=False)


@pytest.fixture(scope="module")
def plotted(report, tmp_path_factory):
    """`report`'s plots: {figure title's first word ("tiny", "small", "large", "Compressibility"): Figure}."""
    with _saved_figures() as figures:
        report.plot(tmp_path_factory.mktemp("plots"))
    assert len(figures) == len(report) + 1
    return {(fig._suptitle or fig.axes[0].title).get_text().split()[0]: fig for fig in figures}


def _legend_texts(ax):
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def _line_labels(ax):
    return [line.get_label() for line in ax.get_lines()]


# ---- item 15: figures readable where they are shown -------------------------------------------

def _check_readable(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for legend in [c for c in ax.get_children() if isinstance(c, Legend)]:
            assert all(t.get_fontsize() >= READABLE_PT for t in legend.get_texts()), [t.get_text() for t in legend.get_texts()]
        for label in ax.get_xticklabels() + ax.get_yticklabels():
            if label.get_text():
                assert label.get_fontsize() >= READABLE_PT, label.get_text()
    # saved at 90 dpi, at most 1200 px wide: shown near its own size in the report's 1100 px column
    assert fig.get_figwidth() * 90 <= 1200
    return renderer


def test_layer_figures_have_readable_legends_outside_the_data(plotted):
    for fig in plotted.values():
        renderer = _check_readable(fig)
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None and len(fig.axes) == 2:  # the per-layer figures: the legend is under the axes
                assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0


def test_stability_and_resilience_figures_are_readable(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    f = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    g = htcore.compress(f, keep=0.5)
    X = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
    stability = htcore.noise_stability(f, g, X, max_samples=30, seed=1)
    resilience = htcore.resilience({"dense": f, "compressed": g}, X, f(torch.from_numpy(X)).argmax(1).numpy(), trials=1,
                                   max_samples=30, seed=1)
    with _saved_figures() as figures:
        stability.plot(tmp_path)
        resilience.plot(tmp_path)
    assert len(figures) == 2
    for fig in figures:
        _check_readable(fig)


def test_report_page_shows_figures_one_to_a_row(tmp_path):
    from htcore.demo import Section, write_html

    png = tmp_path / "a.png"
    fig = Figure(figsize=(2, 1))
    fig.savefig(png)
    write_html(tmp_path / "r.html", "t", [Section("s", figures=[(str(png), "a"), (str(png), "b")])])
    style = (tmp_path / "r.html").read_text().split("</style>")[0]
    assert "inline-block" not in style and "520px" not in style
    assert re.search(r"figure img \{[^}]*max-width: 100%", style)


# ---- items 15 and 14: fitted lines only over enough points; small samples marked on the plots ----

def test_no_fitted_line_over_too_few_tail_points_and_small_samples_hatched(report, plotted):
    tiny, large = report["tiny"], report["large"]
    assert tiny.spectral.num_spikes < MIN_SPECTRAL_TAIL and tiny.elements.hill_k < MIN_HILL_K  # the case under test
    assert large.spectral.num_spikes >= MIN_SPECTRAL_TAIL and large.elements.hill_k >= MIN_HILL_K
    esd, ccdf = plotted["tiny"].axes
    assert not any(label.startswith("power law") for label in _line_labels(esd))
    assert not any(label.startswith("Hill") for label in _line_labels(ccdf))
    for ax in (esd, ccdf):
        notes = [t.get_text() for t in ax.texts]
        assert any("not drawn" in t for t in notes), notes
        hatched = [p for p in ax.patches if p.get_hatch()]
        assert hatched and any(t.startswith("small sample") for t in _legend_texts(ax))
    esd, ccdf = plotted["large"].axes
    assert any(label.startswith("power law") for label in _line_labels(esd))
    assert any(label.startswith("Hill") for label in _line_labels(ccdf))
    for ax in (esd, ccdf):
        assert not [p for p in ax.patches if p.get_hatch()] and not ax.texts
        assert not any(t.startswith("small sample") for t in _legend_texts(ax))


def test_small_spectral_sample_with_enough_tail_points_keeps_its_line_but_is_hatched(report, plotted):
    """An ESD of fewer than MIN_SPECTRAL_EVALS eigenvalues whose fitted tail still has enough points:
    the line is drawn and the estimate is marked."""
    from htcore.measure import MIN_SPECTRAL_EVALS

    small = report["small"].spectral
    assert small.num_evals < MIN_SPECTRAL_EVALS and small.num_spikes >= MIN_SPECTRAL_TAIL
    esd = plotted["small"].axes[0]
    assert any(label.startswith("power law") for label in _line_labels(esd)) and not esd.texts
    assert [p for p in esd.patches if p.get_hatch()] and any(t.startswith("small sample") for t in _legend_texts(esd))


# ---- item 15: one number format per column ------------------------------------------------------

def test_format_column_gives_a_column_one_number_of_decimals():
    assert format_column([0.2843, 0.1351, 0.07127]) == ["0.2843", "0.1351", "0.0713"]
    assert format_column([0.1, 0.5, 0.1 + 0.2]) == ["0.1", "0.5", "0.3"]  # no 0.30000000000000004
    assert format_column([1.11e-16, 0.001571, 0.1184]) == ["0.0000", "0.0016", "0.1184"]  # rounding noise
    assert format_column([0.0, 0.1, 0.25, 1.0]) == ["0.00", "0.10", "0.25", "1.00"]
    assert format_column([None, math.nan, math.inf, -math.inf, 5.43, 9.069]) == ["", "", "inf", "-inf", "5.430", "9.069"]
    assert format_column([1, 2, 300]) == ["1", "2", "300"] and format_column(["a", True]) == ["a", "True"]
    assert format_column([18.2, 0.0012, 33.5]) == ["18.20", "0.0012", "33.50"]  # a small value keeps its digits
    assert format_column([1e-5, 2.5e-5]) == ["1e-05", "2.5e-05"] and format_column([-1e-17, 0.5]) == ["0.0", "0.5"]
    assert format_column([np.float32(0.25), np.float64(0.5)], 3) == ["0.25", "0.50"]


def test_html_tables_format_each_column_alike(tmp_path):
    from htcore.demo import Section, write_html

    rows = [{"name": "a", "error": 0.2843, "keep": 0.1}, {"name": "b", "error": 0.07127, "keep": 0.1 + 0.2}]
    write_html(tmp_path / "r.html", "t", [Section("s", tables=[rows])])
    cells = re.findall(r"<td>([^<]*)</td>", (tmp_path / "r.html").read_text())
    assert cells == ["a", "0.2843", "0.1", "b", "0.0713", "0.3"]


def test_model_report_markdown_formats_each_column_alike(report):
    lines = report.to_markdown().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    column = [row[header.index("element_tail_index")] for row in rows]
    assert len({len(c.split(".")[1]) for c in column}) == 1, column  # same decimals on every row


# ---- item 13: `htcore analyze` prints a compact table unless --wide ------------------------------------

def _analyze(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["analyze", *args, "--quiet"]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("analyze") / "m.npz"
    rng = np.random.default_rng(1)
    np.savez(path, **{"encoder.layer.11.attention.output.dense.weight": rng.standard_t(3, (120, 96)),
                      "head.weight": rng.standard_t(3, (10, 48))})
    return path


def test_analyze_default_table_fits_100_columns_and_flags_small_samples(model_file, report):
    text = _analyze(str(model_file))
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and all(len(line) <= 100 for line in text.split("\n\n")[0].splitlines())
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["name", "shape", "alpha"] and "flags" in header and "k" in header
    head = [c.strip() for c in table[3].strip("|").split("|")]
    assert head[0] == "head.weight" and "few evals" in head[header.index("flags")]
    assert "--wide" in text
    compact = report.to_markdown(compact=True)
    assert all(len(line) <= 100 for line in compact.splitlines())


def test_analyze_wide_and_machine_formats_keep_every_column(model_file):
    wide = _analyze(str(model_file), "--wide")
    header = [c.strip() for c in wide.splitlines()[0].strip("|").split("|")]
    csv_header = _analyze(str(model_file), "--csv").splitlines()[0].split(",")
    assert header == csv_header and len(header) > 25
    assert "encoder.layer.11.attention.output.dense.weight" in wide


def test_compact_table_of_a_report_without_layers():
    """An empty column used to crash the width arithmetic (max of a bare int)."""
    from htcore.measure import ModelReport

    text = ModelReport(source="empty", keeps=(0.1,), layers=()).to_markdown(compact=True)
    assert text.splitlines()[0].startswith("| name") and "shape" in text.splitlines()[0]
