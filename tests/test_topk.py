import math

import numpy as np
import pytest
from scipy.stats import norm

import htcore
from htcore.sparse import k_for_keep

UINT_OF = {np.dtype(np.float16): np.uint16, np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


# ---- plain numpy references: stable argsort of -|w| -------------------------------------------

def ref_positions(values, k):
    """Flat positions of the top-k |values|, ties to the lowest index, sorted."""
    order = np.argsort(-np.abs(values.astype(np.float64)), kind="stable")
    return np.sort(order[:k])


def ref_matrix(W, k):
    return ref_positions(W.ravel(), k)


def ref_rows(W, k):
    order = np.argsort(-np.abs(W.astype(np.float64)), axis=1, kind="stable")[:, :k]
    return np.sort((np.arange(W.shape[0])[:, None] * W.shape[1] + order).ravel())


def ref_cols(W, k):
    order = np.argsort(-np.abs(W.astype(np.float64)), axis=0, kind="stable")[:k, :]
    return np.sort((order * W.shape[1] + np.arange(W.shape[1])[None, :]).ravel())


def positions(m):
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return rows * m.shape[1] + m.indices.astype(np.int64)


def assert_selects(m, W, expected):
    """m stores exactly W's entries at the expected flat positions, bit for bit, in CSR order."""
    W = np.asarray(W)
    assert m.shape == W.shape
    got = positions(m)
    np.testing.assert_array_equal(got, expected)  # sorted row-major == canonical CSR order
    flat = np.ascontiguousarray(W).reshape(-1)
    assert m.data.dtype == flat.dtype
    np.testing.assert_array_equal(m.data.view(UINT_OF[m.data.dtype]), flat[got].view(UINT_OF[flat.dtype]))
    assert m.indices.dtype == (np.uint16 if W.shape[1] <= 65536 else np.int32)
    assert m.indptr.dtype == np.int32


def tie_heavy(rng, shape, dtype):
    """Small integers (many ties, many zeros, both signs) or a mix of ties and continuous values."""
    W = rng.integers(-3, 4, size=shape).astype(dtype)
    W[rng.random(shape) < 0.3] *= -0.0  # signed zeros tie with zeros
    cont = rng.random(shape) < 0.3
    W[cont] = rng.standard_normal(int(cont.sum())).astype(dtype)
    return W


SHAPES = [(1, 1), (1, 9), (9, 1), (13, 17), (64, 100), (3, 70000)]
DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_mode_matches_stable_argsort(shape, dtype):
    rng = np.random.default_rng(hash((shape, np.dtype(dtype).name)) % 2**32)
    W = tie_heavy(rng, shape, dtype)
    n = W.size
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n} - {-1}):
        assert_selects(htcore.topk_sparsify(W, k=k), W, ref_matrix(W, k))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_and_col_modes_match_stable_argsort(shape, dtype):
    rng = np.random.default_rng(1)
    W = tie_heavy(rng, shape, dtype)
    rows, cols = shape
    for k in sorted({0, 1, cols // 2, cols}):
        assert_selects(htcore.topk_sparsify(W, k=k, mode="row"), W, ref_rows(W, k))
    for k in sorted({0, 1, rows // 2, rows}):
        assert_selects(htcore.topk_sparsify(W, k=k, mode="col"), W, ref_cols(W, k))


def test_keep_fraction_per_group():
    W = tie_heavy(np.random.default_rng(2), (30, 40), np.float32)
    assert_selects(htcore.topk_sparsify(W, 0.1), W, ref_matrix(W, 120))
    assert_selects(htcore.topk_sparsify(W, 0.1, mode="row"), W, ref_rows(W, 4))
    assert_selects(htcore.topk_sparsify(W, 0.1, mode="col"), W, ref_cols(W, 3))
    assert_selects(htcore.topk_sparsify(W, 1.0), W, ref_matrix(W, W.size))


def test_k_for_keep():
    assert k_for_keep(0.07, 100) == 7  # 0.07 * 100 = 7.000000000000001 in binary
    assert k_for_keep(0.071, 100) == 8
    assert k_for_keep(1e-9, 10) == 1
    assert k_for_keep(0.5, 0) == 0 and k_for_keep(0.0, 10) == 0 and k_for_keep(1.0, 7) == 7


def test_continuous_values_all_dtypes_and_modes_agree_with_threads():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((1031, 1123)).astype(np.float32)  # large enough to run on 2 threads
    results = {}
    for threads in (1, 2):
        htcore.set_num_threads(threads)
        try:
            results[threads] = [htcore.topk_sparsify(W, 0.3, mode=mode) for mode in ("matrix", "row", "col")]
            results[threads].append(htcore.compressibility_curve(W, [0.01, 0.3, 0.9]).rel_error)
        finally:
            htcore.set_num_threads(2)
    for a, b in zip(results[1][:3], results[2][:3]):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(results[1][3], results[2][3])


def test_ties_do_not_depend_on_threads():
    W = np.zeros((1100, 1000), dtype=np.float32)  # large enough to run on 2 threads
    W[::7, ::3] = 1.0
    got = {}
    for threads in (1, 2):
        htcore.set_num_threads(threads)
        try:
            got[threads] = positions(htcore.topk_sparsify(W, k=500_000))
        finally:
            htcore.set_num_threads(2)
    np.testing.assert_array_equal(got[1], got[2])
    np.testing.assert_array_equal(got[1], ref_matrix(W, 500_000))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep", [0.0001, 0.3, 0.9])
def test_large_matrices_with_ties_at_threshold(dtype, keep):
    """Large enough for the sampled two-pass path (and 2 threads): values in a few thousand
    levels, so many entries tie at every threshold; and a zero-heavy one that the sample cannot
    bracket narrowly (the general path)."""
    rng = np.random.default_rng(12)
    levels = rng.integers(-2000, 2001, size=(1100, 1000)).astype(dtype)
    sparse = np.where(rng.random((1100, 1000)) < 0.9, 0, rng.integers(-3, 4, size=(1100, 1000))).astype(dtype)
    for W in (levels, sparse):
        k = k_for_keep(keep, W.size)
        want = ref_matrix(W, k)
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            try:
                assert_selects(htcore.topk_sparsify(W, keep), W, want)
            finally:
                htcore.set_num_threads(2)


def test_non_contiguous_and_integer_inputs():
    rng = np.random.default_rng(4)
    base = tie_heavy(rng, (40, 60), np.float64)
    for W in (base[:, ::2], base.T, base[::-3, 5:]):
        assert_selects(htcore.topk_sparsify(W, k=50), np.ascontiguousarray(W), ref_matrix(W, 50))
    ints = rng.integers(-5, 6, size=(8, 9))
    m = htcore.topk_sparsify(ints, k=20)
    assert m.data.dtype == np.float32
    assert_selects(m, ints.astype(np.float32), ref_matrix(ints, 20))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_matrices(shape):
    W = np.zeros(shape, dtype=np.float32)
    for mode in ("matrix", "row", "col"):
        m = htcore.topk_sparsify(W, 0.5, mode=mode)
        assert m.shape == shape and m.nnz == 0 and m.indptr.shape == (shape[0] + 1,)
    assert htcore.topk_sparsify(W, max_rel_error=0.1).nnz == 0
    curve = htcore.compressibility_curve(W, [0.5, 1.0])
    np.testing.assert_array_equal(curve.k, [0, 0])
    np.testing.assert_array_equal(curve.rel_error, [0.0, 0.0])
    assert htcore.sparsify_global({"a": W}, 0.5)["a"].nnz == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_values_raise(bad, dtype):
    W = np.ones((6, 5), dtype=dtype)
    W[4, 3] = bad
    for mode in ("matrix", "row", "col"):
        for k in (0, 2):
            with pytest.raises(ValueError, match="W contains .*non-finite"):
                htcore.topk_sparsify(W, k=k, mode=mode)
    with pytest.raises(ValueError, match="non-finite"):
        htcore.topk_sparsify(W, max_rel_error=0.1)
    with pytest.raises(ValueError, match="x contains"):
        htcore.topk_threshold(W, 3)
    with pytest.raises(ValueError, match="W contains"):
        htcore.compressibility_curve(W, [0.5])
    with pytest.raises(ValueError, match=r"weights\['b'\] contains"):
        htcore.sparsify_global({"a": np.ones((2, 2), dtype=dtype), "b": W}, 0.5)


def test_argument_validation():
    W = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        htcore.topk_sparsify(W)
    with pytest.raises(ValueError, match="exactly one"):
        htcore.topk_sparsify(W, 0.5, k=2)
    with pytest.raises(ValueError, match="keep must be in"):
        htcore.topk_sparsify(W, 0.0)
    with pytest.raises(ValueError, match="k must be <= 4"):
        htcore.topk_sparsify(W, k=5, mode="row")
    with pytest.raises(ValueError, match="k must be >= 0"):
        htcore.topk_sparsify(W, k=-1)
    with pytest.raises(ValueError, match="mode must be"):
        htcore.topk_sparsify(W, 0.5, mode="rows")
    with pytest.raises(ValueError, match="only supported with mode='matrix'"):
        htcore.topk_sparsify(W, max_rel_error=0.1, mode="row")
    with pytest.raises(ValueError, match="must be 2-D"):
        htcore.topk_sparsify(np.ones(5), 0.5)
    with pytest.raises(TypeError, match="real"):
        htcore.topk_sparsify(W.astype(np.complex64), 0.5)
    with pytest.raises(ValueError, match="k must be <= 12"):
        htcore.topk_threshold(W, 13)
    with pytest.raises(ValueError, match="k must be >= 1"):
        htcore.topk_threshold(W, 0)
    with pytest.raises(ValueError, match="keeps must be in"):
        htcore.compressibility_curve(W, [0.5, 1.5])


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_threshold_matches_sort(dtype):
    rng = np.random.default_rng(5)
    x = tie_heavy(rng, (2000,), dtype)  # 1-D accepted
    mags = np.sort(np.abs(x.astype(np.float64)))[::-1]
    for k in (1, 2, 700, 1999, 2000):
        t = htcore.topk_threshold(x, k)
        assert t.value == mags[k - 1] and t.k == k
        assert t.greater == int((mags > t.value).sum()) and t.ties == int((mags == t.value).sum())
    assert htcore.topk_threshold(np.array([[-2.5]]), 1) == htcore.TopkThreshold(value=2.5, k=1, greater=0, ties=1)


def ref_rel_error(W, k):
    sq = np.sort(np.abs(np.asarray(W, dtype=np.float64)).ravel() ** 2)  # ascending
    total = math.fsum(sq)
    return math.sqrt(math.fsum(sq[: sq.size - k]) / total) if total else 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_compressibility_curve_matches_sorted_reference(dtype):
    rng = np.random.default_rng(6)
    W = (rng.standard_t(3, size=(120, 90)) * 50).astype(dtype)
    W[:5] = np.round(W[:5])  # ties
    keeps = [0.9, 0.0, 0.001, 0.05, 0.5, 0.5, 1.0]
    curve = htcore.compressibility_curve(W, keeps)
    np.testing.assert_array_equal(curve.keeps, keeps)
    np.testing.assert_array_equal(curve.k, [k_for_keep(v, W.size) for v in keeps])
    expected = [ref_rel_error(W, k) for k in curve.k]
    np.testing.assert_allclose(curve.rel_error, expected, rtol=1e-12, atol=1e-15)
    many = np.linspace(0, 1, 41)  # more thresholds than one radix pass refines at once
    curve = htcore.compressibility_curve(W, many)
    np.testing.assert_allclose(curve.rel_error, [ref_rel_error(W, k) for k in curve.k], rtol=1e-12, atol=1e-15)
    assert np.all(np.diff(curve.rel_error) <= 0)


def test_compressibility_curve_tiny_and_huge_float64():
    W = np.array([[1e-300, 3e-300], [2e-300, 0.0]])
    np.testing.assert_allclose(htcore.compressibility_curve(W, [0.25, 0.5]).rel_error,
                               [math.sqrt(5 / 14), math.sqrt(1 / 14)], rtol=1e-12)
    np.testing.assert_allclose(htcore.compressibility_curve(W * 1e300 * 1e300, [0.25]).rel_error, [math.sqrt(5 / 14)], rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_rel_error_picks_smallest_k(dtype):
    rng = np.random.default_rng(7)
    W = (rng.standard_normal((50, 40)) * 4).astype(dtype)
    W[:10] = np.round(W[:10])
    for eps in (0.0, 0.01, 0.1, 0.3, 0.7, 1.0):
        m = htcore.topk_sparsify(W, max_rel_error=eps)
        k = m.nnz
        assert_selects(m, W, ref_matrix(W, k))
        assert ref_rel_error(W, k) <= eps * (1 + 1e-12)
        if k > 0:
            assert ref_rel_error(W, k - 1) > eps * (1 - 1e-12)


def test_sparsify_global_matches_concatenated_reference():
    rng = np.random.default_rng(8)
    weights = {"b": tie_heavy(rng, (20, 30), np.float32), "a": tie_heavy(rng, (7, 70000), np.float32),
               "c": tie_heavy(rng, (1, 1), np.float32)}
    flat = np.concatenate([w.ravel() for w in weights.values()])
    for k in (0, 1, 5000, flat.size // 2, flat.size):
        out = htcore.sparsify_global(weights, k=k)
        assert list(out) == ["b", "a", "c"]
        chosen = ref_positions(flat, k)
        offset = 0
        for name, w in weights.items():
            mine = chosen[(chosen >= offset) & (chosen < offset + w.size)] - offset
            assert_selects(out[name], w, mine)
            offset += w.size
    assert sum(m.nnz for m in htcore.sparsify_global(weights, 0.25).values()) == k_for_keep(0.25, flat.size)


def test_sparsify_global_mixed_dtypes_compare_exactly():
    half = np.array([[1.0, 0.0999755859375]], dtype=np.float16)  # float16(0.1) is 0.0999755859375
    single = np.array([[0.1, 0.0999755859375]], dtype=np.float32)
    out = htcore.sparsify_global({"h": half, "s": single}, k=3)
    assert out["h"].data.dtype == np.float16 and out["s"].data.dtype == np.float32
    np.testing.assert_array_equal(positions(out["h"]), [0, 1])  # tie with s[1] goes to the earlier array
    np.testing.assert_array_equal(positions(out["s"]), [0])
    assert htcore.sparsify_global({}, 0.5) == {}


# ---- science check: limits of the compressibility curve ----------------------------------------

@pytest.mark.parametrize("alpha", [3.0, 4.0])
def test_pareto_compressibility_limit(alpha):
    rng = np.random.default_rng(10)
    n, keep = 1_000_000, 0.1
    x = rng.pareto(alpha, n) + 1.0  # P(|x| > t) = t^-alpha for t >= 1: tail index alpha
    x *= rng.choice([-1.0, 1.0], n)
    got = htcore.compressibility_curve(x.astype(np.float32), [keep]).rel_error[0]
    limit = math.sqrt(1 - keep ** (1 - 2 / alpha))
    assert abs(got / limit - 1) < 0.02


def test_gaussian_compressibility_limit():
    rng = np.random.default_rng(11)
    keep = 0.1
    x = rng.standard_normal(1_000_000).astype(np.float32)
    got = htcore.compressibility_curve(x, [keep]).rel_error[0]
    t = norm.ppf(1 - keep / 2)
    limit = math.sqrt(1 - keep - 2 * t * norm.pdf(t))
    assert abs(got / limit - 1) < 0.02
