"""torch integration: SparseLinear and sparsify_model."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import htcore  # noqa: E402
from htcore.nn import SparseLinear, sparsify_model  # noqa: E402


def masked_linear(linear, keep):
    """The nn.Linear output with the top-k |w| mask applied, computed by torch in float64."""
    w = linear.weight.detach().double()
    k = int(np.ceil(keep * w.numel()))
    order = np.argsort(-np.abs(w.numpy()).ravel(), kind="stable")[:k]
    mask = np.zeros(w.numel(), bool)
    mask[order] = True
    wm = w * torch.from_numpy(mask.reshape(w.shape))
    return lambda x: x.double() @ wm.T + linear.bias.detach().double()


def test_from_dense_matches_masked_linear():
    torch.manual_seed(0)
    lin = nn.Linear(50, 30)
    sl = SparseLinear.from_dense(lin, keep=0.25)
    assert sl.weight_csr.nnz == int(np.ceil(0.25 * 1500)) and sl.in_features == 50 and sl.out_features == 30
    x = torch.randn(4, 7, 50)
    y = sl(x)
    assert y.shape == (4, 7, 30) and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), masked_linear(lin, 0.25)(x).numpy(), rtol=1e-5, atol=1e-5)
    assert sl(x.double()).dtype == torch.float64
    assert "nnz=375" in repr(sl)
    half = SparseLinear.from_dense(lin, keep=0.25, value_dtype=np.float16)
    assert half.weight_csr.data.dtype == np.float16
    np.testing.assert_allclose(half(x).numpy(), y.numpy(), rtol=1e-2, atol=1e-2)


def test_sparse_linear_from_csr_and_errors():
    A = htcore.topk_sparsify(np.random.default_rng(0).standard_normal((6, 4)), 0.5)
    sl = SparseLinear(A)
    np.testing.assert_allclose(sl(torch.ones(2, 4)).numpy(), np.ones((2, 4)) @ A.todense().T, rtol=1e-6)
    with pytest.raises(TypeError, match="CSRMatrix"):
        SparseLinear(np.ones((2, 2)))
    with pytest.raises(ValueError, match="bias has 5"):
        SparseLinear(A, torch.zeros(5))
    with pytest.raises(ValueError, match="expected 4"):
        sl(torch.ones(2, 5))
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_dense(nn.ReLU(), keep=0.5)


def make_net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 12), nn.Tanh()), nn.Linear(12, 4)).eval()


def test_sparsify_model_swaps_and_reports():
    net = make_net()
    x = torch.randn(5, 20)
    report = sparsify_model(net, keep=0.5, include=["0", "2.*"])
    assert [l.name for l in report.layers] == ["0", "2.0"] and report.skipped == ("3",)
    assert isinstance(net[0], SparseLinear) and isinstance(net[2][0], SparseLinear) and isinstance(net[3], nn.Linear)
    assert report.layers[0].nnz == 160 and report.layers[0].density == pytest.approx(0.5)
    assert report.dense_bytes == 4 * (320 + 192) and report.sparse_bytes < report.dense_bytes
    assert "2 Linear layers sparsified, 1 left dense" in str(report)
    # the whole network still runs, in torch and through the torch-free runtime
    model = htcore.runtime.CompressedModel.from_torch(net)
    np.testing.assert_allclose(model(x.numpy()), net(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_sparsify_model_per_layer_keep_and_predicate():
    net = make_net()
    ref = {name: m for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    x = torch.randn(3, 12)
    want = masked_linear(ref["3"], 0.25)(x)
    report = sparsify_model(net, keep={"0": 0.1, "3": 0.25})
    assert [(l.name, l.keep) for l in report.layers] == [("0", 0.1), ("3", 0.25)] and report.skipped == ("2.0",)
    np.testing.assert_allclose(net[3](x).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    net2 = make_net()
    report2 = sparsify_model(net2, keep=0.3, include=lambda name, m: m.out_features > 10)
    assert [l.name for l in report2.layers] == ["0", "2.0"]


def test_sparsify_model_errors():
    with pytest.raises(ValueError, match="keep must be in"):
        sparsify_model(make_net(), keep=0.0)
    with pytest.raises(ValueError, match="not nn.Linear"):
        sparsify_model(make_net(), keep={"1": 0.5})
    with pytest.raises(TypeError, match="nn.Module"):
        sparsify_model(np.ones(3), keep=0.5)
    with pytest.raises(ValueError, match="itself is an nn.Linear"):
        sparsify_model(nn.Linear(3, 3), keep=0.5)
    with pytest.raises(TypeError, match="include"):
        sparsify_model(make_net(), keep=0.5, include=[1, 2])


def test_lazy_attribute_import():
    assert htcore.nn.SparseLinear is SparseLinear
    with pytest.raises(AttributeError):
        htcore.not_a_module
