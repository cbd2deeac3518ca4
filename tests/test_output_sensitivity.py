"""output_sensitivity: each layer's squared relative output error (that layer alone pruned, as compress
prunes it) per unit squared relative weight error, against a plain numpy forward pass; weights and
mode restored; callable inputs; unmeasurable layers; use by allocate; clear errors."""
from __future__ import annotations

import numpy as np
import pytest

import htcore

torch = pytest.importorskip("torch")


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Linear(9, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 3))


def numpy_forward(params: list[tuple[np.ndarray, np.ndarray]], X: np.ndarray) -> np.ndarray:
    h = X
    for i, (W, b) in enumerate(params):
        h = h @ W.T + b
        if i == 0:
            h = np.maximum(h, 0)
        elif i == 1:
            h = np.tanh(h)
    return h


def topk_numpy(W: np.ndarray, keep: float) -> np.ndarray:
    """Top ceil(keep n) magnitudes, ties to the lowest flat index (compress's rule)."""
    k = htcore.k_for_keep(keep, W.size)
    order = np.argsort(-np.abs(W).ravel(), kind="stable")[:k]
    out = np.zeros(W.size)
    out[order] = W.ravel()[order]
    return out.reshape(W.shape)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9])
def test_matches_numpy_reference(keep):
    model = mlp()
    X = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    params = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
              for m in model if isinstance(m, torch.nn.Linear)]
    dense = numpy_forward(params, X.astype(np.float64))
    result = htcore.output_sensitivity(model, X, keep=keep)
    assert list(result) == ["0", "2", "4"]
    for index, name in enumerate(result):
        W = params[index][0]
        pruned = topk_numpy(W, keep)
        changed = [(pruned if i == index else w, b) for i, (w, b) in enumerate(params)]
        out_error = np.sum((numpy_forward(changed, X.astype(np.float64)) - dense) ** 2) / np.sum(dense**2)
        weight_error = np.sum((W - pruned) ** 2) / np.sum(W**2)
        assert result[name] == pytest.approx(out_error / weight_error, rel=1e-4)  # float32 forward


def test_linear_net_is_the_input_weighted_ratio():
    """One Linear without bias: s = (||E X|| / ||W X||)^2 / (||E||_F / ||W||_F)^2 exactly."""
    torch.manual_seed(2)
    model = torch.nn.Linear(8, 4, bias=False).double()
    X = np.random.default_rng(3).normal(size=(30, 8)) * np.arange(1, 9)  # anisotropic inputs
    W = model.weight.detach().numpy()
    E = W - topk_numpy(W, 0.4)
    expected = (np.sum((X @ E.T) ** 2) / np.sum((X @ W.T) ** 2)) / (np.sum(E**2) / np.sum(W**2))
    assert htcore.output_sensitivity(model, X, keep=0.4)[""] == pytest.approx(expected, rel=1e-9)


def test_restores_weights_and_mode_and_callable_agrees():
    model = mlp(4)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X = np.random.default_rng(5).normal(size=(20, 6)).astype(np.float32)
    direct = htcore.output_sensitivity(model, X, keep=0.3)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    via_callable = htcore.output_sensitivity(model, lambda: model(torch.from_numpy(X)), keep=0.3)
    assert via_callable == direct == htcore.output_sensitivity(model, X, keep=0.3)  # deterministic
    only = htcore.output_sensitivity(model, X, keep=0.3, layers=["2"])
    assert only == {"2": direct["2"]}


def test_restores_weights_when_forward_fails():
    model = mlp(6)
    before = model[0].weight.detach().clone()
    calls = []

    def failing():
        calls.append(1)
        if len(calls) > 1:  # the dense pass succeeds, the first pruned one fails
            raise RuntimeError("boom")
        return model(torch.ones(2, 6))

    with pytest.raises(RuntimeError, match="boom"):
        htcore.output_sensitivity(model, failing)
    assert torch.equal(model[0].weight, before)


def test_unmeasurable_and_ignored_layers():
    model = mlp(7)
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].weight[0, 0] = 1.0  # one nonzero: pruning at keep 0.5 changes nothing
        model[4].weight[:, 1:].zero_()  # the output reads only hidden unit 0 of layer 2 ...
    X = np.random.default_rng(8).normal(size=(16, 6)).astype(np.float32)
    result = htcore.output_sensitivity(model, X, keep=0.5)
    assert result["2"] == max(result.values())  # unmeasurable: the largest measured
    assert all(v > 0 for v in result.values())


def test_allocate_with_sensitivity_lowers_output_error():
    """A layer whose error the net amplifies gets more entries, and the output error falls."""
    torch.manual_seed(9)
    model = torch.nn.Sequential(torch.nn.Linear(20, 20, bias=False), torch.nn.Linear(20, 20, bias=False))
    rng = np.random.default_rng(10)
    X = rng.normal(size=(200, 20)).astype(np.float32) * np.r_[np.full(4, 10.0), np.full(16, 0.1)].astype(np.float32)
    calibration, evaluation = X[:100], X[100:]
    sensitivity = htcore.output_sensitivity(model, calibration, keep=0.3)
    plain = htcore.allocate(model, nnz=240)
    weighted = htcore.allocate(model, nnz=240, sensitivity=sensitivity)

    def output_error(allocation):
        W0, W1 = (topk_numpy(m.weight.detach().numpy(), allocation[name]) for name, m in (("0", model[0]), ("1", model[1])))
        dense = model(torch.from_numpy(evaluation)).detach().numpy()
        return np.linalg.norm(evaluation @ W0.T @ W1.T - dense) / np.linalg.norm(dense)

    assert weighted.nnz == plain.nnz == 240
    assert weighted.k != plain.k
    assert output_error(weighted) < output_error(plain)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"keep": 1.0}, ValueError, "below 1"),
        ({"keep": 0.0}, ValueError, "keep"),
        ({"keep": 1.5}, ValueError, "keep"),
        ({"layers": ["9"]}, ValueError, "unknown"),
        ({"layers": []}, ValueError, "no layer"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        htcore.output_sensitivity(mlp(), np.ones((3, 6), dtype=np.float32), **kwargs)


def test_bad_model_and_inputs():
    with pytest.raises(TypeError, match="torch module"):
        htcore.output_sensitivity({"a": np.ones((2, 2))}, np.ones((1, 2)))
    with pytest.raises(ValueError, match="inputs"):
        htcore.output_sensitivity(mlp(), np.full((2, 6), np.nan))
    with pytest.raises(ValueError, match="not all zero"):
        htcore.output_sensitivity(torch.nn.Linear(3, 2, bias=False), np.zeros((4, 3)))
