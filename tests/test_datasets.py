import gzip
from pathlib import Path

import numpy as np
import pytest

from htcore.datasets import FASHION_MNIST_ROOT, load_digits, load_fashion_mnist, load_idx


def write_idx(path: Path, array: np.ndarray, type_code: int, compress: bool) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype, code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
                                         (np.float32, 0x0D), (np.float64, 0x0E)])
def test_load_idx_roundtrip(tmp_path, compress, dtype, code):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array, code, compress)
    got = load_idx(path)
    assert got.shape == array.shape and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, array)


def test_load_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros(10, np.uint8), 0x08, False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="payload has 9 bytes"):
        load_idx(tmp_path / "short")
    (tmp_path / "type").write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="type code 0x07"):
        load_idx(tmp_path / "type")


def test_fashion_mnist_from_a_custom_root(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), 0x08, True)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8), 0x08, False)
    d = load_fashion_mnist(tmp_path)
    assert d.X_train.shape == (6, 784) and d.X_test.shape == (4, 784)
    assert d.X_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert 0.0 <= d.X_train.min() and d.X_train.max() <= 1.0
    images = load_fashion_mnist(tmp_path, images=True)
    assert images.X_train.shape == (6, 1, 28, 28) and images.X_test.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(images.X_train.reshape(6, -1), d.X_train)
    np.testing.assert_array_equal(images.y_test, d.y_test)


def test_digits_as_images_are_the_rows_reshaped():
    rows, images = load_digits(random_state=2), load_digits(random_state=2, images=True)
    assert images.X_train.shape == (rows.X_train.shape[0], 1, 8, 8)
    np.testing.assert_array_equal(images.X_test.reshape(rows.X_test.shape), rows.X_test)
    np.testing.assert_array_equal(images.y_train, rows.y_train)


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason=f"Fashion-MNIST not installed in {FASHION_MNIST_ROOT}")
def test_real_fashion_mnist():
    d = load_fashion_mnist()
    assert d.X_train.shape == (60000, 784) and d.X_test.shape == (10000, 784)
    assert np.array_equal(np.bincount(d.y_train), np.full(10, 6000))
    assert np.array_equal(np.bincount(d.y_test), np.full(10, 1000))
    assert d.X_train.max() == 1.0 and d.X_train.min() == 0.0


def test_digits_split_is_stratified_and_seeded():
    a = load_digits()
    b = load_digits(random_state=0)
    assert a.X_train.shape == (1347, 64) and a.X_test.shape == (450, 64)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert not np.array_equal(load_digits(random_state=1).y_train, a.y_train)
    assert a.X_train.max() == 1.0 and a.X_train.dtype == np.float32
    assert np.bincount(a.y_test).min() >= 40
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)
