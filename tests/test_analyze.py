"""htcore.analyze and ModelReport: wiring to the estimators, every output format, plots, threads, CLI."""
import csv
import io
import json
import math
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

import htcore
from htcore.io import save_safetensors
from htcore.measure import DEFAULT_KEEPS, analyze_layer, esd, spectral_metrics


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "embed.weight": rng.standard_t(3, size=(300, 40)).astype(np.float32),
        "block.fc.weight": (rng.standard_normal((120, 90)) * 0.1).astype(np.float32),
        "block.fc.bias": np.zeros(120, np.float32),
        "conv.weight": rng.standard_t(4, size=(16, 8, 3, 3)).astype(np.float32),
        "tiny.weight": rng.standard_normal((2, 5)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.safetensors"
    save_safetensors(path, weights())
    return path


@pytest.fixture(scope="module")
def report(model_file):
    return htcore.analyze(model_file, progress=False)


def test_rows_and_columns(report, model_file):
    assert [l.name for l in report] == ["embed.weight", "block.fc.weight", "conv.weight", "tiny.weight"]
    assert [l.kind for l in report] == ["embedding", "linear", "conv", "linear"]
    assert report.source == str(model_file) and report.keeps == DEFAULT_KEEPS
    cols = report.columns
    assert cols[:4] == ["name", "kind", "shape", "num_params"]
    for c in ["alpha", "xmin", "xmax", "ks_distance", "num_spikes", "alpha_weighted", "log_norm", "log_spectral_norm",
              "stable_rank", "element_tail_index", "element_tail_index_ci_low", "element_tail_index_ci_high",
              "element_fit_tail_index", "rel_error_keep_0.01", "rel_error_keep_0.5"]:
        assert c in cols
    assert report["conv.weight"].num_params == 16 * 8 * 9


def test_values_are_the_estimators_outputs(report):
    w = weights()
    for name in ["embed.weight", "block.fc.weight", "conv.weight"]:
        row = report[name]
        mats = [w[name]] if w[name].ndim == 2 else [w[name][:, :, i, j] for i in range(3) for j in range(3)]
        assert row.spectral == spectral_metrics(esd(mats))
        np.testing.assert_array_equal(row.evals, esd(mats))
        sample = htcore.element_sample(w[name])
        h = htcore.hill(sample, random_state=0)
        fit = htcore.fit_powerlaw(sample)
        e = row.elements
        assert e.n == sample.size == np.count_nonzero(w[name])
        assert (e.tail_index, e.tail_index_ci_low, e.tail_index_ci_high, e.hill_k) == (h.alpha, h.ci_low, h.ci_high, h.k)
        assert (e.fit_tail_index, e.fit_xmin, e.fit_ks_distance) == (fit.alpha, fit.xmin, fit.ks_distance)
        assert e.fit_tail_index == pytest.approx(fit.pdf_exponent - 1)
        # summed over the sorted magnitudes inside the element kernel, not by compressibility_curve's selection
        np.testing.assert_allclose(row.rel_error, htcore.compressibility_curve(w[name], DEFAULT_KEEPS).rel_error,
                                   rtol=1e-12)
    # The 2x5 layer: 2 eigenvalues (< 8, WeightWatcher skips such layers) and 10 entries: NaN, not a crash.
    tiny = report["tiny.weight"]
    assert tiny.spectral.num_evals == 2 and math.isnan(tiny.spectral.alpha) and tiny.elements is None
    assert tiny.rel_error is not None


def test_ccdf_summary_is_exact_at_its_points(report):
    w = np.abs(weights()["block.fc.weight"]).ravel()
    x, p = report["block.fc.weight"].element_ccdf
    assert p[0] == 1.0 and np.all(np.diff(p) <= 0)
    for i in [5, 50, 150]:
        # each point is P(|w| >= x_i) up to float rounding of the bin edge
        assert abs(p[i] - np.mean(w >= x[i])) <= 2 / w.size


def test_module_state_dict_and_file_agree(report):
    torch = pytest.importorskip("torch", reason="torch not installed")
    sd = {k: torch.from_numpy(v) for k, v in weights().items()}
    again = htcore.analyze(sd, progress=False)
    assert _rows_equal_nan(again.rows(), report.rows())


def _rows_equal_nan(a, b):
    assert len(a) == len(b) and all(r.keys() == s.keys() for r, s in zip(a, b))
    return all(all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in zip(r.values(), s.values()))
               for r, s in zip(a, b))


def test_spectral_only_and_elements_only(model_file):
    spec = htcore.analyze(model_file, elements=False, keeps=None, progress=False)
    assert "alpha" in spec.columns and "element_tail_index" not in spec.columns and "rel_error_keep_0.1" not in spec.columns
    elem = htcore.analyze(model_file, spectral=False, keeps=(0.3,), include="fc", progress=False)
    assert elem.columns[-1] == "rel_error_keep_0.3" and "alpha" not in elem.columns and len(elem) == 1


@pytest.mark.parametrize("keeps,err", [((0.1, 0.0), ValueError), ((1.5,), ValueError), ("0.1", TypeError), ((None,), TypeError)])
def test_keeps_validated(model_file, keeps, err):
    with pytest.raises(err, match="keeps"):
        htcore.analyze(model_file, keeps=keeps, progress=False)


def test_identical_at_one_and_two_threads(model_file, report):
    before = htcore.get_num_threads()
    try:
        htcore.set_num_threads(1)
        one = htcore.analyze(model_file, progress=False)
    finally:
        htcore.set_num_threads(before)
    assert _rows_equal_nan(one.rows(), report.rows())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_concurrent_esds_equal_the_serial_loop(model_file, monkeypatch, threads):
    # analyze computes the next layers' ESDs on worker threads (and, with small row blocks, each
    # Gram over several blocks on threads of its own): the eigenvalues and every column must be
    # bitwise those of analyze_layer called layer by layer.
    import htcore.measure._spectra as sp

    monkeypatch.setattr(sp, "_BLOCK_ELEMENTS", 40 * 32)
    htcore.set_num_threads(1)
    serial = [analyze_layer(layer, elements=False, keeps=()) for layer in htcore.load_layers(model_file)]
    htcore.set_num_threads(threads)
    got = htcore.analyze(model_file, elements=False, keeps=None, progress=False)
    assert [r.name for r in got] == [r.name for r in serial]
    assert all(np.array_equal(r.evals, s.evals) for r, s in zip(got, serial))
    assert _rows_equal_nan([asdict(r.spectral) for r in got], [asdict(s.spectral) for s in serial])


def test_csv_json_markdown_pandas(report, tmp_path):
    rows = report.rows()
    parsed = list(csv.DictReader(io.StringIO(report.to_csv(tmp_path / "r.csv"))))
    assert (tmp_path / "r.csv").read_text() == report.to_csv()
    assert [r["name"] for r in parsed] == [r["name"] for r in rows]
    assert float(parsed[0]["alpha"]) == rows[0]["alpha"]  # full precision round trip
    assert parsed[3]["alpha"] == ""  # NaN -> empty field
    doc = json.loads(report.to_json())
    assert doc["columns"] == report.columns and doc["keeps"] == list(DEFAULT_KEEPS)
    assert doc["layers"][0]["alpha"] == rows[0]["alpha"] and doc["layers"][3]["alpha"] is None
    md = report.to_markdown().splitlines()
    assert len(md) == 2 + len(rows) and md[0].count("|") == len(report.columns) + 1
    pd = pytest.importorskip("pandas", reason="pandas not installed")
    df = report.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == report.columns and df["alpha"].isna().sum() == 1
    text = report.summary()
    assert "4 layers" in text and "pdf exponent" in text and "keep 0.1:" in text


def test_plots_are_pngs(report, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed")
    paths = report.plot(tmp_path / "plots")
    assert len(paths) == len(report) + 1 and paths[-1].endswith("compressibility.png")
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "htcore", "analyze", *args], capture_output=True, text=True)


def test_cli_formats_and_plots(model_file, tmp_path):
    out = run_cli(str(model_file), "--json", "--threads", "1", "--include", "fc|embed", "--quiet")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [l["name"] for l in doc["layers"]] == ["embed.weight", "block.fc.weight"]
    out = run_cli(str(model_file), "--csv", "--no-elements", "--keeps", "none", "--plots", str(tmp_path / "p"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("name,kind,shape,num_params,num_evals,alpha")
    assert len(list((tmp_path / "p").glob("*.png"))) == 4  # 4 layers, no compressibility curve
    out = run_cli(str(model_file))  # markdown + summary, progress bar on stderr
    assert out.returncode == 0 and out.stdout.startswith("| name ") and "layers" in out.stdout  # columns padded


def test_cli_unreadable_input_one_line_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    for args in [(str(bad),), (str(tmp_path / "missing.pt"),)]:
        out = run_cli(*args)
        assert out.returncode == 1
        assert out.stderr.startswith("htcore analyze: error:") and out.stderr.count("\n") == 1, out.stderr
    out = run_cli(str(tmp_path), "--quiet")  # a directory: every model in it, a failing one as an error row
    assert out.returncode == 1 and bad.name in out.stdout
    assert out.stderr.startswith(f"htcore analyze: {bad}: ") and out.stderr.count("\n") == 1, out.stderr
    out = run_cli(str(bad), "--json", "--csv")
    assert out.returncode == 2


def test_degenerate_layers_do_not_abort_the_table():
    rng = np.random.default_rng(5)
    sd = {
        "zero.weight": np.zeros((30, 20), np.float32),
        "ternary.weight": rng.integers(-1, 2, size=(64, 64)).astype(np.float32),  # massive ties
        "ok.weight": rng.standard_t(3, size=(64, 32)).astype(np.float32),
    }
    with pytest.warns(htcore.errors.DegenerateSampleWarning,
                      match=r"ternary.weight: no element tail estimate \(too many tied magnitudes.*tied\)$"):
        report = htcore.analyze(sd, progress=False)
    assert report["ternary.weight"].elements is None and not math.isnan(report["ternary.weight"].spectral.alpha)
    zero = report["zero.weight"]
    assert zero.spectral.log_norm == -math.inf and math.isnan(zero.spectral.alpha) and zero.elements is None
    assert zero.rel_error == (0.0,) * len(DEFAULT_KEEPS)
    assert report["ok.weight"].elements is not None and not math.isnan(report["ok.weight"].spectral.alpha)
    doc = json.loads(report.to_json())  # -inf and NaN become null, the JSON stays valid
    assert doc["layers"][0]["log_norm"] is None
    assert report.to_csv().splitlines()[1].startswith("zero.weight,linear,30x20,600,20,,")
