import json
import subprocess
import sys

import htcore
from htcore.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "htcore", *args], capture_output=True, text=True)


def test_help_exits_zero():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "info" in out.stdout and "demo" in out.stdout


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"htcore {htcore.__version__}"


def test_no_command_is_usage_error():
    assert run_cli().returncode == 2


def test_unknown_command_is_usage_error():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_info_json_reports_openmp_and_threads():
    out = run_cli("info", "--json")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["openmp"] >= 200805
    assert facts["threads"] == htcore.get_num_threads()
    assert facts["version"] == htcore.__version__
    assert set(facts["optional"]) >= {"torch", "matplotlib"}


def test_info_text(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "openmp" in text and "OpenMP" in text


def test_console_script_installed():
    import os
    import sysconfig

    exe = os.path.join(sysconfig.get_path("scripts"), "htcore")
    assert os.path.exists(exe), "the htcore console script was not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert out.returncode == 0


def test_a_closed_pipe_ends_quietly():
    """`htcore info --json | head -c 10`: the reader leaves early; no error message, exit 141 as a shell's."""
    import subprocess
    import sys

    code = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
            "from htcore.cli import main; sys.exit(main(['info', '--json']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)


def test_compress_and_bound_take_a_cnn_model_file(tmp_path, capsys):
    """A dense CNN file: `htcore compress` (glob keep, fine-tuning on (n, 1, 8, 8) images from a .npz),
    `htcore bound` on it with digits loaded as images, and `bound --search` (the CNN grid) on the dense file."""
    import numpy as np
    import pytest

    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from htcore import load_compressed, save_compressed
    from htcore.datasets import load_digits
    from htcore.runtime import Conv2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    dense, small, npz = tmp_path / "dense.safetensors", tmp_path / "small.safetensors", tmp_path / "images.npz"
    save_compressed(dense, model)
    digits = load_digits(images=True)
    np.savez(npz, X_train=digits.X_train[:128], y_train=digits.y_train[:128])
    assert main(["compress", str(dense), "-o", str(small), "--per-layer", "*=0.5", "0=0.75", "--levels", "4",
                 "--data", str(npz), "--finetune-epochs", "1"]) == 0
    g = load_compressed(small)
    conv = g.layers[0]
    assert isinstance(conv, Conv2d) and conv.weight.nnz == 27 and np.unique(conv.weight.values()).size <= 4
    capsys.readouterr()
    assert main(["bound", str(small), "--data", "digits", "--original", str(dense), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    report, stability = payload["report"], payload["stability"]
    assert report["m"] == 1347 and report["train_error"] <= report["kl"] <= 1 and report["test_error"] is not None
    assert stability["net"]["n_samples"] == 1000 and [layer["kind"] for layer in stability["layers"]] == ["conv2d", "linear"]
    assert stability["net"]["gamma"] <= report["gamma"] * (1 + 1e-5)  # a subsample of the training set, float64
    assert main(["bound", str(dense), "--data", str(npz), "--search", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stability"] is None  # no --original
    assert len(out["grid"]) == 6 and out["report"]["code"]["search_bits"] == 3
    assert out["settings"]["per_layer"]["0"] == 0.5  # the first conv keeps half in every CNN setting
    np.savez(npz, X_train=np.zeros((4, 64), np.float32), y_train=np.zeros(4, np.int64))
    assert main(["bound", str(small), "--data", str(npz)]) == 1
    assert "expected (batch, 1, 8, 8)" in capsys.readouterr().err  # the file's input shape


# ---- issue #21 item 13: usage errors, help texts, wording, pipes --------------------------------

import argparse  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402

from htcore.cli import build_parser  # noqa: E402

_NEEDS = {"compress": ["m.safetensors", "-o", "o.safetensors"], "run": ["m.safetensors", "--input", "x.npy"],
          "bound": ["m.safetensors", "--data", "digits"], "analyze": ["m.safetensors"], "demo": [],
          "convert": ["m.onnx", "-o", "o.safetensors"]}
OUT_OF_RANGE = [
    ("compress", "--keep", "2"), ("compress", "--keep", "0"), ("compress", "--keep", "x"), ("compress", "--levels", "0"),
    ("compress", "--levels", "257"), ("compress", "--finetune-epochs", "-1"), ("compress", "--lr", "0"),
    ("compress", "--lr", "nan"), ("compress", "--per-layer", "0=2"), ("compress", "--per-layer", "0"),
    ("run", "--threads", "0"), ("run", "--threads", "100000"), ("run", "--batch", "0"), ("run", "--batch", "1.5"),
    ("run", "--input-shape", "0,28"), ("bound", "--delta", "0"), ("bound", "--delta", "1"),
    ("bound", "--settings-tried", "0"), ("analyze", "--threads", "0"), ("analyze", "--workers", "0"),
    ("analyze", "--keeps", "0.1,2"), ("demo", "--keep", "1.5"), ("demo", "--seed", "-1"), ("demo", "--hidden", "0"),
    ("demo", "--epochs", "0"), ("demo", "--finetune-epochs", "-1"), ("demo", "--threads", "0"),
    ("convert", "--input-shape", "1,x"), ("bound", "--data", "mnist"), ("compress", "--data", "data.csv"),
]


@pytest.mark.parametrize("command, option, value", OUT_OF_RANGE)
def test_out_of_range_values_are_usage_errors_naming_option_and_value(command, option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, *_NEEDS[command], option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"htcore {command}: error: argument {option}: must be"), err
    assert value.split("=")[-1].split(",")[-1] in err and "_" not in err.split(":", 3)[-1]  # no Python keyword


def test_every_numeric_option_checks_its_range():
    """No option converts with a bare int or float (which accept 0, -1, nan and leave the check to the job)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert action.type not in (int, float), f"htcore {name} {action.option_strings}"


def test_options_that_do_not_go_together_are_usage_errors(tmp_path, capsys):
    assert main(["compress", "m.safetensors", "-o", "o.safetensors"]) == 2
    assert main(["analyze", str(tmp_path), str(tmp_path), "--plots", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "htcore compress: error: give --keep" in err and "htcore analyze: error: --plots" in err


def test_exit_codes(tmp_path):
    assert run_cli("run", "--help").returncode == 0
    assert run_cli("--version").returncode == 0
    missing = run_cli("run", str(tmp_path / "missing.safetensors"), "--input", "x.npy")
    assert missing.returncode == 1 and missing.stderr.startswith("htcore run: error: ") and "Traceback" not in missing.stderr
    assert run_cli("run", "m.safetensors").returncode == 2  # --input missing


def test_help_texts_show_no_markup():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in [("htcore", parser), *sub.choices.items()]:
        text = p.format_help()
        assert "``" not in text and "`" not in text, name
        assert "\n\n" in text.split("positional arguments")[0] or name == "htcore", name  # paragraphs kept


def test_counts_are_worded_in_the_singular_and_plural(tmp_path, capsys):
    import numpy as np

    model = htcore.runtime.CompressedModel([htcore.runtime.Linear(np.eye(3, dtype=np.float32))])
    htcore.save_compressed(tmp_path / "m.safetensors", model)
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    np.save(tmp_path / "x2.npy", np.ones((2, 3), np.float32))
    assert main(["run", str(tmp_path / "m.safetensors"), "--input", str(tmp_path / "x.npy"), "--threads", "1"]) == 0
    assert "1 sample in 1 batch of 64 on 1 thread:" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "m.safetensors"), "--input", str(tmp_path / "x2.npy"), "--threads", "2",
                 "--batch", "1"]) == 0
    assert "2 samples in 2 batches of 1 on 2 threads:" in capsys.readouterr().err


def test_warnings_are_one_line_naming_the_command(tmp_path, capsys):
    import warnings

    import numpy as np

    tied = np.where(np.random.default_rng(0).random((32, 32)) < 0.5, -1.0, 1.0).astype(np.float32)  # no tail to fit
    htcore.save_compressed(tmp_path / "m.safetensors", htcore.runtime.CompressedModel([htcore.runtime.Linear(tied)]))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["analyze", str(tmp_path / "m.safetensors"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "htcore analyze: warning: 0.weight: no element tail estimate" in err
    assert "_analyze.py" not in err and "return " not in err  # no file, line or source text of the library


@pytest.mark.parametrize("args", [["run", "{m}", "--input", "{x}"], ["analyze", "{m}", "--quiet"], ["info"], ["--help"]])
def test_a_reader_leaving_before_the_output_is_flushed_ends_quietly(tmp_path, args):
    """`htcore run m --input x | head -1` in an ordinary (buffered) environment: the output still
    buffered when the job ends must not fail at exit with "Exception ignored ... Broken pipe"."""
    import numpy as np

    model = htcore.runtime.CompressedModel([htcore.runtime.Linear(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))])
    htcore.save_compressed(tmp_path / "m.safetensors", model)
    np.save(tmp_path / "x.npy", np.ones((5, 3), np.float32))
    argv = [a.format(m=tmp_path / "m.safetensors", x=tmp_path / "x.npy") for a in args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read, write = os.pipe()
    os.close(read)  # the reader has gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "htcore", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=env)
    finally:
        os.close(write)
    assert "Broken pipe" not in done.stderr and "Exception" not in done.stderr, done.stderr
    assert done.returncode in (0, 141) if args == ["--help"] else done.returncode == 141, (done.returncode, done.stderr)
