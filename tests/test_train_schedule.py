"""Learning-rate schedules of `htcore.train.fit` (constant, cosine), threaded through
`train_classifier` and `compress`'s fine-tuning options (``schedule``, ``codebook_lr``), and the
search charge of `search_bound` (``settings_tried``)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from htcore import compress, search_bound  # noqa: E402
from htcore.sparse import CSRMatrix  # noqa: E402
from htcore.train import fit, train_classifier  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task():
    """A learnable toy task: the class is the index of the largest of the first three features."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 12)).astype(np.float32)
    return X, X[:, :3].argmax(axis=1).astype(np.int64)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def rates_of_fit(monkeypatch, task, **kwargs):
    """The learning rate of every optimiser step `fit` takes."""
    rates = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    model = mlp()
    X, y = (torch.from_numpy(a) for a in task)
    fit(model, list(model.parameters()), X, y, seed=0, **kwargs)
    return rates


@pytest.mark.parametrize("epochs, batch_size", [(1, 200), (3, 64), (2, 7)])
def test_cosine_anneals_from_lr_to_zero_over_every_step(monkeypatch, task, epochs, batch_size):
    rates = rates_of_fit(monkeypatch, task, epochs=epochs, lr=0.1, batch_size=batch_size, schedule="cosine")
    steps = epochs * math.ceil(200 / batch_size)
    assert len(rates) == steps
    expected = [0.1 * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12, atol=1e-15)


def test_constant_is_the_default_and_keeps_lr(monkeypatch, task):
    assert rates_of_fit(monkeypatch, task, epochs=2, lr=0.05, batch_size=64) == [0.05] * 8


@pytest.mark.parametrize("schedule", ["linear", "Cosine", None, 1])
def test_unknown_schedules_are_refused_by_name(task, schedule):
    X, y = task
    with pytest.raises(ValueError, match="schedule must be one of"):
        train_classifier(mlp(), X, y, epochs=1, schedule=schedule)
    with pytest.raises(ValueError, match=r"finetune\['schedule'\] must be one of"):
        compress(mlp(), keep=0.5, finetune=dict(epochs=1, schedule=schedule), train_data=task)


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), True, "1e-3"])
def test_bad_codebook_lr_is_refused(task, lr):
    with pytest.raises(ValueError, match=r"finetune\['codebook_lr'\]"):
        compress(mlp(), keep=0.5, levels=4, finetune=dict(epochs=1, codebook_lr=lr), train_data=task)


def error(g, task):
    X, y = task
    return float(np.mean(np.asarray(g(X)).argmax(1) != y))


def test_cosine_training_is_seeded_learns_and_differs_from_constant(task):
    X, y = task
    a = train_classifier(mlp(), X, y, epochs=15, lr=2e-2, batch_size=32, schedule="cosine")
    b = train_classifier(mlp(), X, y, epochs=15, lr=2e-2, batch_size=32, schedule="cosine")
    c = train_classifier(mlp(), X, y, epochs=15, lr=2e-2, batch_size=32)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    with torch.no_grad():
        assert np.mean(a(torch.from_numpy(X)).argmax(1).numpy() != y) < 0.2


def sparse_weights(g):
    return [layer.weight for layer in g.layers if isinstance(getattr(layer, "weight", None), CSRMatrix)]


def test_cosine_finetuning_keeps_the_mask_and_codebook_lr_changes_only_the_codebook_stage(task):
    dense = train_classifier(mlp(), *task, epochs=10, lr=2e-2, batch_size=32)
    tune = dict(epochs=4, lr=1e-2, batch_size=32, codebook_epochs=2, schedule="cosine")
    plain = compress(dense, keep=0.3)
    cosine = compress(dense, keep=0.3, finetune=tune, train_data=task)
    assert error(cosine, task) < error(plain, task)
    constant = compress(dense, keep=0.3, finetune={**tune, "schedule": "constant"}, train_data=task)
    assert not all(np.array_equal(a.data, b.data) for a, b in zip(sparse_weights(cosine), sparse_weights(constant)))

    default = compress(dense, keep=0.3, levels=4, finetune=tune, train_data=task)
    same = compress(dense, keep=0.3, levels=4, finetune={**tune, "codebook_lr": 1e-2}, train_data=task)
    slow = compress(dense, keep=0.3, levels=4, finetune={**tune, "codebook_lr": 1e-4}, train_data=task)
    frozen = compress(dense, keep=0.3, levels=4, finetune={**tune, "codebook_epochs": 0}, train_data=task)
    assert default.metadata["compress"]["finetune"]["codebook_lr"] == 1e-2
    assert slow.metadata["compress"]["finetune"]["schedule"] == "cosine"
    for d, s, lo, fr, p in zip(*map(sparse_weights, (default, same, slow, frozen, plain))):
        for w in (d, s, lo, fr):
            np.testing.assert_array_equal(w.indices, p.indices)
            np.testing.assert_array_equal(w.indptr, p.indptr)
        np.testing.assert_array_equal(d.codebook, s.codebook)
        np.testing.assert_array_equal(lo.data, fr.data)  # same assignments: the masked stage did not change
        # a 100x smaller rate moves the codebook from its k-means start far less than the default one
        assert np.abs(lo.codebook - fr.codebook).max() < np.abs(d.codebook - fr.codebook).max()


def test_search_bound_charges_every_setting_tried(task):
    grid = [dict(keep=0.3), dict(keep=0.5)]
    own = search_bound(mlp(), *task, grid=grid, with_original=False)
    wider = search_bound(mlp(), *task, grid=grid, with_original=False, settings_tried=17)
    assert [r.code.search_bits for r in own.reports] == [1, 1]
    assert [r.code.search_bits for r in wider.reports] == [5, 5]
    assert all(w.code_bits == o.code_bits + 4 and w.kl >= o.kl for w, o in zip(wider.reports, own.reports))
    with pytest.raises(ValueError, match="settings_tried must be >= 2"):
        search_bound(mlp(), *task, grid=grid, settings_tried=1)


def masked_count(g):
    return [int(np.diff(w.indptr).sum()) for w in sparse_weights(g)]


def test_gradual_pruning_ends_at_the_target_keep_and_one_epoch_is_one_shot_pruning(task):
    dense = train_classifier(mlp(), *task, epochs=10, lr=2e-2, batch_size=32)
    tune = dict(epochs=5, lr=1e-2, batch_size=32)
    once = compress(dense, keep=0.2, finetune=tune, train_data=task)
    same = compress(dense, keep=0.2, finetune={**tune, "prune_epochs": 1}, train_data=task)
    gradual = compress(dense, keep=0.2, finetune={**tune, "prune_epochs": 4}, train_data=task)
    again = compress(dense, keep=0.2, finetune={**tune, "prune_epochs": 4}, train_data=task)
    assert masked_count(gradual) == masked_count(once) == [math.ceil(0.2 * 12 * 16), math.ceil(0.2 * 16 * 3)]
    for a, b, c, d in zip(*map(sparse_weights, (once, same, gradual, again))):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(c.indices, d.indices)
        np.testing.assert_array_equal(c.data, d.data)
        assert np.all(c.data != 0)  # every kept weight trained; none is a leftover zero
    # the weights picked at the end differ from the dense net's top-k: pruning followed the training
    assert any(not np.array_equal(a.indices, c.indices) for a, c in zip(sparse_weights(once), sparse_weights(gradual)))
    assert error(gradual, task) <= error(compress(dense, keep=0.2), task)


@pytest.mark.parametrize("finetune, match", [
    (dict(epochs=3, prune_epochs=4), r"finetune\['prune_epochs'\] must be <= 3"),
    (dict(epochs=3, prune_epochs=0), r"finetune\['prune_epochs'\] must be >= 1"),
    (dict(epochs=0, prune_epochs=2), r"finetune\['prune_epochs'\] must be <= 1"),
])
def test_bad_prune_epochs_are_refused(task, finetune, match):
    with pytest.raises(ValueError, match=match):
        compress(mlp(), keep=0.5, finetune=finetune, train_data=task)
