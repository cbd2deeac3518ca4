"""Property-based tests (hypothesis) for top-k selection: topk_sparsify (matrix/row/col modes,
keep / k / max_rel_error), sparsify_global, topk_threshold, compressibility_curve and k_for_keep.

Expected: exactly the entries a stable argsort of -|w| picks (ties to the lowest position), bit
for bit, for every float dtype, integer/bool inputs, non-contiguous, negative-stride and
read-only views, empty and one-element arrays; or a ValueError / TypeError for NaN/Inf, wrong
ndim, unsupported dtypes and k / keep out of range. Reproducible (``derandomize=True``); inputs
per test: ``pytest tests/test_fuzz_topk.py --hypothesis-show-statistics``.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import htcore
from layouts import LAYOUTS, with_layout
from test_topk import assert_selects, ref_cols, ref_matrix, ref_positions, ref_rel_error, ref_rows

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
DTYPES = (np.float16, np.float32, np.float64, np.int16, np.int64, np.uint8, np.bool_)
VIEWS = LAYOUTS
BAD_DTYPES = {"complex": np.complex128, "object": object, "str": np.str_, "datetime": "datetime64[s]"}


def weights(seed: int, shape: tuple, dtype, ties: bool) -> np.ndarray:
    """Tie-heavy (small integers, signed zeros) or continuous values of ``dtype``."""
    rng = np.random.default_rng(seed)
    if ties or not np.issubdtype(dtype, np.floating):
        W = rng.integers(-3, 4, size=shape)
        if dtype in (np.uint8, np.bool_):
            W = np.abs(W)
        W = W.astype(dtype)
        if np.issubdtype(dtype, np.floating):
            W[rng.random(shape) < 0.2] *= -0.0
        return W
    return (rng.standard_t(2, size=shape) * 10.0 ** rng.integers(-3, 3)).astype(dtype)


def stored(W: np.ndarray) -> np.ndarray:
    """What htcore stores for W: float dtypes kept, others as float32."""
    return np.ascontiguousarray(W if W.dtype in (np.float16, np.float32, np.float64) else W.astype(np.float32))


shapes = st.tuples(st.integers(0, 9), st.integers(0, 9))
matrices = st.tuples(st.integers(0, 2**32 - 1), shapes, st.sampled_from(DTYPES), st.booleans(), st.sampled_from(VIEWS))


@FUZZ
@given(matrices, st.sampled_from(["matrix", "row", "col"]), st.floats(0, 1.2), st.booleans())
def test_topk_sparsify_matches_stable_argsort(spec, mode, fraction, by_keep):
    """Expected: the reference's positions and bit-identical values; keep/k out of range -> ValueError."""
    seed, shape, dtype, ties, how = spec
    W = with_layout(weights(seed, shape, dtype, ties), how)
    group = {"matrix": W.size, "row": W.shape[1], "col": W.shape[0]}[mode]
    ref = {"matrix": ref_matrix, "row": ref_rows, "col": ref_cols}[mode]
    if by_keep:
        if not 0 < fraction <= 1:
            with pytest.raises(ValueError, match="keep"):
                htcore.topk_sparsify(W, fraction, mode=mode)
            return
        k = htcore.k_for_keep(fraction, group)
        got = htcore.topk_sparsify(W, fraction, mode=mode)
    else:
        k = int(round(fraction * group)) + (1 if fraction > 1 else 0)
        if k > group:
            with pytest.raises(ValueError, match="k"):
                htcore.topk_sparsify(W, k=k, mode=mode)
            return
        got = htcore.topk_sparsify(W, k=k, mode=mode)
    event("compared with the reference")
    S = stored(W)
    assert_selects(got, S, ref(S, k))
    y = got @ np.ones(W.shape[1])  # the result is usable by the kernels as is
    assert y.shape == (W.shape[0],)


@FUZZ
@given(matrices, st.floats(0, 1))
def test_max_rel_error_is_the_smallest_k(spec, max_rel_error):
    """Expected: the smallest k whose exact relative Frobenius error is <= max_rel_error."""
    seed, shape, dtype, ties, how = spec
    W = with_layout(weights(seed, shape, dtype, ties), how)
    got = htcore.topk_sparsify(W, max_rel_error=max_rel_error)
    S = stored(W)
    k = got.nnz
    assert ref_rel_error(S, k) <= max_rel_error * (1 + 1e-12)
    if k > 0:
        assert ref_rel_error(S, k - 1) > max_rel_error * (1 - 1e-12)
    assert_selects(got, S, ref_matrix(S, k))


@settings(FUZZ, max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), shapes, st.sampled_from(DTYPES[:3]), st.booleans()),
                min_size=1, max_size=4), st.floats(0, 1))
def test_sparsify_global_matches_concatenated_reference(specs, fraction):
    """Expected: one threshold over all arrays, ties to the earliest array then lowest index."""
    arrays = {f"w{i}": weights(seed, shape, dtype, ties) for i, (seed, shape, dtype, ties) in enumerate(specs)}
    total = sum(a.size for a in arrays.values())
    k = int(fraction * total)
    got = htcore.sparsify_global(arrays, k=k)
    common = np.result_type(*arrays.values())
    chosen = ref_positions(np.concatenate([a.astype(common).ravel() for a in arrays.values()]), k)
    offset = 0
    for name, a in arrays.items():
        mine = chosen[(chosen >= offset) & (chosen < offset + a.size)] - offset
        assert_selects(got[name], a, mine)
        offset += a.size


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(0, 40), st.sampled_from(DTYPES), st.booleans(), st.integers(-2, 45))
def test_topk_threshold_matches_sort(seed, n, dtype, ties, k):
    """Expected: the k-th largest |x| with its counts; k outside [1, n] -> ValueError."""
    x = weights(seed, (n,), dtype, ties)
    if not 1 <= k <= n:
        with pytest.raises(ValueError, match="k"):
            htcore.topk_threshold(x, k)
        return
    got = htcore.topk_threshold(x, k)
    mags = np.abs(stored(x).astype(np.float64))
    value = np.sort(mags)[::-1][k - 1]
    assert got == htcore.TopkThreshold(value=float(value), k=k, greater=int((mags > value).sum()),
                                       ties=int((mags == value).sum()))


@FUZZ
@given(st.integers(0, 2**32 - 1), shapes, st.sampled_from(DTYPES), st.booleans(),
       st.lists(st.floats(-0.5, 1.5), min_size=0, max_size=6))
def test_compressibility_curve_matches_reference(seed, shape, dtype, ties, keeps):
    """Expected: exact relative errors per keep; a keep outside [0, 1] -> ValueError."""
    W = weights(seed, shape, dtype, ties)
    if any(not 0 <= v <= 1 for v in keeps):
        with pytest.raises(ValueError, match="keep"):
            htcore.compressibility_curve(W, keeps)
        return
    got = htcore.compressibility_curve(W, keeps)
    ks = [htcore.k_for_keep(v, W.size) for v in keeps]
    np.testing.assert_array_equal(got.k, ks)
    want = [ref_rel_error(stored(W), k) for k in ks]
    np.testing.assert_allclose(got.rel_error, want, rtol=1e-12, atol=1e-15)


@FUZZ
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.booleans(), st.none(),
                 st.text(max_size=2)),
       st.one_of(st.integers(-3, 10**12), st.floats(-3, 3), st.booleans()))
def test_k_for_keep_validates(keep, n):
    """Expected: ceil(keep n) (>= 1 for keep > 0, n > 0) for keep in [0, 1] and integer n >= 0;
    TypeError for non-numbers (and bools), ValueError for out-of-range values."""
    keep_ok = not isinstance(keep, (bool, str, type(None))) and 0 <= keep <= 1
    n_ok = type(n) is int and n >= 0
    if keep_ok and n_ok:
        k = htcore.k_for_keep(keep, n)
        assert 0 <= k <= n and (k >= 1 if keep > 0 and n > 0 else True)
        product = keep * n  # ceil(keep n), where within 1e-9 (relative) of an integer counts as it
        assert product * (1 - 1e-9) - 1e-9 <= k < product * (1 + 1e-9) + 1 or k == 1
        return
    with pytest.raises((TypeError, ValueError)):
        htcore.k_for_keep(keep, n)


@FUZZ
@given(st.integers(0, 2**32 - 1), shapes, st.sampled_from([np.float16, np.float32, np.float64]),
       st.sampled_from(["nan", "inf", "-inf"]), st.sampled_from(["sparsify", "row", "col", "rel", "global", "threshold", "curve"]))
def test_non_finite_values_raise(seed, shape, dtype, bad, entry):
    """Expected: ValueError for NaN/Inf anywhere, whatever k (also k = 0)."""
    W = weights(seed, (shape[0] + 1, shape[1] + 1), dtype, False)
    rng = np.random.default_rng(seed)
    W[rng.integers(W.shape[0]), rng.integers(W.shape[1])] = float(bad)
    calls = {
        "sparsify": lambda: htcore.topk_sparsify(W, k=int(rng.integers(0, W.size + 1))),
        "row": lambda: htcore.topk_sparsify(W, k=1, mode="row"),
        "col": lambda: htcore.topk_sparsify(W, k=0, mode="col"),
        "rel": lambda: htcore.topk_sparsify(W, max_rel_error=0.5),
        "global": lambda: htcore.sparsify_global({"a": np.ones((2, 2)), "b": W}, k=1),
        "threshold": lambda: htcore.topk_threshold(W, 1),
        "curve": lambda: htcore.compressibility_curve(W, [0.5]),
    }
    with pytest.raises(ValueError):
        calls[entry]()


@FUZZ
@given(st.sampled_from(sorted(BAD_DTYPES) + ["1d", "3d", "0d"]),
       st.sampled_from(["sparsify", "global", "threshold", "curve", "bad_mode", "two_targets", "k_float", "k_bool"]))
def test_bad_arguments_raise(kind, entry):
    """Expected: TypeError for complex/object/str/datetime arrays and non-integer k; ValueError for
    wrong ndim (topk_sparsify, sparsify_global), unknown modes and conflicting targets."""
    if kind in BAD_DTYPES:
        W = np.zeros((3, 3), dtype=BAD_DTYPES[kind])
    else:
        W = np.ones({"1d": (4,), "3d": (2, 2, 2), "0d": ()}[kind])
    calls = {
        "sparsify": (lambda: htcore.topk_sparsify(W, 0.5), (TypeError, ValueError)),
        "global": (lambda: htcore.sparsify_global({"w": W}, 0.5), (TypeError, ValueError)),
        "threshold": (lambda: htcore.topk_threshold(W, 1), (TypeError,) if kind in BAD_DTYPES else None),
        "curve": (lambda: htcore.compressibility_curve(W, [0.5]), (TypeError,) if kind in BAD_DTYPES else None),
        "bad_mode": (lambda: htcore.topk_sparsify(np.ones((2, 2)), 0.5, mode="rows"), (ValueError,)),
        "two_targets": (lambda: htcore.topk_sparsify(np.ones((2, 2)), 0.5, k=1), (ValueError,)),
        "k_float": (lambda: htcore.topk_sparsify(np.ones((2, 2)), k=1.0), (TypeError,)),
        "k_bool": (lambda: htcore.topk_threshold(np.ones(3), True), (TypeError,)),
    }
    call, expected = calls[entry]
    if expected is None:  # any shape is allowed there (flattened): a correct result instead
        call()
        return
    with pytest.raises(expected):
        call()
