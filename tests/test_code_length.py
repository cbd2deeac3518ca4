import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from htcore.certification._code_length import (
    ceil_log2,
    code_length,
    dense_code_length,
    elias_fano_decode,
    elias_fano_encode,
    elias_fano_size,
    elias_gamma_bits,
    sparse_code_length,
)
from htcore.sparse import CSRMatrix


def exact_ceil_log2_comb(n, k):
    return (math.comb(n, k) - 1).bit_length()


def random_csr(rng, rows, cols, density, levels=None):
    m = sp.random(rows, cols, density=density, format="csr", random_state=rng, dtype=np.float32)
    if levels is not None:
        m.data = rng.choice(np.linspace(-1, 1, levels).astype(np.float32), size=m.nnz)
    return CSRMatrix.from_scipy(m)


@pytest.mark.parametrize("rows, cols, density", [(32, 784, 0.05), (10, 32, 0.5), (1, 1, 1.0), (7, 9, 0.0), (3, 5, 1.0), (64, 100, 0.013)])
def test_sparse_charge_matches_exact_counts(rows, cols, density):
    rng = np.random.default_rng(0)
    m = random_csr(rng, rows, cols, density)
    t = sparse_code_length(m, "w")
    n, k = rows * cols, m.nnz
    assert (t.n, t.k) == (n, k)
    assert t.count_bits == math.ceil(math.log2(n + 1))
    assert t.position_bits == exact_ceil_log2_comb(n, k)
    assert t.value_bits_raw == 32 * k
    assert t.total_bits == t.count_bits + t.position_bits + t.value_bits
    assert t.value_bits == min(t.value_bits_raw, t.value_bits_codebook, t.value_bits_entropy) + 2


def test_codebook_and_entropy_value_codes():
    rng = np.random.default_rng(1)
    m = random_csr(rng, 40, 50, 0.2, levels=8)
    k = m.nnz
    vals, counts = np.unique(m.data, return_counts=True)
    r = vals.size
    t = sparse_code_length(m)
    assert t.levels == r
    header = 32 * r + elias_gamma_bits(r)
    assert t.value_bits_codebook == header + k * math.ceil(math.log2(r))
    multinomial = math.factorial(k)
    for c in counts:
        multinomial //= math.factorial(int(c))
    assert t.value_bits_entropy == header + (r - 1) * math.ceil(math.log2(k + 1)) + (multinomial - 1).bit_length()
    # the enumerative code never exceeds k times the empirical entropy (+ header, counts, rounding)
    p = counts / k
    assert t.value_bits_entropy <= header + (r - 1) * math.ceil(math.log2(k + 1)) + k * -(p * np.log2(p)).sum() + 1
    assert t.values_code in ("codebook", "entropy") and t.value_bits < t.value_bits_raw


def test_skewed_levels_prefer_the_entropy_code():
    data = np.zeros(1000, np.float32)
    data[:10] = 1.0
    data[10:20] = 2.0
    m = CSRMatrix(data, np.arange(1000), [0, 1000], (1, 1000))
    t = sparse_code_length(m)
    assert t.values_code == "entropy" and t.value_bits_entropy < t.value_bits_codebook


def test_codebook_matrices_are_charged_for_the_values_they_use():
    rng = np.random.default_rng(7)
    book = np.array([-0.5, 0.1, 0.7, 0.7, 2.0], np.float32)  # a repeated and an unused level
    codes = rng.choice([0, 1, 2, 3], size=60).astype(np.uint8)
    m = CSRMatrix(codes, np.arange(60) % 20, [0, 20, 40, 60], (3, 20), codebook=book)
    t = sparse_code_length(m)
    assert t.levels == 3
    assert t.value_bits_raw == 32 * 60
    assert t.value_bits_codebook == 32 * 3 + elias_gamma_bits(3) + 60 * 2
    same = CSRMatrix(book[codes], m.indices, m.indptr, m.shape)  # decoded float32 storage: same charge
    assert sparse_code_length(same).total_bits == t.total_bits


def test_float16_values_are_charged_16_bits():
    m = random_csr(np.random.default_rng(2), 20, 30, 0.1)
    m16 = CSRMatrix(m.data.astype(np.float16), m.indices, m.indptr, m.shape)
    t = sparse_code_length(m16)
    assert t.value_bits_raw == 16 * m.nnz


@pytest.mark.parametrize("n, k", [(1, 1), (10, 0), (10, 10), (25088, 1255), (320, 160), (1000, 1), (1 << 20, 3), (100, 37)])
def test_elias_fano_roundtrip_and_size(n, k):
    rng = np.random.default_rng(n + k)
    positions = np.sort(rng.choice(n, size=k, replace=False))
    buf, nbits = elias_fano_encode(positions, n)
    assert nbits == elias_fano_size(n, k)
    assert buf.size == (nbits + 7) // 8
    np.testing.assert_array_equal(elias_fano_decode(buf, n, k), positions)
    if k:
        # Elias–Fano is within 2 bits per element of the information-theoretic minimum
        assert exact_ceil_log2_comb(n, k) - 1 <= nbits <= exact_ceil_log2_comb(n, k) + 2 * k + 2


def test_elias_fano_of_a_matrix_reports_its_encoded_size():
    m = random_csr(np.random.default_rng(3), 32, 784, 0.05)
    rows = np.repeat(np.arange(32), np.diff(m.indptr))
    flat = rows * 784 + m.indices.astype(np.int64)
    buf, nbits = elias_fano_encode(flat, 32 * 784)
    assert sparse_code_length(m).elias_fano_bits == nbits
    np.testing.assert_array_equal(elias_fano_decode(buf, 32 * 784, m.nnz), flat)


def test_elias_fano_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        elias_fano_encode([3, 3], 10)
    with pytest.raises(ValueError, match="strictly increasing"):
        elias_fano_encode([1, 10], 10)
    with pytest.raises(ValueError, match="1-D integer"):
        elias_fano_encode([0.5], 10)
    buf, _ = elias_fano_encode([1, 5, 7], 10)
    with pytest.raises(ValueError, match="buffer holds"):
        elias_fano_decode(buf[:0], 10, 3)


def test_dense_tensors_at_stored_precision():
    rng = np.random.default_rng(6)
    assert dense_code_length(rng.normal(size=10).astype(np.float32)).total_bits == 321
    assert dense_code_length(rng.normal(size=(3, 4)).astype(np.float16)).total_bits == 193
    assert dense_code_length(rng.normal(size=5)).total_bits == 5 * 64 + 1
    half = dense_code_length(rng.normal(size=10).astype(np.float16).astype(np.float32))
    assert half.values_code == "float16" and half.total_bits == 161
    with pytest.raises(TypeError, match="floating-point"):
        dense_code_length(np.zeros(3, np.int32), "b")


def make_layers(rng):
    w1 = random_csr(rng, 32, 784, 0.05, levels=8)
    w2 = rng.normal(size=(10, 32)).astype(np.float32)
    return [
        SimpleNamespace(weight=w1, bias=np.zeros(32, np.float32)),
        SimpleNamespace(kind="relu"),
        SimpleNamespace(weight=w2, bias=None),
    ]


def test_model_total_adds_every_charge():
    layers = make_layers(np.random.default_rng(4))
    cl = code_length(SimpleNamespace(layers=layers), settings_tried=12)
    assert [t.name for t in cl.tensors] == ["layers.0.weight", "layers.0.bias", "layers.2.weight"]
    assert [t.kind for t in cl.tensors] == ["sparse", "dense", "dense"]
    assert cl.tensors[1].total_bits == 32 * 16 + 1  # zeros are float16-exact
    assert cl.search_bits == 4
    body = cl.architecture_bits + cl.search_bits + sum(t.total_bits for t in cl.tensors)
    assert cl.self_delimiting_bits == 2 * math.floor(math.log2(body)) + 1
    assert cl.total_bits == body + cl.self_delimiting_bits
    assert cl.nnz == layers[0].weight.nnz + 32 + 320
    assert code_length(layers).total_bits == cl.total_bits - 4  # a sequence of layers works; no search charge
    table = cl.table()
    assert "**total**" in table and "| bits for k |" in table and "| count |" not in table  # words, not jargon
    assert f"**{cl.total_bits:,}**" in table and "search (12 settings)" in table


def test_code_length_grows_with_what_is_kept():
    rng = np.random.default_rng(5)
    small = code_length([SimpleNamespace(weight=random_csr(rng, 32, 784, 0.02, levels=8), bias=None)])
    large = code_length([SimpleNamespace(weight=random_csr(rng, 32, 784, 0.08, levels=8), bias=None)])
    assert small.total_bits < large.total_bits


def test_helpers_and_validation():
    assert [elias_gamma_bits(v) for v in (1, 2, 3, 4, 1023, 1024)] == [1, 3, 3, 5, 19, 21]
    assert [ceil_log2(v) for v in (1, 2, 3, 4, 5, 1024, 1025)] == [0, 1, 2, 2, 3, 10, 11]
    with pytest.raises(ValueError, match="settings_tried"):
        code_length([], settings_tried=0)
    with pytest.raises(TypeError, match="CompressedModel or a sequence"):
        code_length(42)
    with pytest.raises(TypeError, match="must be a CSRMatrix"):
        sparse_code_length(np.zeros((2, 2)))


def test_graph_models_pay_their_references_and_new_kinds():
    from htcore.runtime import AdaptiveAvgPool2d, Add, BatchNorm2d, CompressedModel, Conv2d, Flatten, Linear, Node

    rng = np.random.default_rng(7)
    conv = Conv2d(random_csr(rng, 4, 9, 0.5), kernel_size=3, padding=1)
    bn = BatchNorm2d(rng.standard_normal(4), np.zeros(4))
    pool, flat = AdaptiveAvgPool2d((3, 1)), Flatten()
    fc = Linear(rng.standard_normal((2, 12)).astype(np.float32))
    sequential = code_length(CompressedModel([conv, bn, pool, flat, fc]))
    chain = code_length(CompressedModel([Node("c", conv, ["input"]), Node("b", bn, ["c"]), Node("p", pool, ["b"]),
                                         Node("f", flat, ["p"]), Node("l", fc, ["f"])]))
    # the graph escape (1 bit) and one reference per node in ceil log2(i + 1) bits: 0 + 1 + 2 + 2 + 3
    assert chain.architecture_bits == sequential.architecture_bits + 1 + 8
    assert [t.name for t in sequential.tensors] == ["layers.0.weight", "layers.1.scale", "layers.1.shift", "layers.4.weight"]
    assert sequential.tensors[2].total_bits == 4 * 16 + 1  # zeros are float16-exact: dense code at 16 bits
    without_bn = code_length(CompressedModel([conv, pool, flat, fc]))
    # batchnorm2d: 3 + 2 kind bits and Elias gamma of channels + 1, plus its two tensors
    assert sequential.architecture_bits - without_bn.architecture_bits == 3 + 2 + elias_gamma_bits(5)
    residual = code_length(CompressedModel([Node("c", conv, ["input"]), Node("a", Add(), ["c", "c"]),
                                            Node("p", pool, ["a"]), Node("f", flat, ["p"]), Node("l", fc, ["f"])]))
    # add: 3 + 2 kind bits and two references of ceil log2(2) bits each, instead of bn's kind, size and reference
    assert residual.architecture_bits == chain.architecture_bits - elias_gamma_bits(5) + 1
    bigger_pool = code_length(CompressedModel([conv, bn, AdaptiveAvgPool2d((3, 4)), flat,
                                               Linear(rng.standard_normal((2, 48)).astype(np.float32))]))
    assert bigger_pool.architecture_bits - sequential.architecture_bits == (
        elias_gamma_bits(5) - elias_gamma_bits(2) + elias_gamma_bits(49) - elias_gamma_bits(13))
