"""Small real datasets available without downloads: Fashion-MNIST (IDX files) and scikit-learn's digits.

Both loaders return a `Dataset` named tuple ``(X_train, y_train, X_test, y_test)``: images scaled to
float32 in [0, 1], flattened to rows (n, H * W) by default or, with ``images=True``, as (n, 1, H, W)
batches for convolutional networks; labels int64 class numbers 0..9.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

# IDX type codes (the third byte of the magic number) -> big-endian numpy dtype
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class Dataset(NamedTuple):
    """A train/test split. X: (n, features) or (n, C, H, W) float32 in [0, 1]; y: (n,) int64 labels.
    A user's own data may come without a test split (X_test and y_test None)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: Optional[np.ndarray]
    y_test: Optional[np.ndarray]


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed (by the ``.gz`` suffix) or not.

    Returns an array of the stored shape in native byte order. Raises ValueError when the header or
    the payload size is inconsistent.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4]!r})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: payload has {len(raw) - header} bytes, shape {shape} of {dtype} needs {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{stem}[.gz] not found in {root}. Fashion-MNIST ships in the Debian/Ubuntu package "
        f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist, files in {FASHION_MNIST_ROOT}), "
        "or pass root= to a folder holding the four IDX files.")


def load_fashion_mnist(root: str | os.PathLike | None = None, *, images: bool = False) -> Dataset:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grey images, 10 classes) from its IDX files.

    ``root`` defaults to /usr/share/datasets/fashion-mnist. Also reads MNIST, whose files have the
    same names. Images come back as (n, 784) float32 rows in [0, 1], or as (n, 1, 28, 28) with
    ``images=True``.
    """
    root = Path(FASHION_MNIST_ROOT if root is None else root)
    parts = []
    for split in ("train", "t10k"):
        pixels = load_idx(_find(root, f"{split}-images-idx3-ubyte"))
        labels = load_idx(_find(root, f"{split}-labels-idx1-ubyte"))
        if pixels.ndim != 3 or labels.ndim != 1 or pixels.shape[0] != labels.shape[0]:
            raise ValueError(f"{split} files disagree: images {pixels.shape}, labels {labels.shape}")
        X = pixels.astype(np.float32) / 255.0
        parts += [X[:, None] if images else X.reshape(X.shape[0], -1), labels.astype(np.int64)]
    return Dataset(*parts)


def load_digits(*, test_fraction: float = 0.25, random_state: int = 0, images: bool = False) -> Dataset:
    """scikit-learn's digits (1,797 8x8 images, 10 classes) split into train and test.

    The split is stratified and seeded by ``random_state``; pixels are scaled from 0..16 to [0, 1].
    Rows of 64 pixels, or (n, 1, 8, 8) images with ``images=True``.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    from ._validation import check_fraction, check_int

    test_fraction = check_fraction(test_fraction, "test_fraction")
    if test_fraction == 1.0:
        raise ValueError("test_fraction must be < 1, got 1.0")
    random_state = check_int(random_state, "random_state", low=0)
    digits = sk_load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_fraction, random_state=random_state, stratify=y)
    if images:
        X_train, X_test = X_train.reshape(-1, 1, 8, 8), X_test.reshape(-1, 1, 8, 8)
    return Dataset(X_train, y_train, X_test, y_test)
