"""The runtime as a graph: BatchNorm2d, AdaptiveAvgPool2d and Add ops, graph models (`Node`),
their conversion from any fx-traceable torch module and back, and graph model files."""
import json
import operator

import numpy as np
import pytest

import htcore
from htcore import CSRMatrix, load_compressed, save_compressed
from htcore.cli import main
from htcore.io import SafetensorsFile, save_safetensors
from htcore.runtime import (
    Activation,
    AdaptiveAvgPool2d,
    Add,
    BatchNorm2d,
    CompressedModel,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Node,
)

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
hnn = pytest.importorskip("htcore.nn")


def as64(x):
    return torch.from_numpy(np.asarray(x, np.float64))


def close(actual, expected):
    """float32 runtime output against a float64 reference: 1e-5 relative to the output's scale."""
    expected = np.asarray(expected)
    scale = max(float(np.abs(expected).max()), 1e-30) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def one_node(layer, shape):
    return CompressedModel([Node("op", layer, ["input"])], input_shape=shape)


# ---- every new op against torch over fuzzed shapes -------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_batchnorm2d_matches_torch(seed):
    rng = np.random.default_rng(seed)
    batch, c, h, w = rng.choice([1, 2, 7, 64]), rng.integers(1, 9), rng.integers(1, 8), rng.integers(1, 8)
    scale = rng.standard_normal(c).astype(np.float32)
    scale[rng.random(c) < 0.3] = 0.0  # channels switched off entirely
    shift = rng.standard_normal(c).astype(np.float32)
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    expected = as64(x) * as64(scale)[:, None, None] + as64(shift)[:, None, None]
    close(one_node(BatchNorm2d(scale, shift), (c, h, w))(x), expected.numpy())
    close(CompressedModel([BatchNorm2d(scale, shift)])(x), expected.numpy())  # sequential too
    # the torch module's inference form, through the conversion
    bn = nn.BatchNorm2d(int(c), eps=float(rng.uniform(1e-5, 1e-2))).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(int(c)))
        bn.running_var.copy_(torch.rand(int(c)) + 0.1)
        bn.weight.copy_(torch.randn(int(c)))
        bn.bias.copy_(torch.randn(int(c)))
    model = CompressedModel.from_torch(nn.Sequential(bn))
    with torch.no_grad():
        close(model(x), bn.double()(as64(x)).numpy())


@pytest.mark.parametrize("seed", range(10))
def test_adaptive_avg_pool2d_matches_torch(seed):
    rng = np.random.default_rng(100 + seed)
    batch, c, h, w = rng.choice([1, 3, 64]), rng.integers(1, 5), rng.integers(1, 12), rng.integers(1, 12)
    out = (int(rng.integers(1, h + 3)), int(rng.integers(1, w + 3)))  # larger than the input too: bins overlap
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    expected = F.adaptive_avg_pool2d(as64(x), out).numpy()
    model = one_node(AdaptiveAvgPool2d(out), (c, h, w))
    assert model.output_shape == (c, *out)
    close(model(x), expected)
    close(CompressedModel.from_torch(nn.Sequential(nn.AdaptiveAvgPool2d(out)))(x), expected)


@pytest.mark.parametrize("seed", range(6))
def test_add_of_two_branches_matches_torch(seed):
    rng = np.random.default_rng(200 + seed)
    batch, c, h, w = rng.choice([1, 5, 64]), rng.integers(1, 6), rng.integers(3, 9), rng.integers(3, 9)
    weight = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    weight[rng.random(c) < 0.3] = 0.0  # all-zero kernels
    nodes = [Node("conv", Conv2d(weight, kernel_size=3, padding=1), ["input"]),
             Node("relu", Activation("relu"), ["conv"]),
             Node("add", Add(), ["relu", "input"]),
             Node("twice", Add(), ["add", "add"])]
    model = CompressedModel(nodes, input_shape=(c, h, w))
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    branch = F.relu(F.conv2d(as64(x), as64(weight), padding=1)) + as64(x)
    close(model(x), (2 * branch).numpy())
    np.testing.assert_array_equal(x, x.copy())  # the input is never overwritten


def test_in_place_ops_never_touch_values_read_later():
    """relu and BatchNorm run in place only on a value nobody reads afterwards, Flatten views included."""
    rng = np.random.default_rng(3)
    scale, shift = rng.standard_normal(2).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    nodes = [Node("bn", BatchNorm2d(scale, shift), ["input"]),
             Node("flat", Flatten(), ["bn"]),
             Node("relu", Activation("relu"), ["flat"]),
             Node("bn2", BatchNorm2d(scale, shift), ["bn"]),
             Node("flat2", Flatten(), ["bn2"]),
             Node("sum", Add(), ["relu", "flat2"])]
    x = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    bn = as64(x) * as64(scale)[:, None, None] + as64(shift)[:, None, None]
    expected = F.relu(bn).reshape(3, -1) + (bn * as64(scale)[:, None, None] + as64(shift)[:, None, None]).reshape(3, -1)
    close(CompressedModel(nodes, input_shape=(2, 2, 2))(x), expected.numpy())


def test_fusion_in_graphs():
    rng = np.random.default_rng(4)
    conv = Conv2d(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), kernel_size=3)
    fused = CompressedModel([Node("conv", conv, ["input"]), Node("relu", Activation("relu"), ["conv"])], input_shape=(2, 5, 5))
    assert [(s.node, s.activation) for s in fused._graph] == [(0, "relu")]
    shared = CompressedModel([Node("conv", conv, ["input"]), Node("relu", Activation("relu"), ["conv"]),
                              Node("add", Add(), ["relu", "conv"])], input_shape=(2, 5, 5))
    assert [s.activation for s in shared._graph] == ["none", "none", "none"]  # conv read twice: not fused
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = F.conv2d(as64(x), as64(conv.weight))
    close(fused(x), F.relu(y).numpy())
    close(shared(x), (F.relu(y) + y).numpy())


# ---- graph construction --------------------------------------------------------------------------

def small_nodes():
    rng = np.random.default_rng(5)
    return [Node("conv", Conv2d(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), kernel_size=3, padding=1), ["input"]),
            Node("add", Add(), ["conv", "conv"]),
            Node("pool", AdaptiveAvgPool2d(1), ["add"]),
            Node("flat", Flatten(), ["pool"]),
            Node("fc", Linear(rng.standard_normal((3, 4)).astype(np.float32)), ["flat"])]


def test_graph_model_properties():
    model = CompressedModel(small_nodes(), {"k": 1}, input_shape=(1, 6, 6))
    assert model.is_graph and [n.name for n in model.nodes] == ["conv", "add", "pool", "flat", "fc"]
    assert model.layers == [n.layer for n in model.nodes]
    assert model.input_shape == (1, 6, 6) and model.output_shape == (3,) and model.in_features == 36
    assert "conv=Conv2d" in repr(model) and model.metadata == {"k": 1}
    assert CompressedModel(small_nodes()).output_shape is None  # no input_shape: nothing inferred
    lenet = CompressedModel.from_torch(hnn.lenet())
    assert not lenet.is_graph and lenet.nodes is None
    assert lenet.in_features is None  # an image model without input_shape does not say
    assert CompressedModel.from_torch(hnn.lenet(), input_shape=(1, 28, 28)).in_features == 784
    mlp = CompressedModel([Flatten(), Linear(np.ones((2, 12), np.float32))])
    assert mlp.in_features == 12 and mlp.output_shape is None


@pytest.mark.parametrize("edit, error, message", [
    (lambda n: n.__setitem__(1, Node("conv", Add(), ["conv", "conv"])), ValueError, "node 'conv' .*duplicate name"),
    (lambda n: n.__setitem__(2, Node("pool", AdaptiveAvgPool2d(1), ["nowhere"])), ValueError,
     "node 'pool' .*input 'nowhere' is not an earlier node"),
    (lambda n: n.__setitem__(1, Node("add", Add(), ["conv", "fc"])), ValueError, "node 'add' .*'fc' is a later node"),
    (lambda n: n.__setitem__(1, Node("add", Add(), ["add", "conv"])), ValueError, "node 'add' .*not an earlier node"),
    (lambda n: n.insert(1, Node("dead", Activation("relu"), ["conv"])), ValueError, "node 'dead' is not used"),
    (lambda n: n.__setitem__(4, Linear(np.ones((3, 4), np.float32))), TypeError, "not a mix"),
    (lambda n: n.__setitem__(4, Node("fc", Linear(np.ones((3, 5), np.float32)), ["flat"])), ValueError,
     r"node 'fc': Linear expects \(5,\) features per sample, got \(4,\)"),
    (lambda n: n.__setitem__(2, Node("pool", MaxPool2d(7), ["add"])), ValueError, "node 'pool': MaxPool2d window 7"),
])
def test_graph_validation_names_the_node(edit, error, message):
    nodes = small_nodes()
    edit(nodes)
    with pytest.raises(error, match=message):
        CompressedModel(nodes, input_shape=(1, 6, 6))


def test_node_validation():
    with pytest.raises(ValueError, match="takes 2 inputs, got 1"):
        Node("a", Add(), ["input"])
    with pytest.raises(ValueError, match="takes 1 input, got 2"):
        Node("a", Flatten(), ["input", "input"])
    with pytest.raises(ValueError, match="other than 'input'"):
        Node("input", Flatten(), ["input"])
    with pytest.raises(ValueError, match="non-empty string"):
        Node("", Flatten(), ["input"])
    with pytest.raises(TypeError, match="layer must be a runtime layer"):
        Node("a", "relu", ["input"])
    with pytest.raises(TypeError, match="Add, which takes two inputs"):
        CompressedModel([Add()])
    with pytest.raises(ValueError, match="scale contains 1 non-finite"):
        BatchNorm2d([1.0, np.inf], [0.0, 0.0])
    with pytest.raises(ValueError, match="same positive length"):
        BatchNorm2d([1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAvgPool2d(0)
    with pytest.raises(ValueError, match="input_shape"):
        CompressedModel(small_nodes(), input_shape=(1, 0, 6))
    model = CompressedModel(small_nodes(), input_shape=(1, 6, 6))
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 6, 6\)"):
        model(np.ones((2, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        model(np.full((2, 1, 6, 6), np.nan, np.float32))
    with pytest.raises(ValueError, match="node 'conv'"):  # without input_shape the kernels check at run time
        CompressedModel(small_nodes())(np.ones((2, 3, 6, 6), np.float32))


# ---- conversion from torch -----------------------------------------------------------------------

def perturbed_resnet(seed=0):
    """resnet_small in eval mode with BatchNorm statistics and affine parameters far from their
    initial values, so a wrong fold would show."""
    net = hnn.resnet_small(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.2)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
    return net.eval()


def images(batch, seed=0, channels=1, size=28):
    return np.random.default_rng(seed).standard_normal((batch, channels, size, size)).astype(np.float32)


@pytest.mark.parametrize("fold", [True, False])
def test_resnet_converts_saves_loads_and_matches_torch(tmp_path, fold):
    net = perturbed_resnet()
    x = images(3)
    with torch.no_grad():
        expected = net.double()(as64(x)).numpy()
    net.float()
    model = CompressedModel(hnn.to_runtime_layers(net, fold_batchnorm=fold), {"fold": fold}, input_shape=(1, 28, 28))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Add") == 6 and kinds.count("BatchNorm2d") == (0 if fold else 15)
    assert {"layer1.0.conv1", "layer1.0.relu_1", "add_5"} <= {n.name for n in model.nodes}
    close(model(x), expected)
    path = tmp_path / "resnet.safetensors"
    save_compressed(path, model)
    loaded = load_compressed(path)
    assert [n.name for n in loaded.nodes] == [n.name for n in model.nodes] and loaded.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(loaded(x), model(x))
    back = hnn.to_torch(loaded)
    assert isinstance(back, torch.fx.GraphModule) and not back.training
    with torch.no_grad():
        close(back.double()(as64(x)).numpy(), expected)
    again = CompressedModel.from_torch(hnn.to_torch(loaded).float(), input_shape=(1, 28, 28))
    np.testing.assert_allclose(again(x), model(x), rtol=1e-5, atol=1e-5)


def test_resnet_outputs_identical_at_1_and_2_threads():
    model = CompressedModel.from_torch(perturbed_resnet(1), input_shape=(1, 28, 28))
    x = images(2, seed=1)
    htcore.set_num_threads(1)
    one = model(x)
    htcore.set_num_threads(2)
    np.testing.assert_array_equal(model(x), one)


def test_sparsified_resnet_converts_and_folds_into_csr_weights(tmp_path):
    net = perturbed_resnet(2)
    hnn.sparsify_model(net, keep=0.3)
    model = CompressedModel.from_torch(net, input_shape=(1, 28, 28))
    convs = [layer for layer in model.layers if isinstance(layer, Conv2d)]
    assert len(convs) == 15 and all(c.sparse for c in convs)
    assert not any(isinstance(layer, BatchNorm2d) for layer in model.layers)  # folded into the CSR values
    x = images(2, seed=2)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    close(model(x), expected)
    path = tmp_path / "sparse.safetensors"
    save_compressed(path, model)
    np.testing.assert_array_equal(load_compressed(path)(x), model(x))


def codebook_conv(conv):
    """``conv`` as a SparseConv2d whose CSR weight stores 16-level codebook codes."""
    dense = conv.weight.detach().reshape(conv.out_channels, -1).numpy()
    csr = htcore.topk_sparsify(dense, 0.5)
    codebook = np.linspace(csr.data.min(), csr.data.max(), 16).astype(np.float32)
    codes = np.abs(csr.data[:, None] - codebook[None, :]).argmin(axis=1).astype(np.uint8)
    weight = CSRMatrix(codes, csr.indices, csr.indptr, csr.shape, codebook=codebook)
    return hnn.SparseConv2d(weight, kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding)


def test_codebook_weights_keep_batchnorm_as_an_op():
    net = perturbed_resnet(3)
    net.conv1 = codebook_conv(net.conv1)
    model = CompressedModel.from_torch(net, input_shape=(1, 28, 28))
    assert [n.name for n in model.nodes][:2] == ["conv1", "bn1"] and isinstance(model.layers[1], BatchNorm2d)
    assert sum(isinstance(layer, BatchNorm2d) for layer in model.layers) == 1
    x = images(2, seed=3)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    close(model(x), expected)


def test_folding_scales_csr_rows_with_empty_channels():
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)
    weight[[1, 3]] = 0.0  # all-zero kernels: empty CSR rows
    conv = nn.Conv2d(2, 5, 3, padding=1)
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        bn.running_mean.copy_(torch.randn(5))
        bn.running_var.copy_(torch.rand(5) + 0.5)
        bn.weight.copy_(torch.randn(5))
    net = nn.Sequential(conv, bn, nn.ReLU()).eval()
    x = images(4, seed=6, channels=2, size=7)
    with torch.no_grad():
        expected = net.double()(as64(x)).numpy()
    net.float()
    net[0] = hnn.SparseConv2d(htcore.topk_sparsify(weight.reshape(5, 18), k=3 * 18), conv.bias.detach(),
                              kernel_size=3, padding=1)
    layers = hnn.to_runtime_layers(net)
    assert [type(layer).__name__ for layer in layers] == ["Conv2d", "Activation"] and layers[0].sparse
    assert layers[0].weight.nnz == 3 * 18
    close(CompressedModel(layers)(x), expected)


class Functional(nn.Module):
    """The functional and method forms fx records, and no-op modules."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.skip = nn.Identity()
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        y = torch.add(y, self.skip(torch.relu(self.conv(x))))  # the same conv twice: "conv" and "conv_1"
        y = F.max_pool2d(y.add(y).relu(), 2)
        y = F.avg_pool2d(y, 2, 1)
        z = F.adaptive_avg_pool2d(y, (2, 2))
        a = self.fc(self.drop(z.view(z.size(0), -1)))
        b = self.fc(torch.flatten(z, 1)) + self.fc(z.flatten(1)) + self.fc(z.reshape(z.size(0), -1))
        return a + b


def test_functional_forms_convert_and_match_torch():
    torch.manual_seed(0)
    net = Functional().eval()
    model = CompressedModel.from_torch(net, input_shape=(2, 9, 9))
    assert {"conv", "conv_1", "fc", "fc_1", "fc_2", "fc_3"} <= {n.name for n in model.nodes}
    assert not any(n.name.startswith(("drop", "skip", "size")) for n in model.nodes)
    x = images(5, seed=7, channels=2, size=9)
    with torch.no_grad():
        close(model(x), net.double()(as64(x)).numpy())


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return F.relu(self.fc(torch.flatten(self.bn(self.conv(x)), 1)))


def test_a_traced_chain_is_a_sequential_model():
    net = Chain().eval()
    model = CompressedModel.from_torch(net)
    assert not model.is_graph and [type(layer).__name__ for layer in model.layers] == ["Conv2d", "Flatten", "Linear", "Activation"]
    x = images(2, seed=8, size=6)
    with torch.no_grad():
        close(model(x), net.double()(as64(x)).numpy())
    assert isinstance(hnn.to_torch(model), nn.Sequential)


def test_a_sequential_of_residual_blocks_is_traced():
    from htcore.nn._models import BasicBlock

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), BasicBlock(4, 8, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    model = CompressedModel.from_torch(net, input_shape=(1, 9, 9))
    assert model.is_graph and "1.conv1" in {n.name for n in model.nodes}
    x = images(3, seed=14, size=9)
    with torch.no_grad():
        close(model(x), net.double()(as64(x)).numpy())


class Unsupported(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LSTM(2, 2) if how == "module" else nn.ReLU())
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        if self.how == "module":
            return self.body(x)
        y = self.body(x)
        if self.how == "function":
            return torch.sigmoid(y)
        if self.how == "method":
            return y.mean(1)
        if self.how == "constant":
            return y + 1.0
        if self.how == "two inputs":
            return y
        return y * self.scale  # a parameter read directly


@pytest.mark.parametrize("how, message", [
    ("module", r"node 'body_1' \(call_module body.1.*module 'body.1' is a LSTM"),
    ("function", r"node 'sigmoid' \(call_function sigmoid.*not supported"),
    ("method", r"node 'mean' \(call_method mean.*not supported"),
    ("constant", r"node 'add' \(call_function add\): expects 2 tensor arguments"),
    ("parameter", r"node 'scale' \(get_attr scale.*not supported"),
])
def test_unsupported_modules_and_functions_name_the_culprit(how, message):
    with pytest.raises(TypeError, match=message):
        CompressedModel.from_torch(Unsupported(how))


def test_conversion_refusals():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    class Sigmoid(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.ReLU(), Sigmoid())

        def forward(self, x):
            return self.block(x)

    with pytest.raises(TypeError, match=r"node 'sigmoid' \(call_function sigmoid, in module 'block.1'\)"):
        hnn.to_runtime_graph(Nested())

    with pytest.raises(TypeError, match="exactly one tensor"):
        hnn.to_runtime_graph(TwoInputs())
    with pytest.raises(ValueError, match="track_running_stats=False"):
        CompressedModel.from_torch(nn.Sequential(nn.BatchNorm2d(2, track_running_stats=False)))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        hnn.to_runtime_graph(lambda x: x)
    with pytest.raises(TypeError, match="output is its input"):
        hnn.to_runtime_graph(nn.Identity())
    with pytest.raises(ValueError, match="needs its input_shape"):
        save_compressed("never-written.safetensors", CompressedModel(small_nodes()))


@pytest.mark.parametrize("suffix", ["-x", ".forward", ""])
def test_to_torch_graph_with_names_that_are_not_module_paths(suffix):
    nodes = small_nodes()
    nodes = [Node(f"{n.name}{suffix}", n.layer, [i if i == "input" else f"{i}{suffix}" for i in n.inputs]) for n in nodes]
    model = CompressedModel(nodes, input_shape=(1, 6, 6))
    back = hnn.to_torch(model)
    assert any(n.op == "call_function" and n.target is operator.add for n in back.graph.nodes)
    assert ("conv" in dict(back.named_children())) == (suffix == "")
    x = images(2, seed=9, size=6)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), model(x), rtol=1e-5, atol=1e-5)


# ---- graph model files ---------------------------------------------------------------------------

def graph_model():
    rng = np.random.default_rng(10)
    conv = Conv2d(htcore.topk_sparsify(rng.standard_normal((4, 9)).astype(np.float32), 0.6), kernel_size=3, padding=1)
    nodes = [Node("conv", conv, ["input"]),
             Node("bn", BatchNorm2d(rng.random(4) + 0.5, rng.standard_normal(4)), ["conv"]),
             Node("relu", Activation("relu"), ["bn"]),
             Node("add", Add(), ["relu", "conv"]),
             Node("pool", AdaptiveAvgPool2d((2, 1)), ["add"]),
             Node("flat", Flatten(), ["pool"]),
             Node("fc", Linear(rng.standard_normal((3, 8)).astype(np.float32), np.zeros(3)), ["flat"])]
    return CompressedModel(nodes, {"name": "g"}, input_shape=(1, 5, 5))


@pytest.fixture
def graph_file(tmp_path):
    path = tmp_path / "graph.safetensors"
    save_compressed(path, graph_model())
    return path


def test_graph_file_round_trip_and_format(graph_file):
    with SafetensorsFile(graph_file) as f:
        arch = json.loads(f.metadata["architecture"])
        assert json.loads(f.metadata["input_shape"]) == [1, 5, 5]
        assert f["layers.1.scale"].dtype == np.float32 and f["layers.1.shift"].shape == (4,)
    assert [(e["name"], e["inputs"]) for e in arch][:4] == [
        ("conv", ["input"]), ("bn", ["conv"]), ("relu", ["bn"]), ("add", ["relu", "conv"])]
    assert arch[1]["type"] == "batchnorm2d" and arch[1]["channels"] == 4
    assert arch[4] == {"type": "adaptiveavgpool2d", "output_size": [2, 1], "name": "pool", "inputs": ["add"]}
    loaded = load_compressed(graph_file)
    x = images(6, seed=11, size=5)
    np.testing.assert_array_equal(loaded(x), graph_model()(x))
    assert loaded.metadata == {"name": "g"} and loaded.output_shape == (3,)


def test_sequential_files_record_input_shape_only_when_known(tmp_path):
    plain, shaped = tmp_path / "plain.safetensors", tmp_path / "shaped.safetensors"
    save_compressed(plain, hnn.lenet())
    save_compressed(shaped, CompressedModel.from_torch(hnn.lenet(), input_shape=(1, 28, 28)))
    with SafetensorsFile(plain) as f:
        assert "input_shape" not in f.metadata and "name" not in json.loads(f.metadata["architecture"])[0]
    assert load_compressed(plain).input_shape is None and load_compressed(shaped).input_shape == (1, 28, 28)


def test_sequential_file_with_batchnorm_and_adaptive_pool_round_trips(tmp_path):
    torch.manual_seed(2)
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(), nn.Linear(18, 4)).eval()
    with torch.no_grad():
        for bn in (net[0], net[2]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    model = CompressedModel.from_torch(net)
    assert [type(layer).__name__ for layer in model.layers] == [
        "BatchNorm2d", "Conv2d", "Activation", "AdaptiveAvgPool2d", "Flatten", "Linear"]  # the second BN folded
    path = tmp_path / "seq.safetensors"
    save_compressed(path, model)
    x = images(3, seed=15, channels=2, size=8)
    with torch.no_grad():
        close(load_compressed(path)(x), net.double()(as64(x)).numpy())


def edit(meta, fn):
    arch = json.loads(meta["architecture"])
    fn(arch)
    meta["architecture"] = json.dumps(arch)


def rename(arch, i, name):
    arch[i]["name"] = name


TAMPERED = [
    (lambda t, m: edit(m, lambda a: a[2].__setitem__("inputs", ["nowhere"])), "input 'nowhere' is not an earlier node"),
    (lambda t, m: edit(m, lambda a: a[1].__setitem__("inputs", ["relu"])), "'relu' is a later node"),
    (lambda t, m: edit(m, lambda a: a[1].__setitem__("inputs", ["bn"])), "node 'bn'.*input 'bn' is not an earlier"),
    (lambda t, m: edit(m, lambda a: rename(a, 2, "bn")), "node 'bn' .*duplicate name"),
    (lambda t, m: edit(m, lambda a: rename(a, 2, "input")), "'name' must be a non-empty string other than 'input'"),
    (lambda t, m: edit(m, lambda a: rename(a, 2, "")), "'name' must be a non-empty string"),
    (lambda t, m: edit(m, lambda a: a[3].__setitem__("inputs", ["relu"])), r"architecture\[3\] \(node 'add'\): a add entry takes 2"),
    (lambda t, m: edit(m, lambda a: a[2].__setitem__("inputs", ["bn", "conv"])), "a activation entry takes 1 input, got 2"),
    (lambda t, m: edit(m, lambda a: a[2].__setitem__("inputs", "bn")), "'inputs' must be a list of names"),
    (lambda t, m: edit(m, lambda a: a[3].__setitem__("inputs", ["relu", "input"])), r"node 'add'\): Add needs two inputs of the same shape"),
    (lambda t, m: edit(m, lambda a: a[3].__setitem__("inputs", ["bn", "conv"])), "node 'relu' is not used"),
    (lambda t, m: edit(m, lambda a: [a[1].pop("name"), a[1].pop("inputs")]), r"architecture\[1\] has no 'name'/'inputs'"),
    (lambda t, m: edit(m, lambda a: a[1].pop("name")), r"architecture\[1\]: 'name' must be a non-empty string"),
    (lambda t, m: m.pop("input_shape"), "graph file .*needs the metadata key 'input_shape'"),
    (lambda t, m: m.__setitem__("input_shape", "[2, 5, 5]"), "node 'conv'.*Conv2d expects 1 input channels"),
    (lambda t, m: m.__setitem__("input_shape", "[1, 5]"), r"Conv2d needs \(C, H, W\) images"),
    (lambda t, m: m.__setitem__("input_shape", "[1, 0, 5]"), "input_shape must be a non-empty list of positive integers"),
    (lambda t, m: m.__setitem__("input_shape", "[1, 65536, 65536]"), "more than 2\\*\\*31 elements"),
    (lambda t, m: m.__setitem__("input_shape", "[1, 1.5, 5]"), "input_shape must be"),
    (lambda t, m: edit(m, lambda a: a[1].__setitem__("channels", 5)), "BatchNorm2d has 5 channels"),
    (lambda t, m: edit(m, lambda a: a[1].__setitem__("channels", 2**40)), "channels must be a positive integer below 2\\*\\*31"),
    (lambda t, m: edit(m, lambda a: a[4].__setitem__("output_size", [2**20, 2**20])), "output_size .* is too large"),
    (lambda t, m: edit(m, lambda a: a[4].__setitem__("output_size", [30000, 30000])), "more than 2\\*\\*31 elements"),
    (lambda t, m: edit(m, lambda a: a[4].__setitem__("output_size", [0, 1])), "'output_size' must be two integers >= 1"),
    (lambda t, m: edit(m, lambda a: a[6].__setitem__("shape", [3, 9])), r"node 'fc'.*Linear expects \(9,\) features"),
    (lambda t, m: edit(m, lambda a: a[6].__setitem__("shape", [2**21, 2**21])), "too large"),
    (lambda t, m: edit(m, lambda a: a[0].update(shape=[4, 1, 9, 1], padding=[0, 0])), "Conv2d window 9 .* larger than the padded input"),
    (lambda t, m: edit(m, lambda a: a[3].__setitem__("type", "mul")), "unknown layer type 'mul'"),
    (lambda t, m: edit(m, lambda a: a[5].__setitem__("extra", 1)), "keys must be"),
    (lambda t, m: t.__setitem__("layers.1.scale", np.full(4, np.nan, np.float32)), "scale contains non-finite"),
    (lambda t, m: t.__setitem__("layers.1.shift", np.ones(4)), "shift must be float32 of shape"),
    (lambda t, m: t.__setitem__("layers.1.scale", np.ones(3, np.float32)), "scale must be float32 of shape \\(4,\\)"),
    (lambda t, m: t.pop("layers.1.shift"), "missing tensor 'layers.1.shift'"),
    (lambda t, m: t.__setitem__("layers.4.scale", np.ones(4, np.float32)), "tensors not used"),
]


@pytest.mark.parametrize("change, message", TAMPERED)
def test_tampered_graph_files_are_refused_before_anything_runs(tmp_path, graph_file, change, message, patch_kernel):
    calls = []
    patch_kernel("sparse_conv2d", lambda *a, **k: calls.append(1))
    with SafetensorsFile(graph_file) as f:
        tensors = {k: np.array(f[k]) for k in f}
        meta = dict(f.metadata)
    change(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    save_safetensors(bad, tensors, meta)
    with pytest.raises(ValueError, match=message):
        load_compressed(bad)
    assert not calls


def test_structure_and_shapes_are_checked_before_any_layer_is_built(tmp_path, graph_file, monkeypatch):
    """Shape mismatches and bad references are refused from the JSON alone: no tensor becomes a layer."""
    from htcore.runtime import _model_file

    with SafetensorsFile(graph_file) as f:
        tensors = {k: np.array(f[k]) for k in f}
        meta = dict(f.metadata)
    monkeypatch.setattr(_model_file, "_layer", lambda *a: pytest.fail("a layer was built"))
    for change, message in [(lambda m: m.__setitem__("input_shape", "[3, 5, 5]"), "input channels"),
                            (lambda m: edit(m, lambda a: a[2].__setitem__("inputs", ["fc"])), "later node")]:
        edited = dict(meta)
        change(edited)
        save_safetensors(tmp_path / "bad.safetensors", tensors, edited)
        with pytest.raises(ValueError, match=message):
            load_compressed(tmp_path / "bad.safetensors")


def test_an_add_entry_needs_a_graph_file(tmp_path):
    path = tmp_path / "seq.safetensors"
    save_compressed(path, CompressedModel([Flatten()]))
    with SafetensorsFile(path) as f:
        meta = dict(f.metadata)
    meta["architecture"] = json.dumps([{"type": "add"}])
    save_safetensors(path, {}, meta)
    with pytest.raises(ValueError, match="'add' entry needs a graph file"):
        load_compressed(path)


# ---- htcore run on CNN and graph files -----------------------------------------------------------

def run(args, capsys):
    code = main(["run", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_runs_graph_and_cnn_files(tmp_path, graph_file, capsys):
    x = images(5, seed=12, size=5)
    np.save(tmp_path / "flat.npy", x.reshape(5, -1))  # flat samples: reshaped to the file's input_shape
    code, out, _ = run([graph_file, "--input", tmp_path / "flat.npy", "--batch", 2], capsys)
    assert code == 0 and out.split() == [str(v) for v in graph_model().predict(x)]
    cnn = tmp_path / "lenet.safetensors"
    save_compressed(cnn, hnn.lenet().eval())
    digits = images(3, seed=13)
    np.save(tmp_path / "digits.npy", digits.reshape(3, -1))
    code, _, err = run([cnn, "--input", tmp_path / "digits.npy"], capsys)
    assert code == 1 and "--input-shape C,H,W" in err
    code, out, _ = run([cnn, "--input", tmp_path / "digits.npy", "--input-shape", "1,28,28"], capsys)
    assert code == 0 and out.split() == [str(v) for v in load_compressed(cnn).predict(digits)]
    with pytest.raises(SystemExit) as usage:  # a malformed value is a usage error (exit 2)
        run([graph_file, "--input", tmp_path / "flat.npy", "--input-shape", "1,x"], capsys)
    assert usage.value.code == 2 and "comma-separated" in capsys.readouterr().err
    code, _, err = run([graph_file, "--input", tmp_path / "flat.npy", "--input-shape", "1,5,6"], capsys)
    assert code == 1 and "differs from the model's input_shape" in err
    np.save(tmp_path / "wrong.npy", np.ones((2, 7), np.float32))
    code, _, err = run([graph_file, "--input", tmp_path / "wrong.npy"], capsys)
    assert code == 1 and "takes (1, 5, 5)" in err
