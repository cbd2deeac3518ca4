"""The torch-free runtime on sequential CNNs: Conv2d, MaxPool2d, AvgPool2d layers and their conversion."""
import json

import numpy as np
import pytest

import htcore
from htcore import load_compressed, save_compressed
from htcore.io import SafetensorsFile, save_safetensors
from htcore.runtime import Activation, AvgPool2d, CompressedModel, Conv2d, Flatten, Linear, MaxPool2d

torch = pytest.importorskip("torch")
nn = torch.nn


def lenet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 10),
    ).eval()


def strided_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), nn.Tanh(), nn.AvgPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 6, (3, 2), padding=(1, 0), dilation=(1, 2)), nn.MaxPool2d(2, stride=1, padding=1),
        nn.Flatten(), nn.Linear(6 * 6 * 4, 7), nn.Softmax(dim=1),
    ).eval()


def reference(module, x):
    with torch.no_grad():
        return module.double()(torch.from_numpy(x).double()).numpy()


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("sparsify", [False, True])
def test_lenet_matches_torch(batch, sparsify):
    net = lenet()
    if sparsify:
        htcore.nn.sparsify_model(net, keep=0.3)
    model = CompressedModel.from_torch(net)
    assert sum(isinstance(layer, Conv2d) and layer.sparse == sparsify for layer in model.layers) == 2
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    out = model(x)
    assert out.dtype == np.float32 and out.shape == (batch, 10)
    if sparsify:  # SparseConv2d/SparseLinear run in float32 under torch too: compare with the float32 modules
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
    else:
        expected = reference(net, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict(x), out.argmax(axis=1))


def test_sparse_lenet_matches_dense_torch_reference():
    net = lenet(1)
    htcore.nn.sparsify_model(net, keep=0.3)
    model = CompressedModel.from_torch(net)
    dense = htcore.nn.to_torch(model)  # densified weights, plain torch modules
    x = np.random.default_rng(3).standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(model(x), reference(dense, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 5])
def test_stride_padding_groups_avgpool_match_torch(batch):
    net = strided_net()
    x = np.random.default_rng(0).standard_normal((batch, 4, 20, 20)).astype(np.float32)
    model = CompressedModel.from_torch(net)
    np.testing.assert_allclose(model(x), reference(net, x), rtol=1e-5, atol=1e-5)


def test_fusion_and_image_activations():
    net = lenet()
    model = CompressedModel.from_torch(net)
    steps = [(type(s.layer).__name__, s.activation) for s in model._plan]
    assert steps[:2] == [("Conv2d", "relu"), ("MaxPool2d", "none")]
    # an activation after a pool runs on the images; the model input is never written to
    pool_first = nn.Sequential(nn.MaxPool2d(2), nn.ReLU(), nn.Flatten()).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    before = x.copy()
    relu_first = CompressedModel([Activation("relu"), Flatten()])
    np.testing.assert_array_equal(relu_first(x), np.maximum(before, 0).reshape(2, -1))
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(CompressedModel.from_torch(pool_first)(x), reference(pool_first, x).astype(np.float32))


def test_dense_and_csr_weights_give_the_same_outputs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    csr = htcore.topk_sparsify(w.reshape(6, -1), 1.0)
    x = rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    dense = CompressedModel([Conv2d(w, b, kernel_size=3, groups=2, padding=1)])
    sparse = CompressedModel([Conv2d(csr, b, kernel_size=(3, 3), groups=2, padding=(1, 1))])
    np.testing.assert_array_equal(dense(x), sparse(x))
    assert dense.layers[0].in_channels == sparse.layers[0].in_channels == 4
    assert "Conv2d(4->6" in repr(dense) and "sparse" in repr(sparse)


def test_to_torch_round_trip():
    net = strided_net(2)
    htcore.nn.sparsify_model(net, keep=0.5)
    model = CompressedModel.from_torch(net)
    back = htcore.nn.to_torch(model)
    kinds = [type(m).__name__ for m in back]
    assert kinds == ["Conv2d", "Tanh", "AvgPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "Softmax"]
    assert back[0].stride == (2, 2) and back[0].padding == (1, 1) and back[0].groups == 2
    assert back[3].dilation == (1, 2) and back[3].kernel_size == (3, 2)
    x = np.random.default_rng(1).standard_normal((3, 4, 20, 20)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), model(x), rtol=1e-5, atol=1e-6)
    again = CompressedModel.from_torch(back)
    np.testing.assert_allclose(again(x), model(x), rtol=1e-5, atol=1e-6)


def test_threads_do_not_change_outputs():
    net = lenet(4)
    htcore.nn.sparsify_model(net, keep=0.3)
    model = CompressedModel.from_torch(net)
    x = np.random.default_rng(2).standard_normal((16, 1, 28, 28)).astype(np.float32)
    before = htcore.get_num_threads()
    try:
        htcore.set_num_threads(1)
        one = model(x)
        htcore.set_num_threads(2)
        two = model(x)
    finally:
        htcore.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_code_length_charges_image_layers():
    from htcore.certification import code_length
    from htcore.certification._code_length import elias_gamma_bits

    model = cnn_model()
    cl = code_length(model)
    assert [t.name for t in cl.tensors] == ["layers.0.weight", "layers.3.weight", "layers.3.bias", "layers.6.weight"]
    assert cl.tensors[0].kind != "dense" and cl.tensors[1].kind == "dense" and cl.tensors[1].n == 6 * 2 * 3 * 3
    g = elias_gamma_bits
    conv0 = 3 + 2 + 2 + sum(g(v + 1) for v in [3, 3, 1, 1, 1, 1, 4, 2, 1, 1, 1])
    pool2 = 3 + 2 + sum(g(v + 1) for v in [2, 2, 2, 2, 0, 0])
    conv3 = 3 + 2 + 2 + sum(g(v + 1) for v in [3, 3, 1, 1, 0, 0, 6, 2, 1, 1, 2])
    pool4 = 3 + 2 + sum(g(v + 1) for v in [3, 3, 1, 1, 1, 1])
    linear6 = 3 + g(6) + g(55) + 2
    assert cl.architecture_bits == g(8) + conv0 + 3 + pool2 + conv3 + pool4 + 3 + linear6


def cnn_model(seed=0):
    rng = np.random.default_rng(seed)
    c0 = htcore.topk_sparsify(rng.standard_normal((4, 18)).astype(np.float32), 0.4)
    return CompressedModel([
        Conv2d(c0, kernel_size=3, padding=1), Activation("relu"), MaxPool2d(2),
        Conv2d(rng.standard_normal((6, 2, 3, 3)).astype(np.float32), rng.standard_normal(6).astype(np.float32),
               kernel_size=3, groups=2, dilation=(1, 1)),
        AvgPool2d(3, stride=1, padding=1), Flatten(),
        Linear(htcore.topk_sparsify(rng.standard_normal((5, 54)).astype(np.float32), 0.5)),
    ], {"name": "cnn"})


@pytest.mark.parametrize("net", ["lenet", "cnn", "strided"])
def test_save_load_gives_the_same_outputs_bitwise(tmp_path, net):
    if net == "cnn":
        model, shape = cnn_model(), (3, 2, 10, 10)
    elif net == "lenet":
        torch_net = lenet()
        htcore.nn.sparsify_model(torch_net, keep=0.3)
        model, shape = CompressedModel.from_torch(torch_net), (16, 1, 28, 28)
    else:
        model, shape = CompressedModel.from_torch(strided_net()), (2, 4, 20, 20)
    path = tmp_path / "m.safetensors"
    save_compressed(path, model)
    loaded = load_compressed(path)
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
    np.testing.assert_array_equal(loaded(x[:1]), model(x[:1]))


def tamper(tmp_path, change):
    src = tmp_path / "ok.safetensors"
    save_compressed(src, cnn_model())
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
    (lambda t, m: set_arch(m, 0, extra=1), r"architecture\[0\]: keys must be"),
    (lambda t, m: set_arch(m, 2, ceil_mode=True), r"architecture\[2\]: keys must be"),
    (lambda t, m: set_arch(m, 0, storage="coo"), "storage must be 'csr' or 'dense'"),
    (lambda t, m: set_arch(m, 0, shape=[4, 2, 3]), "shape must be four positive integers"),
    (lambda t, m: set_arch(m, 0, shape=[4, 2, 3, 0]), "shape must be four positive integers"),
    (lambda t, m: set_arch(m, 0, shape=[4, 2, 3, 3.0]), "shape must be four positive integers"),
    (lambda t, m: set_arch(m, 0, shape=[2**20, 2**20, 3, 3]), "too large"),
    (lambda t, m: set_arch(m, 0, shape=[4, 2, 3, 2]), "invalid CSR weight"),
    (lambda t, m: set_arch(m, 0, shape=[4, 1, 3, 3]), "invalid CSR weight"),
    (lambda t, m: set_arch(m, 3, shape=[6, 2, 3, 2]), "weight has shape"),
    (lambda t, m: set_arch(m, 0, stride=[1, 0]), "'stride' must be two integers >= 1"),
    (lambda t, m: set_arch(m, 0, stride=2), "'stride' must be two integers >= 1"),
    (lambda t, m: set_arch(m, 0, padding=[-1, 1]), "'padding' must be two integers >= 0"),
    (lambda t, m: set_arch(m, 0, dilation=[1, True]), "'dilation' must be two integers >= 1"),
    (lambda t, m: set_arch(m, 3, groups=4), "groups must be a positive integer dividing"),
    (lambda t, m: set_arch(m, 3, groups=0), "groups must be a positive integer dividing"),
    (lambda t, m: set_arch(m, 3, groups="2"), "'groups' must be a int"),
    (lambda t, m: set_arch(m, 3, groups=1), "input channels but the previous Conv2d gives 4"),
    (lambda t, m: set_arch(m, 3, bias=False), "tensors not used by the architecture"),
    (lambda t, m: set_arch(m, 0, bias=True), "missing tensor 'layers.0.bias'"),
    (lambda t, m: t.update({"layers.3.bias": np.zeros(5, np.float32)}), "bias has shape"),
    (lambda t, m: t.update({"layers.3.weight": np.full((6, 2, 3, 3), np.nan, np.float32)}), "non-finite"),
    (lambda t, m: set_arch(m, 2, kernel_size=[0, 2]), "'kernel_size' must be two integers >= 1"),
    (lambda t, m: set_arch(m, 2, kernel_size=[2]), "'kernel_size' must be two integers >= 1"),
    (lambda t, m: set_arch(m, 2, stride=[2, -1]), "'stride' must be two integers >= 1"),
    (lambda t, m: set_arch(m, 4, padding=[2, 1]), "padding must be at most half the kernel_size"),
    (lambda t, m: set_arch(m, 4, padding=None), "'padding' must be two integers >= 0"),
    (lambda t, m: set_arch(m, 4, type="minpool2d"), "unknown layer type"),
    (lambda t, m: set_arch(m, 5, type="maxpool2d"), "keys must be"),
]


@pytest.mark.parametrize("change, message", CORRUPTIONS)
def test_load_refuses_a_tampered_cnn_file(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_compressed(tamper(tmp_path, change))


def test_valid_padding_converts():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding="valid"), nn.Flatten()).eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(CompressedModel.from_torch(net)(x), reference(net, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module, message", [
    (nn.Conv2d(1, 2, 3, padding="same"), "c: Conv2d padding must be"),
    (nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), "c: only Conv2d.padding_mode='zeros'"),
    (nn.MaxPool2d(2, ceil_mode=True), r"c: MaxPool2d\(ceil_mode=True\)"),
    (nn.AvgPool2d(2, ceil_mode=True), r"c: AvgPool2d\(ceil_mode=True\)"),
    (nn.MaxPool2d(2, dilation=2), "c: MaxPool2d with dilation"),
    (nn.MaxPool2d(2, return_indices=True), "c: MaxPool2d.return_indices"),
    (nn.AvgPool2d(2, count_include_pad=False), "c: AvgPool2d.count_include_pad=False"),
    (nn.AvgPool2d(2, divisor_override=3), "c: AvgPool2d.divisor_override"),
])
def test_conversion_refuses_what_the_runtime_does_not_compute(module, message):
    seq = nn.Sequential()
    seq.add_module("c", module)
    with pytest.raises(ValueError, match=message):
        htcore.nn.to_runtime_layers(seq)


W = np.zeros((4, 2, 3, 3), np.float32)


@pytest.mark.parametrize("make, error, message", [
    (lambda: Conv2d(W), TypeError, "needs kernel_size"),
    (lambda: Conv2d(W, kernel_size=0), ValueError, "kernel_size must be >= 1"),
    (lambda: Conv2d(W, kernel_size=2), ValueError, "kernel_size is"),
    (lambda: Conv2d(W, kernel_size=3, stride=0), ValueError, "stride must be >= 1"),
    (lambda: Conv2d(W, kernel_size=3, padding=(1, -1)), ValueError, r"padding\[1\] must be >= 0"),
    (lambda: Conv2d(W, kernel_size=3, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda: Conv2d(W, kernel_size=3, groups=0), ValueError, "groups must be >= 1"),
    (lambda: Conv2d(W, kernel_size=3, groups=3), ValueError, "groups=3 must divide"),
    (lambda: Conv2d(W, kernel_size=3, groups=1.0), TypeError, "groups must be an integer"),
    (lambda: Conv2d(W, np.zeros(3), kernel_size=3), ValueError, "bias has 3 entries"),
    (lambda: Conv2d(W[0], kernel_size=3), ValueError, "weight"),
    (lambda: Conv2d(htcore.topk_sparsify(np.ones((4, 10), np.float32), 1.0), kernel_size=3), ValueError,
     "weight has 10 columns"),
    (lambda: MaxPool2d(0), ValueError, "kernel_size must be >= 1"),
    (lambda: MaxPool2d(2, stride=(1, 0)), ValueError, r"stride\[1\] must be >= 1"),
    (lambda: MaxPool2d(2, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: AvgPool2d(3, padding=2), ValueError, "padding must be at most half the kernel_size"),
    (lambda: AvgPool2d((2, 3), padding=(1, 2)), ValueError, "padding must be at most half the kernel_size"),
    (lambda: AvgPool2d("2"), TypeError, "kernel_size must be an integer"),
])
def test_layer_validation(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_model_validation():
    conv = Conv2d(W, kernel_size=3)  # 2 -> 4 channels
    with pytest.raises(ValueError, match="expects 2 input channels but the previous Conv2d gives 4"):
        CompressedModel([conv, MaxPool2d(2), conv])
    with pytest.raises(ValueError, match="after a Flatten or Linear"):
        CompressedModel([Flatten(), conv])
    with pytest.raises(ValueError, match="after a Flatten or Linear"):
        CompressedModel([Linear(np.ones((3, 3), np.float32)), AvgPool2d(2)])
    model = CompressedModel([conv, Flatten()])
    with pytest.raises(ValueError, match="needs .batch, C, H, W. images"):
        model(np.zeros((2, 18), np.float32))
    with pytest.raises(ValueError, match="expects 2 input channels"):
        model(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        model(np.full((1, 2, 5, 5), np.nan, np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        CompressedModel([MaxPool2d(4)])(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        CompressedModel([MaxPool2d(2)])(np.full((1, 1, 4, 4), np.inf, np.float32))
