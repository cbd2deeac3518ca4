"""allocate: the exact optimum of the separable problem (brute force over every allocation on small
layers), exact budgets, ties, determinism, the baselines' definitions, use by compress and
sparsify_model, and clear errors."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

import htcore
from htcore.compression import METHODS


def small_layers(seed: int, ties: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    layers = {"first": rng.standard_t(2, (2, 3)), "second": rng.normal(size=(5,)), "third": 3 * rng.normal(size=(2, 2))}
    if ties:  # equal magnitudes inside and across layers (and zeros)
        layers = {name: np.round(w) for name, w in layers.items()}
    return layers


def brute_force(layers, scale, cost=None):
    """(k, E, cost) of every allocation with 1 <= k_l <= n_l."""
    squares = [np.sort(np.ravel(w) ** 2)[::-1] for w in layers.values()]
    out = []
    for k in itertools.product(*[range(1, sq.size + 1) for sq in squares]):
        error = sum(s * sq[kl:].sum() for s, sq, kl in zip(scale, squares, k))
        out.append((k, error, None if cost is None else int(np.dot(cost, k))))
    return out


def relative_scale(layers):
    return [1 / np.sum(np.ravel(w) ** 2) for w in layers.values()]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("normalize", ["relative", "absolute"])
def test_nnz_budget_is_exact_optimum(ties, normalize):
    layers = small_layers(1, ties)
    scale = relative_scale(layers) if normalize == "relative" else [1.0] * 3
    allocations = brute_force(layers, scale)
    for budget in range(3, 16):
        result = htcore.allocate(layers, nnz=budget, normalize=normalize)
        best = min(e for k, e, _ in allocations if sum(k) == budget)
        assert result.nnz == sum(result.k.values()) == budget
        assert result.error == pytest.approx(best, rel=1e-12, abs=1e-12)
        own = next(e for k, e, _ in allocations if k == tuple(result.k.values()))
        assert result.error == pytest.approx(own, rel=1e-12, abs=1e-12)


def test_sensitivity_weights_the_objective():
    layers = small_layers(2)
    sensitivity = {"first": 5.0, "third": 0.5}
    scale = [s * r for s, r in zip([5.0, 1.0, 0.5], relative_scale(layers))]
    allocations = brute_force(layers, scale)
    for budget in (4, 7, 10):
        result = htcore.allocate(layers, nnz=budget, sensitivity=sensitivity)
        assert result.error == pytest.approx(min(e for k, e, _ in allocations if sum(k) == budget), rel=1e-12)
    plain = htcore.allocate(layers, nnz=7)
    heavier = htcore.allocate(layers, nnz=7, sensitivity={"first": 1000.0})
    assert heavier.k["first"] >= plain.k["first"]
    assert heavier.layer_rel_error["first"] <= plain.layer_rel_error["first"]


def test_bits_budget_guarantee():
    """Optimal among allocations costing at most what it spends, within the budget."""
    layers = small_layers(3)
    costs = [32 + math.ceil(math.log2(w.size)) for w in layers.values()]  # 35, 35, 34
    allocations = brute_force(layers, relative_scale(layers), costs)
    for budget in range(sum(costs), int(np.dot(costs, [6, 5, 4])) + 1, 23):
        result = htcore.allocate(layers, bits=budget)
        assert result.bits == int(np.dot(costs, list(result.k.values()))) <= budget
        best_at_spent = min(e for _, e, c in allocations if c <= result.bits)
        assert result.error == pytest.approx(best_at_spent, rel=1e-12, abs=1e-15)
    with_codebook = htcore.allocate(layers, bits=80, value_bits=4)  # entries cost 7 or 6 bits
    assert with_codebook.bits <= 80 and with_codebook.nnz > htcore.allocate(layers, bits=140).nnz


def test_rel_error_budget_is_fewest_entries():
    layers = small_layers(4)
    allocations = brute_force(layers, relative_scale(layers))
    empty = 3.0  # every layer's relative error is 1 when nothing is kept
    for target in (0.0, 0.05, 0.2, 0.5, 0.9):
        result = htcore.allocate(layers, rel_error=target)
        fewest = min(sum(k) for k, e, _ in allocations if math.sqrt(e / empty) <= target + 1e-12)
        assert result.nnz == fewest
        assert result.rel_error <= target + 1e-12


def test_keeps_round_trip_and_layer_errors_match_curve():
    layers = {name: np.random.default_rng(5).normal(size=shape) for name, shape in [("a", (37, 11)), ("b", (7, 3, 3, 3))]}
    result = htcore.allocate(layers, nnz=150)
    assert dict(result) == result.keep and list(result) == ["a", "b"] and len(result) == 2
    for name, w in layers.items():
        assert htcore.k_for_keep(result[name], w.size) == result.k[name]
        curve = htcore.compressibility_curve(w, [result[name]])
        assert result.layer_rel_error[name] == pytest.approx(curve.rel_error[0], rel=1e-9)
    assert json.loads(json.dumps(result.as_dict()))["layers"]["a"]["k"] == result.k["a"]


def test_deterministic_with_ties_and_float_dtypes():
    layers = small_layers(6, ties=True)
    first = htcore.allocate(layers, nnz=9)
    assert first == htcore.allocate(layers, nnz=9)
    as32 = htcore.allocate({n: w.astype(np.float32) for n, w in layers.items()}, nnz=9)
    as16 = htcore.allocate({n: w.astype(np.float16) for n, w in layers.items()}, nnz=9)
    assert first.k == as32.k == as16.k  # small integers are exact in every float dtype
    # equal gains go to the earlier layer
    tied = htcore.allocate({"x": [[1.0, 1.0]], "y": [[1.0, 1.0]]}, nnz=3, normalize="absolute")
    assert tied.k == {"x": 2, "y": 1}


def test_global_matches_one_magnitude_threshold():
    rng = np.random.default_rng(7)
    layers = {"a": rng.normal(size=(20, 10)), "b": 0.5 * rng.normal(size=(10, 10))}
    for budget in (20, 100, 250):
        result = htcore.allocate(layers, nnz=budget, method="global")
        reference = htcore.sparsify_global(layers, k=budget)
        assert result.k == {name: csr.nnz for name, csr in reference.items()}


def test_uniform_keeps_proportional_counts():
    layers = {"a": np.ones((30, 10)), "b": np.ones((7, 11)), "c": np.ones((3,))}
    total = 300 + 77 + 3
    for budget in (50, 191, 379):  # every share >= 1 (each layer keeps at least one entry)
        result = htcore.allocate(layers, nnz=budget, method="uniform")
        assert result.nnz == budget
        for name, w in layers.items():
            assert abs(result.k[name] - budget * w.size / total) <= 1 + 1e-9


def test_tail_method_keeps_less_of_a_heavier_tail():
    rng = np.random.default_rng(8)
    layers = {"heavy": rng.standard_t(1.5, (40, 50)), "light": rng.normal(size=(40, 50))}
    result = htcore.allocate(layers, nnz=1000, method="tail")
    assert result.nnz == 1000
    assert result.k["heavy"] < result.k["light"]
    with pytest.raises(ValueError, match="20 nonzero"):
        htcore.allocate({"tiny": np.arange(1.0, 10.0), **layers}, nnz=100, method="tail")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_meets_every_budget(method):
    rng = np.random.default_rng(9)
    layers = {"a": rng.standard_t(3, (30, 20)), "b": rng.normal(size=(25, 30))}
    assert htcore.allocate(layers, nnz=500, method=method).nnz == 500
    assert htcore.allocate(layers, bits=20000, method=method).bits <= 20000
    assert htcore.allocate(layers, rel_error=0.3, method=method).rel_error <= 0.3
    assert htcore.allocate(layers, nnz=1350, method=method).keep == {"a": 1.0, "b": 1.0}


def test_curve_beats_baselines_at_equal_nnz():
    rng = np.random.default_rng(10)
    layers = {"a": rng.standard_t(2, (40, 30)), "b": rng.normal(size=(30, 20)), "c": 0.1 * rng.standard_t(5, (20, 20))}
    curve = htcore.allocate(layers, nnz=800)
    for method in ("global", "uniform", "tail"):
        assert curve.error <= htcore.allocate(layers, nnz=800, method=method).error


def test_feeds_compress_and_sparsify_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    result = htcore.allocate(model, nnz=100)
    assert list(result) == ["0", "2"]
    compressed = htcore.compress(model, per_layer=result)
    kept = [layer.weight.nnz for layer in compressed.layers if hasattr(layer, "weight") and hasattr(layer.weight, "nnz")]
    assert sum(kept) == 100
    report = htcore.nn.sparsify_model(model, result)
    assert {layer.name: layer.nnz for layer in report.layers} == result.k


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "exactly one budget"),
        ({"nnz": 10, "bits": 1000}, ValueError, "exactly one budget"),
        ({"nnz": 16}, ValueError, "between"),
        ({"nnz": 2}, ValueError, "between"),
        ({"nnz": -1}, ValueError, "between"),
        ({"nnz": 5.0}, TypeError, "nnz"),
        ({"bits": 10}, ValueError, "between"),
        ({"bits": 10**9}, ValueError, "between"),
        ({"rel_error": 1.5}, ValueError, "rel_error"),
        ({"nnz": 5, "method": "magnitude"}, ValueError, "method"),
        ({"nnz": 5, "normalize": "l1"}, ValueError, "normalize"),
        ({"nnz": 5, "sensitivity": {"fourth": 1.0}}, ValueError, "fourth"),
        ({"nnz": 5, "sensitivity": {"first": -1.0}}, ValueError, "positive"),
        ({"nnz": 5, "sensitivity": [1.0]}, TypeError, "mapping"),
        ({"nnz": 5, "value_bits": 0}, ValueError, "value_bits"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        htcore.allocate(small_layers(11), **kwargs)


def test_bad_layers():
    with pytest.raises(TypeError, match="mapping"):
        htcore.allocate([np.ones(3)], nnz=1)
    with pytest.raises(ValueError, match="no weight"):
        htcore.allocate({}, nnz=1)
    with pytest.raises(ValueError, match="non-finite"):
        htcore.allocate({"a": [1.0, np.nan]}, nnz=1)
    with pytest.raises(ValueError, match="empty"):
        htcore.allocate({"a": np.ones((0, 3))}, nnz=1)
