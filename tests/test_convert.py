"""`htcore convert`, `htcore.nn.from_exported` and `htcore.runtime.from_onnx`: torch models that ship
with their graph (torch.export .pt2, ONNX) become htcore model files whose outputs equal torch's;
unsupported operators, tampered files and torch.save state_dicts are refused with errors naming the fix."""
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import htcore
from htcore.cli import main
from htcore.nn import from_exported, load_exported
from htcore.runtime import from_onnx, load_compressed


def _resnet() -> nn.Module:
    torch.manual_seed(1)
    model = htcore.nn.resnet_small()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # running stats far from the (0, 1) defaults, so folding is exercised
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def _mlp() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 16), nn.Tanh(),
                         nn.Linear(16, 10), nn.Softmax(dim=-1)).eval()


MODELS = {"lenet": lambda: htcore.nn.lenet().eval(), "resnet_small": _resnet, "mlp": _mlp}


def _inputs(batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def _save_exported(model: nn.Module, path, batch: int = 1) -> None:
    torch.export.save(torch.export.export(model, (_inputs(batch),)), str(path))


def _save_onnx(model: nn.Module, path) -> None:
    with warnings.catch_warnings():  # torch deprecates its TorchScript exporter; the dynamo one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (_inputs(1),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_convert_cli_output_matches_torch(tmp_path, capsys, name, fmt):
    model = MODELS[name]()
    src, out = tmp_path / f"model.{fmt}", tmp_path / "model.safetensors"
    (_save_exported if fmt == "pt2" else _save_onnx)(model, src)
    assert main(["convert", str(src), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = load_compressed(out)
    assert converted.input_shape == (1, 28, 28)
    assert converted.is_graph == (name == "resnet_small")
    x = _inputs()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(converted(x.numpy()), expected, rtol=1e-5, atol=1e-6)


def test_batchnorm_is_folded_into_the_convs(tmp_path):
    _save_exported(_resnet(), tmp_path / "r.pt2")
    folded = from_exported(tmp_path / "r.pt2")
    kept = from_exported(tmp_path / "r.pt2", fold_batchnorm=False)
    assert not any(isinstance(l, htcore.runtime.BatchNorm2d) for l in folded.layers)
    assert sum(isinstance(l, htcore.runtime.BatchNorm2d) for l in kept.layers) == 15
    x = _inputs().numpy()
    np.testing.assert_allclose(folded(x), kept(x), rtol=1e-5, atol=1e-6)


def test_exported_program_with_dynamic_batch_converts_in_memory():
    model = _mlp()
    program = torch.export.export(model, (_inputs(2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    converted = from_exported(program)
    x = _inputs(7)
    with torch.no_grad():
        np.testing.assert_allclose(converted(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "resnet_small"])
def test_core_aten_program_after_decompositions_matches_torch(name):
    """run_decompositions() gives convolution, addmm of a permuted weight, view and
    _native_batch_norm_legit_no_training instead of conv2d, linear, flatten and batch_norm."""
    model = MODELS[name]()
    with warnings.catch_warnings():  # torch's own FutureWarning from inside run_decompositions
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.export.export(model, (_inputs(1),)).run_decompositions()
    targets = {str(n.target) for n in program.graph.nodes}
    assert "aten.linear.default" not in targets and "aten.conv2d.default" not in targets
    x = _inputs()
    with torch.no_grad():
        np.testing.assert_allclose(from_exported(program)(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-6)


class _Sigmoid(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x.flatten(1))


def test_unsupported_aten_operator_is_named(tmp_path):
    _save_exported(_Sigmoid(), tmp_path / "s.pt2")
    with pytest.raises(TypeError, match=r"sigmoid.*not supported"):
        from_exported(tmp_path / "s.pt2")
    assert main(["convert", str(tmp_path / "s.pt2"), "-o", str(tmp_path / "s.safetensors")]) == 1
    assert not (tmp_path / "s.safetensors").exists()


def test_ceil_mode_pool_is_refused():
    model = nn.Sequential(nn.MaxPool2d(3, ceil_mode=True), nn.Flatten()).eval()
    with pytest.raises(TypeError, match="max_pool2d"):
        from_exported(torch.export.export(model, (_inputs(1),)))


def _rewrite_member(src, dst, match, edit) -> None:
    """Copy the zip ``src`` to ``dst`` with the members whose name contains ``match`` passed through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, edit(data) if match in item.filename else data)


class _RunsCode:
    def __reduce__(self):
        return (os.getpid, ())


def test_pt2_with_pickled_payloads_or_code_in_expressions_is_refused(tmp_path):
    _save_exported(_mlp(), tmp_path / "m.pt2")

    def pickled_weights(data):
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()

    _rewrite_member(tmp_path / "m.pt2", tmp_path / "w.pt2", "weights_config", pickled_weights)
    with pytest.raises(ValueError, match="pickled payload"):
        load_exported(tmp_path / "w.pt2")
    buffer = io.BytesIO()
    pickle.dump(_RunsCode(), buffer)
    _rewrite_member(tmp_path / "m.pt2", tmp_path / "i.pt2", "sample_inputs", lambda _: buffer.getvalue())
    with pytest.raises(ValueError, match="weights_only=True"):
        load_exported(tmp_path / "i.pt2")

    def evil_expression(data):
        program = json.loads(data)
        program["range_constraints"] = {"__import__('os').getpid()": {"min_val": 1, "max_val": 2}}
        program["graph_module"]["graph"]["sym_int_values"] = {"x": {"as_expr": {"expr_str": "__import__('os').getpid()"}}}
        return json.dumps(program).encode()

    _rewrite_member(tmp_path / "m.pt2", tmp_path / "e.pt2", "models/", evil_expression)
    with pytest.raises(ValueError, match="not a size expression"):
        load_exported(tmp_path / "e.pt2")


def test_state_dict_gets_an_error_naming_the_fix(tmp_path, capsys):
    sd = tmp_path / "weights.pt"
    torch.save(_mlp().state_dict(), sd)
    legacy = tmp_path / "legacy.pt"
    torch.save(_mlp().state_dict(), legacy, _use_new_zipfile_serialization=False)
    for path in (sd, legacy):
        with pytest.raises(ValueError, match=r"torch\.save file.*no graph.*torch\.export.*htcore convert"):
            load_compressed(path)
        for command in (["convert", str(path), "-o", str(tmp_path / "o.safetensors")],
                        ["compress", str(path), "-o", str(tmp_path / "o.safetensors"), "--keep", "0.1"],
                        ["run", str(path), "--input", str(tmp_path / "x.npy")],
                        ["bound", str(path), "--data", "digits"]):
            assert main(command) == 1
            assert "htcore convert" in capsys.readouterr().err


def test_pt2_and_onnx_handed_to_the_other_commands_name_convert(tmp_path):
    _save_exported(_mlp(), tmp_path / "m.pt2")
    _save_onnx(_mlp(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"torch\.export program.*htcore convert"):
        load_compressed(tmp_path / "m.pt2")
    with pytest.raises(ValueError, match=r"ONNX model.*htcore convert"):
        load_compressed(tmp_path / "m.onnx")


def test_cli_exit_codes(tmp_path, capsys):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x01\x02not a model at all")
    assert main(["convert", str(garbage), "-o", str(tmp_path / "o")]) == 1
    assert main(["convert", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o")]) == 1
    for argv in (["convert", str(garbage)], ["convert", str(garbage), "-o", "o", "--input-shape", "1,x"],
                 ["convert", str(garbage), "-o", "o", "--input-shape", "0,28"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
    weights = tmp_path / "weights.safetensors"
    htcore.io.save_safetensors(weights, {"w": np.ones((2, 2), np.float32)})
    assert main(["convert", str(weights), "-o", str(tmp_path / "o")]) == 1
    assert "no graph" in capsys.readouterr().err


# ONNX graphs built directly, for what torch.onnx.export does not emit and for tampering.

def _onnx_model(nodes, initializers, in_shape, out_name="y"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_matmul_add_reshape_mlp_matches_numpy():
    rng = np.random.default_rng(4)
    w1, b1, w2 = rng.standard_normal((12, 8)), rng.standard_normal(8), rng.standard_normal((8, 3))
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["f"]), helper.make_node("MatMul", ["f", "w1"], ["h"]),
             helper.make_node("Add", ["b1", "h"], ["hb"]), helper.make_node("Relu", ["hb"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], alpha=2.0)]
    model = _onnx_model(nodes, {"w1": w1, "b1": b1, "w2": w2}, ["N", 3, 4])
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), "shape"))
    converted = from_onnx(model)
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    f = x.reshape(6, -1).astype(np.float64)
    expected = 2.0 * np.maximum(f @ w1 + b1, 0) @ w2
    np.testing.assert_allclose(converted(x), expected, rtol=1e-5, atol=1e-5)


def test_onnx_batchnorm_and_pools_match_torch():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 2, 3, 3))
    stats = {"g": rng.uniform(0.5, 1.5, 4), "b": rng.standard_normal(4), "m": rng.standard_normal(4), "v": rng.uniform(0.5, 2, 4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("AveragePool", ["n"], ["a"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                              count_include_pad=1),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    converted = from_onnx(_onnx_model(nodes, {"w": w, **stats}, [1, 2, 8, 8]))
    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    t = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w), padding=1)
    t = torch.nn.functional.batch_norm(t, *(torch.from_numpy(stats[k]) for k in "mvgb"), eps=1e-3)
    t = torch.nn.functional.max_pool2d(torch.nn.functional.avg_pool2d(t, 3, 1, 1), 2)
    np.testing.assert_allclose(converted(x), t.mean((2, 3), keepdim=True).numpy(), rtol=1e-5, atol=1e-5)


def test_onnx_matmul_read_before_and_after_its_bias_is_refused():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Add", ["h", "hb"], ["y"])]
    with pytest.raises(ValueError, match="bias Add was merged"):
        from_onnx(_onnx_model(nodes, {"w": np.ones((4, 4)), "b": np.ones(4)}, [1, 4]))


@pytest.mark.parametrize("node, message", [
    (helper.make_node("Sigmoid", ["x"], ["y"]), "operator Sigmoid"),
    (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], ceil_mode=1), "ceil_mode"),
    (helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 0, 1, 1]), "not symmetric"),
    (helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER"), "auto_pad='SAME_UPPER'"),
    (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), "count_include_pad"),
    (helper.make_node("Conv", ["x", "absent"], ["y"]), "'absent' is not an initializer"),
])
def test_onnx_unsupported_or_incomplete_nodes_are_named(node, message):
    model = _onnx_model([node], {"w": np.ones((2, 1, 3, 3))}, [1, 1, 6, 6])
    with pytest.raises(ValueError, match=message):
        from_onnx(model)


def test_tampered_onnx_files_are_refused(tmp_path):
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    good = _onnx_model(nodes, {"w": rng.standard_normal((5, 12)), "b": rng.standard_normal(5)}, [1, 3, 4])
    onnx.save(good, tmp_path / "good.onnx")
    assert from_onnx(tmp_path / "good.onnx").output_shape == (5,)

    missing = onnx.ModelProto()
    missing.CopyFrom(good)
    del missing.graph.initializer[0]
    onnx.save(missing, tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match=r"missing\.onnx.*'w' is not an initializer"):
        from_onnx(tmp_path / "missing.onnx")

    wrong = _onnx_model(nodes, {"w": rng.standard_normal((5, 11)), "b": rng.standard_normal(5)}, [1, 3, 4])
    with pytest.raises(ValueError, match="in_features|expects"):
        from_onnx(wrong)
    wrong_bias = _onnx_model(nodes, {"w": rng.standard_normal((5, 12)), "b": rng.standard_normal(4)}, [1, 3, 4])
    with pytest.raises(ValueError, match="bias"):
        from_onnx(wrong_bias)

    truncated = onnx.ModelProto()
    truncated.CopyFrom(good)
    truncated.graph.initializer[0].raw_data = truncated.graph.initializer[0].raw_data[:-4]
    with pytest.raises(ValueError, match="malformed"):
        from_onnx(truncated)

    external = onnx.ModelProto()
    external.CopyFrom(good)
    external.graph.initializer[0].data_location = TensorProto.EXTERNAL
    with pytest.raises(ValueError, match="external data"):
        from_onnx(external)

    (tmp_path / "cut.onnx").write_bytes((tmp_path / "good.onnx").read_bytes()[:40])
    with pytest.raises(ValueError, match="not a readable ONNX model|is not|must have"):
        from_onnx(tmp_path / "cut.onnx")


def test_onnx_without_static_input_shape_needs_input_shape(tmp_path, capsys):
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    model = _onnx_model(nodes, {"w": np.ones((2, 12))}, ["N", "C", 4])
    onnx.save(model, tmp_path / "dyn.onnx")
    with pytest.raises(ValueError, match="input_shape"):
        from_onnx(model)
    assert main(["convert", str(tmp_path / "dyn.onnx"), "-o", str(tmp_path / "d.safetensors")]) == 1
    assert "--input-shape" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "dyn.onnx"), "-o", str(tmp_path / "d.safetensors"), "--input-shape", "3,4"]) == 0
    assert load_compressed(tmp_path / "d.safetensors").input_shape == (3, 4)
