import math

import numpy as np
import pytest
from scipy import stats

from htcore import bounds
from htcore.certification.bounds import (
    arora_bound,
    binomial_log_cdf,
    binomial_tail_inverse,
    kl_bernoulli,
    kl_inverse,
    occam_bound,
)


@pytest.mark.parametrize("q", [0.0, 1e-4, 0.05, 0.2, 0.5, 0.93, 1.0])
@pytest.mark.parametrize("c", [0.0, 1e-5, 0.01, 0.3, 2.0, 50.0])
def test_kl_inverse_matches_brute_force(q, c):
    grid = np.linspace(q, 1.0, 200001)
    kl = np.array([kl_bernoulli(q, p) for p in grid[:: 100]])  # coarse scan to locate the crossing
    ok = grid[:: 100][kl <= c]
    brute_lo = ok.max()
    fine = np.linspace(brute_lo, min(brute_lo + 100 * (grid[1] - grid[0]), 1.0), 2001)
    brute = max(p for p in fine if kl_bernoulli(q, p) <= c)
    got = kl_inverse(q, c)
    assert got == pytest.approx(brute, abs=1e-6)
    assert got >= q and got >= brute
    assert kl_bernoulli(q, max(got - 1e-12, q)) <= c + 1e-15


def test_kl_bernoulli_against_scipy_entropy():
    rng = np.random.default_rng(0)
    for q, p in rng.uniform(0.01, 0.99, size=(20, 2)):
        assert kl_bernoulli(q, p) == pytest.approx(stats.entropy([q, 1 - q], [p, 1 - p]), rel=1e-12)
    assert kl_bernoulli(0.3, 0.0) == math.inf and kl_bernoulli(0.0, 0.0) == 0.0


@pytest.mark.parametrize("k, m, p", [(0, 10, 0.3), (3, 10, 0.3), (40, 100, 0.5), (120, 1000, 0.1), (5, 5, 0.7), (2, 50, 1e-3)])
def test_binomial_log_cdf_matches_scipy(k, m, p):
    assert binomial_log_cdf(k, m, p) == pytest.approx(stats.binom.logcdf(k, m, p), rel=1e-10, abs=1e-12)


def test_binomial_log_cdf_far_below_double_range():
    # P[Bin(60000, 0.5) <= 100] underflows to 0 in scipy; the log-space sum stays finite and matches Stirling terms
    value = binomial_log_cdf(100, 60000, 0.5)
    assert math.isfinite(value) and value < -40000
    top = stats.binom.logpmf(100, 60000, 0.5)  # the largest term dominates
    assert top <= value <= top + 1.0


@pytest.mark.parametrize("k, m, delta", [(0, 20, 0.05), (3, 100, 0.05), (150, 1000, 0.01), (999, 1000, 0.1), (40, 300, 0.5)])
def test_binomial_tail_inverse_matches_scipy_root(k, m, delta):
    got = binomial_tail_inverse(k, m, math.log(delta))
    assert stats.binom.cdf(k, m, max(got - 1e-9, 0.0)) >= delta
    assert stats.binom.cdf(k, m, min(got + 1e-7, 1.0)) < delta
    from scipy.optimize import brentq
    ref = brentq(lambda p: stats.binom.cdf(k, m, p) - delta, 1e-15, 1 - 1e-15, xtol=1e-14)
    assert got == pytest.approx(ref, abs=1e-9)


def test_binomial_is_tighter_than_kl_and_kl_than_hoeffding():
    for errors, m, bits in [(0, 1000, 50), (120, 1000, 200), (12000, 60000, 12000), (300, 1347, 3000)]:
        q = errors / m
        b = occam_bound(q, m, bits, 0.05, form="binomial")
        k = occam_bound(q, m, bits, 0.05, form="kl")
        h = occam_bound(q, m, bits, 0.05, form="hoeffding")
        assert q <= b <= k + 1e-12
        assert k <= h + 1e-12


@pytest.mark.parametrize("form", bounds.FORMS)
def test_bound_at_least_train_error_and_monotone(form):
    m = 6000
    q = 1230 / m
    values_bits = [occam_bound(q, m, bits, 0.05, form=form) for bits in (0, 100, 1000, 5000, 20000)]
    assert all(v >= q for v in values_bits)
    assert all(a < b for a, b in zip(values_bits[:-1], values_bits[1:]) if b < 1.0)
    assert values_bits[0] < values_bits[-2]
    values_delta = [occam_bound(q, m, 1000, d, form=form) for d in (0.5, 0.1, 0.01, 1e-4)]
    assert all(a < b for a, b in zip(values_delta[:-1], values_delta[1:]))
    assert occam_bound(q, m, 1e7, 0.05, form=form) == 1.0


def test_kl_form_matches_definition():
    q, m, bits, delta = 0.2, 60000, 12700, 0.05
    c = (bits * math.log(2) + math.log(1 / delta)) / m
    got = occam_bound(q, m, bits, delta, form="kl")
    assert kl_bernoulli(q, got) == pytest.approx(c, rel=1e-9)
    assert occam_bound(q, m, bits, delta, form="hoeffding") == pytest.approx(q + math.sqrt(c / 2))


@pytest.mark.parametrize("train_error, expected", [(0.35, 0.965), (0.13, 0.890)])
def test_catoni_reproduces_zhou_et_al_imagenet(train_error, expected):
    # Zhou et al. 2019 (ICLR), Table 1: ImageNet MobileNet, 350 KiB = 2,867,200-bit code, m = 1,281,167, delta = 0.05
    got = occam_bound(train_error, 1_281_167, 2_867_200, 0.05, form="catoni")
    assert round(got, 3) == expected


def test_catoni_a_controls_the_grid_charge():
    q, m, bits = 0.2, 60000, 10000
    values = [occam_bound(q, m, bits, 0.05, form="catoni", catoni_a=a) for a in (1.0001, 1.01, 1.5)]
    assert values[0] < values[1] < values[2]
    with pytest.raises(ValueError, match="catoni_a"):
        occam_bound(q, m, bits, 0.05, form="catoni", catoni_a=1.0)


def test_arora_bound_formula_and_validation():
    got = arora_bound(1000, 8, 60000, 0.1, 0.05)
    assert got == pytest.approx(0.1 + math.sqrt((1000 * math.log(8) + math.log(20)) / 120000))
    assert arora_bound(10**9, 256, 100, 0.0) == 1.0
    assert arora_bound(1000, 8, 60000, 0.1, 0.01) > got
    with pytest.raises(ValueError, match="train_margin_error"):
        arora_bound(10, 2, 100, 1.5)
    with pytest.raises(TypeError, match="q must be an integer"):
        arora_bound(10.5, 2, 100, 0.1)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(train_error=-0.1), ValueError, "train_error"),
        (dict(train_error=float("nan")), ValueError, "train_error"),
        (dict(m=0), ValueError, "m must be >= 1"),
        (dict(code_bits=-1), ValueError, "code_bits"),
        (dict(code_bits=float("inf")), ValueError, "code_bits"),
        (dict(delta=0.0), ValueError, "delta"),
        (dict(delta=1.0), ValueError, "delta"),
        (dict(form="pac"), ValueError, "form must be one of"),
        (dict(form="binomial", train_error=0.12345), ValueError, "whole number of errors"),
        (dict(train_error="0.1"), TypeError, "train_error"),
    ],
)
def test_occam_bound_validation(kwargs, exc, match):
    args = dict(train_error=0.1, m=1000, code_bits=100, delta=0.05, form="kl")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        occam_bound(**args)


def test_kl_inverse_validation_and_edges():
    assert kl_inverse(0.3, 0.0) == pytest.approx(0.3)
    assert kl_inverse(1.0, 5.0) == 1.0
    assert kl_inverse(0.0, 1e-3) == pytest.approx(1 - math.exp(-1e-3), rel=1e-9)  # kl(0||p) = -ln(1-p)
    with pytest.raises(ValueError, match="c must be"):
        kl_inverse(0.1, -1.0)
    with pytest.raises(ValueError, match="q must be"):
        kl_inverse(1.1, 0.1)


def test_certify_a_runtime_cnn_on_images_against_its_own_errors():
    """A sequential runtime CNN (no torch) certified on (n, C, H, W) images: the training error is
    the model's own, the bounds are the Occam forms of its code length; other input ranks are refused."""
    from htcore import certify, code_length
    from htcore.runtime import CompressedModel, Conv2d, Flatten, Linear
    from htcore.sparse import topk_sparsify

    rng = np.random.default_rng(5)
    conv = Conv2d(topk_sparsify(rng.standard_normal((3, 2 * 3 * 3)).astype(np.float32), keep=0.5),
                  rng.standard_normal(3).astype(np.float32), kernel_size=3)
    g = CompressedModel([conv, Flatten(), Linear(rng.standard_normal((4, 3 * 4 * 4)).astype(np.float32))])
    X = rng.random((50, 2, 6, 6), dtype=np.float32)
    y = rng.integers(0, 4, 50)
    report = certify(g, X, y, settings_tried=3)
    assert report.train_error == np.mean(g.predict(X) != y)
    assert report.code_bits == code_length(g, settings_tried=3).total_bits
    assert report.kl == bounds.occam_bound(report.train_error, 50, report.code_bits, 0.05, form="kl")
    with pytest.raises(ValueError, match="X_train must be 2-D or 4-D"):
        certify(g, X[:, 0], y)
    with pytest.raises(ValueError, match="X_test must be 4-D"):
        certify(g, X, y, X_test=X.reshape(50, -1), y_test=y)


def test_certify_stability_fills_the_report_and_needs_the_original():
    """certify(stability=True) attaches the NoiseStability of g against f on the training data (its
    layers, its JSON under "stability", its markdown in the summary); without the original it refuses."""
    torch = pytest.importorskip("torch")
    import htcore

    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    g = htcore.compress(f, keep=0.5)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((80, 12)).astype(np.float32)
    y = rng.integers(0, 3, 80)
    plain = htcore.certify(g, X, y, original=f)
    report = htcore.certify(g, X, y, original=f, stability=True)
    assert plain.stability is None and plain.as_dict()["stability"] is None
    assert [layer.shape for layer in report.stability.layers] == [(16, 12), (3, 16)]
    assert report.stability.n_samples == 80 and 0 < report.stability.layers[0].frobenius_ratio < 1
    assert report.kl == plain.kl and report.gamma == plain.gamma
    assert report.as_dict()["stability"]["layers"][0]["frobenius_ratio"] == report.stability.layers[0].frobenius_ratio
    assert report.summary().startswith(plain.summary()) and "Noise stability" in report.summary()
    with pytest.raises(ValueError, match="stability=True.*needs original"):
        htcore.certify(g, X, y, stability=True)
