import numpy as np
import pytest
import scipy.sparse as sp

from htcore.sparse import CSRMatrix


def random_csr(rng, rows, cols, density):
    return sp.random(rows, cols, density=density, format="csr", random_state=rng, dtype=np.float32)


@pytest.mark.parametrize("rows, cols, density", [(5, 7, 0.3), (1, 1, 1.0), (0, 3, 0.0), (4, 0, 0.0), (50, 70000, 0.001)])
def test_scipy_roundtrip(rows, cols, density):
    ref = random_csr(np.random.default_rng(0), rows, cols, density)
    m = CSRMatrix.from_scipy(ref)
    assert m.shape == (rows, cols) and m.nnz == ref.nnz
    assert m.indices.dtype == (np.uint16 if cols <= 65536 else np.int32)
    assert m.indptr.dtype == np.int32
    np.testing.assert_array_equal(m.todense(), ref.toarray())
    np.testing.assert_array_equal(m.to_scipy().toarray(), ref.toarray())
    assert m.density == pytest.approx(ref.nnz / (rows * cols) if rows * cols else 0.0)


@pytest.mark.parametrize(
    "data, indices, indptr, shape, match",
    [
        ([1.0], [0], [0, 1], (2, 2), "rows \\+ 1"),
        ([1.0, 2.0], [0], [0, 1, 2], (2, 2), "indices has 1"),
        ([1.0], [0], [1, 1, 1], (2, 2), "start at 0"),
        ([1.0, 2.0], [0, 1], [0, 2, 1], (2, 2), "end at nnz|non-decreasing"),
        ([1.0, 2.0], [0, 1], [0, 2, 0, 2], (3, 2), "non-decreasing"),
        ([1.0], [5], [0, 1, 1], (2, 2), "indices must lie"),
        ([1.0], [-1], [0, 1, 1], (2, 2), "indices must lie"),
        ([1.0, 2.0], [1, 0], [0, 2, 2], (2, 2), "strictly increasing"),
        ([1.0, 2.0], [1, 1], [0, 2, 2], (2, 2), "strictly increasing"),
    ],
)
def test_invalid_structure(data, indices, indptr, shape, match):
    with pytest.raises(ValueError, match=match):
        CSRMatrix(np.array(data, np.float32), np.array(indices), np.array(indptr), shape)


def test_column_order_resets_at_each_row():
    m = CSRMatrix(np.ones(3, np.float32), [1, 0, 1], [0, 1, 1, 3], (3, 2))
    np.testing.assert_array_equal(m.todense(), [[0, 1], [0, 0], [1, 1]])


def test_float_indices_refused():
    with pytest.raises(TypeError, match="integer"):
        CSRMatrix(np.ones(1, np.float32), np.array([0.0]), np.array([0, 1]), (1, 1))
