"""Every ```python block of README.md runs as written.

The blocks use names a reader supplies (a weight matrix ``W``, a batch ``X``, ...); `_inputs` defines
each one once, small and seeded. A block that names something `_inputs` lacks fails with a
NameError here, so a new snippet cannot land untested. Blocks run in a temporary directory; the
Fashion-MNIST block runs on a 1,000-image slice of the real data (skipped without the data).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import htcore

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def _inputs() -> dict:
    """The reader-supplied names of the README's snippets."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    W = rng.standard_t(3, size=(64, 48)).astype(np.float32)
    A = htcore.topk_sparsify(W, 0.2)
    out, cin = 8, 4
    torch.manual_seed(0)
    return {
        "W": W, "W1": W, "W2": rng.standard_normal((32, 16)).astype(np.float32),
        "eigs": np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2,
        "data": A.data, "indices": A.indices, "indptr": A.indptr, "shape": A.shape,
        "x": rng.standard_normal(W.shape[1]).astype(np.float32),
        "X": rng.standard_normal((5, W.shape[1])).astype(np.float32),
        "b": rng.standard_normal(W.shape[0]).astype(np.float32),
        "K": rng.standard_normal((out, cin, 3, 3)).astype(np.float32), "out": out,
        "images": rng.standard_normal((2, cin, 10, 10)).astype(np.float32),
        "torch_sequential": torch.nn.Sequential(torch.nn.Linear(W.shape[1], 16), torch.nn.ReLU(),
                                                torch.nn.Linear(16, 10)),
    }


def test_readme_has_the_api_tour():
    assert len(BLOCKS) >= 8, "the README's API tour lost its code blocks"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    monkeypatch.chdir(tmp_path)
    namespace = _inputs()
    if ".safetensors" in code:
        htcore.io.save_safetensors("model.safetensors", {"fc1.weight": namespace["W"],
                                                         "fc2.weight": namespace["W2"]})
    if "load_fashion_mnist" in code:
        _use_a_slice_of_fashion_mnist(monkeypatch)
    if "to_pandas" in code:
        pytest.importorskip("pandas")
    exec(compile(code, f"README.md block {index}", "exec"), namespace)


def _use_a_slice_of_fashion_mnist(monkeypatch) -> None:
    from htcore import datasets

    load = datasets.load_fashion_mnist
    try:
        load()
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): {exc}")

    def first_rows(*args, **kwargs):
        full = load(*args, **kwargs)
        return type(full)(full.X_train[:1000], full.y_train[:1000], full.X_test[:300], full.y_test[:300])

    monkeypatch.setattr(datasets, "load_fashion_mnist", first_rows)
