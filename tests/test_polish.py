"""Small defects fixed together: the kernels accept arrays whose dtype is an equal but fresh
instance (unpickled ones), still refuse a non-native byte order at the binding; one `plural` for
every layer's wording; `htcore bound --help` names every model format it reads; the many-model
table of `htcore analyze` has a compact form and honours --wide."""
import pickle

import numpy as np
import pytest

import htcore
from htcore import _core
from htcore.cli import main
from htcore.measure import ManyReport, ModelResult
from htcore.measure._report import COMPACT_WIDTH


def unpickled(value):
    """``value`` after a pickle round trip: every array in it gets a fresh (equal) dtype object."""
    return pickle.loads(pickle.dumps(value))


def test_unpickled_arrays_have_fresh_dtype_objects():
    # the premise of the tests below: were this identity to hold, they would test nothing
    assert unpickled(np.ones(3, np.float32)).dtype is not np.dtype(np.float32)
    assert unpickled(np.ones(3, np.int32)).dtype is not np.dtype(np.int32)


@pytest.mark.parametrize("value_dtype, index_dtype", [(np.float32, np.int32), (np.float32, np.uint16),
                                                      (np.float16, np.int32), (np.float64, np.int32)])
def test_csr_kernels_take_unpickled_arrays(value_dtype, index_dtype):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((7, 5)) * (rng.random((7, 5)) < 0.5)
    A = htcore.topk_sparsify(W.astype(value_dtype), 0.5)
    A = htcore.CSRMatrix(A.data, A.indices.astype(index_dtype), A.indptr.astype(np.int32), A.shape,
                         index_dtype=index_dtype)
    B = htcore.CSRMatrix(*unpickled((A.data, A.indices, A.indptr)), A.shape, index_dtype=index_dtype)
    assert B.data.dtype is not np.dtype(value_dtype)  # passed through unconverted, as the kernel sees it
    compute = np.float64 if value_dtype == np.float64 else np.float32
    dense = A.todense().astype(np.float64)
    x, X, b = unpickled((rng.standard_normal(5).astype(compute), rng.standard_normal((5, 3)).astype(compute),
                         rng.standard_normal(7).astype(compute)))
    tol = dict(rtol=1e-5, atol=1e-5) if compute == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(B @ x, dense @ x, **tol)
    np.testing.assert_allclose(B.matmat(X), dense @ X, **tol)
    np.testing.assert_allclose(htcore.sparse_linear(X.T.copy(), B, bias=b, activation="relu"),
                               np.maximum(X.T @ dense.T + b, 0), **tol)
    np.testing.assert_array_equal(B.matvec(x, out=unpickled(np.empty(7, compute))), A @ x)


def test_codebook_matrix_takes_an_unpickled_codebook():
    A = htcore.CSRMatrix(np.array([0, 1, 1], np.uint8), np.array([0, 1, 2]), np.array([0, 2, 3]), (2, 3),
                         codebook=np.array([0.5, -2.0], np.float32))
    B = htcore.CSRMatrix(*unpickled((A.data, A.indices, A.indptr)), A.shape, codebook=unpickled(A.codebook))
    x = unpickled(np.array([1.0, 2.0, 3.0], np.float32))
    np.testing.assert_array_equal(B @ x, [0.5 - 4.0, -6.0])


def test_conv_takes_unpickled_arrays():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    K = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    A = htcore.topk_sparsify(K.reshape(4, -1), 0.6)
    X, bias = rng.standard_normal((2, 3, 6, 6)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    got = htcore.sparse_conv2d(unpickled(X), unpickled(A), kernel_size=3, bias=unpickled(bias), padding=1)
    want = torch.nn.functional.conv2d(torch.from_numpy(X), torch.from_numpy(A.todense().reshape(4, 3, 3, 3)),
                                      torch.from_numpy(bias), padding=1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_runtime_model_runs_after_a_pickle_round_trip():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    model = htcore.compress(net, keep=0.5, input_shape=(1, 6, 6))
    X = np.random.default_rng(2).standard_normal((5, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(unpickled(model)(unpickled(X)), model(X))  # as a worker process receives both


def test_the_binding_still_refuses_a_non_native_byte_order():
    A = htcore.CSRMatrix(np.array([1.0, 2.0], np.float32), np.array([0, 1]), np.array([0, 1, 2]), (2, 2))
    swapped = np.array([1.0, 1.0], np.dtype(np.float32).newbyteorder("S"))
    args = (A.indptr, A.indices, A.data, None, 2, 2)
    with pytest.raises(TypeError, match="X and out must be float32"):  # the kernel would read swapped bytes
        _core.csr_spmm(*args, swapped, 1, False, None, _core.Activation.none, np.empty(2, np.float32), 1, 1)
    with pytest.raises(TypeError, match="data must be"):
        _core.csr_spmm(A.indptr, A.indices, A.data.astype(swapped.dtype), None, 2, 2, np.ones(2, np.float32), 1, False,
                       None, _core.Activation.none, np.empty(2, np.float32), 1, 1)
    with pytest.raises(TypeError, match="data must be"):  # float16 is checked by value too, byte order included
        _core.csr_spmm(A.indptr, A.indices, A.data.astype(np.dtype(np.float16).newbyteorder("S")), None, 2, 2,
                       np.ones(2, np.float32), 1, False, None, _core.Activation.none, np.empty(2, np.float32), 1, 1)
    # the public API converts such arrays, as before
    B = htcore.CSRMatrix(A.data.astype(swapped.dtype), A.indices, A.indptr, A.shape)
    np.testing.assert_array_equal(B @ swapped, [1.0, 2.0])


def test_one_plural_serves_every_layer():
    from htcore import _text
    from htcore.cli import _args

    assert _args.plural is _text.plural
    assert (_text.plural(1, "layer"), _text.plural(2, "layer"), _text.plural(0, "batch", "batches")) == (
        "1 layer", "2 layers", "0 batches")


def test_sparsify_report_counts_in_words():
    torch = pytest.importorskip("torch")
    from htcore.nn import sparsify_model

    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    assert "1 Linear layer sparsified, 1 left dense" in str(sparsify_model(net, keep=0.5, include=["0"]))
    def cnn():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2), torch.nn.Linear(2, 2))

    assert "2 Linear + 1 Conv2d layers sparsified, 0 left dense" in str(sparsify_model(cnn(), keep=0.5))
    assert "0 layers sparsified, 3 left dense" in str(sparsify_model(cnn(), keep=0.5, include=[]))


def test_bound_help_names_every_model_format(capsys):
    for command in ("bound", "compress"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert ".pt2" in text and ".onnx" in text, command


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Two small .npz models (one with a long name) and a corrupt file, analysed one by one."""
    directory = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(3)
    paths = [str(directory / "small.npz"), str(directory / ("a_model_with_a_rather_long_file_name_" * 3 + ".npz"))]
    for path in paths:
        np.savez(path, **{"block.0.weight": rng.standard_t(3, (60, 40)), "head.weight": rng.standard_normal((10, 60))})
    corrupt = directory / "corrupt.npz"
    corrupt.write_bytes(b"not a zip archive")
    return paths, str(corrupt)


def many_report(zoo):
    """The ManyReport of the zoo, built from serial `analyze` runs (no worker processes)."""
    paths, corrupt = zoo
    results = []
    for path in paths:
        report = htcore.analyze(path, keeps=(0.1, 0.5, 0.25), progress=False)
        results.append(ModelResult(model=path, columns=tuple(report.columns), layers=tuple(report.rows())))
    results.append(ModelResult(model=corrupt, columns=(), layers=(), error="ValueError: not a model file"))
    return ManyReport(keeps=(0.1, 0.25, 0.5), models=tuple(results))


def test_many_report_compact_and_wide(zoo):
    report = many_report(zoo)
    wide = report.to_markdown(row_types=("model", "error"))
    compact = report.to_markdown(row_types=("model", "error"), compact=True)
    assert wide == report.to_markdown(row_types=("model", "error"), compact=False)
    header = compact.splitlines()[0]
    assert [h.strip() for h in header.strip("|").split("|")] == ["model", "params", "alpha", "hill", "err@0.25", "error"]
    assert "rel_error_keep_0.5" in wide and "rel_error_keep_0.5" not in compact
    assert all(len(line) <= COMPACT_WIDTH for line in compact.splitlines())
    assert max(len(line) for line in wide.splitlines()) > COMPACT_WIDTH  # so the compact form had work to do
    table = [line for line in compact.splitlines() if line.startswith("| ")][1:]
    assert len(table) == 3 and "…" in table[1] and "small.npz" in table[0]  # the long name shortened, not the short
    summary = report.rows(row_types=("model",))[0]
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[1] == str(summary["num_params"]) and float(cells[2]) == pytest.approx(summary["alpha"], abs=5e-3)  # 3 digits
    assert cells[-1] == "" and table[2].split("|")[-2].strip() == "ValueError"
    assert "all " + str(len(report.columns)) + " columns: --wide" in compact
    failed = ManyReport(keeps=report.keeps, models=report.models[2:]).to_markdown(compact=True)
    assert failed.splitlines()[2].split("|")[2].strip() == "ValueError"  # every model failed: model and error only
    layers = report.to_markdown(row_types=("layer",), compact=True)
    assert "| layer " in layers and "block.0.weight" in layers and "error" not in layers.splitlines()[0]


def test_cli_analyze_many_honours_wide(zoo, capsys, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import htcore.measure

    # the table's form is under test, not the pool: threads stand in for the worker processes
    monkeypatch.setattr(htcore.measure, "executor_for", lambda scheduler=None, workers=None: ThreadPoolExecutor(2))
    paths, corrupt = zoo
    args = ["analyze", *paths, corrupt, "--quiet", "--keeps", "0.1,0.25,0.5"]
    assert main(args) == 1  # the corrupt file fails, the others are reported
    compact = capsys.readouterr().out
    assert main([*args, "--wide"]) == 1
    wide = capsys.readouterr().out
    assert "rel_error_keep_0.5" in wide and "rel_error_keep_0.5" not in compact
    table_and_notes = compact.split("\n\n")[0].splitlines()  # the summary after it quotes each failure in full
    assert "err@0.25" in compact and all(len(line) <= COMPACT_WIDTH for line in table_and_notes)
    assert "2 of 3 models analysed" in compact and "4 layers" in compact
    assert "1 of 1 model analysed" in htcore.measure.ManyReport(keeps=(), models=many_report(zoo).models[:1]).summary()
