"""load_layers: every source type, kinds and conv views, filters, and refusal of unsafe or broken files."""
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from htcore import load_layers
from htcore.io import conv_slices, save_safetensors

torch = pytest.importorskip("torch", reason="torch not installed")


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(50, 12),
        torch.nn.Linear(12, 20),
        torch.nn.LayerNorm(20),
        torch.nn.Conv2d(4, 6, (3, 2)),
        torch.nn.Conv1d(3, 5, 4, bias=False),
    )


EXPECTED = [
    ("0.weight", "embedding", (50, 12)),
    ("1.weight", "linear", (20, 12)),
    ("3.weight", "conv", (6, 4, 3, 2)),
    ("4.weight", "conv", (5, 3, 4)),
]


def summary(layers):
    return [(layer.name, layer.kind, layer.shape) for layer in layers]


def test_module_kinds_shapes_and_skips_1d():
    layers = list(load_layers(small_model()))
    assert summary(layers) == EXPECTED
    emb, lin, conv2, conv1 = layers
    assert emb.matrices[0].shape == (50, 12) and len(lin.matrices) == 1
    assert lin.num_params == 240


def test_conv_views_follow_weightwatcher():
    # WeightWatcher 0.7.7 conv2D_Wmats (PyTorch channel order): W[:, :, i, j] for every kernel position.
    layers = {layer.name: layer for layer in load_layers(small_model())}
    w = layers["3.weight"].weight
    mats = layers["3.weight"].matrices
    assert len(mats) == 6
    expected = [w[:, :, i, j] for i in range(3) for j in range(2)]
    for got, want in zip(mats, expected):
        np.testing.assert_array_equal(got, want)
    w1 = layers["4.weight"].weight
    assert [m.shape for m in layers["4.weight"].matrices] == [(5, 3)] * 4
    np.testing.assert_array_equal(layers["4.weight"].matrices[2], w1[:, :, 2])
    assert len(conv_slices(np.zeros((2, 3, 2, 2, 2)))) == 8


def test_module_arrays_are_views_not_copies():
    model = small_model()
    layer = next(iter(load_layers(model, include=r"^1\.")))
    with torch.no_grad():
        model[1].weight[0, 0] = 123.0
    assert layer.weight[0, 0] == 123.0


def arrays_of(layers):
    return {layer.name: np.array(layer.weight) for layer in layers}


def test_state_dict_pt_safetensors_npz_agree(tmp_path):
    model = small_model()
    reference = arrays_of(load_layers(model))
    sd = model.state_dict()
    torch.save(sd, tmp_path / "m.pt")
    save_safetensors(tmp_path / "m.safetensors", {k: v.numpy() for k, v in sd.items()})
    np.savez(tmp_path / "m.npz", **{k: v.numpy() for k, v in sd.items()})
    for source in [sd, tmp_path / "m.pt", str(tmp_path / "m.safetensors"), tmp_path / "m.npz"]:
        layers = list(load_layers(source))
        # Without module types the kind is guessed from name and shape: "0.weight" reads as linear.
        assert summary(layers) == [("0.weight", "linear", (50, 12))] + EXPECTED[1:], source
        got = arrays_of(layers)
        assert got.keys() == reference.keys()
        for name in got:
            np.testing.assert_array_equal(got[name], reference[name])


def test_nested_checkpoint_dtypes_and_int_buffers(tmp_path):
    ckpt = {
        "epoch": 3,
        "model": {"enc.weight": torch.randn(8, 4, dtype=torch.bfloat16), "pos_ids": torch.arange(10).reshape(2, 5)},
        "head": {"w": torch.randn(3, 8, dtype=torch.float16), "b": torch.zeros(3)},
    }
    torch.save(ckpt, tmp_path / "c.pth")
    layers = list(load_layers(tmp_path / "c.pth"))
    assert [(l.name, l.kind, l.weight.dtype) for l in layers] == [
        ("model.enc.weight", "linear", np.float32),  # bfloat16 widened
        ("head.w", "other", np.float16),
    ]
    np.testing.assert_array_equal(layers[0].weight, ckpt["model"]["enc.weight"].float().numpy())


def test_include_exclude():
    model = small_model()
    assert [l.name for l in load_layers(model, include="weight", exclude=r"^[03]\.")] == ["1.weight", "4.weight"]
    assert list(load_layers(model, include="nomatch")) == []
    with pytest.raises(ValueError, match="include is not a valid regular expression"):
        load_layers(model, include="(")
    with pytest.raises(TypeError, match="exclude"):
        load_layers(model, exclude=3)


def test_bad_sources(tmp_path):
    with pytest.raises(TypeError, match="source must be"):
        load_layers(42)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_layers(tmp_path / "absent.safetensors")
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"w": np.ones((2, 2))}))
    with pytest.raises(ValueError, match="unsupported model file type '.pkl'"):
        load_layers(tmp_path / "m.pkl")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not a state_dict
    with pytest.raises(ValueError, match="refused to load"):
        load_layers(tmp_path / "module.pt")
    torch.save(torch.ones(3, 3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="expected a state_dict"):
        load_layers(tmp_path / "tensor.pt")


# ---- files that would run code, and broken files


class Payload:
    """Unpickling this object calls Path.touch(marker): proof of code execution if the marker appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_payloads_are_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"
    evil = {"w": torch.ones(4, 4), "x": Payload(str(marker))}
    torch.save(evil, tmp_path / "zip.pt")  # torch's zip format with a malicious pickle inside
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps(evil))  # a bare pickle
    for name in ["zip.pt", "legacy.pth"]:
        with pytest.raises(ValueError, match="refused to load"):
            load_layers(tmp_path / name)
    np.savez(tmp_path / "obj.npz", w=np.ones((3, 3)), x=np.array([Payload(str(marker))], dtype=object))
    with pytest.raises(ValueError, match="pickled objects are refused"):
        load_layers(tmp_path / "obj.npz")
    # Control: the payload really does run when unpickled unsafely, so its absence above is proof.
    assert not marker.exists()
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(tmp_path / 'legacy.pth')!r}, 'rb'))"],
                   check=True, cwd=os.path.dirname(__file__), capture_output=True)
    assert marker.exists()


def test_truncated_and_garbage_files(tmp_path):
    model = small_model()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    save_safetensors(tmp_path / "m.safetensors", sd)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    np.savez(tmp_path / "m.npz", **sd)
    for name in ["m.safetensors", "m.pt", "m.npz"]:
        data = (tmp_path / name).read_bytes()
        suffix = os.path.splitext(name)[1]
        (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) * 2 // 3])
        (tmp_path / f"junk{suffix}").write_bytes(b"\x00\x01 definitely not a model " * 50)
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        for bad in ["cut", "junk", "empty"]:
            with pytest.raises(ValueError, match=f"{bad}{suffix}"):
                list(load_layers(tmp_path / f"{bad}{suffix}"))


def test_safetensors_opens_lazily_and_validates_first(tmp_path):
    save_safetensors(tmp_path / "m.safetensors", {"a.weight": np.ones((3, 2), np.float32), "bias": np.ones(3, np.float32),
                                                  "ids": np.arange(6).reshape(2, 3)})
    layers = list(load_layers(tmp_path / "m.safetensors"))
    assert [(l.name, l.kind) for l in layers] == [("a.weight", "linear")]
    assert not layers[0].weight.flags.writeable
    assert zipfile.is_zipfile(tmp_path / "m.safetensors") is False
