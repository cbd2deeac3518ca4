"""`compress`, `compress_grid`, `certify` and `search_bound` on convolutional networks: a conv weight
(out, in/groups, kh, kw) is compressed as the matrix (out, in/groups*kh*kw), checked against a numpy
top-k reference; per-layer keeps by name and glob pattern; image training data; `train_classifier`."""
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import htcore  # noqa: E402
from htcore.compression import compress, compress_grid, layer_names  # noqa: E402
from htcore.runtime import Conv2d, Linear  # noqa: E402
from htcore.train import as_training_tensors, train_classifier  # noqa: E402


def small_cnn(seed=0, groups=1):
    """(n, 2, 10, 10) -> 4 scores; named stages so that glob patterns have something to match."""
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(4, 6, 3, stride=1, dilation=1, groups=groups), nn.ReLU())
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(6 * 3 * 3, 4))
    return nn.Sequential(OrderedDict(features=features, classifier=classifier)).eval()


@pytest.fixture(scope="module")
def images():
    """A learnable toy task: the class is the quadrant holding the brightest pixel of channel 0."""
    rng = np.random.default_rng(0)
    X = rng.random((192, 2, 10, 10), dtype=np.float32)
    flat = X[:, 0].reshape(192, -1).argmax(axis=1)
    y = (flat // 10 >= 5) * 2 + (flat % 10 >= 5)
    return X, y.astype(np.int64)


def topk_mask(matrix, k):
    """Reference top-k: largest |w| first, ties by lowest flat (row-major) index."""
    order = np.lexsort((np.arange(matrix.size), -np.abs(matrix).ravel()))
    mask = np.zeros(matrix.size, bool)
    mask[order[:k]] = True
    return mask.reshape(matrix.shape)


def weight_layers(g):
    return [layer for layer in g.layers if isinstance(layer, (Conv2d, Linear))]


def test_layer_names_are_the_linear_and_conv_modules():
    assert layer_names(small_cnn()) == ["features.0", "features.3", "classifier.1"]


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_compress_is_the_top_k_of_the_reshaped_matrix_and_matches_the_masked_net(images, groups):
    model = small_cnn(groups=groups)
    with torch.no_grad():  # ties: round the first conv to a few values so that |w| repeats
        model.features[0].weight.copy_(torch.round(model.features[0].weight * 8) / 8)
    keeps = {"features.0": 0.3, "features.3": 0.5, "classifier.1": 0.25}
    g = compress(model, per_layer=keeps)
    masked = small_cnn(groups=groups)
    masked.load_state_dict(model.state_dict())
    modules = dict(model.named_modules())
    for (name, keep), layer in zip(keeps.items(), weight_layers(g)):
        w = modules[name].weight.detach().numpy()
        matrix = w.reshape(w.shape[0], -1)
        mask = topk_mask(matrix, int(np.ceil(keep * matrix.size)))
        assert layer.sparse and layer.weight.shape == matrix.shape
        np.testing.assert_array_equal(layer.weight.todense(), np.where(mask, matrix, 0))
        with torch.no_grad():
            dict(masked.named_modules())[name].weight.mul_(torch.from_numpy(mask.reshape(w.shape).astype(np.float32)))
    X = images[0][:32]
    with torch.no_grad():
        expected = masked(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(g(X), expected, rtol=1e-4, atol=1e-5)
    assert g.metadata["compress"]["keep"] == keeps


def test_finetune_keeps_each_mask_and_codebook_has_at_most_levels_values(images):
    model = small_cnn()
    plain = compress(model, keep=0.4)
    tuned = compress(model, keep=0.4, levels=3, finetune=dict(epochs=2, codebook_epochs=2, lr=1e-2, batch_size=32),
                     train_data=images)
    for a, b in zip(weight_layers(plain), weight_layers(tuned)):
        np.testing.assert_array_equal(a.weight.indptr, b.weight.indptr)
        np.testing.assert_array_equal(a.weight.indices, b.weight.indices)
        assert b.weight.codebook is not None and b.weight.codebook.size <= 3
        assert np.unique(b.weight.values()).size <= 3
        assert not np.allclose(b.weight.values(), a.weight.values())  # trained, not merely rounded
    again = compress(model, keep=0.4, levels=3, finetune=dict(epochs=2, codebook_epochs=2, lr=1e-2, batch_size=32),
                     train_data=images)
    np.testing.assert_array_equal(again(images[0]), tuned(images[0]))  # seeded
    assert np.array_equal(model.features[0].weight.detach().numpy(), small_cnn().features[0].weight.detach().numpy())


def test_finetuning_lowers_the_training_error(images):
    X, y = images
    model = small_cnn()
    before = compress(model, keep=0.5)
    after = compress(model, keep=0.5, finetune=dict(epochs=15, lr=1e-2, batch_size=32), train_data=images)
    assert np.mean(after.predict(X) != y) < np.mean(before.predict(X) != y)


def test_glob_patterns_and_which_rule_wins():
    model = small_cnn()
    rules = {"*": 0.9, "features.*": 0.5, "classifier.1": 0.2, "features.[0-9]": 0.3}
    g = compress(model, keep=1.0, per_layer=rules)
    # keep, then patterns in the mapping's order (the later "features.[0-9]" overrides "features.*"),
    # then exact names, whatever their position in the mapping
    assert g.metadata["compress"]["keep"] == {"features.0": 0.3, "features.3": 0.3, "classifier.1": 0.2}
    nnz = [layer.weight.nnz for layer in weight_layers(g)]
    assert nnz == [int(np.ceil(0.3 * 72)), int(np.ceil(0.3 * 216)), int(np.ceil(0.2 * 216))]
    only_convs = compress(model, per_layer={"features.*": 0.5})
    assert [layer.sparse for layer in weight_layers(only_convs)] == [True, True, False]  # the rest stays dense


@pytest.mark.parametrize("kwargs, match", [
    (dict(per_layer={"layer*.conv*": 0.5}), r"'layer\*.conv\*' names no Linear or Conv2d layer .*'features.0'"),
    (dict(per_layer={"features.1": 0.5}), r"names no Linear or Conv2d layer"),  # the ReLU: not a weight layer
    (dict(per_layer={"features.*": 1.5}), r"per_layer\['features.\*'\]"),
    (dict(per_layer={"features.0": 0.0}), r"per_layer\['features.0'\]"),
])
def test_bad_keeps_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compress(small_cnn(), **kwargs)


def test_image_data_of_the_wrong_shape_is_refused_before_training(images):
    X, y = images
    finetune = dict(epochs=1)
    with pytest.raises(ValueError, match=r"does not fit the model \(its first Conv2d takes \(n, 2, H, W\) images\)"):
        compress(small_cnn(), keep=0.5, finetune=finetune, train_data=(X[:, :1], y))
    with pytest.raises(ValueError, match=r"does not fit the model"):
        compress(small_cnn(), keep=0.5, finetune=finetune, train_data=(X.reshape(len(X), -1), y))
    with pytest.raises(ValueError, match=r"must be 2-D or 4-D"):
        compress(small_cnn(), keep=0.5, finetune=finetune, train_data=(X[:, 0], y))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        compress(small_cnn(), keep=0.5, finetune=finetune, train_data=(X, y + 1))


def test_certify_a_compressed_cnn(images):
    X, y = images
    model = small_cnn()
    g = compress(model, keep=0.5, levels=4, bias_precision="float16")
    report = htcore.certify(g, X, y, original=model, X_test=X[:50], y_test=y[:50])
    assert report.train_error == np.mean(g.predict(X) != y)
    assert report.code_bits == htcore.code_length(g).total_bits
    assert report.code.nnz == sum(layer.weight.nnz for layer in weight_layers(g)) + 4 + 6 + 4  # kept + biases
    with torch.no_grad():
        f = model(torch.from_numpy(X)).numpy()
    assert report.gamma == pytest.approx(np.max(np.abs(f - g(X))), rel=1e-6)
    assert report.train_error <= report.kl <= 1


def test_search_bound_on_a_cnn_charges_the_grid_and_equals_compress_grid(images):
    X, y = images
    model = small_cnn()
    grid = [dict(keep=0.3, levels=2), dict(keep=0.3, levels=4), dict(per_layer={"features.*": 0.6}, levels=4)]
    finetune = dict(epochs=1, codebook_epochs=1, batch_size=64)
    result = htcore.search_bound(model, X, y, grid=grid, finetune=finetune)
    assert [r.code.search_bits for r in result.reports] == [2, 2, 2]
    assert result.best_index == int(np.argmin([r.kl for r in result.reports]))
    for (_, g), report in zip(compress_grid(model, grid, finetune=finetune, train_data=images), result.reports):
        assert report.code_bits == htcore.code_length(g, settings_tried=3).total_bits
        assert report.train_error == np.mean(g.predict(X) != y)


def test_train_classifier_is_seeded_trains_batchnorm_and_returns_eval_mode(images):
    X, y = images

    def net():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, 4))

    a = train_classifier(net(), X, y, epochs=2, lr=1e-2, batch_size=32, seed=3)
    b = train_classifier(net(), X, y, epochs=2, lr=1e-2, batch_size=32, seed=3)
    assert not a.training and not a[1].training
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a[1].running_mean, torch.zeros(4))  # statistics were updated in train mode
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        train_classifier(net(), X, y, lr=float("nan"))


def test_as_training_tensors_checks_images_against_the_model(images):
    X, y = images
    Xt, yt = as_training_tensors(X, y, model=small_cnn())
    assert Xt.shape == X.shape and Xt.dtype == torch.float32 and yt.dtype == torch.int64
    model = small_cnn().train()
    with pytest.raises(ValueError, match="does not fit the model"):
        as_training_tensors(X[:, :, :4, :4], y, model=model)
    assert model.training  # the trial forward pass restores the mode


class Residual(nn.Module):
    """A traced graph (not a Sequential): conv + BatchNorm stem, a residual block, global pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.block(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def residual_net():
    torch.manual_seed(2)
    model = Residual()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_a_graph_model_with_batchnorm_compresses_saves_and_matches_the_masked_net(images, tmp_path):
    X, y = images
    model = residual_net()
    g = compress(model, per_layer={"block.*": 0.5, "stem": 0.75}, input_shape=(2, 10, 10))
    assert g.is_graph and g.input_shape == (2, 10, 10)
    masked = residual_net()
    for name, keep in {"stem": 0.75, "block.0": 0.5, "block.2": 0.5}.items():
        w = dict(masked.named_modules())[name].weight
        matrix = w.detach().numpy().reshape(w.shape[0], -1)
        mask = topk_mask(matrix, int(np.ceil(keep * matrix.size)))
        with torch.no_grad():
            w.mul_(torch.from_numpy(mask.reshape(w.shape).astype(np.float32)))
    with torch.no_grad():
        expected = masked(torch.from_numpy(X[:16])).numpy()
    np.testing.assert_allclose(g(X[:16]), expected, rtol=1e-4, atol=1e-5)
    htcore.save_compressed(tmp_path / "g.safetensors", g)
    np.testing.assert_array_equal(htcore.load_compressed(tmp_path / "g.safetensors")(X[:16]), g(X[:16]))


def test_finetuning_a_batchnorm_net_trains_a_copy_and_converts_in_eval_mode(images):
    X, y = images
    model = residual_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = compress(model, keep=0.5, levels=4, finetune=dict(epochs=1, codebook_epochs=1, batch_size=48), train_data=images)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics of the input model untouched
    assert g.input_shape == (2, 10, 10)  # from the training data
    report = htcore.certify(g, X, y)  # deterministic: eval-mode BatchNorm in the converted net
    assert report.train_error == htcore.certify(g, X, y).train_error == np.mean(g.predict(X) != y)
