"""htcore.sparse_conv2d against torch.nn.functional.conv2d in float64: fuzzed shapes (stride, padding,
dilation, kernel, groups incl. depthwise, batch, kernels larger than the unpadded input), every value
format and index type, bias and each activation, empty rows and all-zero kernels, thread and loop
invariance (bitwise), and every argument check."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import htcore
from htcore import CSRMatrix, _core, sparse_conv2d
from test_csr_kernels import kernel_path, quantize, restore_threads  # noqa: F401  (fixtures)

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FORMATS = ["f32-u16", "f32-i32", "f16", "f16-i32", "codebook", "i64-indptr"]


def _torch():
    """torch, or a skip: only the float64 reference (and the torch-tensor input case) need it."""
    return pytest.importorskip("torch")


def random_weight(rng, c_out, cols, density=0.3, empty_rows=0.0, fmt="f32-u16"):
    """A (c_out, cols) CSR weight: Bernoulli(density) pattern, a share of rows left empty, in ``fmt``."""
    w = rng.standard_normal((c_out, cols)).astype(np.float32)
    w[rng.random((c_out, cols)) >= density] = 0
    w[rng.random(c_out) < empty_rows] = 0
    A = htcore.CSRMatrix.from_scipy(sp.csr_matrix(w))
    if fmt == "codebook":
        return quantize(A)
    if fmt == "i64-indptr":
        return CSRMatrix(A.data, A.indices, A.indptr, A.shape, indptr_dtype=np.int64)
    values = np.float16 if fmt.startswith("f16") else None
    return A.astype(value_dtype=values, index_dtype=np.int32 if fmt.endswith("i32") else None)


def reference(X, A, kernel_size, bias=None, activation=None, **conv):
    """torch's conv2d in float64 on A's effective values, and the scale of float32 rounding per
    output: conv2d(|X|, |W|) + |bias|."""
    torch = _torch()
    F = torch.nn.functional
    activate = {None: lambda t: t, "relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh}[activation]
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    c_out, cols = A.shape
    W = torch.from_numpy(A.todense().astype(np.float64)).reshape(c_out, cols // (kh * kw), kh, kw)
    x = torch.from_numpy(np.asarray(X, np.float64))
    b = None if bias is None else torch.from_numpy(np.asarray(bias, np.float64))
    ref = activate(F.conv2d(x, W, b, **conv))
    scale = F.conv2d(x.abs(), W.abs(), None if b is None else b.abs(), **conv)
    return ref.numpy(), scale.numpy()


def check(X, A, kernel_size, bias=None, activation=None, **conv):
    got = sparse_conv2d(X, A, kernel_size=kernel_size, bias=bias, activation=activation, **conv)
    ref, scale = reference(X, A, kernel_size, bias, activation, **conv)
    assert got.dtype == np.float32 and got.shape == ref.shape
    # relative error <= 1e-5 against the float32 rounding scale (gelu's slope is at most 1.13)
    assert np.all(np.abs(got - ref) <= 1.2e-5 * scale + 1e-30), float(np.max(np.abs(got - ref) / (scale + 1e-30)))
    return got


@st.composite
def conv_cases(draw):
    groups_kind = draw(st.sampled_from(["one", "groups", "depthwise"]))
    if groups_kind == "one":
        groups, cin_g, cout_g = 1, draw(st.integers(1, 4)), draw(st.integers(1, 5))
    elif groups_kind == "groups":
        groups, cin_g, cout_g = draw(st.integers(2, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    else:  # depthwise, channel multiplier 1-2
        groups, cin_g, cout_g = draw(st.integers(1, 6)), 1, draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    # the smallest input with a non-empty output, up to 9 more (so kernels larger than the unpadded
    # input come up whenever padding covers the difference)
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 9))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 9))
    return dict(
        batch=draw(st.integers(1, 8)), groups=groups, c_in=groups * cin_g, c_out=groups * cout_g, h=h, w=w,
        kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
        density=draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0])), empty_rows=draw(st.sampled_from([0.0, 0.3])),
        fmt=draw(st.sampled_from(FORMATS)), bias=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "relu", "gelu", "tanh"])), seed=draw(st.integers(0, 2**16)),
    )


@FUZZ
@given(conv_cases())
def test_matches_torch_on_fuzzed_shapes(case):
    rng = np.random.default_rng(case["seed"])
    kh, kw = case["kernel_size"]
    A = random_weight(rng, case["c_out"], case["c_in"] // case["groups"] * kh * kw, case["density"],
                      case["empty_rows"], case["fmt"])
    X = rng.standard_normal((case["batch"], case["c_in"], case["h"], case["w"])).astype(np.float32)
    bias = rng.standard_normal(case["c_out"]).astype(np.float32) if case["bias"] else None
    check(X, A, case["kernel_size"], bias, case["activation"], stride=case["stride"], padding=case["padding"],
          dilation=case["dilation"], groups=case["groups"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_value_format_and_index_type(fmt, kernel_path):
    rng = np.random.default_rng(1)
    A = random_weight(rng, 8, 4 * 9, density=0.5, fmt=fmt)
    X = rng.standard_normal((3, 4, 11, 10)).astype(np.float32)
    check(X, A, 3, rng.standard_normal(8).astype(np.float32), "relu", stride=2, padding=1)
    check(X, A, 3, None, None)


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "tanh"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bias_and_each_activation(activation, with_bias, kernel_path):
    rng = np.random.default_rng(2)
    A = random_weight(rng, 6, 2 * 3 * 2, density=0.6)
    X = rng.standard_normal((2, 4, 9, 17)).astype(np.float32)  # 17 columns: direct and tiled loops both run
    bias = rng.standard_normal(6).astype(np.float32) if with_bias else None
    check(X, A, (3, 2), bias, activation, groups=2, padding=(1, 0), dilation=(1, 2))
    check(X, A, (3, 2), bias, activation, groups=2)  # no padding: one 3x16 tile


def test_all_zero_kernels_and_empty_rows_give_the_activated_bias():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    bias = np.array([-1.5, 0.25, 2.0, -0.5], np.float32)
    empty = CSRMatrix(np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(5, np.int32), (4, 27))
    got = sparse_conv2d(X, empty, kernel_size=3, bias=bias, padding=1, activation="relu")
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(bias, 0)[None, :, None, None], (2, 4, 6, 5)))
    np.testing.assert_array_equal(sparse_conv2d(X, empty, kernel_size=3), np.zeros((2, 4, 4, 3), np.float32))
    # rows 1 and 3 empty: those channels are the bias alone, the others match torch
    w = rng.standard_normal((4, 27)).astype(np.float32)
    w[[1, 3]] = 0
    A = CSRMatrix.from_scipy(sp.csr_matrix(w))
    got = check(X, A, 3, bias, "relu", stride=2)
    np.testing.assert_array_equal(got[:, 1], np.full(got[:, 1].shape, bias[1], np.float32))
    np.testing.assert_array_equal(got[:, 3], np.zeros(got[:, 3].shape, np.float32))


@pytest.mark.parametrize("shape", [
    dict(batch=1, c_in=3, c_out=5, hw=(7, 7), k=3, stride=1, padding=1),   # tiled (one tile)
    dict(batch=4, c_in=4, c_out=6, hw=(15, 13), k=3, stride=2, padding=1),  # phases, direct
    dict(batch=3, c_in=6, c_out=6, hw=(20, 20), k=1, stride=1, padding=0),  # 1x1, tiled straight to y
    dict(batch=2, c_in=6, c_out=12, hw=(12, 12), k=5, stride=1, padding=2, groups=6),  # depthwise x2
])
def test_one_and_two_threads_are_bitwise_identical(shape, kernel_path):
    rng = np.random.default_rng(4)
    groups = shape.get("groups", 1)
    k = shape["k"]
    A = random_weight(rng, shape["c_out"], shape["c_in"] // groups * k * k, density=0.4, empty_rows=0.2)
    X = rng.standard_normal((shape["batch"], shape["c_in"], *shape["hw"])).astype(np.float32)
    bias = rng.standard_normal(shape["c_out"]).astype(np.float32)
    kwargs = dict(kernel_size=k, bias=bias, stride=shape["stride"], padding=shape["padding"], groups=groups,
                  activation="gelu")
    results = []
    _core._conv2d_ignore_parallel_grain(True)  # even these small shapes split between the threads
    try:
        for threads in (1, 2, 1, 2):
            htcore.set_num_threads(threads)
            results.append(sparse_conv2d(X, A, **kwargs))
    finally:
        _core._conv2d_ignore_parallel_grain(False)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_two_threads_without_the_test_hook_on_a_shape_above_the_grain():
    rng = np.random.default_rng(5)
    A = random_weight(rng, 16, 8 * 9, density=0.5)
    X = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    htcore.set_num_threads(1)
    one = sparse_conv2d(X, A, kernel_size=3, padding=1)
    htcore.set_num_threads(2)
    np.testing.assert_array_equal(sparse_conv2d(X, A, kernel_size=3, padding=1), one)


@pytest.mark.parametrize("hw,conv", [((7, 7), dict(padding=1)), ((14, 17), dict(padding=2, stride=2, dilation=2))])
def test_every_loop_gives_bitwise_the_same_result(hw, conv, kernel_path):
    rng = np.random.default_rng(6)
    A = random_weight(rng, 5, 3 * 9, density=0.7, fmt="f16")
    X = np.ascontiguousarray(rng.standard_normal((2, 3, *hw)), np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    p, s, d = conv.get("padding", 0), conv.get("stride", 1), conv.get("dilation", 1)
    outs = [
        _core.sparse_conv2d(A.indptr, A.indices, A.data, None, 5, 27, X, 3, 3, s, s, p, p, d, d, 1, b,
                            _core.Activation.relu, algo)
        for algo in (_core.Conv2dAlgo.automatic, _core.Conv2dAlgo.direct, _core.Conv2dAlgo.tiled)
    ]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    np.testing.assert_array_equal(outs[0], sparse_conv2d(X, A, kernel_size=3, bias=b, activation="relu", **conv))


def dense_weight(rng, c_out, cols, fmt="f32-u16"):
    """A (c_out, cols) CSR matrix holding every entry in column order (the runtime's dense Conv2d)."""
    w = rng.standard_normal((c_out, cols)).astype(np.float32)
    w[0, 0] = 0.0  # an explicit zero stays an entry: still every entry stored
    A = CSRMatrix(w.ravel(), np.tile(np.arange(cols), c_out), np.arange(0, c_out * cols + 1, cols), (c_out, cols))
    if fmt == "f16":
        return A.astype(value_dtype=np.float16)
    return A.astype(index_dtype=np.int32) if fmt == "f32-i32" else A


@pytest.mark.parametrize("c_out", [1, 3, 4, 5, 9])  # blocks of 4 output channels and every remainder
@pytest.mark.parametrize("hw,conv", [
    ((7, 7), dict(padding=1)),                        # padded-width plane: dropped columns
    ((6, 8), dict()),                                 # stored straight into the output
    ((13, 11), dict(padding=2, stride=2, dilation=2)),  # phase planes
    ((3, 5), dict(padding=(1, 0))),                   # a plane shorter than one register
])
def test_dense_weights_match_the_sparse_loops_bitwise_and_torch(c_out, hw, conv):
    rng = np.random.default_rng(c_out)
    A = dense_weight(rng, c_out, 3 * 9)
    X = rng.standard_normal((2, 3, *hw)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    p, s, d = (conv.get(k, v) for k, v in (("padding", 0), ("stride", 1), ("dilation", 1)))
    ph, pw = (p, p) if isinstance(p, int) else p
    for activation in ("relu", "tanh", "none"):
        act = getattr(_core.Activation, activation)
        outs = [_core.sparse_conv2d(A.indptr, A.indices, A.data, None, c_out, 27, X, 3, 3, s, s, ph, pw, d, d, 1, b,
                                    act, algo)
                for algo in (_core.Conv2dAlgo.automatic, _core.Conv2dAlgo.tiled, _core.Conv2dAlgo.direct)]
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(outs[0], outs[2])
    check(X, A, 3, bias=b, activation="relu", **conv)


@pytest.mark.parametrize("fmt", ["f32-i32", "f16"])
def test_dense_weights_in_other_formats_and_threads(fmt, restore_threads):
    rng = np.random.default_rng(11)
    A = dense_weight(rng, 10, 4 * 9, fmt)
    X = rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    got = check(X, A, 3, padding=1, activation="relu")
    _core._conv2d_ignore_parallel_grain(True)
    try:
        for threads in (2, 1):
            htcore.set_num_threads(threads)
            np.testing.assert_array_equal(sparse_conv2d(X, A, kernel_size=3, padding=1, activation="relu"), got)
    finally:
        _core._conv2d_ignore_parallel_grain(False)


def test_a_full_count_of_entries_out_of_column_order_is_not_taken_for_dense():
    rng = np.random.default_rng(12)
    A = dense_weight(rng, 5, 2 * 9)
    X = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    # every entry, each row in reverse column order (CSRMatrix refuses it; the raw kernel takes it)
    order = np.tile(np.arange(18)[::-1], 5)
    data = A.data.reshape(5, 18)[:, ::-1].ravel()
    got = _core.sparse_conv2d(A.indptr, order.astype(np.uint16), np.ascontiguousarray(data), None, 5, 18, X, 3, 3,
                              1, 1, 1, 1, 1, 1, 1, None, _core.Activation.none, _core.Conv2dAlgo.automatic)
    ref, scale = reference(X, A, 3, padding=1)
    assert np.all(np.abs(got - ref) <= 1.2e-5 * scale + 1e-30)
    grouped = dense_weight(rng, 6, 1 * 9)  # groups=2: the dense loop serves groups 1 only
    check(rng.standard_normal((1, 2, 8, 8)).astype(np.float32), grouped, 3, padding=1, groups=2)


def test_three_dimensional_input_without_batch():
    rng = np.random.default_rng(7)
    A = random_weight(rng, 4, 2 * 4, density=0.8)
    X = rng.standard_normal((2, 5, 6)).astype(np.float32)
    got = check(X, A, (2, 2), None, None, padding=(0, 1))
    assert got.shape == (4, 4, 7)
    np.testing.assert_array_equal(got, sparse_conv2d(X[None], A, kernel_size=(2, 2), padding=(0, 1))[0])


@pytest.mark.parametrize("convert", [
    lambda x: x.astype(np.float16),
    lambda x: x.astype(np.float64),
    lambda x: np.round(x * 4).astype(np.int32),
    lambda x: np.asfortranarray(x),
    lambda x: np.ascontiguousarray(x[:, :, ::-1, :])[:, :, ::-1, :],  # negative strides
    lambda x: np.repeat(x, 2, axis=3)[..., ::2],                         # a strided view
    lambda x: _torch().from_numpy(x.copy()),
], ids=["float16", "float64", "int32", "fortran", "negative-strides", "strided", "torch"])
def test_input_dtypes_and_layouts_are_converted(convert):
    rng = np.random.default_rng(8)
    A = random_weight(rng, 3, 2 * 9, density=0.5)
    X = convert(rng.standard_normal((2, 2, 6, 7)).astype(np.float32))
    expected = np.asarray(X, np.float32)
    np.testing.assert_array_equal(sparse_conv2d(X, A, kernel_size=3, padding=1),
                                  sparse_conv2d(np.ascontiguousarray(expected), A, kernel_size=3, padding=1))
    check(expected, A, 3, padding=1)


def test_kernel_larger_than_the_unpadded_input():
    rng = np.random.default_rng(9)
    A = random_weight(rng, 3, 2 * 25, density=0.6)
    X = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    assert check(X, A, 5, padding=2).shape == (2, 3, 2, 3)
    assert check(X, A, 5, padding=(2, 1), stride=(2, 1)).shape == (2, 3, 1, 1)


def _valid():
    rng = np.random.default_rng(10)
    return rng.standard_normal((2, 4, 6, 6)).astype(np.float32), random_weight(rng, 6, 2 * 9, density=0.5)


@pytest.mark.parametrize("change,error,match", [
    (dict(X=np.zeros((4, 6), np.float32)), ValueError, r"X must be 3-D or 4-D, got a 2-D array of shape \(4, 6\)"),
    (dict(X=np.zeros((2, 2, 6, 6), np.float32)), ValueError, r"A has 18 columns but C_in / groups \* kh \* kw = 2 / 2"),
    (dict(X=np.zeros((2, 6, 6, 6), np.float32)), ValueError, r"= 27 \(X has C_in = 6 channels"),
    (dict(kernel_size=(3, 2)), ValueError, r"A has 18 columns but C_in / groups \* kh \* kw = 4 / 2 \* 3 \* 2 = 12"),
    (dict(groups=3), ValueError, r"groups=3 must divide both C_in = 4 .* and C_out = 6"),
    (dict(groups=0), ValueError, "groups must be >= 1, got 0"),
    (dict(stride=0), ValueError, "stride must be >= 1, got 0"),
    (dict(stride=(1, -2)), ValueError, r"stride\[1\] must be >= 1, got -2"),
    (dict(dilation=0), ValueError, "dilation must be >= 1, got 0"),
    (dict(padding=-1), ValueError, "padding must be >= 0, got -1"),
    (dict(kernel_size=0), ValueError, "kernel_size must be >= 1, got 0"),
    (dict(kernel_size=(3, 3, 3)), ValueError, r"kernel_size must be an int or a pair \(h, w\), got \(3, 3, 3\)"),
    (dict(stride=1.5), TypeError, "stride must be an integer, got 1.5"),
    (dict(dilation=3), ValueError, r"output would be empty: .* along H, .* = 7, exceeds the padded input 6 \+ 2 \* 0"),
    (dict(X=np.zeros((2, 4, 0, 6), np.float32)), ValueError, r"X must have C_in, H, W >= 1, got shape \(2, 4, 0, 6\)"),
    (dict(bias=np.zeros(5, np.float32)), ValueError, "bias has 5 entries but A has C_out = 6 rows"),
    (dict(activation="sigmoid"), ValueError, "activation must be None or one of .*, got 'sigmoid'"),
    (dict(A="not a matrix"), TypeError, "A must be a CSRMatrix, got str"),
    (dict(X=np.array([["a"]])), TypeError, "X must be a real numeric array"),
])
def test_argument_errors_name_the_argument_and_value(change, error, match):
    X, A = _valid()
    kwargs = dict(X=X, A=A, kernel_size=3, groups=2)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        sparse_conv2d(kwargs.pop("X"), kwargs.pop("A"), **kwargs)


def test_float64_weights_are_refused_with_the_fix():
    X, A = _valid()
    with pytest.raises(TypeError, match=r'A has float64 values.*A\.astype\(value_dtype="float32"\)'):
        sparse_conv2d(X, A.astype(value_dtype=np.float64), kernel_size=3, groups=2)


@pytest.mark.parametrize("where", ["X", "bias"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_or_bias_raises(where, bad, kernel_path):
    X, A = _valid()
    bias = np.ones(6, np.float32)
    if where == "X":
        X[1, 3, 5, 5] = bad  # on the second thread's share when two run
    else:
        bias[4] = bad
    _core._conv2d_ignore_parallel_grain(True)
    try:
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            with pytest.raises(ValueError, match=f"{where} contains non-finite"):
                sparse_conv2d(X, A, kernel_size=3, groups=2, bias=bias)
    finally:
        _core._conv2d_ignore_parallel_grain(False)


def test_kernel_refuses_undeclared_algo_and_bad_indices():
    X, A = _valid()
    args = (A.indptr, A.indices, A.data, None, 6, 18, X, 3, 3, 1, 1, 0, 0, 1, 1, 2, None, _core.Activation.none)
    with pytest.raises(ValueError, match="algo must be automatic, direct or tiled, got 9"):
        _core.sparse_conv2d(*args, _core.Conv2dAlgo(9))
    bad = CSRMatrix(A.data, np.full_like(A.indices, 18), A.indptr, A.shape, check=False)
    with pytest.raises(ValueError, match=r"weight column indices must lie in \[0, .*18\)"):
        sparse_conv2d(X, bad, kernel_size=3, groups=2)


def test_public_names():
    assert htcore.sparse_conv2d is htcore.sparse.sparse_conv2d
    assert "sparse_conv2d" in htcore.__all__ and "sparse_conv2d" in htcore.sparse.__all__
