import json
import struct

import numpy as np
import pytest

from htcore.io import SafetensorsError, SafetensorsFile, save_safetensors

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.bool_]


def sample_tensors(rng):
    out = {f"t_{np.dtype(d).name}": (rng.standard_normal((3, 5)) * 10).astype(d) for d in DTYPES}
    out["empty"] = np.zeros((0, 4), dtype=np.float32)
    out["scalar"] = np.array(2.5, dtype=np.float32)
    out["strided"] = np.arange(40, dtype=np.float32).reshape(5, 8)[:, ::2]
    return out


def test_roundtrip(tmp_path):
    tensors = sample_tensors(np.random.default_rng(0))
    path = tmp_path / "a.safetensors"
    save_safetensors(path, tensors, {"format": "test"})
    with SafetensorsFile(path) as f:
        assert f.metadata == {"format": "test"}
        assert set(f) == set(tensors)
        for name, arr in tensors.items():
            got = f[name]
            assert got.dtype == arr.dtype and got.shape == arr.shape
            np.testing.assert_array_equal(got, arr)
            assert not got.flags.writeable


def test_interop_with_reference_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {k: v for k, v in sample_tensors(np.random.default_rng(1)).items() if k != "strided"}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    save_safetensors(ours, tensors, {"k": "v"})
    for name, arr in st.load_file(str(ours)).items():
        np.testing.assert_array_equal(arr, tensors[name])
    st.save_file(tensors, str(theirs), metadata={"k": "v"})
    with SafetensorsFile(theirs) as f:
        assert f.metadata == {"k": "v"}
        for name, arr in tensors.items():
            np.testing.assert_array_equal(f[name], arr)


def test_bf16_widened_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bf16.tobytes())
    with SafetensorsFile(path) as f:
        np.testing.assert_array_equal(f["w"], values)


def write_raw(path, header, data=b""):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "header, data, match",
    [
        (b"{not json", b"", "not valid JSON"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"1234", "outside"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"12345678", "need 12"),
        ({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"12345678", "unsupported dtype"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"12345678", "non-negative"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"12345678", "two integers"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"123456789012", "overlap"),
        ({"__metadata__": {"k": 3}}, b"", "strings"),
        ([1, 2], b"", "JSON object"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "code": "x"}}, b"12345678", "exactly"),
    ],
)
def test_malformed_files_raise(tmp_path, header, data, match):
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=match):
        SafetensorsFile(path)


def test_truncated_and_tiny_files(tmp_path):
    good = tmp_path / "good.safetensors"
    save_safetensors(good, {"w": np.ones((64, 64), np.float32)})
    blob = good.read_bytes()
    for cut in (0, 4, 8, 20, len(blob) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(blob[:cut])
        with pytest.raises(SafetensorsError):
            SafetensorsFile(bad)


def test_huge_header_length_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(SafetensorsError, match="header length"):
        SafetensorsFile(path)


def test_unknown_tensor_name(tmp_path):
    path = tmp_path / "a.safetensors"
    save_safetensors(path, {"w": np.ones(3, np.float32)})
    with SafetensorsFile(path) as f, pytest.raises(KeyError, match="no tensor 'v'"):
        f["v"]


def test_save_refuses_bad_input(tmp_path):
    with pytest.raises(TypeError, match="cannot be stored"):
        save_safetensors(tmp_path / "x.safetensors", {"c": np.ones(2, np.complex64)})
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors(tmp_path / "x.safetensors", {"w": np.ones(2)}, {"k": 1})
