"""Files that cannot hurt the user: load_compressed and ``htcore run`` refuse pickles without
executing them, and truncated, corrupted or inconsistent safetensors / compressed-model files
with a clear ValueError (exit code 1 and a one-line message for the CLI) before any kernel runs.

(Pickle refusal of htcore.load_layers is tested with that function.)
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import struct
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import htcore
from htcore import CSRMatrix, _core, load_compressed, save_compressed
from htcore.cli import main
from htcore.io import SafetensorsFile, save_safetensors
from htcore.runtime import Activation, CompressedModel, Linear

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


class Payload:
    """Unpickling this creates ``path``: proof that code from the file ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def model() -> CompressedModel:
    rng = np.random.default_rng(0)
    a = htcore.topk_sparsify(rng.standard_normal((6, 8)).astype(np.float32), 0.5)
    codebook = np.array([-1.0, 0.0, 0.5, 2.0], np.float32)
    b = CSRMatrix(np.array([0, 3, 1, 2], np.uint8), np.array([0, 5, 1, 4]), np.array([0, 2, 2, 4]), (3, 6), codebook=codebook)
    return CompressedModel([Linear(a, np.ones(6)), Activation("relu"), Linear(b), Activation("softmax")])


@pytest.fixture
def kernel_spy(patch_kernel):
    """Counts calls of the CSR kernel, to prove a refused file never reached it."""
    calls = []
    original = _core.csr_spmm
    patch_kernel("csr_spmm", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    return calls


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    save_compressed(path, model(), provenance={"test": True})
    np.save(tmp_path / "x.npy", np.ones((4, 8), np.float32))
    return path


def run_cli(path, tmp_path, capsys, input_name="x.npy"):
    code = main(["run", str(path), "--input", str(tmp_path / input_name)])
    err = capsys.readouterr().err
    return code, err


def test_good_file_runs(good, tmp_path, capsys, kernel_spy):
    assert run_cli(good, tmp_path, capsys)[0] == 0 and kernel_spy


# ---- pickles -------------------------------------------------------------------------------------

def pickle_files(tmp_path, marker):
    """A raw pickle, a torch-style zip .pt holding data.pkl, and a torch.save'd object."""
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    zipped = tmp_path / "zipped.pt"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Payload(marker)))
    files = [raw, zipped]
    try:
        import torch

        saved = tmp_path / "torch.safetensors"  # a misleading extension does not help either
        torch.save({"w": torch.ones(2), "evil": Payload(marker)}, saved)
        files.append(saved)
    except ImportError:
        pass
    return files


def test_pickles_are_refused_without_running(tmp_path, capsys, kernel_spy):
    marker = str(tmp_path / "pwned")
    np.save(tmp_path / "x.npy", np.ones((2, 8), np.float32))
    for path in pickle_files(tmp_path, marker):
        with pytest.raises(ValueError, match=str(path.name)):
            load_compressed(path)
        code, err = run_cli(path, tmp_path, capsys)
        assert code == 1 and err.startswith("htcore run: error:") and err.count("\n") == 1, err
    assert not os.path.exists(marker), "code from a pickle ran"
    assert not kernel_spy
    pickle.loads(pickle.dumps(Payload(marker))).close()  # the payload does work when unpickled (an open file)
    assert os.path.exists(marker)


def test_pickled_npy_input_is_refused(good, tmp_path, capsys, kernel_spy):
    marker = str(tmp_path / "pwned")
    np.save(tmp_path / "evil.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    code, err = run_cli(good, tmp_path, capsys, "evil.npy")
    assert code == 1 and "pickle" in err.lower(), err
    assert not os.path.exists(marker) and not kernel_spy


@pytest.mark.parametrize("content, why", [
    (b"", "empty"), (b"\x93NUMPY", "truncated header"), (b"not a numpy file at all", "garbage"),
])
def test_bad_npy_inputs(good, tmp_path, capsys, content, why):
    (tmp_path / "bad.npy").write_bytes(content)
    code, err = run_cli(good, tmp_path, capsys, "bad.npy")
    assert code == 1 and err.count("\n") == 1, (why, err)


def test_npz_input_is_refused(good, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=np.ones((2, 8), np.float32))
    code, err = run_cli(good, tmp_path, capsys, "x.npz")
    assert code == 1 and ".npz" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("array, why", [
    (np.ones(8, np.float32), "no batch dimension"), (np.ones((0, 8), np.float32), "no samples"),
    (np.ones((2, 9), np.float32), "wrong feature count"), (np.full((2, 8), np.nan, np.float32), "NaN"),
    (np.ones((2, 8), np.complex64), "complex"), (np.array([["a"] * 8] * 2), "strings"),
])
def test_bad_input_arrays(good, tmp_path, capsys, array, why):
    np.save(tmp_path / "bad.npy", array)
    code, err = run_cli(good, tmp_path, capsys, "bad.npy")
    assert code == 1 and err.startswith("htcore run: error:") and err.count("\n") == 1, (why, err)


# ---- truncated and corrupted files ---------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def good_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        save_compressed(path, model())
        with open(path, "rb") as fh:
            return fh.read()


@settings(FUZZ, max_examples=100)
@given(st.integers(0, len(good_bytes()) - 1))
def test_truncated_files_raise(tmp_path_factory, cut):
    path = tmp_path_factory.getbasetemp() / "truncated.safetensors"
    path.write_bytes(good_bytes()[:cut])
    with pytest.raises(ValueError):
        load_compressed(path)


@settings(FUZZ, max_examples=100)
@given(st.integers(0, len(good_bytes()) - 1), st.integers(1, 255))
def test_corrupted_bytes_raise_or_load_validated(tmp_path_factory, pos, xor):
    """A flipped byte anywhere: ValueError, or (in the data section) a model that passed every
    check: its CSR structure is valid and it runs."""
    path = tmp_path_factory.getbasetemp() / "flipped.safetensors"
    blob = bytearray(good_bytes())
    blob[pos] ^= xor
    path.write_bytes(bytes(blob))
    try:
        m = load_compressed(path)
    except ValueError:
        event("refused")
        return
    event("loaded (a value byte changed)")
    for layer in m.layers:
        if isinstance(layer, Linear) and layer.sparse:
            w = layer.weight
            CSRMatrix(w.data, w.indices, w.indptr, w.shape, codebook=w.codebook)  # re-validates
    assert m(np.ones((2, 8), np.float32)).shape == (2, 3)


# ---- inconsistent files with a valid safetensors header ------------------------------------------

def tensors_and_meta():
    """The tensors and string metadata save_compressed would write, for editing."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.safetensors")
        with open(p, "wb") as fh:
            fh.write(good_bytes())
        with SafetensorsFile(p) as f:
            return {n: np.array(f[n]) for n in f}, dict(f.metadata)


def edit_architecture(meta, fn):
    arch = json.loads(meta["architecture"])
    fn(arch)
    meta["architecture"] = json.dumps(arch)


INCONSISTENT = {
    "indptr_decreasing": lambda t, m: t["layers.0.indptr"].__setitem__(slice(1, 3), [5, 1]),
    "indptr_not_ending_at_nnz": lambda t, m: t["layers.0.indptr"].__setitem__(-1, 1000),
    "indptr_short": lambda t, m: t.__setitem__("layers.0.indptr", t["layers.0.indptr"][:-1]),
    "index_out_of_range": lambda t, m: t["layers.0.indices"].__setitem__(0, 60000),
    "indices_unsorted": lambda t, m: t["layers.0.indices"].__setitem__(slice(0, 2), t["layers.0.indices"][1::-1].copy()),
    "code_out_of_range": lambda t, m: t["layers.2.data"].__setitem__(0, 200),
    "codebook_nan": lambda t, m: t["layers.2.codebook"].__setitem__(0, np.nan),
    "codebook_without_codes": lambda t, m: t.__setitem__("layers.2.data", t["layers.2.data"].astype(np.float32)),
    "codes_without_codebook": lambda t, m: t.pop("layers.2.codebook"),
    "value_inf": lambda t, m: t["layers.0.data"].__setitem__(0, np.inf),
    "bias_nan": lambda t, m: t["layers.0.bias"].__setitem__(0, np.nan),
    "bias_wrong_length": lambda t, m: t.__setitem__("layers.0.bias", np.ones(7, np.float32)),
    "bias_float64": lambda t, m: t.__setitem__("layers.0.bias", np.ones(6)),
    "indices_int64": lambda t, m: t.__setitem__("layers.0.indices", t["layers.0.indices"].astype(np.int64)),
    "missing_tensor": lambda t, m: t.pop("layers.0.indices"),
    "extra_tensor": lambda t, m: t.__setitem__("layers.9.weight", np.ones(2, np.float32)),
    "shapes_do_not_chain": lambda t, m: edit_architecture(m, lambda a: a[2].__setitem__("shape", [3, 7])),
    "huge_declared_shape": lambda t, m: edit_architecture(m, lambda a: a[0].__setitem__("shape", [2**40, 2**40])),
    "astronomic_shape": lambda t, m: edit_architecture(m, lambda a: a[0].__setitem__("shape", [2**70, 8])),
    "negative_shape": lambda t, m: edit_architecture(m, lambda a: a[0].__setitem__("shape", [-6, 8])),
    "float_shape": lambda t, m: edit_architecture(m, lambda a: a[0].__setitem__("shape", [6.0, 8])),
    "unknown_layer": lambda t, m: edit_architecture(m, lambda a: a.append({"type": "conv"})),
    "unknown_activation": lambda t, m: edit_architecture(m, lambda a: a[1].__setitem__("kind", "__import__('os')")),
    "wrong_format": lambda t, m: m.__setitem__("format", json.dumps("pickle")),
    "future_version": lambda t, m: m.__setitem__("format_version", "2"),
    "metadata_not_json": lambda t, m: m.__setitem__("provenance", "{not json"),
    "missing_metadata": lambda t, m: m.pop("architecture"),
}


@pytest.mark.parametrize("how", sorted(INCONSISTENT))
def test_inconsistent_model_files_raise_before_any_kernel(how, tmp_path, capsys, kernel_spy):
    tensors, meta = tensors_and_meta()
    INCONSISTENT[how](tensors, meta)
    path = tmp_path / "bad.safetensors"
    save_safetensors(path, tensors, meta)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_compressed(path)
    np.save(tmp_path / "x.npy", np.ones((2, 8), np.float32))
    code, err = run_cli(path, tmp_path, capsys)
    assert code == 1 and err.startswith("htcore run: error:") and err.count("\n") == 1, err
    assert not kernel_spy, "a kernel ran on a refused file"


def raw_safetensors(path, header: dict, data: bytes = b""):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("header, data", [
    ({"t": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, bytes(16)),
    ({"t": {"dtype": "F32", "shape": [2**1100], "data_offsets": [0, 4]}}, bytes(4)),
    ({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 2**62]}}, bytes(16)),
    ({"t": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}, bytes(16)),
    ({"t": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16)),
    ({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),
    ({"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16)),
    ({"__metadata__": {"format": 1}}, b""),
    ([1, 2, 3], b""),
])
def test_malformed_safetensors_headers(tmp_path, capsys, header, data, kernel_spy):
    path = tmp_path / "bad.safetensors"
    raw_safetensors(path, header, data)
    with pytest.raises(ValueError):
        load_compressed(path)
    np.save(tmp_path / "x.npy", np.ones((2, 8), np.float32))
    code, err = run_cli(path, tmp_path, capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert not kernel_spy


def test_header_length_beyond_file_and_huge(tmp_path):
    for declared in (10**6, 2**63):
        path = tmp_path / "bad.safetensors"
        path.write_bytes(struct.pack("<Q", declared) + b"{}")
        with pytest.raises(ValueError, match="header length"):
            load_compressed(path)


def test_missing_file_and_directory_are_os_errors(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 8), np.float32))
    for path in (tmp_path / "absent.safetensors", tmp_path):
        with pytest.raises(OSError):
            load_compressed(path)
        assert run_cli(path, tmp_path, capsys)[0] == 1


# ---- graph model files (named nodes, residual adds, BatchNorm) -----------------------------------

def graph_model() -> CompressedModel:
    from htcore.runtime import AdaptiveAvgPool2d, Add, BatchNorm2d, Conv2d, Flatten, Node

    rng = np.random.default_rng(1)
    conv = Conv2d(htcore.topk_sparsify(rng.standard_normal((3, 18)).astype(np.float32), 0.5), kernel_size=3, padding=1)
    return CompressedModel([
        Node("conv", conv, ["input"]),
        Node("bn", BatchNorm2d(rng.random(3) + 0.5, rng.standard_normal(3)), ["conv"]),
        Node("relu", Activation("relu"), ["bn"]),
        Node("add", Add(), ["relu", "conv"]),
        Node("pool", AdaptiveAvgPool2d(2), ["add"]),
        Node("flat", Flatten(), ["pool"]),
        Node("fc", Linear(rng.standard_normal((4, 12)).astype(np.float32)), ["flat"]),
    ], input_shape=(2, 4, 4))


@functools.lru_cache(maxsize=None)
def graph_parts() -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "g.safetensors")
        save_compressed(p, graph_model())
        with SafetensorsFile(p) as f:
            return {n: np.array(f[n]) for n in f}, dict(f.metadata)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 2**41) | st.floats(allow_nan=True)
                           | st.sampled_from(["input", "conv", "bn", "relu", "add", "pool", "flat", "fc", ""]),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@settings(FUZZ, max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from(["name", "inputs", "type", "channels", "output_size",
                                                              "shape", "padding", "stride", "kind", "bias"]),
                          JSON_VALUES), min_size=1, max_size=3),
       st.one_of(st.none(), st.lists(st.integers(0, 9), max_size=4)), st.booleans())
def test_fuzzed_graph_architectures_raise_or_run(tmp_path_factory, edits, input_shape, swap):
    """Random field values, swapped entries and input shapes in a graph file: a ValueError naming
    the file, or a model that passed every check and runs on inputs of its input_shape."""
    tensors, meta = graph_parts()
    meta = dict(meta)
    arch = json.loads(meta["architecture"])
    for i, key, value in edits:
        arch[i][key] = value
    if swap:
        arch[1], arch[2] = arch[2], arch[1]
    meta["architecture"] = json.dumps(arch)
    if input_shape is not None:
        meta["input_shape"] = json.dumps(input_shape)
    path = tmp_path_factory.getbasetemp() / "fuzzed-graph.safetensors"
    save_safetensors(path, tensors, meta)
    try:
        m = load_compressed(path)
    except ValueError as exc:
        assert "fuzzed-graph.safetensors" in str(exc)
        event("refused")
        return
    event("loaded")
    out = m(np.ones((2, *m.input_shape), np.float32))
    assert out.shape == (2, *m.output_shape) and np.isfinite(out).all()


@settings(FUZZ, max_examples=100)
@given(st.data())
def test_corrupted_graph_file_bytes_raise_or_load_validated(tmp_path_factory, data):
    tensors, meta = graph_parts()
    path = tmp_path_factory.getbasetemp() / "graph.safetensors"
    save_safetensors(path, tensors, meta)
    blob = bytearray(path.read_bytes())
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(blob))
    try:
        m = load_compressed(path)
    except ValueError:
        event("refused")
        return
    event("loaded (a value byte changed)")
    assert m(np.ones((1, 2, 4, 4), np.float32)).shape == (1, 4)
