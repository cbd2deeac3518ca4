"""Regression tests for issue #21 (defects found as a new user and as an attacker would), grouped by item."""
import io
import os
import pathlib
import struct
import warnings

import numpy as np
import pytest

import htcore

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from htcore.nn import SparseConv2d, SparseLinear, sparsify_model  # noqa: E402


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---- item 1: a sparsified torch model keeps its weights through state_dict / torch.save ----

def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()


@pytest.mark.parametrize("value_dtype", [np.float32, np.float16])
def test_sparse_state_dict_round_trips_through_torch_save(value_dtype):
    net = _net(0)
    sparsify_model(net, keep=0.3, value_dtype=value_dtype)
    state = _roundtrip(net.state_dict())
    assert {"0.weight_data", "0.weight_indices", "0.weight_indptr", "0.weight_shape", "3.weight_data"} <= set(state)
    other = _net(1)  # different dense weights, and a different nnz after sparsification
    sparsify_model(other, keep=0.6, value_dtype=value_dtype)
    other.load_state_dict(state)
    x = torch.randn(3, 2, 6, 6)
    np.testing.assert_array_equal(other(x).numpy(), net(x).numpy())
    assert other[3].weight_csr.nnz == net[3].weight_csr.nnz


def test_sparse_load_state_dict_refuses_wrong_shape_and_bad_structure():
    a = SparseLinear.from_dense(nn.Linear(6, 4), keep=0.5)
    b = SparseLinear.from_dense(nn.Linear(7, 4), keep=0.5)
    with pytest.raises(RuntimeError, match=r"weight has shape \(4, 7\) but this module's is \(4, 6\)"):
        a.load_state_dict(b.state_dict())
    state = a.state_dict()
    state["weight_indptr"] = state["weight_indptr"].flip(0)
    with pytest.raises(RuntimeError, match="indptr"):
        a.load_state_dict(state)
    with pytest.raises(RuntimeError, match="weight_data"):  # an old-style state_dict holding only the bias
        a.load_state_dict({"bias": torch.zeros(4)})


def test_sparse_codebook_weight_round_trips():
    w = htcore.CSRMatrix(np.array([0, 1, 2], np.uint8), [0, 2, 1], [0, 2, 3], (2, 3), codebook=[-1.0, 0.5, 2.0])
    sl = SparseLinear(w, torch.tensor([1.0, -1.0]))
    back = SparseLinear(htcore.CSRMatrix([1.0], [0], [0, 1, 1], (2, 3)), torch.zeros(2))
    back.load_state_dict(_roundtrip(sl.state_dict()))
    assert back.weight_csr.codebook is not None
    np.testing.assert_array_equal(back.to_dense().numpy(), w.todense())
    np.testing.assert_array_equal(back(torch.ones(1, 3)).numpy(), [[0.5, 1.0]])


def test_to_dense_has_the_dense_module_shape():
    conv = nn.Conv2d(4, 6, (3, 2), groups=2)
    sc = SparseConv2d.from_dense(conv, keep=1.0)
    assert sc.to_dense().shape == conv.weight.shape
    np.testing.assert_array_equal(sc.to_dense().numpy(), conv.weight.detach().numpy())
    lin = nn.Linear(5, 3)
    np.testing.assert_array_equal(SparseLinear.from_dense(lin, keep=1.0).to_dense().numpy(), lin.weight.detach().numpy())


def test_analyze_reads_sparse_modules():
    net = _net(0)
    sparsify_model(net, keep=0.5)
    report = htcore.analyze(net, keeps=None, progress=False)
    rows = {layer.name: layer for layer in report.layers}
    assert set(rows) == {"0.weight", "3.weight"}
    assert rows["0.weight"].kind == "conv" and rows["0.weight"].shape == (4, 2, 3, 3)
    assert rows["3.weight"].kind == "linear" and rows["3.weight"].elements.n == net[3].weight_csr.nnz


# ---- item 5: a huge thread count is refused, not a crash ----

@pytest.mark.parametrize("n", [100_000, 10**9, 1025])
def test_huge_thread_count_is_refused(n):
    before = htcore.get_num_threads()
    with pytest.raises(ValueError, match=f"num_threads must be in \\[1, 1024\\], got {n}"):
        htcore.set_num_threads(n)
    assert htcore.get_num_threads() == before


# ---- item 6: load_layers parses a safetensors header once, not once per tensor ----

def test_load_layers_parses_the_header_once(tmp_path, monkeypatch):
    path = tmp_path / "many.safetensors"
    tensors = {f"t{i}.weight": np.full((2, 3), i, np.float32) for i in range(40)}
    htcore.io.save_safetensors(path, tensors)
    import htcore.io._safetensors as st

    calls = []
    real_loads = st.json.loads
    monkeypatch.setattr(st.json, "loads", lambda raw: calls.append(1) or real_loads(raw))
    layers = list(htcore.load_layers(path))
    assert len(calls) == 1
    assert [layer.name for layer in layers] == list(tensors)
    np.testing.assert_array_equal(layers[7].weight, tensors["t7.weight"])


# ---- item 7: a FIFO (or any non-regular file) is refused instead of hanging ----

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("name", ["m.safetensors", "m.npz", "m.pt"])
def test_fifo_is_refused(tmp_path, name):
    import subprocess
    import sys

    path = tmp_path / name
    os.mkfifo(path)
    code = ("import sys, htcore\n"
            "for load in (htcore.load_compressed, lambda p: list(htcore.load_layers(p))):\n"
            "    try:\n        load(sys.argv[1])\n    except ValueError as exc:\n        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("not a regular file") + out.stdout.count("special file") == 2, out.stdout


# ---- item 8: malformed input raises a clear ValueError, not a traceback of another kind ----

def test_deeply_nested_header_is_a_safetensors_error(tmp_path):
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", 400000) + b"[" * 200000 + b"]" * 200000)
    with pytest.raises(htcore.io.SafetensorsError, match=f"{path}.*nested too deeply"):
        htcore.io.SafetensorsFile(path)


def test_unhashable_dtype_in_header_names_the_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = b'{"w":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(htcore.io.SafetensorsError, match=f"{path}: tensor 'w': unsupported dtype"):
        htcore.io.SafetensorsFile(path)


def test_meta_tensor_checkpoint_is_refused(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"w": torch.empty(4, 3, device="meta")}, path)
    with pytest.raises(ValueError, match=f"{path}: tensor 'w' is on torch's meta device"):
        htcore.load_layers(path)


def test_npz_declaring_more_elements_than_it_holds_is_refused(tmp_path):
    import zipfile

    path = tmp_path / "huge.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (5, 5_000_000_000)  # 25e9 elements, 100 GB
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("w.npy", buf.getvalue() + b"\0" * 16)
    with pytest.raises(ValueError, match=f"{path}.*declares shape \\(5, 5000000000\\)"):
        htcore.load_layers(path)


def test_csr_int32_indptr_that_wraps_is_refused():
    with pytest.raises(ValueError, match="non-decreasing"):
        htcore.CSRMatrix(np.ones(60, np.float32), np.zeros(60, np.int32),
                         np.array([0, 50, -2**31 + 10, 5, 60], np.int32), (4, 1))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64, np.uint16])
def test_csr_decreasing_unsigned_indptr_is_refused(dtype):
    with pytest.raises(ValueError, match="non-decreasing"):
        htcore.CSRMatrix(np.ones(4, np.float32), [0, 0, 0, 0], np.array([0, 3, 1, 4], dtype), (3, 1))


def test_analyze_names_a_non_finite_tensor_and_goes_on(tmp_path):
    rng = np.random.default_rng(0)
    bad = rng.standard_normal((64, 32))
    bad[3, 4] = np.nan
    huge = rng.standard_normal((64, 32)) * 1e300
    path = tmp_path / "w.npz"
    np.savez(path, bad=bad, huge=huge, good=rng.standard_normal((64, 32)))
    with pytest.warns(htcore.errors.DegenerateSampleWarning) as record:
        report = htcore.analyze(path, progress=False, keeps=(0.5,))
    messages = [str(w.message) for w in record]
    assert any(m.startswith("bad: no spectral metrics") and "non-finite" in m for m in messages)
    assert any(m.startswith("bad: no element statistics") for m in messages)
    huge_spectral = [m for m in messages if m.startswith("huge: no spectral metrics")]
    assert huge_spectral and "overflow" in huge_spectral[0] and "non-finite" not in huge_spectral[0]
    rows = {layer.name: layer for layer in report.layers}
    assert rows["bad"].spectral is None and rows["bad"].elements is None
    assert rows["good"].spectral is not None and rows["good"].elements is not None
    assert rows["huge"].elements is not None and np.isfinite(rows["huge"].elements.tail_index)


# ---- item 9: no silent wrong results ----

def test_analyze_reads_big_endian_arrays(tmp_path):
    path = tmp_path / "be.npz"
    w = np.random.default_rng(0).standard_normal((64, 32))
    np.savez(path, w=w.astype(">f4"))
    report = htcore.analyze(path, progress=False, keeps=None)
    assert [layer.name for layer in report.layers] == ["w"]
    native = htcore.analyze({"w": w.astype(np.float32)}, progress=False, keeps=None)
    assert report.layers[0].spectral == native.layers[0].spectral


def test_astype_float16_refuses_values_it_cannot_hold():
    A = htcore.CSRMatrix(np.array([1e5, -2.0], np.float32), [0, 1], [0, 1, 2], (2, 2))
    with pytest.raises(ValueError, match="float16 cannot hold values up to 1e\\+05"):
        A.astype(value_dtype="float16")
    ok = htcore.CSRMatrix(np.array([6e4, -2.0], np.float32), [0, 1], [0, 1, 2], (2, 2)).astype(value_dtype="float16")
    assert np.isfinite(ok.data).all()


@pytest.mark.parametrize("a", [float("inf"), float("nan"), True])
def test_catoni_a_must_be_finite(a):
    from htcore.certification.bounds import occam_bound

    with pytest.raises(ValueError, match="catoni_a must be a finite number > 1"):
        occam_bound(0.1, 1000, 100, form="catoni", catoni_a=a)


def test_fit_powerlaw_refuses_resamples_beyond_float64():
    with pytest.raises(ValueError, match="beyond float64's largest value"):
        htcore.fit_powerlaw(np.logspace(0, 300, 30), gof_bootstrap=20)
    fit = htcore.fit_powerlaw(np.logspace(0, 300, 30), xmax=1e301, gof_bootstrap=5)
    assert 0.0 <= fit.p_value <= 1.0


@pytest.mark.parametrize("module", [SparseLinear.from_dense(nn.Linear(4, 3), keep=0.5),
                                    SparseConv2d.from_dense(nn.Conv2d(2, 3, 2), keep=0.5)])
def test_sparse_modules_refuse_integer_input(module):
    x = torch.ones(2, 4, dtype=torch.int64) if isinstance(module, SparseLinear) else torch.ones(1, 2, 3, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match="floating-point torch.Tensor, got dtype torch.int64"):
        module(x)


# ---- item 10: .npz and .pt files are read one tensor at a time ----

def test_npz_members_are_read_when_their_layer_is_built(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    np.savez(path, a=np.ones((3, 4), np.float32), b=np.full((5, 2), 2.0))
    reads = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: reads.append(1) or real(*a, **k))
    layers = htcore.load_layers(path)
    assert reads == []
    first = next(layers)
    assert first.name == "a" and len(reads) == 1
    assert next(layers).weight.dtype == np.float64 and len(reads) == 2


def test_pt_checkpoint_is_memory_mapped(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(8, 4)}, path)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    (layer,) = htcore.load_layers(path)
    np.testing.assert_array_equal(layer.weight, np.ones((8, 4), np.float32))
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


# ---- item 12: htcore info says which kernel path runs ----

def test_info_reports_the_kernel_path_chosen_at_run_time():
    from htcore.cli.info import collect

    kernels = collect()["kernels"]
    assert kernels["sparse products"] == ("avx2+fma+f16c" if htcore._core.csr_uses_avx2() else "portable")
    assert kernels["eigenvalues"] == ("avx2+fma" if htcore._core.symmetric_eigenvalues_uses_avx2() else "portable")
    cpuinfo = "/proc/cpuinfo"
    flags = pathlib.Path(cpuinfo).read_text().split() if os.path.exists(cpuinfo) else []
    if flags:  # the tail kernels' clone as the CPU's flags say
        expected = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "portable"
        assert kernels["tail statistics"] == expected


# ---- item 4: `htcore run` warms up before timing, and the pool's products match at 1 and 2 threads ----

def test_run_warms_up_before_timing(tmp_path, monkeypatch, capsys):
    import json

    import htcore.cli.run as run_module
    from htcore.cli import main

    calls = []

    class SlowFirstCall:
        input_shape = (4,)

        def __call__(self, x):
            calls.append(len(x))
            if len(calls) == 1:
                import time
                time.sleep(0.2)  # what a first call's thread start-up looks like on a busy machine
            return np.zeros((len(x), 3), np.float32)

    monkeypatch.setattr(run_module, "read_model", lambda path, input_shape=None: SlowFirstCall())
    np.save(tmp_path / "x.npy", np.ones((10, 4), np.float32))
    assert main(["run", "m.safetensors", "--input", str(tmp_path / "x.npy"), "--batch", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert calls == [4, 4, 4, 2] and summary["batches"] == 3
    assert summary["latency_ms_median"] < 100 and summary["latency_ms_p90"] < 100


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_parallel_products_are_identical_at_1_and_2_threads(batch):
    rng = np.random.default_rng(5)
    A = htcore.topk_sparsify(rng.standard_normal((700, 300)).astype(np.float32), 0.3)
    X = rng.standard_normal((batch, 300)).astype(np.float32)
    before = htcore.get_num_threads()
    try:
        htcore.set_num_threads(1)
        one = htcore.sparse_linear(X, A, activation="relu")
        htcore.set_num_threads(2)
        assert htcore._core._csr_threads(700, A.nnz, batch) == 2
        two = [htcore.sparse_linear(X, A, activation="relu") for _ in range(20)]
    finally:
        htcore.set_num_threads(before)
    for y in two:
        np.testing.assert_array_equal(y, one)
    np.testing.assert_allclose(one, np.maximum(X @ A.todense().T, 0), rtol=1e-4, atol=1e-4)


# ---- item 3: sparsify_model reports (and warns about) the damage on a calibration batch ----

def test_sparsify_reports_calibration_error_and_warns_above_threshold():
    torch.manual_seed(0)
    x = torch.randn(16, 20)
    dense = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    want = dense(x).detach()
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    net.load_state_dict(dense.state_dict())
    with pytest.warns(htcore.errors.CalibrationWarning, match="warn_above = 0.01"):
        report = sparsify_model(net, keep=0.2, calibration=x, warn_above=0.01)
    got = net(x)
    expected = float(torch.linalg.norm(got.double() - want.double()) / torch.linalg.norm(want.double()))
    assert report.calibration_error == pytest.approx(expected, rel=1e-5) and expected > 0.01
    assert "relative output error on the calibration batch" in str(report)
    full = nn.Sequential(nn.Linear(20, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sparsify_model(full, keep=1.0, calibration=(x,)).calibration_error < 1e-6  # summation order only
    assert sparsify_model(nn.Sequential(nn.Linear(20, 3)), keep=0.5).calibration_error is None


def test_calibration_reads_tensors_nested_in_dict_outputs():
    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 4)

        def forward(self, features):
            return {"sentence_embedding": self.proj(features["x"]), "ids": features["ids"]}

    torch.manual_seed(1)
    batch = {"x": torch.randn(5, 6), "ids": torch.arange(5)}
    with pytest.warns(htcore.errors.CalibrationWarning):
        report = sparsify_model(Features(), keep=0.25, calibration=batch)
    assert 0 < report.calibration_error < 10


# ---- item 14: estimates from small samples are flagged in the table and the summary ----

def test_small_samples_are_flagged():
    from htcore.measure import MIN_HILL_K, MIN_SPECTRAL_EVALS, MIN_SPECTRAL_TAIL

    rng = np.random.default_rng(0)
    state = {"small": rng.standard_t(3, (30, 20)), "large": rng.standard_t(3, (400, 300))}
    report = htcore.analyze(state, keeps=None, progress=False)
    rows = {row["name"]: row for row in report.rows()}
    small, large = report["small"], report["large"]
    assert small.spectral.num_evals < MIN_SPECTRAL_EVALS and rows["small"]["alpha_small_sample"] is True
    assert large.spectral.num_spikes >= MIN_SPECTRAL_TAIL and rows["large"]["alpha_small_sample"] is False
    assert rows["small"]["element_small_sample"] == (small.elements.hill_k < MIN_HILL_K)
    assert rows["large"]["element_small_sample"] is False and large.elements.hill_k >= MIN_HILL_K
    summary = report.summary()
    assert f"fewer than {MIN_SPECTRAL_EVALS} eigenvalues or a tail of fewer than {MIN_SPECTRAL_TAIL}, read with care (small;" in summary
    assert "large" not in summary.split("small sample:")[1]


# ---- item 2 (part): compress, bound and run take a .pt2 or .onnx model directly ----

def _export(net, path, fmt, n_in):
    x = torch.randn(1, n_in, generator=torch.Generator().manual_seed(0))
    if fmt == "pt2":
        torch.export.save(torch.export.export(net, (x,)), str(path))
        return
    pytest.importorskip("onnx")
    with warnings.catch_warnings():  # torch deprecates its TorchScript exporter; the dynamo one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_compress_bound_and_run_take_pt2_and_onnx_directly(tmp_path, capsys, fmt):
    import json

    from htcore.cli import main

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    source = tmp_path / f"m.{fmt}"
    _export(net, source, fmt, 16)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 16)).astype(np.float32), rng.integers(0, 3, 40)
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "d.npz", X_train=X, y_train=y)
    direct, converted, via = (str(tmp_path / f"{n}.safetensors") for n in ("direct", "converted", "via"))
    assert main(["compress", str(source), "-o", direct, "--keep", "0.5", "--levels", "4"]) == 0
    assert main(["convert", str(source), "-o", converted]) == 0
    assert main(["compress", converted, "-o", via, "--keep", "0.5", "--levels", "4"]) == 0
    for a, b in zip(htcore.load_compressed(direct).layers, htcore.load_compressed(via).layers):  # as convert converts
        if isinstance(a, htcore.runtime.Linear):
            np.testing.assert_array_equal(a.weight.todense(), b.weight.todense())
            np.testing.assert_array_equal(a.bias, b.bias)
    capsys.readouterr()
    assert main(["run", str(source), "--input", str(tmp_path / "x.npy"), "--json", "--scores"]) == 0
    scores = np.array(json.loads(capsys.readouterr().out)["predictions"])
    np.testing.assert_allclose(scores, net(torch.from_numpy(X)).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert main(["bound", direct, "--data", str(tmp_path / "d.npz"), "--original", str(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stability"] is not None  # the .pt2/.onnx original was read
    assert main(["bound", str(source), "--data", str(tmp_path / "d.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["m"] == 40


# ---- load_compressed on metadata nested very deep ----

@pytest.mark.parametrize("key", ["metadata", "architecture", "format"])
def test_deeply_nested_model_metadata_is_a_value_error_naming_the_file(tmp_path, key):
    from htcore.io import SafetensorsFile, save_safetensors

    path = tmp_path / "deep.safetensors"
    htcore.save_compressed(path, htcore.runtime.CompressedModel([htcore.runtime.Linear(np.eye(2, dtype=np.float32))]))
    with SafetensorsFile(path) as f:
        meta, tensors = dict(f.metadata), {name: np.array(f[name]) for name in f}
    save_safetensors(path, tensors, {**meta, key: "[" * 100_000 + "]" * 100_000})
    with pytest.raises(ValueError, match=rf"deep\.safetensors: metadata '{key}' is JSON nested too deeply"):
        htcore.load_compressed(path)
    if key != "metadata":  # analyze reads the format and the architecture too
        with pytest.raises(ValueError, match=rf"deep\.safetensors: metadata '{key}' is JSON nested too deeply"):
            list(htcore.load_layers(path))


# ---- analyze reads the weight matrices of a compressed model file ----

@pytest.mark.parametrize("levels", [None, 4])
def test_analyze_reads_the_weights_of_a_compressed_model_file(tmp_path, capsys, levels):
    import json

    from htcore.cli import main

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    g = htcore.compress(htcore.runtime.CompressedModel.from_torch(net), keep=0.3, levels=levels)
    path = tmp_path / "small.safetensors"
    htcore.save_compressed(path, g)
    layers = list(htcore.load_layers(path))
    assert [(l.name, l.kind, l.shape) for l in layers] == [("0.weight", "conv", (4, 1, 3, 3)), ("3.weight", "linear", (10, 144))]
    assert [l.name for l in layers] == [l.name for l in htcore.load_layers(net)]  # the names the torch model has
    np.testing.assert_array_equal(layers[0].weight, g.layers[0].weight.todense().reshape(4, 1, 3, 3))
    np.testing.assert_array_equal(layers[1].weight, g.layers[3].weight.todense())
    assert len(layers[0].matrices) == 9 and np.count_nonzero(layers[1].weight) == g.layers[3].weight.nnz
    with warnings.catch_warnings():  # estimates from these few entries warn; the rows are what is tested
        warnings.simplefilter("ignore")
        assert main(["analyze", str(path), "--json", "--quiet", "--no-spectral"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in (rows["layers"] if isinstance(rows, dict) else rows)] == ["0.weight", "3.weight"]


def test_analyze_names_a_graph_files_weights_after_its_nodes(tmp_path):
    from htcore.runtime import CompressedModel, Linear, Node

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
    model = CompressedModel([Node("encoder.fc", Linear(w1), ["input"]),
                             Node("head", Linear(htcore.topk_sparsify(w2, keep=1.0)), ["encoder.fc"])], input_shape=(3,))
    htcore.save_compressed(tmp_path / "g.safetensors", model)
    layers = list(htcore.load_layers(tmp_path / "g.safetensors"))
    assert [l.name for l in layers] == ["encoder.fc.weight", "head.weight"]
    np.testing.assert_array_equal(layers[0].weight, w1)
    np.testing.assert_array_equal(layers[1].weight, w2)
