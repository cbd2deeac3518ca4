"""torch integration for convolutions: SparseConv2d, and sparsify_model on a convolutional net."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import htcore  # noqa: E402
from htcore.nn import SparseConv2d, SparseLinear, sparsify_model  # noqa: E402


def masked_weight(module, keep):
    """``module.weight`` in float64 with all but its top-k |w| zeroed, ranked over the whole
    (out, in / groups * kh * kw) matrix, ties to the lowest flat index (htcore.topk_sparsify)."""
    w = module.weight.detach().double()
    k = int(np.ceil(keep * w.numel()))
    order = np.argsort(-np.abs(w.numpy()).ravel(), kind="stable")[:k]
    mask = np.zeros(w.numel(), bool)
    mask[order] = True
    return w * torch.from_numpy(mask.reshape(w.shape))


def masked_conv(conv, keep, x):
    """torch's conv2d of ``x`` with the masked weight, in float64."""
    bias = None if conv.bias is None else conv.bias.detach().double()
    return F.conv2d(x.double(), masked_weight(conv, keep), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@pytest.mark.parametrize("seed", range(24))
def test_from_dense_matches_masked_conv(seed):
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2, 3]))
    c_in = groups * int(rng.integers(1, 4))
    depthwise = seed % 4 == 0
    if depthwise:
        groups, c_out = c_in, c_in * int(rng.integers(1, 3))
    else:
        c_out = groups * int(rng.integers(1, 4))
    kernel = tuple(int(v) for v in rng.integers(1, 4, size=2))
    stride = tuple(int(v) for v in rng.integers(1, 3, size=2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, size=2))
    padding = tuple(int(v) for v in rng.integers(0, 3, size=2))
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=bool(seed % 3))
    keep = float(rng.choice([0.1, 0.3, 0.5, 1.0]))
    sc = SparseConv2d.from_dense(conv, keep)
    assert sc.weight_csr.shape == (c_out, c_in // groups * kernel[0] * kernel[1])
    assert sc.weight_csr.nnz == int(np.ceil(keep * conv.weight.numel()))
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(sc, name) == getattr(conv, name), name
    assert (sc.bias is None) == (conv.bias is None)
    batch = int(rng.integers(1, 9))
    x = torch.randn(batch, c_in, int(rng.integers(6, 12)), int(rng.integers(6, 12)))
    y = sc(x)
    assert y.dtype == torch.float32 and not y.requires_grad
    np.testing.assert_allclose(y.numpy(), masked_conv(conv, keep, x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sc(x[0]).numpy(), y[0].numpy(), rtol=1e-6, atol=1e-6)  # 3-D input: one image


def test_input_dtypes_keep_one_and_repr():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    sc = SparseConv2d.from_dense(conv, 1.0)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        dense = conv(x)
    np.testing.assert_allclose(sc(x).numpy(), dense.numpy(), rtol=1e-5, atol=1e-5)
    for dtype in (torch.float16, torch.float64, torch.bfloat16):
        y = sc(x.to(dtype))
        assert y.dtype == dtype and y.shape == (2, 5, 8, 8)
        np.testing.assert_allclose(y.float().numpy(), sc(x.to(dtype).float()).float().numpy(), rtol=1e-2, atol=1e-2)
    x.requires_grad_(True)
    assert not sc(x).requires_grad
    assert "nnz=135" in repr(sc) and "kernel_size=(3, 3)" in repr(sc)
    half = SparseConv2d.from_dense(conv, k=20, value_dtype=np.float16)
    assert half.weight_csr.data.dtype == np.float16 and half.weight_csr.nnz == 20


def test_string_padding():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 7, 9)
    for kwargs in ({"padding": "valid"}, {"padding": "same"}, {"padding": "same", "dilation": (2, 1)},
                   {"padding": "same", "kernel_size": (5, 1)}):
        conv = nn.Conv2d(2, 3, **{"kernel_size": 3, **kwargs})
        sc = SparseConv2d.from_dense(conv, 0.5)
        assert sc.padding == conv.padding
        np.testing.assert_allclose(sc(x).numpy(), masked_conv(conv, 0.5, x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pads both sides equally"):
        SparseConv2d.from_dense(nn.Conv2d(2, 3, 2, padding="same"), 0.5)
    A = htcore.topk_sparsify(np.ones((3, 18), np.float32), 0.5)
    with pytest.raises(ValueError, match="stride 1"):
        SparseConv2d(A, kernel_size=3, stride=2, padding="same")
    with pytest.raises(ValueError, match="'valid' or 'same'"):
        SparseConv2d(A, kernel_size=3, padding="full")


def test_errors():
    A = htcore.topk_sparsify(np.random.default_rng(0).standard_normal((4, 18)).astype(np.float32), 0.5)
    sc = SparseConv2d(A, kernel_size=3)
    assert sc.in_channels == 2 and sc.out_channels == 4 and sc.bias is None
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d.from_dense(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), 0.5)
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d(A, kernel_size=3, padding_mode="circular")
    with pytest.raises(TypeError, match="CSRMatrix"):
        SparseConv2d(np.ones((4, 18)), kernel_size=3)
    with pytest.raises(TypeError, match="float64"):
        SparseConv2d(A.astype(value_dtype="float64"), kernel_size=3)
    with pytest.raises(ValueError, match="bias has 5"):
        SparseConv2d(A, torch.zeros(5), kernel_size=3)
    with pytest.raises(ValueError, match="not \\(out_channels"):
        SparseConv2d(A, kernel_size=4)
    with pytest.raises(ValueError, match="expected \\(N, 2, H, W\\)"):
        sc(torch.ones(1, 3, 5, 5))
    with pytest.raises(ValueError, match="expected"):
        sc(torch.ones(2, 5, 5, 1, 1))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SparseConv2d.from_dense(nn.Linear(2, 2), 0.5)


def lenet():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 10),
    ).eval()


def test_sparsify_model_lenet_matches_masked_dense_net():
    net = lenet()
    masked = lenet()
    keep = {"0": 0.3, "3": 0.2, "7": 0.5}
    with torch.no_grad():
        for name, fraction in keep.items():
            masked.get_submodule(name).weight.copy_(masked_weight(net.get_submodule(name), fraction).float())
    report = sparsify_model(net, keep=keep)
    assert [(l.name, l.kind, l.shape) for l in report.layers] == [
        ("0", "Conv2d", (8, 25)), ("3", "Conv2d", (16, 200)), ("7", "Linear", (10, 256))]
    assert report.skipped == ()
    assert isinstance(net[0], SparseConv2d) and isinstance(net[3], SparseConv2d) and isinstance(net[7], SparseLinear)
    assert report.layers[1].nnz == int(np.ceil(0.2 * 3200)) and report.layers[1].dense_bytes == 4 * 3200
    text = str(report)
    assert "| layer | kind | shape |" in text and "| 3 | Conv2d | 16x200 |" in text and "| 7 | Linear | 10x256 |" in text
    assert "1 Linear + 2 Conv2d layers sparsified, 0 left dense" in text
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        want = masked.double()(x.double())
    np.testing.assert_allclose(net(x).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_sparsify_model_conv_selection():
    net = lenet()
    report = sparsify_model(net, keep=0.5, include=["3", "7"])
    assert [l.name for l in report.layers] == ["3", "7"] and report.skipped == ("0",)
    assert isinstance(net[0], nn.Conv2d)
    net = lenet()
    report = sparsify_model(net, keep=0.5, kinds=("Conv2d",))
    assert [l.name for l in report.layers] == ["0", "3"] and report.skipped == ()
    assert isinstance(net[7], nn.Linear)
    assert "2 Conv2d layers sparsified" in str(report)
    net = lenet()
    report = sparsify_model(net, keep=0.5, include=lambda name, m: isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert [l.name for l in report.layers] == ["3"] and report.skipped == ("0", "7")
    with pytest.raises(ValueError, match="not nn.Linear or nn.Conv2d"):
        sparsify_model(lenet(), keep={"1": 0.5})
    with pytest.raises(ValueError, match="not nn.Conv2d"):
        sparsify_model(lenet(), keep={"7": 0.5}, kinds=["Conv2d"])
    with pytest.raises(ValueError, match="kinds"):
        sparsify_model(lenet(), keep=0.5, kinds=("Conv1d",))
    with pytest.raises(ValueError, match="itself is an nn.Conv2d"):
        sparsify_model(nn.Conv2d(1, 1, 1), keep=0.5)


def test_exported():
    assert htcore.nn.SparseConv2d is SparseConv2d and "SparseConv2d" in htcore.nn.__all__
