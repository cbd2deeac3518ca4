"""Property-based tests (hypothesis) for the CSR entry points that reach C++: CSRMatrix
construction, matvec / matmat / ``@`` / ``out=``, astype, codebook matrices and sparse_linear.

Each test says what it expects: either a result equal to a float64 numpy reference (within the
float32 / float64 accumulation error), or a clear ValueError / TypeError; never a crash. Runs are
reproducible (``derandomize=True``). Print the inputs tried per test with
``pytest tests/test_fuzz_csr.py --hypothesis-show-statistics``.

check=False: the kernels re-check the row pointers (O(rows)), so a malformed indptr raises
ValueError even in an unchecked matrix (tested below); column indices and codes are trusted
there (O(nnz) to check), as documented on CSRMatrix.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htcore import CSRMatrix, sparse_linear
from layouts import LAYOUTS, with_layout

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
FORMATS = ("f32", "f32-i32", "f64", "f16", "codebook", "i64-indptr", "int8-codes")
VIEWS = LAYOUTS + ("float16", "float64", "int", "bool")
BAD_DTYPES = {"complex": np.complex64, "object": object, "str": np.str_, "datetime": "datetime64[s]"}


def random_csr(seed: int, rows: int, cols: int, density: float, fmt: str) -> CSRMatrix:
    """A valid CSR matrix in storage format ``fmt`` with exact zeros, ties and both signs."""
    rng = np.random.default_rng(seed)
    dense = rng.integers(-3, 4, size=(rows, cols)).astype(np.float32)
    continuous = rng.random((rows, cols)) < 0.5
    dense[continuous] = rng.standard_normal(int(continuous.sum()))
    dense[rng.random((rows, cols)) >= density] = 0
    r, c = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=rows))])
    values = dense[r, c]
    if fmt in ("codebook", "int8-codes"):
        codebook = np.unique(np.concatenate([values, [0.5]])).astype(np.float32)[:100]
        codes = np.searchsorted(codebook, values).clip(0, len(codebook) - 1)
        return CSRMatrix(codes.astype(np.int8 if fmt == "int8-codes" else np.uint8), c, indptr, (rows, cols), codebook=codebook)
    dtype = {"f64": np.float64, "f16": np.float16}.get(fmt, np.float32)
    return CSRMatrix(values.astype(dtype), c, indptr, (rows, cols),
                     index_dtype=np.int32 if fmt == "f32-i32" else None,
                     indptr_dtype=np.int64 if fmt == "i64-indptr" else None)


def as_view(a: np.ndarray, view: str) -> np.ndarray:
    """The same values as ``a`` through another memory layout or dtype."""
    if view in LAYOUTS:
        return with_layout(a, view)
    if view == "int":
        return np.rint(a).astype(np.int64)
    if view == "bool":
        return a > 0
    return a.astype(view)  # float16, float64


def reference_values(A: CSRMatrix, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A x in float64, the bound sum |a| |x| that scales the accumulation error)."""
    D = A.todense().astype(np.float64)
    x64 = np.asarray(x, np.float64)
    return D @ x64, np.abs(D) @ np.abs(x64)


def assert_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray, dtype: np.dtype) -> None:
    """|got - want| <= 64 eps sum |a| |x| (the matrices have <= 12 columns)."""
    assert got.dtype == dtype and got.shape == want.shape
    err = np.abs(got - want)
    assert np.all(err <= 64 * np.finfo(dtype).eps * scale + 1e-30), err.max()


csr_params = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 12), st.integers(0, 12),
                       st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.sampled_from(FORMATS))


@FUZZ
@given(csr_params, st.sampled_from(VIEWS), st.integers(0, 40))
def test_products_match_reference(params, view, k):
    """Expected: correct result for every storage format, input layout and dtype, batch size."""
    A = random_csr(*params)
    rng = np.random.default_rng(params[0] + 1)
    x = rng.standard_normal(A.shape[1]).astype(np.float32)
    X = rng.standard_normal((A.shape[1], k)).astype(np.float32)
    xv, Xv = as_view(x, view), as_view(X, view)
    x_used, X_used = np.asarray(xv, np.float64), np.asarray(Xv, np.float64)
    if A.dtype == np.float32:  # the kernel reads float32 inputs: compare against what it sees
        x_used, X_used = x_used.astype(np.float32), X_used.astype(np.float32)
    y = A.matvec(xv)
    assert_close(y, *reference_values(A, x_used), A.dtype)
    np.testing.assert_array_equal(A @ xv, y)
    Y = A.matmat(Xv)
    assert_close(Y, *reference_values(A, X_used), A.dtype)
    np.testing.assert_array_equal(A @ Xv, Y)
    out = np.full((A.shape[0], k), np.nan, A.dtype)
    assert A.matmat(Xv, out=out) is out
    np.testing.assert_array_equal(out, Y)


@FUZZ
@given(csr_params, st.integers(0, 9), st.sampled_from([None, "relu", "gelu", "tanh"]), st.booleans(), st.booleans())
def test_sparse_linear_matches_reference(params, batch, activation, with_bias, one_d):
    """Expected: act(X A^T + b) as in torch's Linear, for 1-D and 2-D X, with and without bias."""
    import scipy.special

    A = random_csr(*params)
    rng = np.random.default_rng(params[0] + 2)
    X = rng.standard_normal(A.shape[1] if one_d else (batch, A.shape[1]))
    bias = rng.standard_normal(A.shape[0]) if with_bias else None
    got = sparse_linear(X, A, bias=bias, activation=activation)
    Xk = X.astype(A.dtype)
    pre = Xk.astype(np.float64) @ A.todense().astype(np.float64).T
    scale = np.abs(Xk.astype(np.float64)) @ np.abs(A.todense().astype(np.float64)).T
    if bias is not None:
        pre = pre + bias.astype(A.dtype)
        scale = scale + np.abs(bias)
    f = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
         "gelu": lambda v: 0.5 * v * (1 + scipy.special.erf(v / np.sqrt(2)))}[activation]
    assert_close(got, f(pre), 2 * scale + 1e-6, A.dtype)  # activations are 1-Lipschitz (gelu: < 1.13)


@FUZZ
@given(csr_params, st.sampled_from(["f16", "f32", "f64", None]), st.sampled_from(["u16", "i32", None]))
def test_astype_keeps_values(params, value, index):
    """Expected: astype changes storage only; products agree with the original's dense form."""
    A = random_csr(*params)
    B = A.astype(value_dtype={"f16": np.float16, "f32": np.float32, "f64": np.float64, None: None}[value],
                 index_dtype={"u16": np.uint16, "i32": np.int32, None: None}[index])
    want = A.todense().astype(B.values().dtype if value else A.values().dtype)
    np.testing.assert_array_equal(B.todense(), want)
    x = np.ones(A.shape[1])
    assert_close(B.matvec(x), *reference_values(B, x), B.dtype)


# ---- malformed CSR -----------------------------------------------------------------------------

MUTATIONS = ("short_indptr", "long_indptr", "indptr_decreases", "indptr_start", "indptr_end", "negative_index",
             "index_too_big", "indices_short", "data_short", "unsorted_row", "duplicate_in_row", "data_2d",
             "float_indices", "bool_indptr", "code_too_big", "negative_int8_code", "codebook_nan",
             "codebook_empty", "codebook_257", "codebook_2d", "negative_shape")


def mutate(A: CSRMatrix, how: str, rng: np.random.Generator):
    """(data, indices, indptr, shape, codebook) of A broken in one way, or None if A cannot be."""
    data, indices, indptr = A.data.copy(), A.indices.astype(np.int64), A.indptr.astype(np.int64)
    shape, codebook = A.shape, A.codebook
    rows, cols = shape
    nnz = data.size
    if how == "short_indptr":
        indptr = indptr[:-1]
    elif how == "long_indptr":
        indptr = np.append(indptr, nnz)
    elif how == "indptr_decreases":
        if rows < 2 or nnz == 0:
            return None
        i = int(rng.integers(1, rows))
        indptr[i] = nnz + 1
    elif how == "indptr_start":
        indptr[0] = int(rng.choice([-1, 1, 10**9]))
    elif how == "indptr_end":
        indptr[-1] = nnz + int(rng.choice([-1, 1, 10**9]))
        if rows == 0:
            return None
    elif how in ("negative_index", "index_too_big"):
        if nnz == 0:
            return None
        indices[int(rng.integers(nnz))] = -1 if how == "negative_index" else cols + int(rng.integers(0, 10**6))
    elif how == "indices_short":
        if nnz == 0:
            return None
        indices = indices[:-1]
    elif how == "data_short":
        if nnz == 0:
            return None
        data = data[:-1]
    elif how in ("unsorted_row", "duplicate_in_row"):
        lengths = np.diff(indptr)
        row = np.flatnonzero(lengths >= 2)
        if row.size == 0:
            return None
        start = int(indptr[row[0]])
        if how == "unsorted_row":
            indices[start], indices[start + 1] = indices[start + 1], indices[start]
        else:
            indices[start + 1] = indices[start]
    elif how == "data_2d":
        data = np.stack([data, data], axis=1)
    elif how == "float_indices":
        indices = indices.astype(np.float64)
    elif how == "bool_indptr":
        indptr = indptr.astype(bool)
    elif how == "code_too_big":
        if codebook is None or nnz == 0 or len(codebook) >= 256:
            return None
        data[int(rng.integers(nnz))] = int(rng.integers(len(codebook), 256))
    elif how == "negative_int8_code":
        if codebook is None or nnz == 0:
            return None
        data = data.view(np.int8).copy()
        data[int(rng.integers(nnz))] = -1
    elif how.startswith("codebook"):
        if codebook is None:
            return None
        codebook = {"codebook_nan": np.append(codebook[:-1], np.nan), "codebook_empty": np.zeros(0, np.float32),
                    "codebook_257": np.zeros(257, np.float32), "codebook_2d": codebook[None, :]}[how]
    elif how == "negative_shape":
        shape = (-rows - 1, cols)
    return data, indices, indptr, shape, codebook


@FUZZ
@given(csr_params, st.sampled_from(MUTATIONS), st.integers(0, 2**32 - 1))
def test_malformed_csr_raises(params, how, seed):
    """Expected: CSRMatrix(check=True) raises ValueError or TypeError for every broken structure."""
    A = random_csr(*params)
    broken = mutate(A, how, np.random.default_rng(seed))
    if broken is None:
        return
    data, indices, indptr, shape, codebook = broken
    with pytest.raises((ValueError, TypeError)):
        CSRMatrix(data, indices, indptr, shape, codebook=codebook)


ROW_POINTER_MUTATIONS = ("short_indptr", "long_indptr", "indptr_decreases", "indptr_start", "indptr_end",
                         "indices_short", "data_short")


@FUZZ
@given(csr_params, st.sampled_from(ROW_POINTER_MUTATIONS), st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_unchecked_matrix_with_bad_row_pointers_raises_in_kernel(params, how, seed, k):
    """Expected: with check=False, the kernels' own O(rows) checks raise ValueError for a broken
    indptr or mismatched lengths (before this check, such a matrix could segfault)."""
    A = random_csr(*params)
    broken = mutate(A, how, np.random.default_rng(seed))
    if broken is None or A.shape[0] == 0:
        return
    data, indices, indptr, shape, codebook = broken
    try:
        B = CSRMatrix(data, indices, indptr, shape, codebook=codebook, check=False)
    except (ValueError, TypeError):
        return  # refused at construction (e.g. int32 overflow of a huge pointer): also fine
    X = np.ones((shape[1], k), B.dtype)
    with pytest.raises(ValueError):
        B.matmat(X)
    with pytest.raises(ValueError):
        sparse_linear(np.ones(shape[1]), B)


# ---- bad inputs to the products ----------------------------------------------------------------

@FUZZ
@given(csr_params, st.sampled_from(["nan", "inf", "-inf"]), st.booleans())
def test_non_finite_inputs_raise(params, bad, matrix):
    """Expected: ValueError naming the argument for NaN/Inf in x, X or bias."""
    A = random_csr(*params)
    if A.shape[1] == 0:
        return
    x = np.ones((A.shape[1], 2) if matrix else A.shape[1])
    x.flat[0] = float(bad)
    with pytest.raises(ValueError, match="non-finite"):
        A @ x
    with pytest.raises(ValueError, match="non-finite"):
        sparse_linear(x.T, A)
    if A.shape[0]:
        bias = np.zeros(A.shape[0])
        bias[-1] = float(bad)
        with pytest.raises(ValueError, match="bias"):
            sparse_linear(np.ones(A.shape[1]), A, bias=bias)


@FUZZ
@given(csr_params, st.sampled_from(sorted(BAD_DTYPES)), st.sampled_from(["matvec", "matmat", "linear", "bias", "data"]))
def test_unsupported_dtypes_raise_type_error(params, dtype, where):
    """Expected: TypeError for complex, object, str and datetime inputs and matrix values."""
    A = random_csr(*params)
    rows, cols = A.shape
    bad = lambda shape: np.zeros(shape, dtype=BAD_DTYPES[dtype])
    with pytest.raises(TypeError):
        if where == "matvec":
            A.matvec(bad(cols))
        elif where == "matmat":
            A.matmat(bad((cols, 2)))
        elif where == "linear":
            sparse_linear(bad((2, cols)), A)
        elif where == "bias":
            sparse_linear(np.zeros(cols), A, bias=bad(rows))
        else:
            CSRMatrix(bad(A.nnz), A.indices, A.indptr, A.shape)


@FUZZ
@given(csr_params, st.sampled_from(["wrong_length", "wrong_ndim", "3d", "bad_out_dtype", "bad_out_shape",
                                    "readonly_out", "strided_out", "overlap_out", "bad_activation", "bias_length",
                                    "not_csr"]))
def test_shape_and_argument_errors(params, how):
    """Expected: ValueError (or TypeError for a non-CSR weight) before any kernel runs."""
    A = random_csr(*params)
    rows, cols = A.shape
    x = np.ones(cols, A.dtype)
    readonly = np.empty(rows, A.dtype)
    readonly.flags.writeable = False
    buf = np.ones(max(rows, cols) * 2, A.dtype)
    calls = {
        "wrong_length": lambda: A.matvec(np.ones(cols + 1)),
        "wrong_ndim": lambda: A.matvec(np.ones((cols, 1, 1))),
        "3d": lambda: sparse_linear(np.ones((1, 1, cols)), A),
        "bad_out_dtype": lambda: A.matvec(x, out=np.empty(rows, np.float16)),
        "bad_out_shape": lambda: A.matvec(x, out=np.empty(rows + 1, A.dtype)),
        "readonly_out": lambda: A.matvec(x, out=readonly),
        "strided_out": lambda: A.matmat(np.ones((cols, 2), A.dtype), out=np.empty((rows, 4), A.dtype)[:, ::2]),
        "overlap_out": lambda: A.matvec(buf[:cols], out=buf[:rows]),
        "bad_activation": lambda: sparse_linear(x, A, activation="sigmoid"),
        "bias_length": lambda: sparse_linear(x, A, bias=np.ones(rows + 1)),
        "not_csr": lambda: sparse_linear(x, A.todense()),
    }
    if how in ("strided_out", "overlap_out") and (rows == 0 or cols == 0):
        return  # an empty out is contiguous and overlaps nothing: no error to expect
    with pytest.raises((ValueError, TypeError)):
        calls[how]()


def test_empty_and_one_element_matrices():
    """Expected: correct (all-zero or scalar) results for 0 x n, n x 0, 0 x 0 and 1 x 1 matrices."""
    for shape in [(0, 0), (0, 5), (5, 0), (1, 1)]:
        for fmt in FORMATS:
            A = random_csr(3, *shape, 1.0, fmt)
            y = A @ np.ones(shape[1])
            np.testing.assert_array_equal(y, A.todense().astype(np.float64).sum(axis=1).astype(A.dtype))
            assert sparse_linear(np.ones((0, shape[1])), A).shape == (0, shape[0])


# ---- nnz >= 2**31: int64 row pointers (shape-level, no big allocations) --------------------------

def test_indptr_dtype_switches_at_2_31():
    from htcore.sparse import indptr_dtype_for

    assert indptr_dtype_for(2**31 - 1) == np.int32
    assert indptr_dtype_for(2**31) == np.int64
    assert indptr_dtype_for(2**40) == np.int64


def test_nnz_2_31_gets_int64_row_pointers(tmp_path):
    """A matrix with 2**31 stored entries, backed by sparse files (no memory or disk used):
    CSRMatrix picks int64 row pointers and refuses int32 ones."""
    nnz = 2**31
    paths = {}
    for name, dtype in (("data", np.uint8), ("indices", np.uint16)):
        paths[name] = tmp_path / name
        with open(paths[name], "wb") as fh:
            fh.truncate(nnz * np.dtype(dtype).itemsize)
    data = np.memmap(paths["data"], dtype=np.uint8, mode="r", shape=(nnz,))
    indices = np.memmap(paths["indices"], dtype=np.uint16, mode="r", shape=(nnz,))
    indptr = np.array([0, nnz], np.int64)
    A = CSRMatrix(data, indices, indptr, (1, 65536), codebook=np.zeros(1, np.float32), check=False)
    assert A.nnz == nnz and A.indptr.dtype == np.int64 and np.may_share_memory(A.data, data)  # no copy
    with pytest.raises(ValueError, match="int64"):
        CSRMatrix(data, indices, indptr, (1, 65536), codebook=np.zeros(1, np.float32), indptr_dtype=np.int32, check=False)
    with pytest.raises(ValueError, match="uint16"):
        CSRMatrix(data, indices, indptr, (1, 65537), codebook=np.zeros(1, np.float32), index_dtype=np.uint16, check=False)


@FUZZ
@given(csr_params, st.integers(1, 5))
def test_int64_row_pointers_give_identical_products(params, k):
    """Expected: the int64-indptr kernels give bitwise the int32 results, for every format."""
    A = random_csr(*params)
    B = CSRMatrix(A.data, A.indices, A.indptr, A.shape, codebook=A.codebook, indptr_dtype=np.int64)
    assert B.indptr.dtype == np.int64
    X = np.random.default_rng(params[0]).standard_normal((A.shape[1], k)).astype(A.dtype)
    np.testing.assert_array_equal(B @ X, A @ X)
    np.testing.assert_array_equal(sparse_linear(X.T, B, activation="relu"), sparse_linear(X.T, A, activation="relu"))
