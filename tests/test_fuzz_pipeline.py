"""Property-based tests (hypothesis) for the high-level entry points that reach C++ through the
kernels: analyze (tails, fits, compressibility), code_length and certify (runtime products).

Expected: a result consistent with a direct computation, or a clear ValueError / TypeError;
never a crash. Reproducible (``derandomize=True``); inputs per test:
``pytest tests/test_fuzz_pipeline.py --hypothesis-show-statistics``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import htcore
from htcore.runtime import Activation, CompressedModel, Linear
from test_fuzz_csr import random_csr

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 40),
                          st.sampled_from(["t", "ties", "zeros", "nan", "one"])), min_size=1, max_size=3))
def test_analyze_rows_or_clear_error(specs):
    """Expected: one report row per matrix (NaN metrics allowed for degenerate ones); a matrix with
    non-finite weights gets a row without metrics and a warning naming it (issue #21)."""
    weights = {}
    for i, (seed, rows, cols, kind) in enumerate(specs):
        rng = np.random.default_rng(seed)
        W = rng.standard_t(3, size=(rows, cols))
        if kind == "ties":
            W = np.round(W)
        elif kind == "zeros":
            W[:] = 0
        elif kind == "nan":
            W[0, 0] = np.nan
        elif kind == "one":
            W = W[:1, :1]
        weights[f"layer{i}"] = W.astype(np.float32)
    bad = [name for name, w in weights.items() if not np.isfinite(w).all()]
    event("non-finite" if bad else "report")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", htcore.errors.DegenerateSampleWarning)
        report = htcore.analyze(weights, progress=False, keeps=(0.1, 0.5))
    assert len(report.layers) == len(weights)
    for name in bad:
        assert report[name].spectral is None and report[name].elements is None and report[name].rel_error is None
        assert any(str(w.message).startswith(f"{name}: no spectral metrics") for w in caught)


def random_model(seed: int, sizes: list[int], fmt: str) -> CompressedModel:
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(Linear(random_csr(seed + i, n_out, n_in, 0.5, fmt), np.linspace(-1, 1, n_out)))
        layers.append(Activation("relu"))
    return CompressedModel(layers[:-1])


models = st.tuples(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 12), min_size=2, max_size=4),
                   st.sampled_from(["f32", "f16", "codebook", "f64", "i64-indptr"]))


@FUZZ
@given(models, st.integers(1, 1000))
def test_code_length_is_positive_and_charges_the_search(spec, tried):
    """Expected: a positive total that grows by ceil(log2(settings_tried)) search bits; 0 or a
    non-integer settings_tried -> ValueError / TypeError."""
    m = random_model(*spec)
    one = htcore.code_length(m)
    many = htcore.code_length(m, settings_tried=tried)
    assert one.total_bits > 0
    assert many.search_bits == int(np.ceil(np.log2(tried)))
    assert many.total_bits >= one.total_bits
    for bad in (0, -1, 1.5, True):
        with pytest.raises((ValueError, TypeError)):
            htcore.code_length(m, settings_tried=bad)


@FUZZ
@given(models, st.integers(1, 60), st.sampled_from(["ok", "label_too_big", "negative_label", "float_labels",
                                                    "wrong_length", "nan_x", "wrong_features", "empty"]))
def test_certify_train_error_and_bad_data(spec, m_samples, how):
    """Expected: train_error = the fraction of argmax predictions that differ from the labels,
    every bound in [train_error, 1]; bad labels or inputs -> ValueError / TypeError."""
    model = random_model(*spec)
    n_in, n_out = model.layers[0].in_features, model.layers[-1].out_features
    rng = np.random.default_rng(spec[0])
    X = rng.standard_normal((m_samples, n_in)).astype(np.float32)
    y = rng.integers(0, n_out, m_samples)
    if how != "ok":
        if how == "label_too_big":  # a label the model cannot output means mismatched data, not an error
            y[-1] = n_out
        elif how == "negative_label":
            y[0] = -1
        elif how == "float_labels":
            y = y + 0.5
        elif how == "wrong_length":
            y = y[:-1]
        elif how == "nan_x":
            X[0, 0] = np.nan
        elif how == "wrong_features":
            X = np.ones((m_samples, n_in + 1), np.float32)
        else:
            X, y = X[:0], y[:0]
        with pytest.raises((ValueError, TypeError)):
            htcore.certify(model, X, y)
        return
    report = htcore.certify(model, X, y)
    assert report.train_error == np.mean(model.predict(X) != y)
    for form in ("kl", "hoeffding", "binomial", "catoni"):
        value = getattr(report, form)
        assert report.train_error - 1e-12 <= value <= 1 + 1e-12, (form, value)
