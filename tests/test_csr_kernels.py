"""CSR products (matvec, matmat, @, sparse_linear) against a float64 dense reference, for every
storage format, on uniform and top-k (Student-t) patterns, with both kernel paths (AVX2 and portable)."""
import functools

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.special

import htcore
from htcore import CSRMatrix, _core, sparse_linear

FORMATS = {
    "f32-u16": dict(),
    "f32-i32": dict(index_dtype=np.int32),
    "f64": dict(value_dtype=np.float64),
    "f16": dict(value_dtype=np.float16),
    "f16-i32": dict(value_dtype=np.float16, index_dtype=np.int32),
    "codebook": "codebook",
    "i64-indptr": "i64",
}


def uniform_pattern(rng, rows, cols, density):
    m = sp.random(rows, cols, density=density, format="csr", random_state=rng, dtype=np.float64)
    m.data = rng.standard_normal(m.nnz)
    return CSRMatrix.from_scipy(m.astype(np.float32))


def topk_pattern(rng, rows, cols, keep):
    """Global top-k |w| of W_ij = r_i c_j t_ij, all Student-t (df=3): heavy-tailed row and column
    scales make rows very uneven (some nearly full, many empty), as in trained layers."""
    scales = np.abs(rng.standard_t(3, size=(rows, 1))) * np.abs(rng.standard_t(3, size=(1, cols)))
    w = (rng.standard_t(3, size=(rows, cols)) * scales).astype(np.float32)
    k = int(np.ceil(keep * w.size)) if w.size else 0
    mask = np.zeros(w.size, bool)
    if k:
        mask[np.argsort(-np.abs(w).ravel(), kind="stable")[:k]] = True
    return CSRMatrix.from_scipy(sp.csr_matrix(np.where(mask.reshape(w.shape), w, 0)))


def quantize(m, levels=16):
    """A codebook matrix of ``levels`` quantiles of m's values, each value mapped to the nearest."""
    values = m.values().astype(np.float32)
    codebook = np.quantile(values, np.linspace(0, 1, levels)).astype(np.float32) if m.nnz else np.zeros(1, np.float32)
    codes = np.abs(values[:, None] - codebook[None, :]).argmin(axis=1).astype(np.uint8)
    return CSRMatrix(codes, m.indices, m.indptr, m.shape, codebook=codebook)


def as_format(m, fmt):
    spec = FORMATS[fmt]
    if spec == "codebook":
        return quantize(m)
    if spec == "i64":
        return CSRMatrix(m.data, m.indices, m.indptr, m.shape, indptr_dtype=np.int64)
    return m.astype(**spec)


def check_close(got, A, X, extra=None):
    """|got - ref| within float32 (or float64) accumulation error of sum |a||x|."""
    D = A.todense().astype(np.float64)
    Xd = np.asarray(X, dtype=np.float64)
    ref = D @ Xd if extra is None else extra(D, Xd)
    scale = np.abs(D) @ np.abs(Xd) if extra is None else extra(np.abs(D), np.abs(Xd), absolute=True)
    eps = 1e-13 if A.data.dtype == np.float64 else 2e-6
    assert got.shape == ref.shape
    assert got.dtype == (np.float64 if A.data.dtype == np.float64 else np.float32)
    np.testing.assert_array_less(np.abs(got - ref), eps * (scale + 1) + 1e-30)


@pytest.fixture(params=["avx2", "portable"])
def kernel_path(request):
    if request.param == "avx2" and not _core.csr_uses_avx2():
        pytest.skip("CPU without AVX2+FMA+F16C")
    _core._csr_enable_avx2(request.param == "avx2")
    yield request.param
    _core._csr_enable_avx2(True)


@pytest.fixture
def restore_threads():
    before = htcore.get_num_threads()
    yield
    htcore.set_num_threads(before)


SHAPES = [(0, 0), (0, 5), (5, 0), (1, 1), (1, 300), (300, 1), (64, 70), (97, 400), (20, 70000)]


@functools.lru_cache(maxsize=None)
def base_matrix(pattern, rows, cols):
    rng = np.random.default_rng(rows * 100003 + cols)
    density = 0.002 if cols > 65536 else 0.15
    return uniform_pattern(rng, rows, cols, density) if pattern == "uniform" else topk_pattern(rng, rows, cols, density)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("pattern", ["uniform", "topk"])
def test_matvec_and_matmat(kernel_path, fmt, pattern):
    rng = np.random.default_rng(1)
    for rows, cols in SHAPES:
        if fmt == "f16-i32" and cols > 65536:
            continue
        A = as_format(base_matrix(pattern, rows, cols), fmt)
        if cols > 65536 and fmt != "f64":
            assert A.indices.dtype == np.int32
        x = rng.standard_normal(cols)
        check_close(A.matvec(x), A, x)
        check_close(A @ x, A, x)
        for k in (1, 2, 9, 32, 33, 257) if cols <= 1000 else (1, 3):
            X = rng.standard_normal((cols, k))
            check_close(A.matmat(X), A, X)


def test_empty_rows_are_zero(kernel_path):
    A = CSRMatrix(np.array([2.0, 3.0], np.float32), [1, 0], [0, 0, 1, 1, 2, 2], (5, 3))
    np.testing.assert_array_equal(A @ np.array([1.0, 10.0, 100.0]), [0, 20, 0, 3, 0])
    np.testing.assert_array_equal(sparse_linear(np.ones((2, 3)), A, bias=np.arange(5.0)), [[0, 3, 2, 6, 4]] * 2)


def linear_reference(activation):
    def ref(D, X, bias, absolute=False):
        z = X @ D.T + (np.abs(bias) if absolute else bias)
        if absolute:
            return z
        if activation == "relu":
            return np.maximum(z, 0)
        if activation == "gelu":
            return 0.5 * z * (1 + scipy.special.erf(z / np.sqrt(2)))
        if activation == "tanh":
            return np.tanh(z)
        return z

    return ref


@pytest.mark.parametrize("fmt", ["f32-u16", "f32-i32", "f64", "f16", "codebook"])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "tanh"])
@pytest.mark.parametrize("batch", [1, 3, 32, 257])
def test_sparse_linear(kernel_path, fmt, activation, batch):
    rng = np.random.default_rng(batch)
    A = as_format(topk_pattern(rng, 70, 90, 0.1), fmt)
    X = rng.standard_normal((batch, 90))
    bias = rng.standard_normal(70)
    got = sparse_linear(X, A, bias=bias, activation=activation)
    ref = linear_reference(activation)
    D = A.todense().astype(np.float64)
    want = ref(D, X, bias)
    scale = ref(np.abs(D), np.abs(X), bias, absolute=True)
    eps = 1e-13 if fmt == "f64" else 4e-6
    assert got.shape == (batch, 70)
    np.testing.assert_array_less(np.abs(got - want), eps * (scale + 1))
    one = sparse_linear(X[0], A, bias=bias, activation=activation)
    assert one.shape == (70,)
    # the summation order differs by batch size: both within the accumulation error of the reference
    np.testing.assert_array_less(np.abs(one - got[0]), 2 * eps * (scale[0] + 1))


def test_gelu_matches_torch_default():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    A = topk_pattern(rng, 40, 50, 0.2)
    X = rng.standard_normal((5, 50)).astype(np.float32)
    want = torch.nn.functional.gelu(torch.from_numpy(X) @ torch.from_numpy(A.todense()).T).numpy()
    np.testing.assert_allclose(sparse_linear(X, A, activation="gelu"), want, rtol=1e-5, atol=1e-6)


def test_non_contiguous_inputs(kernel_path):
    rng = np.random.default_rng(3)
    A = uniform_pattern(rng, 40, 60, 0.2)
    big = rng.standard_normal((120, 80))
    X = big[::2, ::3][:60, :20]  # (60, 20), strided
    check_close(A.matmat(X), A, X)
    x = big[::2, 5]
    check_close(A.matvec(x), A, x)
    Xb = big[:40, :60].T.T[:, ::-1][:, ::-1]  # (40, 60) batch of rows through negative strides
    np.testing.assert_allclose(sparse_linear(Xb, A), (Xb @ A.todense().astype(np.float64).T), rtol=1e-5, atol=1e-5)
    Xf = np.asfortranarray(rng.standard_normal((60, 7)))
    check_close(A @ Xf, A, Xf)


def test_results_identical_at_1_and_2_threads(restore_threads, kernel_path):
    rng = np.random.default_rng(4)
    A = topk_pattern(rng, 600, 800, 0.1)  # enough work for several threads
    for fmt in ["f32-u16", "f16", "codebook", "f64"]:
        B = as_format(A, fmt)
        X = rng.standard_normal((800, 40))
        htcore.set_num_threads(1)
        one = (B.matvec(X[:, 0]), B.matmat(X), sparse_linear(X.T, B, activation="gelu"))
        htcore.set_num_threads(2)
        two = (B.matvec(X[:, 0]), B.matmat(X), sparse_linear(X.T, B, activation="gelu"))
        for a, b in zip(one, two):
            np.testing.assert_array_equal(a, b)
        # X^T transposed by both threads inside the parallel region, 40 = 32 + 8 batch columns
        check_close(sparse_linear(X.T, B), B, X, extra=lambda D, Xd, absolute=False: Xd.T @ D.T)


def test_out_argument():
    rng = np.random.default_rng(5)
    A = uniform_pattern(rng, 30, 40, 0.3)
    x = rng.standard_normal(40)
    out = np.full(30, np.nan, np.float32)
    assert A.matvec(x, out=out) is out
    check_close(out, A, x)
    X = rng.standard_normal((40, 4))
    out2 = np.empty((30, 4), np.float32)
    assert A.matmat(X, out=out2) is out2
    for bad in [np.empty(30, np.float64), np.empty(31, np.float32), np.empty((30, 2), np.float32)[:, 0], [0.0] * 30]:
        with pytest.raises(ValueError, match="out"):
            A.matvec(x, out=bad)
    square = uniform_pattern(rng, 30, 30, 0.3)
    y = np.ones(30, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        square.matvec(y, out=y)


def test_wrong_shapes_and_dtypes():
    rng = np.random.default_rng(6)
    A = uniform_pattern(rng, 30, 40, 0.3)
    with pytest.raises(ValueError, match="40 columns"):
        A.matvec(np.ones(39))
    with pytest.raises(ValueError, match="1-D"):
        A.matvec(np.ones((40, 1)))
    with pytest.raises(ValueError, match="40 columns"):
        A.matmat(np.ones((41, 3)))
    with pytest.raises(ValueError, match="40 columns"):
        sparse_linear(np.ones((3, 30)), A)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        sparse_linear(np.ones((2, 3, 40)), A)
    with pytest.raises(ValueError, match="bias has 29"):
        sparse_linear(np.ones((3, 40)), A, bias=np.ones(29))
    with pytest.raises(ValueError, match="activation"):
        sparse_linear(np.ones((3, 40)), A, activation="sigmoid")
    with pytest.raises(TypeError, match="CSRMatrix"):
        sparse_linear(np.ones((3, 40)), A.todense())
    with pytest.raises(TypeError, match="real"):
        A.matvec(np.ones(40, complex))
    with pytest.raises(TypeError, match="numeric"):
        A.matvec(np.array(["a"] * 40))
    x = np.ones(40)
    x[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        A.matvec(x)
    with pytest.raises(ValueError, match="non-finite"):
        sparse_linear(np.ones(40), A, bias=np.full(30, np.inf))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_check_on_the_bits(kernel_path, dtype):
    """X and bias are refused on NaN, Inf or -Inf anywhere (the kernel tests exponent bits), and
    the extremes of the finite range (max, -max, smallest subnormal, -0.0) pass. 87 values put a
    bad one in each part of the AVX2 check: the 4-load steps, the 1-load steps (positions 70 in
    float32, 82 in float64) and the scalar tail."""
    A = CSRMatrix(np.ones(3, dtype), [0, 2, 86], [0, 2, 3], (2, 87))
    info = np.finfo(dtype)
    edge = np.array([info.max, -info.max, info.smallest_subnormal, -0.0] + [1.0] * 83, dtype)
    np.testing.assert_array_equal(A.matvec(edge), [info.max, 1.0])  # max + subnormal, and x[86]
    for bad in (np.nan, np.inf, -np.inf):
        for pos in (0, 40, 70, 82, 86):
            x = np.ones(87, dtype)
            x[pos] = bad
            with pytest.raises(ValueError, match="X contains non-finite"):
                A.matvec(x)
            with pytest.raises(ValueError, match="X contains non-finite"):
                sparse_linear(np.stack([np.ones(87, dtype), x]), A)
        with pytest.raises(ValueError, match="bias contains non-finite"):
            sparse_linear(np.ones(87, dtype), A, bias=np.array([1.0, bad], dtype))


def test_non_finite_X_refused_in_every_threads_share(restore_threads, kernel_path):
    """sparse_linear checks a batch's X after each thread has transposed its share of the columns:
    a NaN or Inf in the first or last column of either share, in any batch row, raises at 1 and 2
    threads, and the next clean call is right."""
    rng = np.random.default_rng(24)
    A = uniform_pattern(rng, 300, 200, 0.3)
    X = rng.standard_normal((33, 200)).astype(np.float32)
    for threads in (1, 2):
        htcore.set_num_threads(threads)
        for bad in (np.nan, -np.inf):
            for row, col in ((0, 0), (32, 99), (5, 100), (32, 199)):
                Xb = X.copy()
                Xb[row, col] = bad
                with pytest.raises(ValueError, match="X contains non-finite"):
                    sparse_linear(Xb, A)
        check_close(sparse_linear(X, A), A, X.T, extra=lambda D, Xd, absolute=False: Xd.T @ D.T)


def test_kernel_binding_rechecks_sizes():
    A = CSRMatrix(np.ones(2, np.float32), [0, 1], [0, 1, 2], (2, 2))
    with pytest.raises(ValueError, match="X must have"):
        _core.csr_spmm(A.indptr, A.indices, A.data, None, 2, 2, np.ones(3, np.float32), 1, False, None, _core.Activation.none, np.empty(2, np.float32), 1, 1)
    with pytest.raises(ValueError, match="output has"):
        _core.csr_spmm(A.indptr, A.indices, A.data, None, 2, 2, np.ones(2, np.float32), 1, False, None, _core.Activation.none, np.empty(1, np.float32), 1, 1)
    with pytest.raises(TypeError, match="float32"):
        _core.csr_spmm(A.indptr, A.indices, A.data, None, 2, 2, np.ones(2), 1, False, None, _core.Activation.none, np.empty(2), 1, 1)


def first_parallel_nnz(rows: int) -> int:
    """Smallest nnz at which an SpMV of a matrix with ``rows`` rows uses 2 threads (bisection)."""
    lo, hi = 0, 1 << 24
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if _core._csr_threads(rows, mid, 1) < 2 else (lo, mid)
    return lo


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_results_identical_around_the_parallel_grain(restore_threads, kernel_path, offset):
    htcore.set_num_threads(2)
    rows, cols = 97, 3001
    boundary = first_parallel_nnz(rows)
    assert 2 * 4096 <= boundary <= 2 * 16384  # at least ~8k multiply-adds per thread (kParallelGrain)
    assert _core._csr_threads(rows, boundary + 10**6, 1) == 2
    assert _core._csr_threads(rows, boundary, 0) == 1  # an empty batch never forks
    nnz = boundary + offset
    rng = np.random.default_rng(11)
    flat = np.sort(rng.choice(rows * cols, size=nnz, replace=False))
    counts = np.bincount(flat // cols, minlength=rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    A = CSRMatrix(rng.standard_normal(nnz).astype(np.float32), (flat % cols).astype(np.int32), indptr, (rows, cols))
    assert _core._csr_threads(rows, nnz, 1) == (2 if offset >= 0 else 1)
    x = rng.standard_normal(cols).astype(np.float32)
    X = rng.standard_normal((3, cols)).astype(np.float32)
    htcore.set_num_threads(2)
    two = (A.matvec(x), sparse_linear(X[:1], A, activation="relu"), sparse_linear(X, A))
    htcore.set_num_threads(1)
    one = (A.matvec(x), sparse_linear(X[:1], A, activation="relu"), sparse_linear(X, A))
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    check_close(A.matvec(x), A, x)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_short_rows_of_every_length(kernel_path, fmt):
    """Row lengths 0..40 in a shuffled order, ending with short rows: the fixed-width tail steps
    (which read past a row's end) and the scalar finish near the end of the arrays."""
    rng = np.random.default_rng(12)
    cols = 50
    lengths = np.concatenate([rng.permutation(np.arange(41)), [3, 0, 1, 7, 2]])
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    indices = np.concatenate([np.sort(rng.choice(cols, n, replace=False)) for n in lengths]).astype(np.int32)
    base = CSRMatrix(rng.standard_normal(indptr[-1]).astype(np.float32), indices, indptr, (len(lengths), cols))
    A = as_format(base, fmt)
    x = rng.standard_normal(cols)
    check_close(A.matvec(x), A, x)
    y = sparse_linear(x[None, :], A, bias=np.arange(len(lengths), dtype=np.float64), activation="tanh")
    np.testing.assert_allclose(y[0], np.tanh(A.todense().astype(np.float64) @ x + np.arange(len(lengths))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["f32-i32", "f32-u16", "f16"])
def test_matvec_with_software_prefetch(restore_threads, kernel_path, fmt):
    """A x on a matrix with more than 8 MiB of values and indices and over 512 values per row
    reads its arrays ahead in software (past the end of the arrays on the last rows): the same
    sums as the reference, plain and with a bias and an activation, identical at 1 and 2 threads."""
    rng = np.random.default_rng(23)
    A = as_format(uniform_pattern(rng, 2000, 1800, 0.6), fmt)
    assert A.data.nbytes + A.indices.nbytes > 8 << 20 and A.nnz > 512 * A.shape[0]
    x = rng.standard_normal(1800).astype(np.float32)
    bias = rng.standard_normal(2000).astype(np.float32)
    results = []
    for threads in (1, 2):
        htcore.set_num_threads(threads)
        results.append((A.matvec(x), sparse_linear(x[None, :], A, bias=bias, activation="relu")[0]))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    check_close(results[0][0], A, x)
    want = np.maximum(A.todense().astype(np.float64) @ x + bias, 0)
    np.testing.assert_allclose(results[0][1], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("fmt", ["f32-u16", "f16", "codebook", "f64"])
def test_batch_tiles_of_every_width(restore_threads, kernel_path, fmt):
    """Batches 2..41 (every width of the last 8-column group, 1..4 groups, and a second 32-column
    tile) over 21 rows (a partial 8-row tile), X as (cols, k) with Y row-major (matmat) and as
    (k, cols) with Y transposed (sparse_linear, bias and relu), at 1 and 2 threads."""
    rng = np.random.default_rng(13)
    A = as_format(topk_pattern(rng, 21, 300, 0.3), fmt)
    bias = rng.standard_normal(21)
    for k in range(2, 42):
        X = rng.standard_normal((300, k))
        results = []
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            results.append((A.matmat(X), sparse_linear(X.T, A, bias=bias, activation="relu")))
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)
        check_close(results[0][0], A, X)
        relu_ref = lambda D, Xd, absolute=False: (Xd.T @ D.T + np.abs(bias)) if absolute else np.maximum(Xd.T @ D.T + bias, 0)
        check_close(results[0][1], A, X, extra=relu_ref)


def test_kernel_entry_refuses_wrapped_sizes_and_overlapping_outputs():
    """The private kernel checks its own sizes: a product that wraps around int64 or output strides
    whose rows and columns share elements raise instead of writing out of bounds or racing."""
    from htcore import _core

    empty_csr = (np.zeros(2, np.int32), np.zeros(0, np.uint16), np.zeros(0, np.float32), None)
    out = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="too few"):  # (k - 1) * 4 wraps to 0 without the check
        _core.csr_spmm(*empty_csr, 1, 0, np.zeros(0, np.float32), 2**62 + 1, False, None, _core.Activation.none, out, 1, 4)
    two_rows = (np.zeros(3, np.int32), np.zeros(0, np.uint16), np.zeros(0, np.float32), None)
    with pytest.raises(ValueError, match="overlap"):
        _core.csr_spmm(*two_rows, 2, 1, np.ones(2, np.float32), 2, False, None, _core.Activation.none, np.zeros(4, np.float32), 1, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_output_past_the_chunk_buffer(restore_threads, dtype):
    """sparse_linear's (batch, rows) result goes out through a per-thread chunk buffer of 64 rows
    while it holds at most 1 MiB (batch <= 3276 in float32); larger batches store tiles straight
    into Y. Both paths, one after the other, at 1 and 2 threads, with a bias and an activation,
    agree with the reference and with each other across thread counts."""
    rng = np.random.default_rng(22)
    A = topk_pattern(rng, 150, 30, 0.2).astype(value_dtype=dtype)
    bias = rng.standard_normal(150)
    big = (1 << 20) // (80 * np.dtype(dtype).itemsize) + 1  # just past the chunk buffer
    for batch in (33, big, 7, big):
        X = rng.standard_normal((batch, 30)).astype(dtype)
        results = []
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            results.append(sparse_linear(X, A, bias=bias, activation="relu"))
        np.testing.assert_array_equal(results[0], results[1])
        D = A.todense().astype(np.float64)
        want = np.maximum(X.astype(np.float64) @ D.T + bias, 0)
        scale = np.abs(X.astype(np.float64)) @ np.abs(D).T + np.abs(bias)
        eps = 1e-13 if dtype == np.float64 else 4e-6
        np.testing.assert_array_less(np.abs(results[0] - want), eps * (scale + 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_input_beyond_the_kept_buffer(restore_threads, dtype):
    """X^T of more than 4 MiB goes in a per-call buffer rather than the thread's kept one: both
    sizes, one after the other at 1 and 2 threads, agree with the reference."""
    rng = np.random.default_rng(21)
    A = uniform_pattern(rng, 40, 4200, 0.01).astype(value_dtype=dtype)
    big = (4 << 20) // (4200 * np.dtype(dtype).itemsize) + 1  # just over 4 MiB of X
    for batch in (3, big, 5, big):
        X = rng.standard_normal((batch, 4200)).astype(dtype)
        results = []
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            results.append(sparse_linear(X, A))
        np.testing.assert_array_equal(results[0], results[1])
        check_close(results[0], A, X.T, extra=lambda D, Xd, absolute=False: Xd.T @ D.T)
