"""`htcore demo` end to end on a reduced setting (small hidden layer, few epochs), its report files,
and its argument validation and missing-torch message."""
import contextlib
import io
import json
import math
import os
import re
import sys

import pytest

import htcore
from htcore.cli import main

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from htcore.demo import run_demo, summary  # noqa: E402
from htcore.demo._demo import STABILITY_SAMPLES  # noqa: E402
from htcore.measure import format_column  # noqa: E402

REDUCED = ["--hidden", "8", "--epochs", "25", "--finetune-epochs", "8", "--no-progress"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One reduced run through the CLI with --json: (output dir, figures parsed from stdout)."""
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--out", str(out), "--json", "--seed", "1", *REDUCED])
    assert code == 0
    return out, json.loads(stdout.getvalue())


def test_report_files_exist(demo):
    out, figures = demo
    for name in ["report.html", "report.json", "model.safetensors", "inputs.npy", *figures["plots"]]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "bound.png" in figures["plots"] and "compressibility.png" in figures["plots"]
    # per layer + compressibility, bound, runtime, noise stability, resilience
    assert len(figures["plots"]) == len(figures["tails"]["layers"]) + 5


def test_cli_json_is_the_report_json(demo):
    out, figures = demo
    assert json.loads((out / "report.json").read_text()) == figures


def test_html_is_self_contained_with_every_plot(demo):
    out, figures = demo
    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == len(figures["plots"])
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in images)
    assert "http://" not in page and "https://" not in page
    assert f"{figures['bound']['kl']:.4f}" in page


def test_bound_is_at_least_the_training_error_and_below_one(demo):
    bound = demo[1]["bound"]
    for form in ("kl", "binomial", "hoeffding", "catoni"):
        assert bound["train_error"] <= bound[form] < 1, form
    assert bound["test_error"] <= bound["kl"]  # holds w.p. 0.95; seeded, so a failure is a regression
    assert bound["m"] == demo[1]["data"]["m"]


def test_saved_model_recertifies_with_the_search_charged(demo, capsys):
    out, figures = demo
    model = htcore.load_compressed(out / "model.safetensors")
    tried = figures["compression"]["settings_tried"]
    assert model.metadata["search"] == {"settings_tried": tried, "index": figures["compression"]["chosen"]}
    assert main(["bound", str(out / "model.safetensors"), "--data", "digits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["code_bits"] == figures["bound"]["code_bits"]  # the search's bits included (the data split differs: seed 1)


def test_figures_are_consistent(demo):
    figures = demo[1]
    c, b, r = figures["compression"], figures["bound"], figures["runtime"]
    chosen = figures["search"][c["chosen"]]
    assert chosen["kl"] == b["kl"] == min(row["kl"] for row in figures["search"])
    assert chosen["code_bits"] == b["code_bits"] == b["code"]["total_bits"]
    assert c["settings_tried"] == len(figures["search"]) == 4
    assert c["nnz"] == sum(t["k"] for t in b["code"]["tensors"])
    arch = figures["model"]["architecture"]
    assert arch == [64, 8, 10]
    assert c["params"] == sum(a * b_ + b_ for a, b_ in zip(arch[:-1], arch[1:]))
    # the file written, loaded back without torch, is the certified net
    assert r["agrees_with_certified"] == 1.0 and r["test_error"] == b["test_error"]
    assert [row["batch"] for row in r["batches"]] == [1, 256]
    for row in r["batches"]:
        assert row["htcore_ms"] > 0 and row["dense_torch_ms"] > 0
        assert math.isclose(row["speedup"], row["dense_torch_ms"] / row["htcore_ms"], rel_tol=1e-9)
    assert [layer["name"] for layer in figures["tails"]["layers"]] == ["0.weight", "2.weight"]


def test_summary_names_every_step(demo):
    text = summary(demo[1])
    for part in ("tail index", "spectral alpha", "kept", "bits", "kl", "catoni", "hoeffding", "batch 1:", "batch 256:",
                 "report.html"):
        assert part in text, part
    assert "noise stability" in text
    assert len(text.splitlines()) < 25


def test_report_has_the_noise_stability_section(demo):
    """The stability step: its JSON (one row per weight layer of the chosen net, resilience of both
    nets, on the seeded subsamples), its two plots and its section in report.html."""
    out, figures = demo
    stability = figures["stability"]
    layers = stability["noise_stability"]["layers"]
    assert [row["shape"] for row in layers] == [list(row["matrix"]) for row in figures["layers"]]
    assert stability["noise_stability"]["net"]["n_samples"] == min(figures["data"]["m"], STABILITY_SAMPLES)
    assert all(0 <= row["frobenius_ratio"] <= 1 for row in layers)
    assert stability["resilience"]["names"] == ["dense", "compressed"] and stability["plots"] == ["noise_stability.png", "resilience.png"]
    assert figures["seconds"]["stability"] > 0
    page = (out / "report.html").read_text()
    assert "Noise stability of the compressed net on real inputs" in page
    assert f"<td>{format_column([row['frobenius_ratio'] for row in layers])[0]}</td>" in page  # the per-layer table


def test_layers_and_tensors_are_named_as_in_the_torch_model(demo):
    """One naming in every table, the JSON, the summary and the plots: layer "0" of the torch model,
    its tensors "0.weight" and "0.bias" (not the runtime's "layers.0")."""
    out, figures = demo
    layers = [row["layer"] for row in figures["layers"]]
    assert layers == ["0", "2"] and list(figures["compression"]["keep"]) == layers
    assert [row["name"] for row in figures["stability"]["noise_stability"]["layers"]] == layers
    assert [t["name"] for t in figures["bound"]["code"]["tensors"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [row["name"] for row in figures["tails"]["layers"]] == ["0.weight", "2.weight"]
    page = (out / "report.html").read_text()
    assert "layers.0" not in page and "layers.2" not in page and "layers." not in summary(figures)
    tails_table = page.split("<table>")[1]
    assert re.findall(r"<tr><td>([^<]*)</td>", tails_table) == layers


def test_small_sample_estimates_are_marked_in_the_report(demo):
    """The 8x64 and 10x8 layers give spectral alphas from 8 eigenvalues: flagged in the tails table,
    the summary and the figure captions."""
    out, figures = demo
    assert all(row["alpha_small_sample"] for row in figures["tails"]["layers"])
    page = (out / "report.html").read_text()
    tails_table = page.split("<table>")[1].split("</table>")[0]
    assert "<th>small sample</th>" in tails_table and tails_table.count("spectral alpha</td>") + tails_table.count(
        "spectral alpha, Hill k</td>") == 2
    assert "a hatched tail is a small-sample estimate" in page
    text = summary(figures)
    assert text.count("(small sample: spectral alpha") == 2


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dataset="mnist"), ValueError, "dataset must be one of"),
    (dict(keep=0.0), ValueError, "keep"),
    (dict(keep=1.5), ValueError, "keep"),
    (dict(keep=(0.1, 0.2, 0.3)), ValueError, r"one per weight layer \(2\)"),
    (dict(keep="0.1"), TypeError, "keep must be"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(epochs=0), ValueError, "epochs"),
    (dict(hidden=8), TypeError, "hidden"),
    (dict(model="resnet"), ValueError, "model must be one of"),
    (dict(model="cnn", hidden=(8,)), ValueError, "does not apply to model='cnn'"),
    (dict(model="cnn", keep=(0.1, 0.2)), ValueError, r"one per weight layer \(3\)"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, error, match):
    out = tmp_path / "never"
    with pytest.raises(error, match=match):
        run_demo(out=out, progress=False, **kwargs)
    assert not out.exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--keep", "0.1", "0.2", "0.3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("htcore demo: error:") and "\n" not in err


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--dataset", "mnist"])
    assert exc.value.code == 2


def test_missing_torch_says_to_install_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert main(["demo", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "torch" in err and "htcore[torch]" in err
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.skipif(not os.path.isdir(htcore.datasets.FASHION_MNIST_ROOT),
                    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
def test_fashion_mnist_reduced(tmp_path):
    figures = run_demo(dataset="fashion-mnist", out=tmp_path, keep=(0.05, 0.5), hidden=(8,), epochs=1,
                       finetune_epochs=1, progress=False)
    assert figures["data"]["m"] == 60000 and figures["model"]["architecture"] == [784, 8, 10]
    assert figures["compression"]["settings_tried"] == 2  # one keep pair x the preset's two codebook sizes
    assert figures["compression"]["keep"] == {"0": 0.05, "2": 0.5}
    bound = figures["bound"]
    assert bound["train_error"] <= bound["kl"] < 1
    assert (tmp_path / "report.html").is_file()


def test_cnn_demo_on_digits_images_reports_every_conv_layer(tmp_path):
    """The CNN path at digits scale: (n, 1, 8, 8) images, a per-layer table naming the Conv2d layers,
    the saved runtime file reproducing the certified net."""
    figures = run_demo(dataset="digits", model="cnn", out=tmp_path, keep=(0.5, 0.3, 0.3), epochs=4,
                       finetune_epochs=1, progress=False)
    assert figures["model"]["kind"] == "cnn" and figures["data"]["input_shape"] == [1, 8, 8]
    assert figures["model"]["architecture"] == "conv 1->4 5x5, conv 4->8 5x5, linear 32->10"
    layers = figures["layers"]
    assert [row["layer"] for row in layers] == ["0", "3", "7"]
    assert [row["kind"].split()[0] for row in layers] == ["Conv2d", "Conv2d", "Linear"]
    assert [row["matrix"] for row in layers] == [[4, 25], [8, 100], [10, 32]]
    assert [row["kept"] for row in layers] == [50, 240, 96]  # ceil(keep * n) of each matrix
    bound = figures["bound"]
    code_bits = sum(t["total_bits"] for t in bound["code"]["tensors"])
    assert sum(row["weight_bits"] + row["bias_bits"] for row in layers) == code_bits
    assert figures["runtime"]["agrees_with_certified"] == 1.0 and bound["train_error"] <= bound["kl"] < 1
    page = (tmp_path / "report.html").read_text()
    assert "Conv2d 4-&gt;8 5x5" in page and "Train a dense CNN" in page
