"""CSRMatrix storage formats: codebook values, astype, explicit index dtypes, torch round trips."""
import numpy as np
import pytest
import scipy.sparse as sp

from htcore import CSRMatrix


def small(rng=None):
    rng = rng or np.random.default_rng(0)
    m = sp.random(6, 9, density=0.4, format="csr", random_state=rng, dtype=np.float32)
    return CSRMatrix.from_scipy(m)


def test_codebook_decodes_and_validates():
    A = small()
    cb = np.array([-1.0, 0.5, 2.0], np.float32)
    codes = (np.arange(A.nnz) % 3).astype(np.uint8)
    C = CSRMatrix(codes, A.indices, A.indptr, A.shape, codebook=cb)
    np.testing.assert_array_equal(C.values(), cb[codes])
    assert C.todense().dtype == np.float32 and C.nbytes == A.indices.nbytes + A.indptr.nbytes + A.nnz + 12
    np.testing.assert_array_equal(C.to_scipy().toarray(), C.todense())
    int8 = CSRMatrix(codes.astype(np.int8), A.indices, A.indptr, A.shape, codebook=cb)
    assert int8.data.dtype == np.uint8
    np.testing.assert_array_equal(int8.todense(), C.todense())
    with pytest.raises(ValueError, match="codes must be < len\\(codebook\\) = 3"):
        CSRMatrix(codes + 1, A.indices, A.indptr, A.shape, codebook=cb)
    with pytest.raises(ValueError, match="non-negative"):
        CSRMatrix(-codes.astype(np.int8) - 1, A.indices, A.indptr, A.shape, codebook=cb)
    with pytest.raises(TypeError, match="uint8 or int8 codes"):
        CSRMatrix(codes.astype(np.float32), A.indices, A.indptr, A.shape, codebook=cb)
    with pytest.raises(ValueError, match="1 to 256 levels"):
        CSRMatrix(codes, A.indices, A.indptr, A.shape, codebook=np.zeros(257))
    with pytest.raises(ValueError, match="1 to 256 levels"):
        CSRMatrix(codes, A.indices, A.indptr, A.shape, codebook=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        CSRMatrix(codes, A.indices, A.indptr, A.shape, codebook=[0.0, np.nan, 1.0])
    full = CSRMatrix(np.full(A.nnz, 255, np.uint8), A.indices, A.indptr, A.shape, codebook=np.arange(256.0))
    assert (full.values() == 255).all()


def test_astype_shares_unchanged_arrays():
    A = small()
    B = A.astype(index_dtype=np.int32)
    assert B.indices.dtype == np.int32 and B.data is A.data and B.indptr is A.indptr
    H = A.astype(value_dtype=np.float16)
    assert H.data.dtype == np.float16 and H.indices is A.indices
    np.testing.assert_array_equal(H.todense(), A.todense().astype(np.float16))
    cb = CSRMatrix(np.zeros(A.nnz, np.uint8), A.indices, A.indptr, A.shape, codebook=[3.0])
    assert cb.astype(index_dtype=np.int32).codebook is cb.codebook
    dec = cb.astype(value_dtype=np.float64)
    assert dec.codebook is None and (dec.data == 3.0).all()
    with pytest.raises(TypeError, match="value_dtype"):
        A.astype(value_dtype=np.int8)
    with pytest.raises(TypeError, match="index_dtype"):
        A.astype(index_dtype=np.int64)


def test_explicit_index_dtypes_are_checked():
    with pytest.raises(ValueError, match="uint16 cannot address 70000"):
        CSRMatrix(np.ones(1, np.float32), [5], [0, 1], (1, 70000), index_dtype=np.uint16)
    m = CSRMatrix(np.ones(1, np.float32), [5], [0, 1], (1, 7), indptr_dtype=np.int64)
    assert m.indptr.dtype == np.int64 and m.indices.dtype == np.uint16
    with pytest.raises(TypeError, match="indptr_dtype"):
        CSRMatrix(np.ones(1, np.float32), [5], [0, 1], (1, 7), indptr_dtype=np.uint32)


def test_repr_names_the_storage():
    A = small()
    assert "float32" in repr(A) and "uint16" in repr(A)
    C = CSRMatrix(np.zeros(A.nnz, np.uint8), A.indices, A.indptr, A.shape, codebook=[1.0, 2.0])
    assert "codebook of 2" in repr(C)


@pytest.mark.parametrize("fmt", [dict(), dict(index_dtype=np.int32), dict(value_dtype=np.float16), dict(value_dtype=np.float64)])
def test_torch_round_trip(fmt):
    torch = pytest.importorskip("torch")
    A = small().astype(**fmt)
    t = A.to_torch()
    assert t.layout == torch.sparse_csr and t.col_indices().dtype == torch.int32
    np.testing.assert_array_equal(t.to_dense().numpy(), A.todense())
    back = CSRMatrix.from_torch(t)
    np.testing.assert_array_equal(back.todense(), A.todense())
    assert back.data.dtype == A.data.dtype


def test_torch_zero_copy_for_int32_float32():
    pytest.importorskip("torch")
    A = small().astype(index_dtype=np.int32)
    t = A.to_torch()
    assert np.shares_memory(t.values().numpy(), A.data) and np.shares_memory(t.col_indices().numpy(), A.indices)
    back = CSRMatrix.from_torch(t)
    assert np.shares_memory(back.data, A.data) and np.shares_memory(back.indices, A.indices)
    assert back.indices.dtype == np.int32


def test_from_torch_dense_coo_int64_and_errors():
    torch = pytest.importorskip("torch")
    dense = torch.tensor([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, -1.0]])
    for t in (dense, dense.to_sparse(), dense.to_sparse_csr(), dense.to(torch.bfloat16)):
        m = CSRMatrix.from_torch(t)
        np.testing.assert_array_equal(m.todense(), dense.numpy())
        assert m.indices.dtype == np.uint16 and m.indptr.dtype == np.int32
    with pytest.raises(TypeError, match="2-D torch.Tensor"):
        CSRMatrix.from_torch(np.ones((2, 2)))
    with pytest.raises(TypeError, match="2-D torch.Tensor"):
        CSRMatrix.from_torch(torch.ones(3))


def test_codebook_to_torch_decodes():
    torch = pytest.importorskip("torch")
    A = small()
    C = CSRMatrix(np.ones(A.nnz, np.uint8), A.indices, A.indptr, A.shape, codebook=[0.0, 4.0])
    np.testing.assert_array_equal(C.to_torch().to_dense().numpy(), C.todense())
    assert C.to_torch().values().dtype == torch.float32
