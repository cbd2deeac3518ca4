import math

import numpy as np
import pytest

from htcore import bounds
from htcore.certification import code_length
from htcore.compression import kmeans_1d

torch = pytest.importorskip("torch")
nn = torch.nn
torch.set_num_threads(1)  # tiny models: threads only add contention on the shared CI cores


# ---- k-means ----------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [1, 2, 3, 8, 16])
def test_kmeans_is_a_lloyd_fixed_point(levels):
    values = np.random.default_rng(levels).standard_t(3, size=2000)
    book, assign = kmeans_1d(values, levels)
    assert book.size <= levels and np.all(np.diff(book) > 0)
    # every value sits with its nearest centre, every centre is the mean of its cluster
    nearest = np.abs(values[:, None] - book[None]).argmin(axis=1)
    np.testing.assert_array_equal(assign, nearest)
    for j, centre in enumerate(book):
        assert centre == pytest.approx(values[assign == j].mean(), rel=1e-12, abs=1e-12)


def test_kmeans_matches_sklearn_from_the_same_init():
    from sklearn.cluster import KMeans

    values = np.random.default_rng(0).laplace(size=3000)
    book, _ = kmeans_1d(values, 8)
    init = np.quantile(values, (np.arange(8) + 0.5) / 8)[:, None]
    ref = KMeans(8, init=init, n_init=1, tol=0, max_iter=1000, algorithm="lloyd").fit(values[:, None])
    np.testing.assert_allclose(np.sort(ref.cluster_centers_.ravel()), book, rtol=1e-9, atol=1e-12)


def test_kmeans_edges():
    book, assign = kmeans_1d([1.0, 1.0, 2.0, 5.0], 8)  # fewer distinct values than levels: exact
    np.testing.assert_array_equal(book[assign], [1.0, 1.0, 2.0, 5.0])
    book, assign = kmeans_1d([3.0, 1.0, 2.0], 1)
    assert book.tolist() == [2.0] and assign.tolist() == [0, 0, 0]
    assert kmeans_1d([], 4)[0].size == 0
    with pytest.raises(ValueError, match="non-finite"):
        kmeans_1d([1.0, np.nan], 2)
    with pytest.raises(ValueError, match="levels must be >= 1"):
        kmeans_1d([1.0], 0)


# ---- compress and certify on a small real problem (scikit-learn digits) -------------------------

@pytest.fixture(scope="module")
def digits():
    from htcore.datasets import load_digits

    return load_digits()


@pytest.fixture(scope="module")
def mlp(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    X, y = torch.from_numpy(digits.X_train), torch.from_numpy(digits.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval()


def topk_mask(weight, keep):
    """Reference: the ceil(keep n) largest |w|, ties by lowest flat index."""
    flat = np.abs(weight).ravel()
    k = math.ceil(keep * flat.size)
    order = np.lexsort((np.arange(flat.size), -flat))[:k]
    mask = np.zeros(flat.size, bool)
    mask[order] = True
    return mask.reshape(weight.shape)


def sparse_weights(compressed):
    from htcore.sparse import CSRMatrix

    return [layer.weight for layer in compressed.layers if isinstance(getattr(layer, "weight", None), CSRMatrix)]


def test_compress_keeps_the_top_k_and_matches_the_masked_torch_net(mlp, digits):
    from htcore import compress

    before = [p.detach().clone() for p in mlp.parameters()]
    g = compress(mlp, keep=0.1, per_layer={2: 0.5})
    w1, w2 = sparse_weights(g)
    for w, lin, keep in ((w1, mlp[0], 0.1), (w2, mlp[2], 0.5)):
        ref = lin.weight.detach().numpy()
        mask = topk_mask(ref, keep)
        assert w.nnz == math.ceil(keep * ref.size)
        np.testing.assert_array_equal(w.todense() != 0, mask)
        np.testing.assert_array_equal(w.todense(), np.where(mask, ref, 0))
    masked = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    masked.load_state_dict(mlp.state_dict())
    with torch.no_grad():
        masked[0].weight.copy_(torch.from_numpy(w1.todense()))
        masked[2].weight.copy_(torch.from_numpy(w2.todense()))
        ref_out = masked(torch.from_numpy(digits.X_test)).numpy()
    np.testing.assert_allclose(np.asarray(g(digits.X_test)), ref_out, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, mlp.parameters()))  # input untouched


def test_quantised_layers_hold_at_most_levels_values(mlp):
    from htcore import compress

    g = compress(mlp, keep=0.2, levels=4)
    for w, lin in zip(sparse_weights(g), (mlp[0], mlp[2])):
        assert w.data.dtype == np.uint8 and w.codebook.dtype == np.float32 and 1 < w.codebook.size <= 4
        # the codebook is k-means of the kept values: same support as top-k, each value mapped to its nearest level
        kept = lin.weight.detach().numpy()[topk_mask(lin.weight.detach().numpy(), 0.2)]
        np.testing.assert_array_equal(w.data, np.abs(kept[:, None] - w.codebook[None]).argmin(axis=1))
        assert all(t.levels <= 4 for t in code_length(g).tensors if t.kind == "sparse")


def test_float16_biases_are_charged_16_bits(mlp):
    from htcore import compress

    full = code_length(compress(mlp, keep=0.2))
    half_model = compress(mlp, keep=0.2, bias_precision="float16")
    half = code_length(half_model)
    biases = [t for t in half.tensors if t.name.endswith("bias")]
    assert [t.values_code for t in biases] == ["float16", "float16"]
    assert full.total_bits - half.total_bits >= 16 * (32 + 10) - 2
    np.testing.assert_allclose(half_model.layers[0].bias, mlp[0].bias.detach().numpy(), rtol=1e-3, atol=1e-4)


def test_finetune_keeps_the_mask_lowers_the_error_and_is_reproducible(mlp, digits):
    from htcore import compress

    data = (digits.X_train, digits.y_train)
    plain = compress(mlp, keep=0.05)
    tuned = compress(mlp, keep=0.05, finetune=dict(epochs=8, lr=3e-3, batch_size=256), train_data=data)
    again = compress(mlp, keep=0.05, finetune=dict(epochs=8, lr=3e-3, batch_size=256), train_data=data)
    for a, b, c in zip(sparse_weights(plain), sparse_weights(tuned), sparse_weights(again)):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(b.data, c.data)
    err = lambda g: np.mean(np.asarray(g(digits.X_train)).argmax(1) != digits.y_train)
    assert err(tuned) < err(plain)
    quant = compress(mlp, keep=0.05, levels=4, finetune=dict(epochs=8, lr=3e-3, batch_size=256, codebook_epochs=2),
                     train_data=data)
    for a, b in zip(sparse_weights(plain), sparse_weights(quant)):
        np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(), ValueError, "keep= .* per_layer="),
        (dict(keep=0.0), ValueError, "keep must be in"),
        (dict(per_layer={"7": 0.5}), ValueError, "names no Linear or Conv2d layer"),
        (dict(keep=0.1, levels=0), ValueError, "levels must be >= 1"),
        (dict(keep=0.1, bias_precision="int8"), ValueError, "bias_precision"),
        (dict(keep=0.1, finetune=dict(epochs=1)), ValueError, "train_data"),
        (dict(keep=0.1, finetune=dict(epoch=1), train_data=([[0.0]], [0])), ValueError, "unknown keys"),
    ],
)
def test_compress_validation(mlp, kwargs, exc, match):
    from htcore import compress

    with pytest.raises(exc, match=match):
        compress(mlp, **kwargs)
    with pytest.raises(TypeError, match="nn.Sequential"):
        compress(nn.Linear(3, 3), keep=0.5)


def test_certify_report_is_consistent(mlp, digits):
    from htcore import certify, compress
    from htcore.certification import margin_error

    g = compress(mlp, keep=0.1, per_layer={"2": 0.5}, levels=8)
    rep = certify(g, digits.X_train, digits.y_train, original=mlp, X_test=digits.X_test, y_test=digits.y_test,
                  settings_tried=6)
    g_out = np.asarray(g(digits.X_train))
    with torch.no_grad():
        f_out = mlp(torch.from_numpy(digits.X_train)).numpy()
    m = digits.y_train.size
    assert rep.m == m
    assert rep.train_error == pytest.approx(np.mean(g_out.argmax(1) != digits.y_train))
    assert rep.code_bits == code_length(g, settings_tried=6).total_bits
    assert rep.code.search_bits == 3
    for form in bounds.FORMS:
        assert getattr(rep, form) == pytest.approx(bounds.occam_bound(rep.train_error, m, rep.code_bits, 0.05, form=form))
    assert rep.gamma == pytest.approx(np.abs(f_out - g_out).max(), rel=1e-5)
    assert rep.margin_error == pytest.approx(margin_error(f_out, digits.y_train, 2 * rep.gamma), abs=1 / m)
    assert rep.train_error <= rep.margin_error + 1 / m  # Arora et al.'s lemma: g's error <= f's 2gamma-margin error
    assert rep.arora == pytest.approx(bounds.arora_bound(rep.arora_q, rep.arora_r, m, rep.margin_error))
    assert rep.tighter in ("arora", "direct")
    assert rep.test_error == pytest.approx(np.mean(np.asarray(g(digits.X_test)).argmax(1) != digits.y_test))
    assert "kl" in rep.summary() and rep.as_dict()["code"]["total_bits"] == rep.code_bits
    lower = "Arora et al.'s" if rep.tighter == "arora" else "the kl bound"
    assert f"lower of the two: {lower} ({min(rep.arora, rep.kl):.4f}" in rep.summary()
    assert "tighter" not in rep.summary()  # the field's value ("direct") is not a word a reader knows


def test_certify_validation(mlp, digits):
    from htcore import certify, compress

    g = compress(mlp, keep=0.2)
    with pytest.raises(ValueError, match="labels must lie in"):
        certify(g, digits.X_train, digits.y_train + 5)
    with pytest.raises(ValueError, match="y_train must be integer labels"):
        certify(g, digits.X_train, digits.y_train[:10])
    with pytest.raises(ValueError, match="delta"):
        certify(g, digits.X_train, digits.y_train, delta=0.0)


def test_margin_error_reference():
    from htcore.certification import margin_error

    scores = np.array([[3.0, 1.0, 0.0], [1.0, 1.5, 0.0], [2.0, 2.0, 0.0]])
    y = np.array([0, 0, 0])
    assert margin_error(scores, y, 0.0) == pytest.approx(2 / 3)  # a tie counts as an error
    assert margin_error(scores, y, 2.5) == 1.0
    assert margin_error(scores, y, -1.0) == 0.0
    assert margin_error(scores, y, 1.5) == pytest.approx(2 / 3)


def test_search_bound_charges_the_grid_and_returns_the_tightest(mlp, digits):
    from htcore import search_bound

    grid = [dict(keep=0.05), dict(keep=0.2), dict(per_layer={"0": 0.1, "2": 0.5}, levels=8)]
    res = search_bound(mlp, digits.X_train, digits.y_train, grid=grid, with_original=False)
    assert len(res.reports) == 3 and all(r.code.search_bits == 2 for r in res.reports)
    assert res.best.kl == min(r.kl for r in res.reports)
    assert res.best_settings == grid[res.best_index]


def test_compress_grid_equals_separate_calls(mlp, digits):
    from htcore import compress
    from htcore.compression import compress_grid

    data = (digits.X_train, digits.y_train)
    tune = dict(epochs=2, lr=3e-3, batch_size=256)
    grid = [dict(keep=0.1, levels=2), dict(keep=0.1, levels=4, bias_precision="float16"), dict(keep=0.1, finetune=None)]
    for settings, got in compress_grid(mlp, grid, finetune=tune, train_data=data):
        ref = compress(mlp, **{"finetune": tune, **settings}, train_data=data)
        for a, b in zip(got.layers, ref.layers):
            if hasattr(a, "weight"):
                np.testing.assert_array_equal(np.asarray(a.bias), np.asarray(b.bias))
                np.testing.assert_array_equal(a.weight.data, b.weight.data)
                np.testing.assert_array_equal(a.weight.indices, b.weight.indices)


def test_train_mlp_is_seeded_and_learns(digits):
    from htcore.train import train_mlp

    a = train_mlp(digits.X_train, digits.y_train, hidden=(8,), epochs=5, lr=1e-2, seed=3)
    b = train_mlp(digits.X_train, digits.y_train, hidden=(8,), epochs=5, lr=1e-2, seed=3)
    assert [type(m).__name__ for m in a] == ["Linear", "ReLU", "Linear"] and a[2].out_features == 10
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with torch.no_grad():
        err = np.mean(a(torch.from_numpy(digits.X_test)).argmax(1).numpy() != digits.y_test)
    assert err < 0.3
    with pytest.raises(ValueError, match="integer labels"):
        train_mlp(digits.X_train, digits.y_train[:5])


def test_nested_sequential_with_dropout_maps_layers_by_name(digits, tmp_path):
    from htcore import compress, load_compressed, save_compressed

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.1), nn.Sequential(nn.Linear(16, 10))).eval()
    g = compress(model, per_layer={"3.0": 0.5}, levels=4)
    first, last = [layer for layer in g.layers if hasattr(layer, "weight")]
    np.testing.assert_array_equal(first.weight, model[0].weight.detach().numpy())  # left dense
    mask = topk_mask(model[3][0].weight.detach().numpy(), 0.5)
    np.testing.assert_array_equal(last.weight.todense() != 0, mask)
    # the file keeps the codebook storage and so the code length
    save_compressed(tmp_path / "g.safetensors", g)
    back = load_compressed(tmp_path / "g.safetensors")
    assert code_length(back).total_bits == code_length(g).total_bits
    np.testing.assert_allclose(back(digits.X_test), g(digits.X_test), rtol=1e-6, atol=1e-6)


def test_a_dense_runtime_model_compresses_like_its_torch_source(mlp, digits):
    from htcore import compress
    from htcore.runtime import CompressedModel

    a = compress(mlp, keep=0.1, levels=8)
    b = compress(CompressedModel.from_torch(mlp), keep=0.1, levels=8)
    for wa, wb in zip(sparse_weights(a), sparse_weights(b)):
        np.testing.assert_array_equal(wa.indices, wb.indices)
        np.testing.assert_array_equal(wa.codebook, wb.codebook)
    np.testing.assert_allclose(a(digits.X_test), b(digits.X_test), rtol=1e-6, atol=1e-6)


def test_cli_compress_then_bound(mlp, digits, tmp_path, capsys):
    import json

    from htcore import load_compressed, save_compressed
    from htcore.cli import main

    dense, small = tmp_path / "dense.safetensors", tmp_path / "small.safetensors"
    save_compressed(dense, mlp)
    assert main(["compress", str(dense), "-o", str(small), "--per-layer", "0=0.1", "2=0.5", "--levels", "4",
                 "--float16-biases"]) == 0
    assert "stored values" in capsys.readouterr().out
    g = load_compressed(small)
    assert code_length(g).tensors[1].values_code == "float16"
    assert main(["bound", str(small), "--data", "digits", "--original", str(dense), "--settings-tried", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["report"]
    assert out["code"]["search_bits"] == 2 and out["train_error"] <= out["kl"] <= 1 and out["gamma"] > 0
    npz = tmp_path / "d.npz"
    np.savez(npz, X_train=digits.X_train, y_train=digits.y_train)
    assert main(["bound", str(small), "--data", str(npz)]) == 0
    assert "test error" not in capsys.readouterr().out
    np.savez(npz, X_train=digits.X_train, y_train=digits.y_train, X_test=digits.X_test)
    assert main(["bound", str(small), "--data", str(npz)]) == 1
    assert "has X_test but not its pair" in capsys.readouterr().err
    assert main(["compress", str(dense), "-o", str(small), "--keep", "0.1", "--finetune-epochs", "2"]) == 2  # usage
    assert "needs --data" in capsys.readouterr().err


def test_certify_is_identical_at_1_and_2_threads(mlp, digits):
    import htcore

    g = htcore.compress(mlp, keep=0.1, per_layer={"2": 0.5}, levels=8)
    before = htcore.get_num_threads()
    try:
        reports = []
        for threads in (1, 2):
            htcore.set_num_threads(threads)
            reports.append(htcore.certify(g, digits.X_train, digits.y_train, original=mlp,
                                          X_test=digits.X_test, y_test=digits.y_test).as_dict())
    finally:
        htcore.set_num_threads(before)
    assert reports[0] == reports[1]


def test_finetune_data_that_does_not_fit_the_model_is_refused_before_training(mlp, digits):
    """Labels the model cannot output, a wrong input width or an infinite learning rate used to
    reach torch (an IndexError / RuntimeError traceback, or NaN weights); now each is a ValueError."""
    from htcore import compress

    X, y = digits.X_train[:64], digits.y_train[:64].copy()
    y[0] = 10  # the digits MLP has 10 outputs
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        compress(mlp, keep=0.1, finetune=dict(epochs=1), train_data=(X, y))
    with pytest.raises(ValueError, match=r"does not fit the model \(its first Linear takes \(n, 64\) rows\)"):
        compress(mlp, keep=0.1, finetune=dict(epochs=1), train_data=(X[:, :63], digits.y_train[:64]))
    with pytest.raises(ValueError, match="positive finite"):
        compress(mlp, keep=0.1, finetune=dict(epochs=1, lr=float("inf")), train_data=(X, digits.y_train[:64]))


def test_finetuning_with_dropout_depends_on_the_seed_alone(mlp, digits):
    # Dropout draws from torch's global generator: fine-tuning seeds it from finetune["seed"] inside a
    # forked state, so whatever the caller's generator holds, the compressed net is the same, and the
    # caller's generator is left where it was (before, the weights followed the global state).
    from htcore import compress

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    model[0].load_state_dict(mlp[0].state_dict())
    model[3].load_state_dict(mlp[2].state_dict())
    tune = {"epochs": 1, "batch_size": 64, "seed": 3}
    weights = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        g = compress(model.eval(), keep=0.3, finetune=tune, train_data=(digits.X_train, digits.y_train))
        assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(global_seed)))
        weights.append([w.todense() for w in sparse_weights(g)])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
