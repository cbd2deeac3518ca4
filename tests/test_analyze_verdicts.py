"""analyze(tail_tests=True): per-layer verdicts on whether the element and spectral tails are power
laws, equal to compare_tails + tail_verdict called directly on the same tails, in every output."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import htcore
from htcore.io import save_safetensors
from htcore.measure import LikelihoodRatioTest, TailComparison, compare_tails, element_sample, tail_verdict


def weights():
    rng = np.random.default_rng(7)
    signs = rng.choice([-1.0, 1.0], size=(160, 100))
    return {
        "pareto.weight": (signs * (rng.pareto(2.0, (160, 100)) + 1.0)).astype(np.float32),
        "lognormal.weight": (signs * rng.lognormal(0.0, 0.6, (160, 100))).astype(np.float32),
        "gauss.weight": (rng.standard_normal((120, 80)) * 0.1).astype(np.float32),
    }


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "model.safetensors"
    save_safetensors(path, weights())
    return path


@pytest.fixture(scope="module")
def report(model_file):
    return htcore.analyze(model_file, progress=False, tail_tests=True, keeps=(0.1,))


def test_verdicts_equal_compare_tails_on_the_same_tails(report):
    w = weights()
    for layer in report:
        sample = element_sample(w[layer.name])
        xmin = layer.elements.fit_xmin
        expected = tail_verdict(compare_tails(sample, xmin=xmin))  # the whole sample: compare_tails cuts the tail
        assert layer.element_tail == expected
        expected = tail_verdict(compare_tails(layer.evals[layer.evals >= layer.spectral.xmin], xmin=layer.spectral.xmin))
        assert layer.spectral_tail == expected
        assert layer.spectral_tail == tail_verdict(compare_tails(layer.evals, xmin=layer.spectral.xmin))


def test_pareto_is_a_power_law_and_log_normal_is_not(report):
    pareto, lognormal = report["pareto.weight"].element_tail, report["lognormal.weight"].element_tail
    assert pareto.verdict == "power law" and pareto.R > 0 and pareto.p < 0.1
    vs_exponential = compare_tails(element_sample(weights()["pareto.weight"]), xmin=report["pareto.weight"].elements.fit_xmin,
                                   alternatives=("exponential",))
    assert tail_verdict(vs_exponential).verdict == "power law"
    assert lognormal.verdict != "power law"


def _test(alternative, R, p):
    favoured = "inconclusive" if p >= 0.1 else ("power_law" if R > 0 else alternative)
    return LikelihoodRatioTest(alternative=alternative, R=R, p_value=p, favoured=favoured, loglikelihood_ratio=R,
                               nested=False, parameters={})


@pytest.mark.parametrize("tests, verdict, deciding", [
    ([("exponential", 5.0, 1e-6), ("lognormal", -2.0, 0.04), ("truncated_power_law", -1.0, 0.01)],
     "truncated power law", "truncated_power_law"),  # a rejection wins over any power-law win; smallest p
    ([("exponential", 5.0, 1e-6), ("lognormal", 0.5, 0.6), ("stretched_exponential", 3.0, 1e-3)], "power law", "exponential"),
    ([("exponential", 1.0, 0.3), ("lognormal", -0.2, 0.8)], "inconclusive", "exponential"),
    ([("lognormal", -4.0, 1e-4)], "log-normal", "lognormal"),
])
def test_the_decision_rule(tests, verdict, deciding):
    comparison = TailComparison(xmin=1.0, n_tail=100, pdf_exponent=2.5, significance=0.1,
                                tests=tuple(_test(*t) for t in tests))
    out = tail_verdict(comparison)
    assert (out.verdict, out.alternative) == (verdict, deciding)
    assert (out.R, out.p) == (comparison[deciding].R, comparison[deciding].p_value)


COLUMNS = [f"{side}_tail_{field}" for side in ("element", "spectral") for field in ("verdict", "alternative", "R", "p")]


def test_columns_in_every_output(report):
    assert report.columns[-8:] == COLUMNS
    rows = {r["name"]: r for r in report.rows()}
    assert rows["pareto.weight"]["element_tail_verdict"] == "power law"
    doc = json.loads(report.to_json())
    assert doc["columns"][-8:] == COLUMNS
    assert {l["name"]: l["element_tail_verdict"] for l in doc["layers"]} == {n: r["element_tail_verdict"] for n, r in rows.items()}
    wide = report.to_markdown()
    assert all(c in wide.splitlines()[0] for c in COLUMNS) and "power law" in wide
    compact = report.to_markdown(compact=True)
    header = compact.splitlines()[0]
    assert "| el " in header and "| sp " in header and "PL" in compact and "el/sp:" in compact
    assert all(c in report.to_csv().splitlines()[0] for c in COLUMNS)


def test_off_by_default(model_file):
    plain = htcore.analyze(model_file, progress=False, keeps=None)
    assert not any(c.endswith("_verdict") for c in plain.columns)
    assert all(layer.element_tail is None and layer.spectral_tail is None for layer in plain)
    assert "| el " not in plain.to_markdown(compact=True)


def test_cli_json_and_usage(model_file, report):
    run = [sys.executable, "-m", "htcore", "analyze", str(model_file), "--quiet", "--keeps", "0.1"]
    out = subprocess.run([*run, "--json", "--tail-tests", "--threads", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["columns"][-8:] == COLUMNS
    ours = json.loads(report.to_json())
    for mine, theirs in zip(doc["layers"], ours["layers"]):
        assert {c: mine[c] for c in COLUMNS} == {c: theirs[c] for c in COLUMNS}
    assert "element_tail_verdict" not in subprocess.run([*run, "--json"], capture_output=True, text=True).stdout
    out = subprocess.run([*run[:5], str(model_file), *run[5:], "--tail-tests"], capture_output=True, text=True)
    assert out.returncode == 2 and "--tail-tests" in out.stderr


def test_a_layer_without_an_element_tail_has_no_verdict():
    w = {"tiny.weight": np.ones((4, 5), np.float32), "ok.weight": weights()["gauss.weight"]}
    report = htcore.analyze(w, progress=False, tail_tests=True, keeps=None)
    row = {r["name"]: r for r in report.rows()}["tiny.weight"]
    assert report["tiny.weight"].element_tail is None and math.isnan(row["element_tail_R"])
    assert report["ok.weight"].element_tail is not None
