"""Regression tests for issue #21 (defects found as a new user and as an attacker would), grouped by item."""
import io
import os
import struct
import warnings

import numpy as np
import pytest

import htcore

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from htcore.nn import SparseConv2d, SparseLinear, sparsify_model  # noqa: E402


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---- item 1: a sparsified torch model keeps its weights through state_dict / torch.save ----

def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()


@pytest.mark.parametrize("value_dtype", [np.float32, np.float16])
def test_sparse_state_dict_round_trips_through_torch_save(value_dtype):
    net = _net(0)
    sparsify_model(net, keep=0.3, value_dtype=value_dtype)
    state = _roundtrip(net.state_dict())
    assert {"0.weight_data", "0.weight_indices", "0.weight_indptr", "0.weight_shape", "3.weight_data"} <= set(state)
    other = _net(1)  # different dense weights, and a different nnz after sparsification
    sparsify_model(other, keep=0.6, value_dtype=value_dtype)
    other.load_state_dict(state)
    x = torch.randn(3, 2, 6, 6)
    np.testing.assert_array_equal(other(x).numpy(), net(x).numpy())
    assert other[3].weight_csr.nnz == net[3].weight_csr.nnz


def test_sparse_load_state_dict_refuses_wrong_shape_and_bad_structure():
    a = SparseLinear.from_dense(nn.Linear(6, 4), keep=0.5)
    b = SparseLinear.from_dense(nn.Linear(7, 4), keep=0.5)
    with pytest.raises(RuntimeError, match=r"weight has shape \(4, 7\) but this module's is \(4, 6\)"):
        a.load_state_dict(b.state_dict())
    state = a.state_dict()
    state["weight_indptr"] = state["weight_indptr"].flip(0)
    with pytest.raises(RuntimeError, match="indptr"):
        a.load_state_dict(state)
    with pytest.raises(RuntimeError, match="weight_data"):  # an old-style state_dict holding only the bias
        a.load_state_dict({"bias": torch.zeros(4)})


def test_sparse_codebook_weight_round_trips():
    w = htcore.CSRMatrix(np.array([0, 1, 2], np.uint8), [0, 2, 1], [0, 2, 3], (2, 3), codebook=[-1.0, 0.5, 2.0])
    sl = SparseLinear(w, torch.tensor([1.0, -1.0]))
    back = SparseLinear(htcore.CSRMatrix([1.0], [0], [0, 1, 1], (2, 3)), torch.zeros(2))
    back.load_state_dict(_roundtrip(sl.state_dict()))
    assert back.weight_csr.codebook is not None
    np.testing.assert_array_equal(back.to_dense().numpy(), w.todense())
    np.testing.assert_array_equal(back(torch.ones(1, 3)).numpy(), [[0.5, 1.0]])


def test_to_dense_has_the_dense_module_shape():
    conv = nn.Conv2d(4, 6, (3, 2), groups=2)
    sc = SparseConv2d.from_dense(conv, keep=1.0)
    assert sc.to_dense().shape == conv.weight.shape
    np.testing.assert_array_equal(sc.to_dense().numpy(), conv.weight.detach().numpy())
    lin = nn.Linear(5, 3)
    np.testing.assert_array_equal(SparseLinear.from_dense(lin, keep=1.0).to_dense().numpy(), lin.weight.detach().numpy())


def test_analyze_reads_sparse_modules():
    net = _net(0)
    sparsify_model(net, keep=0.5)
    report = htcore.analyze(net, keeps=None, progress=False)
    rows = {layer.name: layer for layer in report.layers}
    assert set(rows) == {"0.weight", "3.weight"}
    assert rows["0.weight"].kind == "conv" and rows["0.weight"].shape == (4, 2, 3, 3)
    assert rows["3.weight"].kind == "linear" and rows["3.weight"].elements.n == net[3].weight_csr.nnz
