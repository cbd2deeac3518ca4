"""The torch-free runtime (CompressedModel), the compressed-model file and ``htcore run``."""
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.special

import htcore
from htcore import CSRMatrix, load_compressed, save_compressed
from htcore.cli import main
from htcore.io import SafetensorsFile, save_safetensors
from htcore.runtime import Activation, CompressedModel, Flatten, Linear


def sparse(rng, rows, cols, keep=0.2):
    w = rng.standard_t(3, size=(rows, cols)).astype(np.float32)
    return htcore.topk_sparsify(w, keep)


def quantized(m, levels=8):
    codebook = np.linspace(m.data.min(), m.data.max(), levels).astype(np.float32)
    codes = np.abs(m.data[:, None] - codebook).argmin(axis=1).astype(np.uint8)
    return CSRMatrix(codes, m.indices, m.indptr, m.shape, codebook=codebook)


def make_model(seed=0):
    rng = np.random.default_rng(seed)
    l1 = sparse(rng, 32, 48)
    layers = [
        Flatten(),
        Linear(l1, rng.standard_normal(32)),
        Activation("relu"),
        Linear(quantized(sparse(rng, 24, 32)).astype(index_dtype=np.int32), None),
        Activation("gelu"),
        Linear(sparse(rng, 16, 24).astype(value_dtype=np.float16), rng.standard_normal(16)),
        Activation("tanh"),
        Linear(rng.standard_normal((10, 16)).astype(np.float32), rng.standard_normal(10)),
        Activation("gelu"),
        Activation("softmax"),
    ]
    return CompressedModel(layers, metadata={"source": "test", "keep": [0.2, 0.2]})


def reference(model, X):
    """float64 numpy forward pass of the same layers."""
    h = np.asarray(X, np.float64).reshape(X.shape[0], -1)
    for layer in model.layers:
        if isinstance(layer, Linear):
            w = layer.weight.todense() if layer.sparse else layer.weight
            h = h @ w.astype(np.float64).T + (0 if layer.bias is None else layer.bias)
        elif isinstance(layer, Activation):
            if layer.kind == "relu":
                h = np.maximum(h, 0)
            elif layer.kind == "gelu":
                h = 0.5 * h * (1 + scipy.special.erf(h / np.sqrt(2)))
            elif layer.kind == "tanh":
                h = np.tanh(h)
            else:
                h = np.exp(h - h.max(axis=1, keepdims=True))
                h /= h.sum(axis=1, keepdims=True)
    return h


@pytest.mark.parametrize("batch", [1, 7, 257])
def test_model_matches_float64_reference(batch):
    model = make_model()
    X = np.random.default_rng(batch).standard_normal((batch, 6, 8))
    out = model(X)
    assert out.shape == (batch, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(model, X), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.predict(X), np.argmax(out, axis=1))
    np.testing.assert_allclose(model(X[:, ::-1, :]), reference(model, X[:, ::-1, :]), rtol=1e-4, atol=1e-5)


def test_model_identical_at_1_and_2_threads():
    model = make_model()
    X = np.random.default_rng(1).standard_normal((64, 48))
    before = htcore.get_num_threads()
    try:
        htcore.set_num_threads(1)
        one = model(X)
        htcore.set_num_threads(2)
        np.testing.assert_array_equal(model(X), one)
    finally:
        htcore.set_num_threads(before)


def test_layers_are_checked():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="expects 20 input features but the previous Linear gives 32"):
        CompressedModel([Linear(sparse(rng, 32, 48)), Activation("relu"), Linear(np.ones((5, 20)))])
    with pytest.raises(TypeError, match="layers\\[0\\]"):
        CompressedModel(["relu"])
    with pytest.raises(ValueError, match="activation kind"):
        Activation("sigmoid")
    with pytest.raises(ValueError, match="bias has 3"):
        Linear(np.ones((4, 2)), np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        Linear(np.ones(4))
    model = CompressedModel([Linear(np.ones((3, 4), np.float32))])
    with pytest.raises(ValueError, match="expects 4 input features, got 5"):
        model(np.ones((2, 5)))
    with pytest.raises(ValueError, match="add a Flatten"):
        model(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="batch dimension"):
        model(np.ones(4))
    with pytest.raises(ValueError, match="non-finite"):
        model(np.full((1, 4), np.nan))


def test_from_torch_matches_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Dropout(0.5),
                        nn.Sequential(nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 8), nn.Tanh()),
                        nn.Linear(8, 3), nn.Softmax(dim=-1)).eval()
    X = torch.randn(9, 4, 5)
    model = CompressedModel.from_torch(net)
    np.testing.assert_allclose(model(X.numpy()), net(X).detach().numpy(), rtol=1e-5, atol=1e-6)
    for bad, match in [(nn.Sequential(nn.Conv1d(1, 1, 3)), "Conv1d is not supported"),
                       (nn.Sequential(nn.GELU(approximate="tanh")), "exact GELU"),
                       (nn.Sequential(nn.Softmax(dim=0)), "over the features"),
                       (_data_dependent(nn), "cannot be traced by torch.fx")]:
        with pytest.raises((TypeError, ValueError), match=match):
            CompressedModel.from_torch(bad)
    single = nn.Linear(20, 3)  # a lone supported module converts as a one-layer model
    np.testing.assert_allclose(CompressedModel.from_torch(single)(X.numpy().reshape(9, 20)),
                               single(X.reshape(9, 20)).detach().numpy(), rtol=1e-5, atol=1e-6)


def _data_dependent(nn):
    """A module whose forward branches on tensor values, which torch.fx cannot trace."""

    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    return DataDependent()


def test_file_round_trip(tmp_path):
    model = make_model()
    path = tmp_path / "m.safetensors"
    save_compressed(path, model, provenance={"checkpoint": "x.pt"})
    loaded = load_compressed(path)
    X = np.random.default_rng(2).standard_normal((5, 48))
    np.testing.assert_array_equal(loaded(X), model(X))
    assert loaded.metadata == model.metadata
    meta = SafetensorsFile(path).metadata
    assert json.loads(meta["provenance"]) == {"checkpoint": "x.pt"}
    assert json.loads(meta["htcore_version"]) == htcore.__version__
    kinds = [type(l).__name__ for l in loaded.layers]
    assert kinds == [type(l).__name__ for l in model.layers]
    assert loaded.layers[3].weight.codebook is not None and loaded.layers[3].weight.indices.dtype == np.int32
    assert loaded.layers[5].weight.data.dtype == np.float16


def tamper(tmp_path, change):
    """Save the test model, edit its tensors/metadata with ``change``, write it back."""
    src = tmp_path / "ok.safetensors"
    save_compressed(src, make_model())
    f = SafetensorsFile(src)
    tensors = {k: np.array(f[k]) for k in f}
    meta = dict(f.metadata)
    change(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    save_safetensors(bad, tensors, meta)
    return bad


def set_arch(meta, i, **kv):
    arch = json.loads(meta["architecture"])
    arch[i].update(kv)
    meta["architecture"] = json.dumps(arch)


CORRUPTIONS = [
    (lambda t, m: m.pop("format"), "not an htcore compressed model"),
    (lambda t, m: m.update(format='"other"'), "format is"),
    (lambda t, m: m.update(format_version="2"), "format_version"),
    (lambda t, m: m.update(architecture="[{"), "not valid JSON"),
    (lambda t, m: m.update(architecture='{"a": 1}'), "list of objects"),
    (lambda t, m: m.update(metadata="[]"), "metadata must be a JSON object"),
    (lambda t, m: set_arch(m, 0, type="conv"), "unknown layer type"),
    (lambda t, m: set_arch(m, 2, kind="sigmoid"), "activation kind"),
    (lambda t, m: set_arch(m, 1, storage="coo"), "storage must be"),
    (lambda t, m: set_arch(m, 1, shape=[32]), "two non-negative integers"),
    (lambda t, m: set_arch(m, 1, bias="yes"), "'bias' must be a bool"),
    (lambda t, m: set_arch(m, 1, extra=1), "keys must be"),
    (lambda t, m: set_arch(m, 1, shape=[32, 47]), "invalid CSR weight"),
    (lambda t, m: set_arch(m, 7, shape=[10, 15]), "weight has shape"),
    (lambda t, m: t.pop("layers.1.bias"), "missing tensor 'layers.1.bias'"),
    (lambda t, m: t.update(extra=np.zeros(2)), "not used by the architecture"),
    (lambda t, m: t.update({"layers.1.indices": t["layers.1.indices"] + 100}), "indices must lie"),
    (lambda t, m: t.update({"layers.1.indptr": t["layers.1.indptr"][::-1].copy()}), "invalid CSR weight"),
    (lambda t, m: t.update({"layers.1.data": t["layers.1.data"].astype(np.int32)}), "data must be"),
    (lambda t, m: t.update({"layers.3.data": t["layers.3.data"] + 8}), "codes must be < len\\(codebook\\)"),
    (lambda t, m: t.pop("layers.3.codebook"), "needs a codebook"),
    (lambda t, m: t["layers.1.bias"].__setitem__(0, np.nan), "non-finite"),
    (lambda t, m: t.update({"layers.1.bias": np.zeros(31, np.float32)}), "bias has shape"),
    (lambda t, m: t.update({"layers.7.weight": t["layers.7.weight"].astype(np.float64)}), "weight must be float32"),
]


@pytest.mark.parametrize("change, match", CORRUPTIONS)
def test_malformed_files_raise_value_error(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        load_compressed(tamper(tmp_path, change))


def test_truncated_and_garbage_files(tmp_path):
    src = tmp_path / "ok.safetensors"
    save_compressed(src, make_model())
    raw = src.read_bytes()
    for n in (0, 5, 100, len(raw) - 1):
        cut = tmp_path / f"cut{n}.safetensors"
        cut.write_bytes(raw[:n])
        with pytest.raises(ValueError):
            load_compressed(cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" + b"\x00" * 8)
    with pytest.raises(ValueError, match="JSON"):
        load_compressed(garbage)
    with pytest.raises(OSError):
        load_compressed(tmp_path / "missing.safetensors")


def test_cli_run(tmp_path, capsys):
    model = make_model()
    path = tmp_path / "m.safetensors"
    save_compressed(path, model)
    X = np.random.default_rng(3).standard_normal((70, 6, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy"), "--batch", "16", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    np.testing.assert_array_equal(np.array(out.split(), int), model.predict(X))
    assert "5 batches of 16" in err and "median" in err and "samples/s" in err
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["predictions"] == model.predict(X).tolist() and report["latency_ms_p90"] >= report["latency_ms_median"]
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), "--scores"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model(X))


def test_cli_run_errors(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    save_compressed(path, make_model())
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    assert main(["run", str(path), "--input", str(tmp_path / "obj.npy")]) == 1
    assert "pickle" in capsys.readouterr().err.lower()
    np.save(tmp_path / "x.npy", np.ones((3, 47), np.float32))
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy")]) == 1
    assert "expects 48 input features" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "x.npy"), "--input", str(tmp_path / "x.npy")]) == 1
    assert "htcore run: error" in capsys.readouterr().err


def test_runtime_does_not_import_torch(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compressed(path, make_model())
    code = ("import sys, numpy as np, htcore; m = htcore.load_compressed(sys.argv[1]); "
            "m(np.ones((2, 48))); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def test_import_htcore_loads_neither_torch_nor_scipy():
    # Start-up time on deployment boxes: scipy alone would add ~0.3 s to `import htcore`.
    code = "import sys, htcore; loaded = {'torch', 'scipy'} & set(sys.modules); assert not loaded, loaded"
    subprocess.run([sys.executable, "-c", code], check=True)
