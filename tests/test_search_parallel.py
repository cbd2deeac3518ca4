"""`search_bound` on executors (a real 2-process Dask LocalCluster, a local process pool) equals the
serial run exactly; settings from total budgets through `htcore.allocate`; the winner returned,
saved by `htcore bound --search -o` and certified again to the same bound; the bound's text output.

Speed (the file runs in CI): the data, net and fine-tuning are tiny, so nearly all the time is worker
processes starting and importing torch. The module shares one Dask cluster, whose workers import
torch while this process trains the net and runs the serial search."""
import gc
import importlib
import json
import logging
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import htcore  # noqa: E402
from htcore.certification import search_bound  # noqa: E402
from htcore.cli import main  # noqa: E402
from htcore.compression import allocate  # noqa: E402
from htcore.measure import local_executor  # noqa: E402

FINETUNE = dict(epochs=1, codebook_epochs=1, batch_size=64, seed=3)
# two prunings (keep 0.2 / 0.4), each shared by two codebook sizes; a fifth setting with its own fine-tuning
GRID = [dict(keep=0.2, levels=4), dict(keep=0.2, levels=8, bias_precision="float16"), dict(keep=0.4, levels=4),
        dict(keep=0.4, levels=8), dict(keep=0.3, finetune=dict(epochs=1, seed=5))]


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker Dask LocalCluster's client, and futures of its workers importing torch (with
    torch._dynamo, which torch.optim imports on first use), started at once."""
    distributed = pytest.importorskip("dask.distributed", reason="Dask is the optional extra htcore[dask]")
    environ = dict(os.environ)  # Dask sets OMP_NUM_THREADS=1 & co. in this process for its workers: undo it after
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL
    ) as cluster, distributed.Client(cluster) as client:
        warm_up = [client.submit(importlib.import_module, "torch._dynamo", pure=False, workers=[worker])
                   for worker in client.scheduler_info()["workers"]]
        yield client, warm_up
        del warm_up
        client.run(gc.freeze)  # each worker exits ~1 s sooner: no final collection over torch's objects
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture(scope="module")
def client(cluster, serial):
    """The cluster's client once its workers have imported torch, which they did while this process
    ran the serial search. Nothing may reach them before: a worker unpickling a torch model while
    its task thread is still importing torch imports torch twice at once, and that fails."""
    from dask.distributed import wait

    client, warm_up = cluster
    wait(warm_up)
    return client


@pytest.fixture(scope="module")
def data():
    """Four Gaussian blobs in 16 dimensions: 240 training and 80 test rows."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.5, (4, 16))
    y = rng.integers(0, 4, 320)
    X = (centers[y] + rng.normal(0, 1.0, (320, 16))).astype(np.float32)
    return X[:240], y[:240], X[240:], y[240:]


@pytest.fixture(scope="module")
def model(data):
    """A trained MLP with Dropout, so fine-tuning draws from torch's global generator."""
    X, y, _, _ = data
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(24, 4))
    return htcore.train.train_classifier(net, X, y, epochs=2, lr=1e-2, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def serial(model, data):
    X, y, Xt, yt = data
    return search_bound(model, X, y, grid=GRID, finetune=FINETUNE, X_test=Xt, y_test=yt)


def weight_arrays(compressed):
    """Every array that defines a runtime model's function, in layer order."""
    arrays = []
    for layer in compressed.layers:
        weight = getattr(layer, "weight", None)
        if weight is not None:
            arrays += [weight.data, weight.indices, weight.indptr]
            if weight.codebook is not None:
                arrays.append(weight.codebook)
        if getattr(layer, "bias", None) is not None:
            arrays.append(np.asarray(layer.bias))
    return arrays


def assert_same_search(got, want, X):
    assert got.settings == want.settings and got.best_index == want.best_index
    # the models came back through pickle and still run on htcore's kernels
    np.testing.assert_array_equal(got.best_model(X), want.best_model(X))
    assert len(got.models) == len(want.models) == len(want.settings)
    for a, b in zip(got.reports, want.reports):
        assert a.as_dict() == b.as_dict()  # bits, every bound, errors, gamma: all exactly equal
    for a, b in zip(got.models, want.models):
        for x, z in zip(weight_arrays(a), weight_arrays(b), strict=True):
            np.testing.assert_array_equal(x, z)
        assert a.metadata == b.metadata


def test_a_dask_cluster_gives_the_serial_search(client, serial, model, data):
    X, y, Xt, yt = data
    parallel = search_bound(model, X, y, grid=GRID, finetune=FINETUNE, X_test=Xt, y_test=yt,
                            executor=client.get_executor())
    assert_same_search(parallel, serial, Xt)
    with pytest.raises(TypeError, match=r"client.get_executor\(\)"):  # the client itself is not an Executor
        search_bound(model, X, y, grid=GRID, executor=client)


def test_serial_search_returns_every_model_and_leaves_threads_and_rng_alone(serial, model, data):
    X, y, Xt, yt = data
    assert [r.code.search_bits for r in serial.reports] == [3] * 5
    assert serial.best_index == int(np.argmin([r.kl for r in serial.reports]))
    assert serial.allocations == (None,) * 5
    best = serial.best_model
    assert best.metadata["search"] == {"settings_tried": 5, "index": serial.best_index}
    again = htcore.certify(best, X, y, original=model, X_test=Xt, y_test=yt, settings_tried=5)
    assert again.as_dict() == serial.best.as_dict()  # the winner rebuilds the same bound
    # a group's pruning is shared: settings 0 and 1 keep the same positions
    np.testing.assert_array_equal(serial.models[0].layers[0].weight.indices, serial.models[1].layers[0].weight.indices)

    torch_threads, htcore_threads = torch.get_num_threads(), htcore.get_num_threads()
    state = torch.random.get_rng_state()
    again = search_bound(model, X, y, grid=GRID[:2], finetune=FINETUNE, X_test=Xt, y_test=yt)
    assert (torch.get_num_threads(), htcore.get_num_threads()) == (torch_threads, htcore_threads)
    assert torch.equal(torch.random.get_rng_state(), state)  # the search forks torch's generator
    assert [r.code.search_bits for r in again.reports] == [1, 1]
    for a, b in zip(again.models, serial.models[:2]):  # the same work as in the larger search
        for x, z in zip(weight_arrays(a), weight_arrays(b), strict=True):
            np.testing.assert_array_equal(x, z)


def test_a_local_process_pool_gives_the_serial_search(serial, model, data):
    """One worker process (spawned: its own torch, threads and RNG) is what a pool changes; two
    workers finishing out of order are the Dask test's, so this one pays one torch import, not two."""
    X, y, Xt, yt = data
    with local_executor(1) as pool:
        parallel = search_bound(model, X, y, grid=GRID, finetune=FINETUNE, X_test=Xt, y_test=yt, executor=pool)
    assert_same_search(parallel, serial, Xt)


def test_budgets_allocate_one_charged_setting_each(model, data):
    X, y, _, _ = data
    budgets = [100, 250]
    result = search_bound(model, X, y, budgets=budgets, levels=[4, None], bias_precision="float16", finetune=FINETUNE,
                          with_original=False)
    assert len(result.settings) == 4 and [r.code.search_bits for r in result.reports] == [2] * 4
    for i, (settings, compressed, allocation) in enumerate(zip(result.settings, result.models, result.allocations)):
        budget = budgets[i // 2]
        assert allocation == allocate(model, nnz=budget, method="curve")
        assert settings == dict(per_layer=dict(allocation.keep), levels=[4, None][i % 2], bias_precision="float16")
        kept = [layer.weight.nnz for layer in compressed.layers if getattr(layer, "weight", None) is not None]
        assert kept == list(allocation.k.values()) and sum(kept) == budget  # the budget, exactly
    bits = search_bound(model, X, y, budgets=[3000], budget_unit="bits", allocate_method="uniform",
                        allocate_options=dict(value_bits=8), with_original=False)
    assert bits.allocations[0] == allocate(model, bits=3000, method="uniform", value_bits=8)
    assert bits.allocations[0].bits <= 3000 and bits.settings[0]["levels"] is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one"),
    (dict(grid=[dict(keep=0.5)], budgets=[100]), "exactly one"),
    (dict(grid=[dict(keep=0.5)], levels=4), "with grid="),
    (dict(budgets=[]), "non-empty list"),
    (dict(budgets=100), "non-empty list"),
    (dict(budgets=[100], budget_unit="weights"), "budget_unit"),
    (dict(budgets=[100], allocate_options=dict(nnz=5)), "allocate_options may not set"),
    (dict(budgets=[1]), "nnz must be between"),
    (dict(grid=[dict(keep=0.5)], executor=object()), "concurrent.futures.Executor"),
])
def test_bad_search_arguments_are_named(model, data, kwargs, match):
    X, y, _, _ = data
    with pytest.raises((ValueError, TypeError), match=match):
        search_bound(model, X, y, **kwargs)


@pytest.fixture(scope="module")
def files(model, data, tmp_path_factory):
    X, y, Xt, yt = data
    directory = tmp_path_factory.mktemp("bound")
    htcore.save_compressed(directory / "dense.safetensors", model)
    np.savez(directory / "blobs.npz", X_train=X, y_train=y, X_test=Xt, y_test=yt)
    return directory


def test_cli_search_on_budgets_saves_the_winner_and_bound_charges_its_search(files, capsys, client):
    dense, npz, best = files / "dense.safetensors", files / "blobs.npz", files / "best.safetensors"
    args = ["bound", str(dense), "--data", str(npz), "--search", "--budget", "100,180", "--budget", "250",
            "--levels", "4", "-o", str(best)]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["grid"]) == 3 and out["report"]["code"]["search_bits"] == 2 and out["output"] == str(best)
    assert [row["allocation"]["nnz"] for row in out["grid"]] == [100, 180, 250]
    # the same search on the Dask cluster, reached through --scheduler
    assert main(args + ["--json", "--scheduler", client.scheduler.address]) == 0
    assert json.loads(capsys.readouterr().out)["grid"] == out["grid"]
    assert main(["bound", str(best), "--data", str(npz), "--original", str(dense), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["report"]
    assert again == out["report"]  # the saved winner, certified again, charging the recorded search
    assert htcore.load_compressed(best).metadata["search"]["settings_tried"] == 3


def test_cli_bound_text_is_labelled(files, capsys):
    dense, npz, best = files / "dense.safetensors", files / "blobs.npz", files / "best.safetensors"
    assert main(["bound", str(dense), "--data", str(npz), "--search", "--budget", "120,240", "--levels", "4"]) == 0
    text = capsys.readouterr().out
    assert "| 1 (best) |" in text or "| 2 (best) |" in text
    assert "120 nnz" in text and "kl bound:" in text and "code length:" in text and "bits" in text
    assert "{" not in text and "tighter" not in text and "| count |" not in text  # no raw dicts, no bare jargon
    assert main(["bound", str(best), "--data", str(npz), "--original", str(dense)]) == 0
    text = capsys.readouterr().out
    assert "gamma:" in text and "lower of the two:" in text and "search over 3 settings" in text


def test_cli_search_flags_are_checked(files, capsys, monkeypatch):
    dense, npz = files / "dense.safetensors", files / "blobs.npz"
    for extra, message in [(["-o", "x.safetensors"], "only apply with --search"),
                           (["--workers", "2"], "only apply with --search"),
                           (["--search", "--levels", "4"], "--levels applies to --budget"),
                           (["--search", "--budget", "10.5"], "whole numbers")]:
        assert main(["bound", str(dense), "--data", str(npz), *extra]) == 2  # a usage error, as argparse's own
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bound", str(dense), "--data", str(npz), "--search", "--budget", "0"])
    assert exit_info.value.code == 2
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if dask were not installed
    assert main(["bound", str(dense), "--data", str(npz), "--search", "--scheduler", "tcp://127.0.0.1:1"]) == 1
    assert "htcore[dask]" in capsys.readouterr().err
