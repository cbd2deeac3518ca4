"""SELL-8 (htcore.sparse.SellMatrix, the runtime's batch-1 layout for short rows) against a float64 dense
reference, with both kernel paths; its use inside runtime.Linear; malformed layouts raise."""
import numpy as np
import pytest

import htcore
from htcore import CSRMatrix, _core, load_compressed, save_compressed
from htcore.runtime import Activation, CompressedModel, Linear
from htcore.sparse import MAX_MEAN_ROW_LENGTH, SellMatrix, sell_eligible
from test_csr_kernels import kernel_path, linear_reference, topk_pattern, uniform_pattern  # noqa: F401
from test_runtime import reference as model_reference

FORMATS = {
    "f32-u16": dict(index_dtype=np.uint16),
    "f32-i32": dict(index_dtype=np.int32),
    "f16-u16": dict(value_dtype=np.float16, index_dtype=np.uint16),
    "f16-i32": dict(value_dtype=np.float16, index_dtype=np.int32),
}
SHAPES = [(0, 0), (0, 5), (5, 0), (1, 1), (1, 300), (7, 30), (8, 30), (9, 30), (97, 400), (203, 64)]


def matrix(pattern, rows, cols, fmt, seed=0):
    rng = np.random.default_rng(seed + rows * 1009 + cols)
    if pattern == "uniform":
        A = uniform_pattern(rng, rows, cols, 0.1)
    elif pattern == "topk":  # heavy-tailed rows: some nearly full, many empty
        A = topk_pattern(rng, rows, cols, 0.1)
    else:  # "empty": no values at all
        A = CSRMatrix(np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(rows + 1, np.int32), (rows, cols))
    return A.astype(**FORMATS[fmt])


def sell_product(S, x, bias=None, activation="none"):
    out = np.full(S.shape[0], np.nan, np.float32)  # every row must be written
    return S.matvec_into(np.ascontiguousarray(x, np.float32), bias, activation, out)


def check(S, A, x, bias=None, activation=None):
    D = A.todense().astype(np.float64)
    x64 = np.asarray(x, np.float32).astype(np.float64)
    b = np.zeros(A.shape[0]) if bias is None else bias.astype(np.float64)
    ref = linear_reference(activation)
    want = ref(D, x64[None, :], b)[0]
    scale = ref(np.abs(D), np.abs(x64)[None, :], b, absolute=True)[0]
    got = sell_product(S, x, bias, activation or "none")
    assert got.dtype == np.float32 and got.shape == (A.shape[0],)
    np.testing.assert_array_less(np.abs(got - want), 4e-6 * (scale + 1))
    return got


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("pattern", ["uniform", "topk", "empty"])
def test_matvec_matches_reference(kernel_path, fmt, pattern):
    rng = np.random.default_rng(1)
    for rows, cols in SHAPES:
        A = matrix(pattern, rows, cols, fmt)
        S = SellMatrix(A)
        assert S.indices.dtype == A.indices.dtype and S.data.dtype == A.data.dtype
        np.testing.assert_array_equal(np.sort(S.perm), np.arange(rows))
        check(S, A, rng.standard_normal(cols))


def test_layout_is_sorted_and_padded():
    A = matrix("topk", 203, 64, "f32-i32")
    S = SellMatrix(A)
    lengths = np.diff(A.indptr)[S.perm]
    assert np.all(np.diff(lengths) <= 0)  # longest first
    for length in np.unique(lengths):  # stable: equal lengths keep the row order
        assert np.all(np.diff(S.perm[lengths == length]) > 0)
    widths = np.diff(S.slice_ptr) // 8
    np.testing.assert_array_equal(widths, lengths[::8])
    assert S.slice_ptr[-1] == len(S.data) == len(S.indices) >= A.nnz
    assert np.count_nonzero(S.data) == np.count_nonzero(A.data)
    assert S.indices.max() < A.shape[1]
    assert not any(a.flags.writeable for a in (S.perm, S.slice_ptr, S.indices, S.data))


def test_every_row_length_around_the_accumulator_switch(kernel_path):
    """Rows of 0..70 values: slices narrower and wider than 4 steps (one vs four accumulators)."""
    rng = np.random.default_rng(2)
    lengths = rng.permutation(np.arange(71).repeat(3))
    cols = 80
    rows = [np.sort(rng.choice(cols, n, replace=False)) for n in lengths]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    A = CSRMatrix(rng.standard_normal(indptr[-1]).astype(np.float32), np.concatenate(rows).astype(np.int32), indptr,
                  (len(lengths), cols))
    for fmt in FORMATS:
        B = A.astype(**FORMATS[fmt])
        check(SellMatrix(B), B, rng.standard_normal(cols))


@pytest.mark.parametrize("fmt", ["f32-u16", "f16-i32"])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "tanh"])
def test_bias_and_activation(kernel_path, fmt, activation):
    rng = np.random.default_rng(3)
    A = matrix("topk", 97, 400, fmt)
    bias = rng.standard_normal(97).astype(np.float32)
    check(SellMatrix(A), A, rng.standard_normal(400), bias, activation)


def test_identical_at_1_and_2_threads(kernel_path):
    rng = np.random.default_rng(4)
    A = topk_pattern(rng, 2000, 600, 0.05)  # 60k nnz: above the two-thread grain
    x = rng.standard_normal(600)
    bias = rng.standard_normal(2000).astype(np.float32)
    for fmt in FORMATS:
        S = SellMatrix(A.astype(**FORMATS[fmt]))
        htcore.set_num_threads(1)
        one = sell_product(S, x, bias, "gelu")
        htcore.set_num_threads(2)
        assert _core._csr_threads(2000, len(S.data), 1) == 2  # the product really splits
        np.testing.assert_array_equal(sell_product(S, x, bias, "gelu"), one)


def test_paths_agree_within_accumulation_error():
    if not _core.csr_uses_avx2():
        pytest.skip("CPU without AVX2+FMA+F16C")
    rng = np.random.default_rng(5)
    A = topk_pattern(rng, 300, 500, 0.1)
    S, x = SellMatrix(A), rng.standard_normal(500)
    fast = sell_product(S, x)
    try:
        _core._csr_enable_avx2(False)
        portable = sell_product(S, x)
    finally:
        _core._csr_enable_avx2(True)
    scale = np.abs(A.todense()).astype(np.float64) @ np.abs(x)
    np.testing.assert_array_less(np.abs(fast - portable), 4e-6 * (scale + 1))


def test_refuses_unsupported_formats():
    A = matrix("uniform", 20, 30, "f32-u16")
    codes = CSRMatrix(np.zeros(A.nnz, np.uint8), A.indices, A.indptr, A.shape, codebook=np.ones(1, np.float32))
    with pytest.raises(TypeError, match="float32 or float16"):
        SellMatrix(codes)
    with pytest.raises(TypeError, match="float32 or float16"):
        SellMatrix(A.astype(value_dtype=np.float64))
    with pytest.raises(TypeError, match="CSRMatrix"):
        SellMatrix(A.todense())
    assert not sell_eligible(codes) and not sell_eligible(A.astype(value_dtype=np.float64))
    assert sell_eligible(A) and sell_eligible(A.astype(value_dtype=np.float16))
    long_rows = matrix("uniform", 4, 2000, "f32-i32")  # ~200 values per row
    assert long_rows.nnz > MAX_MEAN_ROW_LENGTH * 4 and not sell_eligible(long_rows)


def test_malformed_layouts_raise():
    A = matrix("uniform", 37, 50, "f32-i32")
    S = SellMatrix(A)
    x, out = np.ones(50, np.float32), np.empty(37, np.float32)
    good = dict(perm=S.perm, slice_ptr=S.slice_ptr, indices=S.indices, data=S.data, rows=37, cols=50, x=x, bias=None,
                activation=_core.Activation.none, out=out)

    def call(**change):
        _core.sell_spmv(**{**good, **change})

    call()
    bad_perm = S.perm.copy()
    bad_perm[3] = 37
    with pytest.raises(ValueError, match="perm must lie"):
        call(perm=bad_perm)
    bad_perm[3] = -1
    with pytest.raises(ValueError, match="perm must lie"):
        call(perm=bad_perm)
    with pytest.raises(ValueError, match="perm must have"):
        call(perm=S.perm[:-1].copy())
    for ptr in (S.slice_ptr[:-1].copy(), np.zeros(0, np.int64)):
        with pytest.raises(ValueError, match="slice_ptr must have"):
            call(slice_ptr=ptr)
    for change in ((0, 8), (-1, 8), (2, 3)):  # nonzero start, beyond the arrays, not a step of 8
        ptr = S.slice_ptr.copy()
        ptr[change[0]] += change[1]
        with pytest.raises(ValueError, match="slice_ptr must start at 0"):
            call(slice_ptr=ptr)
    ptr = S.slice_ptr.copy()
    ptr[2] = ptr[3] + 8  # goes backwards afterwards
    with pytest.raises(ValueError, match="slice_ptr must start at 0"):
        call(slice_ptr=ptr)
    with pytest.raises(ValueError, match="different lengths"):
        call(indices=S.indices[:-8].copy())
    with pytest.raises(ValueError, match="x must have"):
        call(x=np.ones(49, np.float32))
    with pytest.raises(ValueError, match="out must have"):
        call(out=np.empty(36, np.float32))
    with pytest.raises(ValueError, match="bias must have"):
        call(bias=np.ones(36, np.float32))
    with pytest.raises(ValueError, match="uint16"):
        call(indices=S.indices.astype(np.uint16), cols=70000, x=np.ones(70000, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        call(x=np.full(50, np.nan, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        call(bias=np.full(37, np.inf, np.float32))
    with pytest.raises(TypeError):
        call(data=S.data.astype(np.float64))
    with pytest.raises(TypeError):
        call(x=x.astype(np.float64))
    with pytest.raises(TypeError):
        call(out=np.empty((37, 2), np.float32)[:, 0])
    with pytest.raises(ValueError, match="activation"):
        call(activation=_core.Activation(7))  # an integer that names no activation
    bad = A.indptr.copy()
    bad[5] = bad[6] + 1  # not monotone: the builder refuses it
    with pytest.raises(ValueError, match="non-decreasing"):
        _core.sell_build(bad, A.indices, A.data, 37, 50)


# ---- runtime.Linear at batch 1 ----

def mlp(seed=0, value_dtype=np.float32):
    rng = np.random.default_rng(seed)
    w1 = htcore.topk_sparsify(rng.standard_t(3, size=(96, 120)).astype(np.float32), 0.1)
    w2 = htcore.topk_sparsify(rng.standard_t(3, size=(30, 96)).astype(np.float32), 0.2)
    layers = [Linear(w1.astype(value_dtype=value_dtype), rng.standard_normal(96)), Activation("relu"),
              Linear(w2, rng.standard_normal(30)), Activation("tanh")]
    return CompressedModel(layers)


def test_runtime_linear_builds_sell_only_when_eligible():
    rng = np.random.default_rng(6)
    short = matrix("uniform", 40, 60, "f32-u16")
    assert Linear(short)._sell is not None
    assert Linear(short.astype(value_dtype=np.float64))._sell is not None  # converted to float32 first
    codes = CSRMatrix(np.zeros(short.nnz, np.uint8), short.indices, short.indptr, short.shape,
                      codebook=np.ones(2, np.float32))
    assert Linear(codes)._sell is None
    assert Linear(matrix("uniform", 4, 2000, "f32-i32"))._sell is None  # ~200 values per row
    assert Linear(rng.standard_normal((4, 5)))._sell is None


@pytest.mark.parametrize("value_dtype", [np.float32, np.float16])
def test_model_batch_1_matches_csr_path(kernel_path, value_dtype, monkeypatch):
    calls = []
    matvec = SellMatrix.matvec_into
    monkeypatch.setattr(SellMatrix, "matvec_into", lambda self, *a: calls.append(self.shape) or matvec(self, *a))
    model = mlp(value_dtype=value_dtype)
    assert all(l._sell is not None for l in model.layers if isinstance(l, Linear))
    X = np.random.default_rng(7).standard_normal((3, 120)).astype(np.float32)
    csr = model(np.vstack([X, X]))  # batch 6: the CSR kernel
    assert calls == []
    want = model_reference(model, X)  # both within float32 accumulation error of float64
    for i in range(3):
        one = model(X[i:i + 1])  # batch 1: SELL-8
        assert one.shape == (1, 30) and calls[-2:] == [(96, 120), (30, 96)]
        np.testing.assert_allclose(one[0], want[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(csr[i], want[i], rtol=1e-4, atol=1e-5)
    csr_only = CompressedModel([Linear(l.weight, l.bias) if isinstance(l, Linear) else l for l in model.layers])
    for l in csr_only.layers:
        if isinstance(l, Linear):
            object.__setattr__(l, "_sell", None)
    np.testing.assert_allclose(csr_only(X[:1]), want[:1], rtol=1e-4, atol=1e-5)


def test_model_batch_1_identical_at_1_and_2_threads():
    model = mlp()
    x = np.random.default_rng(8).standard_normal((1, 120))
    htcore.set_num_threads(1)
    one = model(x)
    htcore.set_num_threads(2)
    np.testing.assert_array_equal(model(x), one)


def test_save_load_rebuilds_the_layout(tmp_path):
    model = mlp()
    path = tmp_path / "m.safetensors"
    save_compressed(path, model)
    names = set(htcore.io.SafetensorsFile(path).keys())
    assert not any("perm" in n or "slice" in n for n in names)  # derived, never stored
    loaded = load_compressed(path)
    assert all(l._sell is not None for l in loaded.layers if isinstance(l, Linear))
    x = np.random.default_rng(9).standard_normal((1, 120))
    np.testing.assert_array_equal(loaded(x), model(x))
    np.testing.assert_array_equal(loaded(np.vstack([x, x])), model(np.vstack([x, x])))
