"""Small seeded torch training helpers for the demo, the benchmarks and `compress`'s fine-tuning."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ._validation import as_float_array, check_int, check_labels


def as_training_tensors(X: Any, y: Any, name: str = "train_data", *, n_features: int | None = None,
                        n_classes: int | None = None):
    """(X, y) as torch tensors: X float32 (n, features), y int64 labels of shape (n,). With
    ``n_features`` / ``n_classes`` (the model's input width and output count) a mismatch is a
    ValueError here rather than an error deep inside torch."""
    import torch

    X = as_float_array(X, f"{name} X", ndim=2, dtype=np.float32, allow_empty=False)
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} X has {X.shape[1]} features but the model takes {n_features}")
    y = check_labels(y, X.shape[0], f"{name} y", n_classes=n_classes)
    return torch.from_numpy(X), torch.from_numpy(y)


def fit(forward: Callable, params: list, X: Any, y: Any, *, epochs: int, lr: float, batch_size: int, seed: int,
        after_step: Callable[[], None] | None = None) -> None:
    """Adam on the cross-entropy of ``forward(X_batch)`` over ``epochs`` seeded shuffles of (X, y)
    (torch tensors); ``after_step()`` runs after every optimiser step (e.g. to re-impose a mask)."""
    import torch

    if not epochs or not params:
        return
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        order = torch.randperm(X.shape[0], generator=generator)
        for start in range(0, X.shape[0], batch_size):
            batch = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(forward(X[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if after_step is not None:
                after_step()


def train_mlp(X: Any, y: Any, *, hidden: Sequence[int] = (32,), epochs: int = 10, lr: float = 1e-3,
              batch_size: int = 128, seed: int = 0) -> Any:
    """Train a ReLU MLP ``features -> hidden... -> classes`` (torch.nn.Sequential of Linear/ReLU,
    logits out) with Adam on cross-entropy; initialisation and shuffles seeded by ``seed``.
    Returns the model in eval mode."""
    import torch

    Xt, yt = as_training_tensors(X, y)
    epochs = check_int(epochs, "epochs", low=0)
    batch_size = check_int(batch_size, "batch_size", low=1)
    seed = check_int(seed, "seed", low=0)
    widths = [Xt.shape[1], *(check_int(h, "hidden width", low=1) for h in hidden), int(yt.max()) + 1]
    torch.manual_seed(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(widths) - 2 else [])
    model = torch.nn.Sequential(*layers)
    model.train()
    fit(model, list(model.parameters()), Xt, yt, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    return model.eval()
