"""htcore.resilience: accuracy under input and weight noise against closed forms, and its checks."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

import htcore
from htcore.runtime import CompressedModel, Linear

torch = pytest.importorskip("torch")
nn = torch.nn


def _sign_classifier() -> CompressedModel:
    """f(x) = (x, -x) for a scalar x: class 0 iff x > 0."""
    return CompressedModel([Linear(np.array([[1.0], [-1.0]]))])


def _signs(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 2
    return np.where(y == 0, 1.0, -1.0)[:, None], y


def test_input_noise_matches_the_gaussian_closed_form():
    X, y = _signs(4000)  # RMS 1, so sigma is the noise's standard deviation
    r = htcore.resilience({"sign": _sign_classifier()}, X, y, input_noise=(0, 0.5, 1.0, 2.0), weight_noise=(0,),
                          trials=2, seed=0)
    acc = r.input_accuracy[0].mean(1)
    assert acc[0] == 1.0 and r.weight_accuracy[0, 0, 0] == 1.0
    # x = +-1 + sigma z keeps its sign with probability Phi(1 / sigma); standard error <= 0.006
    np.testing.assert_allclose(acc[1:], norm.cdf(1 / np.array([0.5, 1.0, 2.0])), atol=0.025)


def test_weight_noise_matches_the_gaussian_closed_form():
    X, y = _signs(10)
    # with w = (1 + s z1, -(1 + s z2)) every sample is right iff z1 + z2 > -2/s: P = Phi(sqrt(2) / s)
    r = htcore.resilience({"sign": _sign_classifier()}, X, y, input_noise=(0,), weight_noise=(0.5, 1.0), trials=400)
    draws = r.weight_accuracy[0]
    assert set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_allclose(draws.mean(1), norm.cdf(math.sqrt(2) / np.array([0.5, 1.0])), atol=0.05)


def test_weight_noise_keeps_zeros_and_nets_share_draws():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    X = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    y = f(torch.from_numpy(X)).argmax(1).numpy()
    g = htcore.compress(f, keep=0.3)
    levels = (0.0, 0.3, 3.0)
    r = htcore.resilience({"dense": f, "same dense": CompressedModel.from_torch(f), "top-k 0.3": g}, X, y,
                          input_noise=levels, weight_noise=levels, trials=2, seed=4)
    # the same net under two names sees the same draws: identical curves
    np.testing.assert_array_equal(r.input_accuracy[0], r.input_accuracy[1])
    np.testing.assert_array_equal(r.weight_accuracy[0], r.weight_accuracy[1])
    assert r.input_accuracy[0, 0, 0] == 1.0
    assert r.input_accuracy[2, 0, 0] == pytest.approx(float(np.mean(g.predict(X) == y)))
    assert r.input_accuracy[0, 2].mean() < 0.8 and r.weight_accuracy[0, 2].mean() < 0.8  # large noise hurts
    # multiplicative noise leaves zero weights zero: an all-zero weight keeps predicting its bias's argmax
    zero = CompressedModel([Linear(np.zeros((4, 8)), np.array([0.0, 0.0, 1.0, 0.0]))])
    z = htcore.resilience({"zero": zero}, X, np.full(300, 2), input_noise=(0,), weight_noise=(5.0,), trials=2)
    assert np.all(z.weight_accuracy == 1.0)
    again = htcore.resilience({"dense": f, "same dense": CompressedModel.from_torch(f), "top-k 0.3": g}, X, y,
                              input_noise=levels, weight_noise=levels, trials=2, seed=4)
    np.testing.assert_array_equal(r.weight_accuracy, again.weight_accuracy)


def test_identical_at_one_and_two_threads_and_outputs(tmp_path):
    torch.manual_seed(1)
    f = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    X = np.random.default_rng(0).standard_normal((60, 1, 8, 8)).astype(np.float32)
    y = np.arange(60) % 3
    models = {"dense": f, "compressed": CompressedModel.from_torch(f)}
    before = htcore.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            runs.append(htcore.resilience(models, X, y, trials=2, max_samples=40, seed=3))
    finally:
        htcore.set_num_threads(before)
    a, b = runs
    np.testing.assert_array_equal(a.input_accuracy, b.input_accuracy)
    np.testing.assert_array_equal(a.weight_accuracy, b.weight_accuracy)
    assert a.n_samples == 40 and a.names == ("dense", "compressed")
    rows = a.rows()
    assert len(rows) == 2 * (len(a.input_noise) + len(a.weight_noise))
    assert {"model", "noise", "sigma", "accuracy", "accuracy_std"} == set(rows[0])
    json.dumps(a.as_dict(), allow_nan=False)
    assert len(a.to_pandas()) == len(rows)
    assert "| dense |" in a.to_markdown() and "clean" in a.summary()
    assert a.plot(tmp_path) == [str(tmp_path / "resilience.png")] and (tmp_path / "resilience.png").stat().st_size > 1000


def test_bad_inputs():
    f = _sign_classifier()
    X, y = _signs(6)
    with pytest.raises(TypeError, match="models must be a non-empty mapping"):
        htcore.resilience({}, X, y)
    with pytest.raises(TypeError, match="models must be a non-empty mapping"):
        htcore.resilience(f, X, y)
    with pytest.raises(TypeError, match="keys must be str"):
        htcore.resilience({1: f}, X, y)
    with pytest.raises(TypeError, match=r"models\['a'\] must be a torch.nn.Sequential"):
        htcore.resilience({"a": object()}, X, y)
    with pytest.raises(ValueError, match=r"X must be \(batch, 1\)"):
        htcore.resilience({"a": f}, np.ones((6, 2)), y)
    with pytest.raises(ValueError, match="non-finite"):
        htcore.resilience({"a": f}, np.full((6, 1), np.nan), y)
    with pytest.raises(ValueError, match="y must be integer labels"):
        htcore.resilience({"a": f}, X, y[:3])
    with pytest.raises(ValueError, match="more classes than max"):
        htcore.resilience({"a": f}, X, np.full(6, 2))
    with pytest.raises(ValueError, match="input_noise levels must be finite numbers >= 0"):
        htcore.resilience({"a": f}, X, y, input_noise=(0, -0.1))
    with pytest.raises(ValueError, match="weight_noise levels"):
        htcore.resilience({"a": f}, X, y, weight_noise=(float("nan"),))
    with pytest.raises(TypeError, match="input_noise must be a non-empty sequence"):
        htcore.resilience({"a": f}, X, y, input_noise=0.1)
    with pytest.raises(ValueError, match="trials must be >= 1"):
        htcore.resilience({"a": f}, X, y, trials=0)
