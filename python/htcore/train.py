"""Small seeded torch training helpers for the demo, the benchmarks and `compress`'s fine-tuning."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ._validation import as_float_array, check_int, check_labels, check_positive


def as_training_tensors(X: Any, y: Any, name: str = "train_data", *, model: Any = None):
    """(X, y) as torch tensors: X float32 of shape (n, features) or images (n, C, H, W), y int64
    labels of shape (n,). With ``model`` (a torch module), one sample is run through it (eval mode,
    no gradient) so that an input the model cannot take, or labels it cannot output, is a
    ValueError here rather than an error deep inside torch's training loop."""
    import torch

    X = as_float_array(X, f"{name} X", ndim=(2, 4), dtype=np.float32, allow_empty=False)
    n_classes = None if model is None else _output_classes(model, X, name)
    y = check_labels(y, X.shape[0], f"{name} y", n_classes=n_classes)
    return torch.from_numpy(X), torch.from_numpy(y)


def _output_classes(model: Any, X: np.ndarray, name: str) -> int:
    """The number of scores ``model`` outputs for the first sample of X; a ValueError saying what
    the first weight layer expects when the sample does not fit."""
    import torch

    was_training = model.training
    model.eval()  # BatchNorm on a batch of one needs its running statistics
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(X[:1]))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{name} X of shape {X.shape} does not fit the model{_expected_input(model)}: "
                         f"{str(exc).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise ValueError(f"the model must output (n, classes) scores, got shape {tuple(out.shape)} for one sample")
    return int(out.shape[1])


def _expected_input(model: Any) -> str:
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if first is None:
        return ""
    if isinstance(first, nn.Linear):
        return f" (its first Linear takes (n, {first.in_features}) rows)"
    return f" (its first Conv2d takes (n, {first.in_channels}, H, W) images)"


SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: Any, name: str = "schedule") -> str:
    """``schedule`` if it names a learning-rate schedule of `fit`, else a ValueError naming it."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"{name} must be one of {list(SCHEDULES)}, got {schedule!r}")
    return schedule


def fit(forward: Callable, params: list, X: Any, y: Any, *, epochs: int, lr: float, batch_size: int, seed: int,
        after_step: Callable[[], None] | None = None, schedule: str = "constant") -> None:
    """Adam on the cross-entropy of ``forward(X_batch)`` over ``epochs`` seeded shuffles of (X, y)
    (torch tensors); ``after_step()`` runs after every optimiser step (e.g. to re-impose a mask).
    Whatever draws from torch's global generator meanwhile (Dropout) draws from it seeded by
    ``seed``, inside a forked RNG state: the result depends on ``seed`` alone, and the caller's
    generator is left as it was.
    ``schedule``: "constant" keeps ``lr``; "cosine" anneals it per step from ``lr`` at the first step
    to 0 after the last, lr * (1 + cos(pi * t / T)) / 2 for step t of T (Loshchilov and Hutter 2017,
    without restarts), so the last epochs take small steps that settle into a minimum."""
    import torch

    if not epochs or not params:
        return
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(params, lr=lr)
    steps = epochs * -(-X.shape[0] // batch_size)
    annealer = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
                if check_schedule(schedule) == "cosine" else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(X.shape[0], generator=generator)
            for start in range(0, X.shape[0], batch_size):
                batch = order[start:start + batch_size]
                loss = torch.nn.functional.cross_entropy(forward(X[batch]), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                if annealer is not None:
                    annealer.step()
                if after_step is not None:
                    after_step()


def train_classifier(model: Any, X: Any, y: Any, *, epochs: int = 10, lr: float = 1e-3, batch_size: int = 128,
                     seed: int = 0, schedule: str = "constant") -> Any:
    """Train any torch classifier (scores (n, classes) out) in place with Adam on cross-entropy over
    ``epochs`` seeded shuffles of (X, y); X is (n, features) or images (n, C, H, W). ``schedule`` is
    the learning-rate schedule of `fit` ("constant" or "cosine" from ``lr`` to 0). The model runs in
    train mode while fitting (BatchNorm statistics, Dropout drawn as `fit` says) and is returned in
    eval mode."""
    Xt, yt = as_training_tensors(X, y, "training data", model=model)
    epochs = check_int(epochs, "epochs", low=0)
    batch_size = check_int(batch_size, "batch_size", low=1)
    seed = check_int(seed, "seed", low=0)
    lr = check_positive(lr, "lr")
    schedule = check_schedule(schedule)
    model.train()
    fit(model, list(model.parameters()), Xt, yt, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        schedule=schedule)
    return model.eval()


def train_mlp(X: Any, y: Any, *, hidden: Sequence[int] = (32,), epochs: int = 10, lr: float = 1e-3,
              batch_size: int = 128, seed: int = 0) -> Any:
    """Train a ReLU MLP ``features -> hidden... -> classes`` (torch.nn.Sequential of Linear/ReLU,
    logits out) with `train_classifier`; initialisation and shuffles seeded by ``seed``.
    Returns the model in eval mode."""
    import torch

    X = as_float_array(X, "training data X", ndim=2, dtype=np.float32, allow_empty=False)
    y = check_labels(y, X.shape[0], "training data y")
    seed = check_int(seed, "seed", low=0)
    widths = [X.shape[1], *(check_int(h, "hidden width", low=1) for h in hidden), int(y.max()) + 1]
    torch.manual_seed(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(widths) - 2 else [])
    return train_classifier(torch.nn.Sequential(*layers), X, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
