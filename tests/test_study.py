"""benchmarks/bench_study.py --quick: the heavy-tail study's small version (8 networks on 2,000
Fashion-MNIST images), checked for structural and statistical sanity; and its Spearman/bootstrap
helper against scipy."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")
from scipy.stats import spearmanr  # noqa: E402

from htcore.datasets import FASHION_MNIST_ROOT  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_study  # noqa: E402


def test_spearman_matches_scipy_with_ties_and_is_seeded():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=30).astype(float)  # many ties
    y = x + rng.normal(size=30)
    result = bench_study.spearman_ci(x, y, resamples=500, seed=7)
    assert result["rho"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert result == bench_study.spearman_ci(x, y, resamples=500, seed=7)
    assert result["ci"] != bench_study.spearman_ci(x, y, resamples=500, seed=8)["ci"]
    low, high = result["ci"]
    assert -1 <= low <= result["rho"] <= high <= 1
    rows = rng.normal(size=(4, 9))
    expected = [spearmanr(a, b).statistic for a, b in zip(rows, rows[::-1])]
    np.testing.assert_allclose(bench_study.spearman_rows(rows, rows[::-1]), expected, atol=1e-12)


def test_spearman_edge_cases():
    increasing = np.arange(10.0)
    perfect = bench_study.spearman_ci(increasing, increasing**3, resamples=200, seed=0)
    assert perfect["rho"] == pytest.approx(1.0) and perfect["ci"] == pytest.approx([1.0, 1.0])
    # non-finite pairs are dropped; fewer than 4 left gives no estimate
    few = bench_study.spearman_ci([1, 2, np.nan, 4, np.inf], [1, 2, 3, 4, 5], resamples=50, seed=0)
    assert few["n"] == 3 and few["rho"] is None and few["ci"] is None
    assert bench_study.verdict({**few, "predicted": "+"}) == "too few networks"
    assert bench_study.verdict({"ci": [-0.2, 0.5], "predicted": "+"}) == "no relation here"
    assert bench_study.verdict({"ci": [0.1, 0.5], "predicted": "+"}) == "supports"
    assert bench_study.verdict({"ci": [-0.9, -0.1], "predicted": "+"}) == "contradicts"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    if not Path(FASHION_MNIST_ROOT).is_dir():
        pytest.skip(f"Fashion-MNIST not installed ({FASHION_MNIST_ROOT})")
    out = tmp_path_factory.mktemp("study")
    return bench_study.run(quick=True, out_dir=out, log=False), out


def test_grid_spans_two_decades_of_lr_per_batch(quick):
    results, _ = quick
    records = results["networks"]
    assert len(records) == len(bench_study.networks(bench_study.QUICK)) and {r["family"] for r in records} == {"mlp", "cnn"}
    for family, span in results["lr_per_batch_decades"].items():
        ratios = [r["lr"] / r["batch_size"] for r in records if r["family"] == family]
        assert span == pytest.approx(math.log10(max(ratios) / min(ratios)))
    assert results["lr_per_batch_decades"]["mlp"] >= 2


def test_layer_measurements_are_sane(quick):
    results, _ = quick
    keeps = results["setup"]["keeps"]
    for r in results["networks"]:
        for layer in r["layers"]:
            low, high = layer["hill_ci"]
            assert 0 < low <= layer["hill"] <= high
            curve = np.array(layer["rel_error"])
            assert curve.shape == (len(keeps),) and np.all((curve >= 0) & (curve <= 1))
            assert np.all(np.diff(curve) <= 1e-12), "top-k error must not grow with keep"
            for tests in (layer["element_tests"], layer["spectral_tests"]):
                assert tests is None or set(tests) == {"exponential", "lognormal", "stretched_exponential",
                                                       "truncated_power_law"}
        assert np.all(np.diff(r["rel_error_curve"]) <= 1e-12)
        assert 0 <= r["test_error"] <= 1 and 0 <= r["train_error"] <= 1


def test_bounds_are_consistent(quick):
    results, _ = quick
    for r in results["networks"]:
        bound = r["bound"]
        assert all(0 < keep <= 1 for keep in bound["keep"].values())
        kls = [s["kl"] for s in bound["settings"]]
        assert r["best_kl"] == min(kls) and r["raw_kl"] == kls[-1] and not bound["settings"][-1]["finetuned"]
        for s in bound["settings"]:
            assert s["train_error"] <= s["kl"] <= 1 and s["code_bits"] > 0


def test_correlations_are_valid_and_match_the_records(quick):
    results, _ = quick
    records = {f: [r for r in results["networks"] if r["family"] == f] for f in ("mlp", "cnn")}
    rows = results["correlations"]
    assert {r["family"] for r in rows} == {"mlp", "cnn"}
    for row in rows:
        if row["rho"] is None:
            assert row["n"] < 4 and row["verdict"] == "too few networks"
            continue
        low, high = row["ci"]
        assert -1 <= low <= high <= 1 and -1 <= row["rho"] <= 1
        assert row["verdict"] == bench_study.verdict(row)
        if row["level"] == "network":
            xs = [r[row["x"]] for r in records[row["family"]]]
            ys = [r[row["y"]] for r in records[row["family"]]]
            assert row["rho"] == pytest.approx(spearmanr(xs, ys).statistic, abs=1e-12)


def test_tail_test_counts_cover_every_layer(quick):
    results, _ = quick
    for which in ("element_tests", "spectral_tests"):
        for family, counts in results["tail_tests"][which].items():
            layers = sum(len(r["layers"]) for r in results["networks"] if r["family"] == family)
            for alternative, c in counts.items():
                if alternative != "untestable":
                    assert sum(c.values()) + counts["untestable"] == layers


def test_files_written(quick):
    results, out = quick
    stored = json.loads((out / "study_quick.json").read_text())
    assert stored["correlations"] == json.loads(json.dumps(results["correlations"]))
    text = (out / "study_quick.md").read_text()
    assert "Spearman" in text and "study_quick_scatter.png" in text
    for name in ("study_quick_scatter.png", "study_quick_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
