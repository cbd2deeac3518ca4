"""The kernels both runtimes share for pooling, per-channel affine, sums and activations
(htcore._core, cpp/image_ops.cpp), against torch and numpy on random and awkward inputs."""
import numpy as np
import pytest

from htcore import _core

torch = pytest.importorskip("torch")
F = torch.nn.functional


def images(shape, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    return np.round(x) if ties else x  # ties: many equal values (and zeros) per window


POOLS = [  # (N, C, H, W), kernel, stride, padding
    ((2, 3, 7, 9), (2, 2), (2, 2), (0, 0)),
    ((1, 1, 5, 5), (3, 3), (1, 1), (1, 1)),
    ((3, 2, 6, 4), (3, 2), (2, 1), (1, 1)),
    ((1, 2, 1, 1), (1, 1), (1, 1), (0, 0)),
    ((0, 2, 4, 4), (2, 2), (2, 2), (0, 0)),
    ((1, 1, 4, 4), (4, 4), (3, 3), (2, 2)),
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,k,s,p", POOLS)
def test_pools_equal_torch(shape, k, s, p, ties):
    x = images(shape, ties=ties)
    t = torch.from_numpy(x)
    got_max = _core.max_pool2d(x, *k, *s, *p)
    np.testing.assert_array_equal(got_max, F.max_pool2d(t, k, s, p).numpy())
    got_avg = _core.avg_pool2d(x, *k, *s, *p)
    np.testing.assert_allclose(got_avg, F.avg_pool2d(t, k, s, p).numpy(), rtol=1e-6, atol=1e-6)


def test_avg_pool_divides_the_row_by_row_window_sum():
    x = images((2, 2, 5, 6), seed=3)
    got = _core.avg_pool2d(x, 2, 3, 1, 2, 1, 1)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros_like(got)
    for i in range(got.shape[2]):
        for j in range(got.shape[3]):
            total = np.zeros(x.shape[:2], np.float32)
            for r in range(2):
                for c in range(3):
                    total += padded[:, :, i + r, 2 * j + c]
            want[:, :, i, j] = total / np.float32(6)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad,match", [
    ((2, 2, 1, 1, 2, 0), "padding must be at most half"),
    ((9, 2, 1, 1, 0, 0), "does not fit"),
    ((0, 2, 1, 1, 0, 0), "kernel_size and stride"),
])
def test_pool_parameters_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        _core.max_pool2d(images((1, 1, 4, 4)), *bad[:2], *bad[2:4], *bad[4:])


def test_pools_refuse_other_dtypes_and_ranks():
    with pytest.raises(TypeError, match="x must be float32"):
        _core.avg_pool2d(np.zeros((1, 1, 2, 2)), 1, 1, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="4-D"):
        _core.max_pool2d(np.zeros((2, 2), np.float32), 1, 1, 1, 1, 0, 0)
    with pytest.raises(TypeError, match="C-contiguous"):
        _core.max_pool2d(images((1, 2, 4, 4)).transpose(0, 1, 3, 2), 1, 1, 1, 1, 0, 0)


@pytest.mark.parametrize("shape,out", [((2, 3, 7, 5), (3, 2)), ((1, 1, 4, 4), (4, 4)), ((1, 2, 3, 3), (1, 1)),
                                       ((1, 1, 2, 5), (5, 3))])
def test_adaptive_avg_pool_equals_torch(shape, out):
    x = images(shape, seed=1)
    got = _core.adaptive_avg_pool2d(x, *out)
    np.testing.assert_allclose(got, F.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy(), rtol=1e-6, atol=1e-6)


def test_channel_affine_equals_numpy_and_batchnorm():
    x = images((3, 4, 5, 2), seed=2)
    rng = np.random.default_rng(5)
    scale, shift = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    got = _core.channel_affine(x, scale, shift)
    np.testing.assert_array_equal(got, x * scale[:, None, None] + shift[:, None, None])
    with pytest.raises(ValueError, match="C = 4 entries"):
        _core.channel_affine(x, scale[:3], shift[:3])
    assert _core.channel_affine(x[:0], scale, shift).shape == (0, 4, 5, 2)


def test_add_arrays_equals_numpy():
    a, b = images((2, 3, 4, 4), seed=1), images((2, 3, 4, 4), seed=2)
    np.testing.assert_array_equal(_core.add_arrays(a, b), a + b)
    with pytest.raises(ValueError, match="same shape"):
        _core.add_arrays(a, b[:1])


@pytest.mark.parametrize("kind,reference", [
    ("relu", lambda t: torch.relu(t)), ("gelu", lambda t: F.gelu(t)), ("tanh", lambda t: torch.tanh(t))])
def test_activations_equal_torch_and_the_fused_kernel(kind, reference):
    x = np.concatenate([images((200,), seed=4) * 4, np.float32([0.0, -0.0, 1e-30, -50.0, 50.0])])
    got = x.copy()
    _core.activate_inplace(got, _core.Activation.__members__[kind])
    # atol: float32 1 + erf(v) cancels for v << 0 (the fused kernel computes it the same way)
    np.testing.assert_allclose(got, reference(torch.from_numpy(x)).numpy(), rtol=2e-6, atol=1e-6)
    # the fused activation of the CSR kernel (an identity matrix) gives bitwise the same values
    n = x.size
    fused = np.empty(n, np.float32)
    _core.csr_spmm(np.arange(n + 1, dtype=np.int32), np.arange(n, dtype=np.uint16), np.ones(n, np.float32), None,
                   n, n, x, 1, False, None, _core.Activation.__members__[kind], fused, 1, 1)
    np.testing.assert_array_equal(got, fused)


def test_activate_inplace_refuses_read_only_arrays():
    x = images((4,))
    x.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _core.activate_inplace(x, _core.Activation.relu)


@pytest.mark.parametrize("shape", [(10, 3), (1, 4), (5, 1), (0, 2), (3, 0)])
def test_softmax_axis0_equals_torch(shape):
    x = images(shape, seed=6) * 10
    got = x.copy()
    _core.softmax_axis0(got)
    np.testing.assert_allclose(got, torch.softmax(torch.from_numpy(x), dim=0).numpy(), rtol=1e-6, atol=1e-7)
    if x.size:
        np.testing.assert_allclose(got.sum(axis=0), 1, rtol=1e-6)


def test_softmax_axis0_is_stable_for_large_values():
    x = np.float32([[1000.0, -1000.0], [999.0, -1001.0]])
    _core.softmax_axis0(x)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[:, 0], x[:, 1], rtol=1e-6)
