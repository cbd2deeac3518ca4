"""The C runtime (C API of cpp/include/htcore/htcore.h, htcore-run, the example under examples/)
against the Python runtime: bitwise-equal outputs on models written by save_compressed (every CSR
value format, dense and sparse layers, CNNs, graph models) at the same thread count, and every
malformed file the Python tests use refused with a message before anything runs.

The C library is built with CMake once per session into a temporary prefix (a minute or two),
unless HTCORE_C_PREFIX names an installed one (.ci/run builds it there, also as the portable
variant without OpenMP: HTCORE_C_PORTABLE=1 then makes the Python reference use its portable
kernels too). Dense Linear layers run in numpy's BLAS in Python and in the CSR kernel in C: they
agree to float32 rounding, not bitwise (benchmarks/results/embedded.md says why).
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading

import numpy as np
import pytest

import htcore
import test_files_safety as safety  # the malformed-file corpus of the Python loader's tests
from htcore import _core, save_compressed
from htcore.io import save_safetensors
from htcore.runtime import Activation, Add, CompressedModel, Flatten, Linear, Node

torch = pytest.importorskip("torch")
nn = torch.nn

ROOT = pathlib.Path(__file__).resolve().parent.parent
PORTABLE = os.environ.get("HTCORE_C_PORTABLE") == "1"


# Build tools run without the sanitizer preload that .ci/sanitize sets for Python (make itself
# trips ASan's strict string checks).
_TOOL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _build(tmp: pathlib.Path) -> pathlib.Path:
    """Configure, build and install the C library into tmp/prefix (skips when the tools are missing)."""
    if shutil.which("cmake") is None or shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("building the C library needs cmake and a C++ compiler")
    if not (ROOT / "cpp" / "runtime").is_dir():
        pytest.skip("needs the source tree")
    build, prefix = tmp / "build", tmp / "prefix"
    configure = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DHTCORE_PYTHON=OFF",
                                "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True, env=_TOOL_ENV)
    if configure.returncode and "nlohmann" in configure.stdout + configure.stderr:
        pytest.skip("building the C library needs nlohmann/json (apt-get install nlohmann-json3-dev)")
    assert configure.returncode == 0, configure.stdout + configure.stderr
    for step in (["cmake", "--build", str(build), "-j", "2"], ["cmake", "--install", str(build), "--prefix", str(prefix)]):
        done = subprocess.run(step, capture_output=True, text=True, env=_TOOL_ENV)
        assert done.returncode == 0, done.stdout + done.stderr
    return prefix


@pytest.fixture(scope="session")
def prefix(tmp_path_factory) -> pathlib.Path:
    given = os.environ.get("HTCORE_C_PREFIX")
    return pathlib.Path(given) if given else _build(tmp_path_factory.mktemp("c_library"))


@pytest.fixture(scope="session")
def runner(prefix) -> str:
    return str(prefix / "bin" / "htcore-run")


@pytest.fixture(scope="session")
def example(prefix, tmp_path_factory) -> str:
    """examples/classify.c built against the installed package (find_package(htcore))."""
    build = tmp_path_factory.mktemp("example")
    for step in (["cmake", "-S", str(ROOT / "examples"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
                 ["cmake", "--build", str(build)]):
        done = subprocess.run(step, capture_output=True, text=True, env=_TOOL_ENV)
        assert done.returncode == 0, done.stdout + done.stderr
    return str(build / "classify")


class CApi:
    """The C API through ctypes (the shared library of the prefix)."""

    def __init__(self, path: pathlib.Path):
        lib = ctypes.CDLL(str(path))
        i64p, f32p = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float)
        lib.htcore_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.htcore_model_load_buffer.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
        lib.htcore_model_free.argtypes = [ctypes.c_void_p]
        lib.htcore_model_free.restype = None
        lib.htcore_model_input_shape.argtypes = [ctypes.c_void_p, i64p, ctypes.POINTER(ctypes.c_int)]
        lib.htcore_model_output_shape.argtypes = [ctypes.c_void_p, i64p, ctypes.c_int, i64p, ctypes.POINTER(ctypes.c_int)]
        lib.htcore_model_run.argtypes = [ctypes.c_void_p, f32p, ctypes.c_int64, i64p, ctypes.c_int, f32p, ctypes.c_int64]
        lib.htcore_last_error.restype = ctypes.c_char_p
        lib.htcore_version.restype = ctypes.c_char_p
        self.lib = lib
        self.buffers: list[bytes] = []  # the caller owns a loaded buffer (weights are read in place): keep them

    def error(self) -> str:
        return self.lib.htcore_last_error().decode()

    def load_buffer(self, blob: bytes):
        handle = ctypes.c_void_p()
        code = self.lib.htcore_model_load_buffer(blob, len(blob), ctypes.byref(handle))
        if code == 0:
            self.buffers.append(blob)
        return code, handle

    def output_shape(self, handle, sample) -> tuple:
        dims, ndim = (ctypes.c_int64 * 8)(), ctypes.c_int()
        given = (ctypes.c_int64 * len(sample))(*sample)
        assert self.lib.htcore_model_output_shape(handle, given, len(sample), dims, ctypes.byref(ndim)) == 0, self.error()
        return tuple(dims[: ndim.value])

    def run(self, handle, x: np.ndarray, out_shape=None) -> tuple[int, np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        sample = x.shape[1:]
        out = np.zeros((x.shape[0], *(out_shape or self.output_shape(handle, sample))), np.float32)
        f32p = ctypes.POINTER(ctypes.c_float)
        code = self.lib.htcore_model_run(handle, x.ctypes.data_as(f32p), x.shape[0], (ctypes.c_int64 * len(sample))(*sample),
                                         len(sample), out.ctypes.data_as(f32p), out.size)
        return code, out


@pytest.fixture(scope="session")
def capi(prefix) -> CApi:
    return CApi(prefix / "lib" / "libhtcore.so")


@pytest.fixture
def same_kernels():
    """The Python reference on the kernels the C build has (portable builds: no AVX2 path)."""
    if PORTABLE:
        _core._csr_enable_avx2(False)
    yield
    _core._csr_enable_avx2(True)


# ---- models ---------------------------------------------------------------------------------------

def mlp(fmt: str, seed: int = 0) -> CompressedModel:
    rng = np.random.default_rng(seed)
    first = htcore.topk_sparsify(rng.standard_normal((40, 24)).astype(np.float32), 0.3)
    second = htcore.topk_sparsify(rng.standard_normal((300, 40)).astype(np.float32), 0.9)  # > 128 per row: no SELL-8
    last = htcore.topk_sparsify(rng.standard_normal((6, 300)).astype(np.float32), 0.2)
    if fmt in ("float16", "float64"):
        first, second = first.astype(value_dtype=fmt), second.astype(value_dtype=fmt)
    elif fmt == "codebook":
        first = htcore.CSRMatrix((np.arange(first.nnz) % 5).astype(np.uint8), first.indices, first.indptr, first.shape,
                                 codebook=np.float32([-1, -0.25, 0.0, 0.5, 1.5]))
    elif fmt == "wide_indices":
        first = first.astype(index_dtype=np.int32)
        second = htcore.CSRMatrix(second.data, second.indices, second.indptr, second.shape, indptr_dtype=np.int64)
    return CompressedModel([Flatten(), Linear(first, rng.standard_normal(40)), Activation("gelu"), Linear(second),
                            Activation("tanh"), Linear(last, rng.standard_normal(6)), Activation("softmax")])


def lenet(seed: int, sparse: bool) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    if sparse:
        htcore.nn.sparsify_model(net, keep=0.4)
    return net


def resnet(fold: bool) -> CompressedModel:
    """htcore.nn.resnet_small sparsified, with BatchNorm statistics far from their initial values,
    kept as batchnorm2d entries (``fold`` False) or folded into the convolutions: a graph file with
    residual adds and an adaptive average pool."""
    net = htcore.nn.resnet_small(seed=3)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.2)
    htcore.nn.sparsify_model(net.eval(), keep=0.4)
    layers = htcore.nn.to_runtime_layers(net, fold_batchnorm=fold)
    return CompressedModel(layers, input_shape=(1, 12, 12))


def residual_mlp() -> CompressedModel:
    """A graph MLP whose residual add reads the model input and a Linear's output."""
    rng = np.random.default_rng(4)
    square = htcore.topk_sparsify(rng.standard_normal((24, 24)).astype(np.float32), 0.3)
    head = htcore.topk_sparsify(rng.standard_normal((5, 24)).astype(np.float32), 0.5)
    nodes = [Node("fc", Linear(square, rng.standard_normal(24)), ["input"]), Node("act", Activation("tanh"), ["fc"]),
             Node("sum", Add(), ["act", "input"]), Node("relu", Activation("relu"), ["sum"]),
             Node("head", Linear(head), ["relu"]), Node("soft", Activation("softmax"), ["head"])]
    return CompressedModel(nodes, input_shape=(24,))


def models() -> dict:
    """name -> (model, sample shape, whether every layer is sparse: bitwise equality expected)."""
    out = {f"mlp_{fmt}": (mlp(fmt), (4, 6), True) for fmt in ("float32", "float16", "float64", "codebook", "wide_indices")}
    out["lenet_sparse"] = (CompressedModel.from_torch(lenet(0, True)), (1, 28, 28), True)
    out["lenet_dense"] = (CompressedModel.from_torch(lenet(1, False)), (1, 28, 28), False)
    out["resnet_batchnorm"] = (resnet(fold=False), (1, 12, 12), True)
    out["resnet_folded"] = (resnet(fold=True), (1, 12, 12), True)
    out["residual_mlp"] = (residual_mlp(), (24,), True)
    return out


MODELS = models()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, (model, _, _) in MODELS.items():
        paths[name] = folder / f"{name}.safetensors"
        save_compressed(paths[name], model)
    return paths


def python_outputs(model, x: np.ndarray, batch: int, threads: int) -> np.ndarray:
    htcore.set_num_threads(threads)
    return np.concatenate([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def assert_same(got: np.ndarray, want: np.ndarray, bitwise: bool) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    if bitwise:
        np.testing.assert_array_equal(got, want)
    else:  # a dense Linear: BLAS in Python, the CSR kernel in C
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- outputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_runner_equals_the_python_runtime(name, threads, model_files, runner, tmp_path, same_kernels):
    model, sample, bitwise = MODELS[name]
    x = np.random.default_rng(threads).standard_normal((9, *sample)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for batch in (1, 4):  # batch 1 takes the SELL-8 path where Python does
        done = subprocess.run([runner, str(model_files[name]), str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                               "--threads", str(threads), "--batch", str(batch)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert_same(np.load(tmp_path / "y.npy"), python_outputs(model, x, batch, threads), bitwise)


def test_c_api_equals_the_python_runtime_from_a_buffer(model_files, capi, same_kernels):
    for name, (model, sample, bitwise) in MODELS.items():
        blob = model_files[name].read_bytes()
        code, handle = capi.load_buffer(blob)
        assert code == 0, capi.error()
        x = np.random.default_rng(5).standard_normal((3, *sample)).astype(np.float32)
        code, y = capi.run(handle, x)
        assert code == 0, capi.error()
        assert_same(y, python_outputs(model, x, 3, htcore.get_num_threads()), bitwise)
        capi.lib.htcore_model_free(handle)


def test_example_classifies_like_python(model_files, example, tmp_path, same_kernels):
    model = MODELS["mlp_float32"][0]
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 4, 6)).astype(np.float32)
        (tmp_path / "x.f32").write_bytes(x.tobytes())
        done = subprocess.run([example, str(model_files["mlp_float32"]), str(tmp_path / "x.f32")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) == int(model.predict(x)[0])


def test_concurrent_runs_on_one_model(model_files, capi):
    code, handle = capi.load_buffer(model_files["lenet_sparse"].read_bytes())
    assert code == 0
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    want = capi.run(handle, x)[1]
    results = []

    def work():  # ctypes releases the GIL during the call
        for _ in range(5):
            results.append((*capi.run(handle, x), capi.error()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and all(code == 0 and np.array_equal(y, want) for code, y, _ in results), results[0][2]
    capi.lib.htcore_model_free(handle)


# ---- errors -------------------------------------------------------------------------------------------

def test_c_api_errors_are_codes_with_messages(model_files, capi, tmp_path):
    handle = ctypes.c_void_p()
    assert capi.lib.htcore_model_load(str(tmp_path / "absent").encode(), ctypes.byref(handle)) == 3
    assert "No such file" in capi.error() and not handle.value
    assert capi.lib.htcore_model_load(None, ctypes.byref(handle)) == 1 and "path" in capi.error()
    code, handle = capi.load_buffer(model_files["mlp_float32"].read_bytes())
    assert code == 0 and capi.error() == ""
    dims, ndim = (ctypes.c_int64 * 8)(), ctypes.c_int()
    assert capi.lib.htcore_model_input_shape(handle, dims, ctypes.byref(ndim)) == 0  # the first Linear's (via Flatten)
    assert list(dims[: ndim.value]) == [24]
    code, cnn = capi.load_buffer(model_files["lenet_sparse"].read_bytes())
    assert capi.lib.htcore_model_input_shape(cnn, dims, ctypes.byref(ndim)) == 1  # saved without input_shape
    assert "input shape" in capi.error()
    capi.lib.htcore_model_free(cnn)
    x = np.ones((2, 4, 6), np.float32)
    assert capi.run(handle, x, out_shape=(5,))[0] == 1 and "output buffer" in capi.error()
    x[1, 2, 3] = np.nan
    assert capi.run(handle, x)[0] == 1 and "non-finite" in capi.error()
    assert capi.run(handle, np.ones((2, 5), np.float32), out_shape=(6,))[0] == 1 and "expects (24,)" in capi.error()
    assert capi.lib.htcore_set_num_threads(0) == 1 and "num_threads" in capi.error()
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert capi.lib.htcore_version().decode() == version
    capi.lib.htcore_model_free(handle)
    capi.lib.htcore_model_free(None)


def test_runner_usage_and_data_errors(model_files, runner, tmp_path):
    good = str(model_files["mlp_float32"])
    np.save(tmp_path / "x.npy", np.ones((2, 4, 6), np.float32))
    x, y = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    cases = [([good, x], 2, "expected MODEL INPUT OUTPUT"), ([good, x, y, "--batch", "0"], 2, "--batch"),
             ([good, x, y, "--bogus"], 2, "unknown option"), ([str(tmp_path / "none"), x, y], 1, "No such file")]
    np.save(tmp_path / "ints.npy", np.ones((2, 24), np.int64))
    cases.append(([good, str(tmp_path / "ints.npy"), y], 1, "float32"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases.append(([good, str(tmp_path / "obj.npy"), y], 1, "float32"))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-5])
    cases.append(([good, str(tmp_path / "cut.npy"), y], 1, "truncated"))
    np.save(tmp_path / "wrong.npy", np.ones((2, 5), np.float32))
    cases.append(([good, str(tmp_path / "wrong.npy"), y], 1, "expects (24,)"))
    for args, code, message in cases:
        done = subprocess.run([runner, *args], capture_output=True, text=True)
        assert done.returncode == code and message in done.stderr, (args, done.stderr)
        assert done.stderr.strip().splitlines()[-1].startswith("htcore-run: error:")
        assert done.stderr.endswith("\n") and done.stderr.count("\n") == (2 if code == 2 else 1)


# ---- malformed files: the Python tests' corpus ------------------------------------------------------

def corpus() -> dict:
    """name -> bytes of every malformed file tests/test_files_safety.py feeds the Python loader."""
    files = {}
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "bad.safetensors"
        for how, edit in safety.INCONSISTENT.items():
            tensors, meta = safety.tensors_and_meta()
            edit(tensors, meta)
            save_safetensors(path, tensors, meta)
            files[f"inconsistent/{how}"] = path.read_bytes()
        for header, data in safety.test_malformed_safetensors_headers.pytestmark[0].args[1]:
            safety.raw_safetensors(path, header, data)
            files[f"header/{len(files)}"] = path.read_bytes()
    good = safety.good_bytes()
    for cut in range(len(good)):
        files[f"truncated/{cut}"] = good[:cut]
    for declared in (10**6, 2**63):
        files[f"header_length/{declared}"] = declared.to_bytes(8, "little") + b"{}"
    return files


def test_every_malformed_file_is_refused_with_a_message(capi):
    for name, blob in corpus().items():
        code, handle = capi.load_buffer(blob)
        assert code == 2 and not handle.value, name
        message = capi.error()
        assert message and "\n" not in message, name


def test_flipped_bytes_are_refused_exactly_when_python_refuses(capi, tmp_path, same_kernels):
    """A flipped byte anywhere: the C loader refuses the file exactly when load_compressed does,
    and a file both accept gives the same outputs."""
    good = safety.good_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "flipped.safetensors"
    x = np.ones((2, 8), np.float32)
    for pos in rng.choice(len(good), size=min(len(good), 400), replace=False):
        blob = bytearray(good)
        blob[pos] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(blob))
        try:
            model = htcore.load_compressed(path)
        except ValueError:
            model = None
        code, handle = capi.load_buffer(bytes(blob))
        assert (code == 0) == (model is not None), (int(pos), capi.error())
        if model is not None:
            np.testing.assert_array_equal(capi.run(handle, x)[1], model(x))
            capi.lib.htcore_model_free(handle)


def test_runner_refuses_a_malformed_file_in_one_line(runner, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safety.good_bytes()[:100])
    np.save(tmp_path / "x.npy", np.ones((2, 8), np.float32))
    done = subprocess.run([runner, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("htcore-run: error: ") and done.stderr.count("\n") == 1
    assert str(path) in done.stderr and not (tmp_path / "y.npy").exists()
