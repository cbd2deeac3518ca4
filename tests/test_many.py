"""htcore.analyze_many: a zoo of generated model files on a real Dask LocalCluster (2 worker
processes), on the default local process pool and on thread/pool adapters; equality with serial
`analyze`, error rows, resume from out=, a worker killed mid-run, the combined table's outputs."""
import csv
import io
import json
import logging
import math
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.pool import ThreadPool

import numpy as np
import pytest

import htcore
from htcore.io import save_safetensors
from htcore.measure import ManyReport, executor_for, local_executor, model_files, pool_executor

N_MODELS = 11  # plus one corrupt file
OPTIONS = {"keeps": (0.1, 0.5)}


def zoo_weights(i):
    rng = np.random.default_rng(i)
    width = 24 + 4 * i
    return {
        f"m{i}.fc1.weight": rng.standard_t(3 + i % 3, size=(width, 20)).astype(np.float32),
        f"m{i}.fc1.bias": np.zeros(width, np.float32),
        f"m{i}.fc2.weight": (rng.standard_normal((12, width)) * 0.1).astype(np.float32),
    }


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """N_MODELS small models, safetensors and npz alternating, and a corrupt safetensors file, in
    one directory; returns (paths in analyze_many's order, the corrupt path)."""
    directory = tmp_path_factory.mktemp("zoo")
    for i in range(N_MODELS):
        if i % 2:
            np.savez(directory / f"model_{i:02d}.npz", **zoo_weights(i))
        else:
            save_safetensors(directory / f"model_{i:02d}.safetensors", zoo_weights(i))
    corrupt = directory / "model_05b.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    return model_files(directory), str(corrupt)


@pytest.fixture(scope="module")
def serial(zoo):
    """What `analyze` gives for each good file alone, in this process."""
    paths, corrupt = zoo
    return {p: htcore.analyze(p, progress=False, **OPTIONS).rows() for p in paths if p != corrupt}


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("dask.distributed", reason="Dask is the optional extra htcore[dask]")
    # dashboard_address=":0": any free port (8787 may be taken; the warning would fail the test)
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL
    ) as cluster, distributed.Client(cluster) as client:
        yield client


def same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_matches_serial(report, paths, corrupt, serial):
    assert [r.model for r in report] == paths  # input order, each model once
    for result in report:
        if result.model == corrupt:
            assert not result.ok and result.error.startswith("SafetensorsError") and corrupt in result.error
            continue
        assert result.ok, result.error
        expected = serial[result.model]
        assert len(result.layers) == len(expected)
        for got, want in zip(result.layers, expected):
            assert list(got) == list(want)
            assert all(same(got[c], want[c]) for c in want), (result.model, got["name"])


def test_dask_cluster_gives_the_serial_numbers_and_reports_the_corrupt_file(zoo, serial, client):
    paths, corrupt = zoo
    assert len(paths) == N_MODELS + 1 and corrupt in paths
    report = htcore.analyze_many(paths, executor=client.get_executor(), progress=False, **OPTIONS)
    assert_matches_serial(report, paths, corrupt, serial)
    assert report.errors.keys() == {corrupt}
    assert not any(r.resumed for r in report)


class DieOnce:
    """The first worker that runs ``fn`` on ``victim`` dies (os._exit) before returning; the marker
    file records that it happened, so the rerun on another worker completes."""

    def __init__(self, fn, victim, marker):
        self.fn, self.victim, self.marker = fn, victim, marker

    def __call__(self, path, options):
        if path == self.victim:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        return self.fn(path, options)


class Wrapping(Executor):
    def __init__(self, inner, wrap):
        self.inner, self.wrap = inner, wrap

    def submit(self, fn, /, *args, **kwargs):
        return self.inner.submit(self.wrap(fn), *args, **kwargs)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(zoo, serial, client, tmp_path):
    paths, corrupt = zoo
    victim, marker = paths[3], str(tmp_path / "died")
    out = tmp_path / "out"
    executor = Wrapping(client.get_executor(pure=False), lambda fn: DieOnce(fn, victim, marker))
    report = htcore.analyze_many(paths, executor=executor, out=out, progress=False, **OPTIONS)
    assert os.path.exists(marker)  # a worker really died running the victim
    assert_matches_serial(report, paths, corrupt, serial)
    assert len(os.listdir(out)) == N_MODELS  # one document per good model, no leftovers


def test_out_directory_resumes_only_what_is_not_done(zoo, serial, client, tmp_path):
    paths, corrupt = zoo
    out = tmp_path / "out"
    first = htcore.analyze_many(paths[:5], executor=client.get_executor(), out=out, progress=False, **OPTIONS)
    assert not any(r.resumed for r in first)
    documents = sorted(os.listdir(out))
    assert len(documents) == 5 - (corrupt in paths[:5])  # failures are not written: a re-run retries them

    # One document cut short as by a crash mid-write (impossible with the atomic rename, but a
    # copied or hand-edited directory may hold one) and one model rewritten since are analysed
    # again with the models not done yet; the rest are read back.
    cut = out / documents[0]
    cut.write_text(cut.read_text()[:-40])
    changed = paths[1] if paths[1] != corrupt else paths[2]
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    second = htcore.analyze_many(paths, executor=client.get_executor(), out=out, progress=False, **OPTIONS)
    assert_matches_serial(second, paths, corrupt, serial)
    redone = {r.model for r in second if not r.resumed}
    cut_model = next(r.model for r in first if r.ok and htcore.measure._many._out_file(out, r.model).endswith(documents[0]))
    assert redone == set(paths[5:]) | {cut_model, changed, corrupt}
    assert len(os.listdir(out)) == N_MODELS
    good = [p for p in paths if p != corrupt]
    again = htcore.analyze_many(good, out=out, progress=False, **OPTIONS)  # all done: no pool is started
    assert all(r.resumed for r in again)
    assert_matches_serial(again, good, corrupt, serial)

    other = htcore.analyze_many(paths[:2], executor=ThreadPoolExecutor(1), out=out, progress=False, keeps=(0.2,))
    assert not any(r.resumed for r in other) and other.keeps == (0.2,)  # other options: analysed again


def test_default_local_process_pool(zoo, serial):
    paths, corrupt = zoo
    chosen = [paths[0], corrupt, paths[-1]]
    report = htcore.analyze_many(chosen, progress=False, **OPTIONS)
    assert_matches_serial(report, chosen, corrupt, serial)


def test_local_executor_shares_the_threads_between_workers():
    htcore.set_num_threads(2)
    for workers, threads in ((1, 2), (2, 1), (3, 1)):
        executor = local_executor(workers)
        assert isinstance(executor, ProcessPoolExecutor)
        assert executor._max_workers == workers and executor._initargs == (threads,)
        assert executor._mp_context.get_start_method() == "spawn"
        executor.shutdown()
    with pytest.raises(ValueError, match="workers"):
        local_executor(0)


def test_pool_adapter_and_thread_executor(zoo, serial):
    paths, corrupt = zoo
    chosen = [paths[2], corrupt]
    with ThreadPool(2) as pool:
        report = htcore.analyze_many(chosen, executor=pool_executor(pool), progress=False, **OPTIONS)
    assert_matches_serial(report, chosen, corrupt, serial)
    with pytest.raises(TypeError, match="apply_async"):
        pool_executor(object())


def test_a_failing_executor_gives_error_rows(zoo):
    paths, _ = zoo

    class Broken(Executor):
        def submit(self, fn, /, *args, **kwargs):
            return ThreadPoolExecutor(1).submit(lambda: (_ for _ in ()).throw(RuntimeError("worker lost")))

    report = htcore.analyze_many(paths[:2], executor=Broken(), progress=False)
    assert report.errors == {p: "RuntimeError: worker lost" for p in paths[:2]}


def test_combined_table(zoo, serial):
    paths, corrupt = zoo
    chosen = [paths[0], paths[1], corrupt]
    report = htcore.analyze_many(chosen, executor=ThreadPoolExecutor(2), progress=False, **OPTIONS)
    assert isinstance(report, ManyReport) and len(report) == 3
    rows = report.rows()
    assert [r["row_type"] for r in rows] == ["layer", "layer", "model", "layer", "layer", "model", "error"]
    assert report.columns[:3] == ["model", "row_type", "error"] and "rel_error_keep_0.5" in report.columns
    for path in chosen[:2]:
        layers = serial[path]
        summary = next(r for r in rows if r["model"] == path and r["row_type"] == "model")
        params = np.array([l["num_params"] for l in layers], dtype=float)
        assert summary["num_params"] == params.sum()
        assert summary["alpha"] == pytest.approx(np.mean([l["alpha"] for l in layers]), rel=1e-12)
        errors = np.array([l["rel_error_keep_0.1"] for l in layers])
        assert summary["rel_error_keep_0.1"] == pytest.approx(params @ errors / params.sum(), rel=1e-12)
        assert math.isnan(summary["name"]) and math.isnan(summary["error"])
    assert [r["model"] for r in report.rows(row_types=("model", "error"))] == chosen

    parsed = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(parsed) == len(rows) and parsed[-1]["error"] == report[corrupt].error and parsed[-1]["alpha"] == ""
    doc = json.loads(report.to_json())
    assert doc["columns"] == report.columns and doc["rows"][-1]["alpha"] is None and doc["keeps"] == [0.1, 0.5]
    assert report.to_markdown().count("\n") == len(rows) + 2
    frame = pytest.importorskip("pandas").DataFrame  # to_pandas needs pandas
    assert isinstance(report.to_pandas(), frame) and report.to_pandas().shape == (len(rows), len(report.columns))
    assert "2 of 3 models analysed" in report.summary() and corrupt in report.summary()
    with pytest.raises(KeyError, match="no model"):
        report["nowhere.safetensors"]


def test_sources_are_expanded_checked_and_deduplicated(zoo, tmp_path):
    paths, corrupt = zoo
    directory = os.path.dirname(paths[0])
    npz = [p for p in paths if p.endswith(".npz")]
    assert model_files(directory) == sorted(paths)
    assert model_files([os.path.join(directory, "*.npz"), directory, paths[0]]) == npz + [p for p in sorted(paths) if p not in npz]
    nested = tmp_path / "runs" / "epoch_1"
    nested.mkdir(parents=True)
    (nested / "notes.txt").write_text("not a model")
    save_safetensors(nested / "w.safetensors", zoo_weights(0))
    assert model_files(tmp_path / "runs") == [str(nested / "w.safetensors")]
    assert model_files(str(tmp_path / "runs" / "**" / "*.safetensors")) == [str(nested / "w.safetensors")]

    with pytest.raises(FileNotFoundError, match=r"sources\[1\].*no such file"):
        model_files([paths[0], tmp_path / "missing.safetensors"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        model_files(str(tmp_path / "*.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model files"):
        model_files(tmp_path / "empty")
    with pytest.raises(TypeError, match=r"sources\[0\]"):
        model_files([3])
    with pytest.raises(TypeError, match="sources must be"):
        model_files(3)
    with pytest.raises(ValueError, match="no model file"):
        model_files([])


def test_options_are_checked_before_any_work(zoo):
    paths, _ = zoo
    never = Wrapping(None, lambda fn: pytest.fail("nothing may be submitted"))
    with pytest.raises(TypeError, match="unexpected keyword.*sparse"):
        htcore.analyze_many(paths, executor=never, sparse=True)
    with pytest.raises(ValueError, match="keeps"):
        htcore.analyze_many(paths, executor=never, keeps=(0.5, 2.0))
    with pytest.raises(ValueError, match="include"):
        htcore.analyze_many(paths, executor=never, include="(")


def test_executor_for_a_scheduler_address(zoo, serial, client):
    paths, corrupt = zoo
    with executor_for(client.scheduler.address) as executor:
        report = htcore.analyze_many(paths[:1], executor=executor, progress=False, **OPTIONS)
    assert_matches_serial(report, paths[:1], corrupt, serial)
    assert executor._client.status == "closed"  # its own client, closed on shutdown
    with pytest.raises(ValueError, match="workers"):
        executor_for(client.scheduler.address, workers=2)
    local = executor_for(workers=1)
    assert isinstance(local, ProcessPoolExecutor)
    local.shutdown()


def test_a_scheduler_without_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if dask were not installed
    with pytest.raises(ImportError, match=r"htcore\[dask\]"):
        executor_for("tcp://127.0.0.1:8786")
