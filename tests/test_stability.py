"""htcore.noise_stability / layer_stability against theory, hand-computed values and direct references."""
from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest

import htcore
from htcore.runtime import CompressedModel, Linear

torch = pytest.importorskip("torch")
nn = torch.nn


@pytest.fixture(scope="module")
def gaussian_layer():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((200, 400))
    return W, htcore.topk_sparsify(W, 0.3).todense()


def test_isotropic_inputs_see_the_frobenius_ratio_and_the_random_cushion(gaussian_layer):
    W, W_hat = gaussian_layer
    X = np.random.default_rng(2).standard_normal((2000, 400))
    s = htcore.layer_stability(W, W_hat, X)
    frob = np.linalg.norm(W - W_hat) / np.linalg.norm(W)
    assert s.frobenius_ratio == pytest.approx(frob, rel=1e-12)
    # per-vector ratios concentrate (spread ~ 1/sqrt(out)): the median over 2000 is within ~1%
    assert s.rel_error_median == pytest.approx(frob, rel=0.02)
    assert s.random_median == pytest.approx(frob, rel=0.03)
    assert s.cushion_median == pytest.approx(1 / math.sqrt(400), rel=0.03)
    assert s.cushion_reference == 1 / math.sqrt(400)
    assert s.rel_error_median <= s.rel_error_p90 <= s.rel_error_max
    assert s.cushion_min <= s.cushion_median
    assert s.n_vectors == 2000 and s.n_dropped == 0 and s.density == pytest.approx(0.3)


def test_top_singular_direction_has_a_large_cushion_and_a_small_error(gaussian_layer):
    W, W_hat = gaussian_layer
    _, sv, vt = np.linalg.svd(W)
    v1 = vt[0]
    s = htcore.layer_stability(W, W_hat, np.outer([1.0, -2.0, 0.5], v1))  # any multiple of v1
    E = W - W_hat
    frob = np.linalg.norm(E) / np.linalg.norm(W)
    # exact: ||W v1|| = sigma_1
    np.testing.assert_allclose(s.cushion, sv[0] / np.linalg.norm(W), rtol=1e-12)
    np.testing.assert_allclose(s.rel_error, np.linalg.norm(E @ v1) / sv[0], rtol=1e-12)
    # theory: mu = sigma_1 / ||W||_F ~ (sqrt(out) + sqrt(h)) / sqrt(out h), far above 1/sqrt(h)
    assert s.cushion_median == pytest.approx((math.sqrt(200) + math.sqrt(400)) / math.sqrt(200 * 400), rel=0.05)
    assert s.cushion_median > 2 * s.cushion_reference
    # E = c W + R with c = frob^2 (the top-k residual's regression on W) and R spread evenly over
    # directions: ||E v1||^2 / sigma_1^2 ~ frob^4 + (frob^2 - frob^4) (1/sqrt(h) / mu)^2, well below frob^2
    predicted = math.sqrt(frob**4 + (frob**2 - frob**4) * (s.cushion_reference / s.cushion_median) ** 2)
    assert s.rel_error_median == pytest.approx(predicted, rel=0.15)
    assert s.rel_error_median < 0.75 * frob


def _hand_built():
    """x -> W2 relu(W1 x), no biases; the compressed net drops one entry of each matrix."""
    W1, W2 = np.array([[1.0, 0.0], [0.0, -1.0]]), np.array([[1.0, 1.0], [1.0, -1.0]])
    f = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        f[0].weight.copy_(torch.tensor(W1))
        f[2].weight.copy_(torch.tensor(W2))
    g = CompressedModel([Linear(np.array([[1.0, 0.0], [0.0, 0.0]])), htcore.runtime.Activation("relu"),
                         Linear(np.array([[0.0, 1.0], [1.0, -1.0]]))])
    return f, g


def test_hand_built_values():
    f, g = _hand_built()
    r = htcore.noise_stability(f, g, np.array([[1.0, 1.0]]), np.array([0]))
    l1, l2 = r.layers
    # layer 1 sees x = (1, 1): W1 x = (1, -1), E1 x = (0, -1)
    assert (l1.name, l1.kind, l1.shape) == ("layers.0", "linear", (2, 2))
    assert l1.rel_error_median == pytest.approx(1 / math.sqrt(2))
    assert l1.cushion_median == pytest.approx(math.sqrt(2) / (math.sqrt(2) * math.sqrt(2)))
    assert l1.frobenius_ratio == pytest.approx(1 / math.sqrt(2))
    assert l1.contraction_max == pytest.approx(math.sqrt(2))  # ||(1, -1)|| / ||relu(1, -1)||
    # J = W2 diag(1, 0): J x^1 = (1, 1), ||J||_F = sqrt 2, ||x^1|| = sqrt 2
    assert l1.interlayer_cushion_median == pytest.approx(1 / math.sqrt(2))
    assert l1.output_error_median == pytest.approx(0.0)  # the error lands on a dead unit
    assert l1.gain_median == pytest.approx(0.0)
    # layer 2 sees (1, 0): W2 (1, 0) = (1, 1), E2 (1, 0) = (1, 0)
    assert l2.rel_error_median == pytest.approx(1 / math.sqrt(2))
    assert l2.cushion_median == pytest.approx(math.sqrt(2) / 2)
    assert l2.frobenius_ratio == pytest.approx(0.5)
    assert math.isnan(l2.contraction_max)  # no activation after the last layer
    assert l2.interlayer_cushion_median == pytest.approx(1 / math.sqrt(2))  # J = I
    assert l2.output_error_median == pytest.approx(1 / math.sqrt(2)) and l2.gain_median == pytest.approx(1.0)
    # f(x) = (1, 1), g(x) = (0, 1)
    np.testing.assert_allclose(r.output_error_all, [1 / math.sqrt(2)])
    np.testing.assert_allclose(r.output_error_sum, [1 / math.sqrt(2)])
    np.testing.assert_allclose(r.margins_original, [0.0])
    np.testing.assert_allclose(r.margins_compressed, [-1.0])
    assert r.gamma == pytest.approx(1.0) and r.labels == "given"
    net = r.net_figures()
    assert net["margin_error_2gamma_original"] == 1.0 and net["nonpositive_margin_compressed"] == 1.0


def test_biases_interlayer_cushion_and_runtime_models_agree_with_torch():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    g = htcore.compress(f, keep=0.5)
    X = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    r = htcore.noise_stability(f, g, X, max_samples=None)
    # interlayer cushion of layer 0 by torch's own Jacobian, per sample
    x = torch.from_numpy(X).double()
    f64 = copy.deepcopy(f).double()
    mus = []
    for xi in x:
        x1 = f64[0](xi).detach()
        J = torch.autograd.functional.jacobian(lambda z: f64[1:](z), x1).detach()
        mus.append(float(torch.linalg.vector_norm(J @ x1) / (torch.linalg.matrix_norm(J) * torch.linalg.vector_norm(x1))))
    assert r.layers[0].interlayer_cushion_median == pytest.approx(np.median(mus), rel=1e-9)
    assert r.layers[0].interlayer_cushion_min == pytest.approx(min(mus), rel=1e-9)
    # the same nets as runtime models give the same figures
    r2 = htcore.noise_stability(CompressedModel.from_torch(f), g, X, max_samples=None)
    for la, lb in zip(r.layers, r2.layers):
        for key, value in la.as_dict().items():
            assert lb.as_dict()[key] == value, key
    np.testing.assert_array_equal(r.margins_compressed, r2.margins_compressed)


def test_conv_layers_act_on_patches_including_groups():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 3, 2, stride=2, bias=False), nn.Flatten(), nn.Linear(3 * 2 * 2, 3))
    g = copy.deepcopy(f)
    htcore.nn.sparsify_model(g, keep=0.4)  # in place: SparseConv2d and SparseLinear modules
    X = np.random.default_rng(0).standard_normal((7, 2, 8, 8)).astype(np.float32)
    X[0, :, :4] = 0  # some all-zero patches, dropped
    r = htcore.noise_stability(f, g, X)
    conv = r.layers[0]
    assert conv.kind == "conv2d" and conv.shape == (4, 2 * 9)  # block diagonal over the 2 groups
    assert conv.cushion_reference == 1 / math.sqrt(18)
    # reference: per output position, the norm over channels of conv(x, E) / conv(x, W)
    x = torch.from_numpy(X).double()
    W = f[0].weight.detach().double()
    W_hat = torch.from_numpy(htcore.runtime.CompressedModel.from_torch(g).layers[0].weight.todense()).double()
    W_hat = W_hat.reshape(W.shape)
    conv_w = torch.nn.functional.conv2d(x, W, padding=1, groups=2)
    conv_e = torch.nn.functional.conv2d(x, W - W_hat, padding=1, groups=2)
    clean = torch.linalg.vector_norm(conv_w, dim=1).ravel()
    noise = torch.linalg.vector_norm(conv_e, dim=1).ravel()
    kept = clean > 0
    assert conv.n_vectors == 7 * 64 and conv.n_dropped == int((~kept).sum()) > 0
    np.testing.assert_allclose(np.sort(conv.rel_error), np.sort((noise[kept] / clean[kept]).numpy()), rtol=1e-10)
    frob = float(torch.linalg.matrix_norm((W - W_hat).reshape(4, -1)) / torch.linalg.matrix_norm(W.reshape(4, -1)))
    assert conv.frobenius_ratio == pytest.approx(frob, rel=1e-12)
    assert r.layers[1].kind == "conv2d" and r.layers[1].shape == (3, 16)
    assert r.layers[2].kind == "linear" and math.isfinite(r.layers[2].output_error_median)


def test_identical_at_one_and_two_threads():
    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 10))
    g = htcore.compress(f, keep=0.2)
    X = np.random.default_rng(3).standard_normal((300, 30)).astype(np.float32)
    results = []
    before = htcore.get_num_threads()
    try:
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            results.append(htcore.noise_stability(f, g, X, max_samples=200, seed=5))
    finally:
        htcore.set_num_threads(before)
    a, b = results
    assert json.dumps(a.as_dict()) == json.dumps(b.as_dict())
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.rel_error, lb.rel_error)
        np.testing.assert_array_equal(la.cushion, lb.cushion)
    np.testing.assert_array_equal(a.margins_original, b.margins_original)


def test_subsample_outputs_and_plot(tmp_path, monkeypatch):
    torch.manual_seed(2)
    f = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    g = htcore.compress(f, keep=0.5)
    X = np.random.default_rng(0).standard_normal((100, 5))
    r = htcore.noise_stability(f, g, X, max_samples=40, seed=1)
    assert r.n_samples == 40 and r.layers[0].n_vectors == 40 and r.labels == "original predictions"
    assert np.all(r.margins_original >= 0)  # labels are f's own predictions
    again = htcore.noise_stability(f, g, X, max_samples=40, seed=1)
    np.testing.assert_array_equal(r.margins_compressed, again.margins_compressed)
    text = json.dumps(r.as_dict(), allow_nan=False)
    assert "frobenius_ratio" in text and "contraction_max" in text
    assert r.as_dict()["layers"][1]["contraction_max"] is None  # NaN -> None
    df = r.to_pandas()
    assert list(df["name"]) == ["layers.0", "layers.2"] and "cushion_median" in df
    assert r["layers.2"] is r.layers[1] and len(r) == 2
    with pytest.raises(KeyError, match="layers.1"):
        r["layers.1"]
    assert "layers.0" in r.to_markdown() and "Frobenius" in r.summary()
    paths = r.plot(tmp_path)
    assert paths == [str(tmp_path / "noise_stability.png")] and (tmp_path / "noise_stability.png").stat().st_size > 1000
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pandas"):
        r.to_pandas()


def test_stability_section(tmp_path):
    f, g = _hand_built()
    X = np.array([[1.0, 1.0], [2.0, -1.0], [0.5, 3.0]])
    r = htcore.noise_stability(f, g, X)
    res = htcore.resilience({"dense": f, "compressed": g}, X, np.array([0, 0, 1]), trials=1)
    s = htcore.measure.stability_section(r, res, tmp_path)
    assert len(s["tables"]) == 2 and len(s["tables"][0]) == 2 and s["tables"][0][0]["layer"] == "layers.0"
    assert [p for p, _ in s["figures"]] == [str(tmp_path / "noise_stability.png"), str(tmp_path / "resilience.png")]
    assert "| layers.2 |" in s["markdown"] and "Accuracy under weight noise" in s["markdown"]
    json.dumps(s["json"], allow_nan=False)
    assert htcore.measure.stability_section(r)["figures"] == []
    # the fields are those of the demo report's Section: the lead's wiring is one line
    from htcore.demo._html_report import Section, write_html

    write_html(tmp_path / "report.html", "t", [Section(**{k: s[k] for k in ("title", "paragraphs", "tables", "figures")})])
    page = (tmp_path / "report.html").read_text()
    assert s["title"] in page and "rel. error median" in page and "data:image/png;base64" in page


def test_bad_inputs():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    g = htcore.compress(f, keep=0.5)
    X = np.zeros((10, 4))
    X[:, 0] = 1
    with pytest.raises(ValueError, match=r"X must be \(batch, 4\)"):
        htcore.noise_stability(f, g, np.ones((10, 5)))
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="X contains 1 non-finite"):
        htcore.noise_stability(f, g, bad)
    with pytest.raises(ValueError, match="do not correspond at layer 0"):
        htcore.noise_stability(f, nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), X)
    with pytest.raises(ValueError, match="do not correspond at layer 1"):
        htcore.noise_stability(f, nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), X)
    with pytest.raises(ValueError, match="2 vs 3 layers"):
        htcore.noise_stability(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), f, X)
    with pytest.raises(TypeError, match="original must be a torch.nn.Sequential"):
        htcore.noise_stability(nn.Linear(4, 3), g, X)
    with pytest.raises(TypeError, match="compressed must be"):
        htcore.noise_stability(f, "model.safetensors", X)
    with pytest.raises(ValueError, match="y must be integer labels of shape"):
        htcore.noise_stability(f, g, X, np.zeros(3, int))
    with pytest.raises(ValueError, match=r"y labels must lie in \[0, 3\)"):
        htcore.noise_stability(f, g, X, np.full(10, 3))
    with pytest.raises(ValueError, match="max_samples must be >= 1"):
        htcore.noise_stability(f, g, X, max_samples=0)
    with pytest.raises(ValueError, match="has no Linear or Conv2d"):
        htcore.noise_stability(nn.Sequential(nn.ReLU()), nn.Sequential(nn.ReLU()), X)
    with pytest.raises(ValueError, match="output must be"):
        htcore.noise_stability(nn.Sequential(nn.Conv2d(1, 2, 3)), nn.Sequential(nn.Conv2d(1, 2, 3)), np.ones((2, 1, 5, 5)))
    with pytest.raises(ValueError, match=r"X must be \(batch, 1, H, W\)"):
        htcore.noise_stability(nn.Sequential(nn.Conv2d(1, 2, 3)), nn.Sequential(nn.Conv2d(1, 2, 3)), np.ones((2, 25)))
    W = np.ones((3, 4))
    with pytest.raises(ValueError, match="compressed_weight has shape"):
        htcore.layer_stability(W, np.ones((4, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"inputs must be \(n, 4\)"):
        htcore.layer_stability(W, W, np.ones((2, 3)))
    with pytest.raises(ValueError, match="inputs contains"):
        htcore.layer_stability(W, W, np.full((2, 4), np.inf))
    with pytest.raises(ValueError, match="probes must be >= 1"):
        htcore.layer_stability(W, W, np.ones((2, 4)), probes=0)


def test_without_torch_the_error_names_it(monkeypatch):
    f, g = _hand_built()
    runtime_f = CompressedModel.from_torch(f)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="need torch"):
        htcore.noise_stability(runtime_f, g, np.ones((2, 2)))
    with pytest.raises(ImportError, match="need torch"):
        htcore.resilience({"g": g}, np.ones((2, 2)), np.zeros(2, int))
    with pytest.raises(ImportError, match="need torch"):
        htcore.layer_stability(np.ones((2, 2)), np.ones((2, 2)), np.ones((3, 2)))
