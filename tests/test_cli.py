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
