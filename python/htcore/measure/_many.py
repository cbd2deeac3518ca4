"""`htcore.analyze_many`: `htcore.analyze` over many model files on any executor (a local process
pool, a Dask cluster, Ray through `pool_executor`), results streamed as they finish, one table.

Workers return each model's table as the plain JSON document of `ModelReport.to_json` (no ESDs:
they stay on the worker), so a result costs a few kB to ship and a resumed model (read back from
``out=``) is indistinguishable from a fresh one.
"""
from __future__ import annotations

import concurrent.futures
import csv
import glob
import hashlib
import inspect
import io
import json
import math
import os
import re
import tempfile
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .._progress import progress as progress_bar
from .._text import plural
from .._threads import get_num_threads, set_num_threads
from .._validation import check_int
from ._analyze import analyze
from ._report import (
    _ELEMENT,
    _SPECTRAL,
    _compact_table,
    _fmt,
    _is_nan,
    _keep_column,
    _maybe_write,
    _not_finite,
    _plain,
    _shorten,
    data_frame,
    format_column,
)

#: File name endings a directory is searched for (what `htcore.load_layers` reads).
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz")
# `analyze` options a caller may pass through (`progress` is analyze_many's own: workers stay quiet).
_ANALYZE_OPTIONS = ("spectral", "elements", "keeps", "include", "exclude")
_BASE_COLUMNS = ["name", "kind", "shape", "num_params"]
_ROW_COLUMNS = ["model", "row_type", "error"]
_LAYER_WIDTH = 24  # characters of a layer name in the compact table (its end tells layers apart)


@dataclass(frozen=True, eq=False)
class ModelResult:
    """One model of an `analyze_many` run: its layer rows (`ModelReport.rows`, missing values NaN)
    or the error that stopped its analysis."""

    model: str  #: the path, as expanded from ``sources``
    columns: tuple[str, ...]  #: the model's own `ModelReport.columns` (empty on error)
    layers: tuple[dict[str, Any], ...]
    error: str | None = None  #: "ExceptionType: message" when the analysis failed
    resumed: bool = False  #: read back from ``out=`` instead of analysed in this run

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, eq=False)
class ManyReport:
    """The combined table of `analyze_many`, models in input order.

    Rows (`rows`): for each model, one ``row_type="layer"`` row per layer (the `ModelReport`
    columns), then one ``row_type="model"`` summary row: ``num_params`` summed, ``rel_error_keep_*``
    the parameter-weighted mean over the layers (as `ModelReport.summary`), every other metric the
    mean over the layers where it is finite (WeightWatcher's summary convention), ``name``, ``kind``
    and ``shape`` NaN. A model that failed has a single ``row_type="error"`` row with its message in
    ``error``. Missing values are NaN (null in JSON, empty in CSV).
    """

    keeps: tuple[float, ...]
    models: tuple[ModelResult, ...]

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self):
        return iter(self.models)

    def __getitem__(self, model_or_index: str | int) -> ModelResult:
        if isinstance(model_or_index, str):
            for result in self.models:
                if result.model == model_or_index:
                    return result
            raise KeyError(f"no model {model_or_index!r} in this report")
        return self.models[model_or_index]

    @property
    def errors(self) -> dict[str, str]:
        """Model -> error message, for the models whose analysis failed."""
        return {r.model: r.error for r in self.models if r.error is not None}

    @property
    def columns(self) -> list[str]:
        present = {c for r in self.models for c in r.columns}
        canonical = (_BASE_COLUMNS + _SPECTRAL + [_SMALL_SPECTRAL] + _ELEMENT + [_SMALL_ELEMENT]
                     + [_keep_column(k) for k in self.keeps])
        return _ROW_COLUMNS + [c for c in canonical if c in present]

    def rows(self, *, row_types: Sequence[str] = ("layer", "model", "error")) -> list[dict[str, Any]]:
        """One dict per row, keyed by `columns`, limited to ``row_types`` (e.g. ``("model",)`` for
        the per-model summaries)."""
        cols = self.columns
        out = []
        for result in self.models:
            if result.error is not None:
                rows = [{"row_type": "error", "error": result.error}]
            else:
                rows = [{**layer, "row_type": "layer"} for layer in result.layers]
                rows.append(_summary_row(result, self.keeps))
            for row in rows:
                if row["row_type"] in row_types:
                    row["model"] = result.model
                    out.append({c: row.get(c, math.nan) for c in cols})
        return out

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The table as CSV (header row first; NaN as an empty field). Written to ``path`` if given."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows():
            writer.writerow("" if _is_nan(v) else _plain(v) for v in row.values())
        return _maybe_write(buf.getvalue(), path)

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 2) -> str:
        """``{"keeps", "columns", "rows": [row, ...]}`` as JSON (NaN and +-inf as null)."""
        doc = {
            "keeps": list(self.keeps),
            "columns": self.columns,
            "rows": [{k: (None if _not_finite(v) else _plain(v)) for k, v in row.items()} for row in self.rows()],
        }
        return _maybe_write(json.dumps(doc, indent=indent, allow_nan=False) + "\n", path)

    def to_markdown(self, columns: list[str] | None = None, *, row_types: Sequence[str] = ("layer", "model", "error"),
                    compact: bool = False) -> str:
        """A GitHub-flavoured markdown table of the rows of ``row_types`` (floats to 4 significant
        digits). ``compact``: the table a terminal has room for, as `ModelReport.to_markdown`'s: at
        most `COMPACT_WIDTH` (100) characters a line, followed by a line explaining its headers: model
        (shortened in the middle if needed), layer name (with layer rows), parameters, spectral
        ``alpha``, the Hill tail index, the relative error at the middle keep (a model row holds the
        means over its layers, as in `rows`) and, for a model that failed, the exception's type (its
        message is in `errors` and `summary`)."""
        if compact:
            return self._compact_markdown(row_types)
        cols = columns or self.columns
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for row in self.rows(row_types=row_types):
            lines.append("| " + " | ".join(_fmt(row[c]).replace("|", "\\|") for c in cols) + " |")
        return "\n".join(lines) + "\n"

    def _compact_markdown(self, row_types: Sequence[str]) -> str:
        rows, columns = self.rows(row_types=row_types), self.columns
        headers: list[str] = []
        cells: list[list[str]] = []
        notes = ["model rows: means over the model's layers"]
        if "layer" in row_types and "name" in columns:
            headers.append("layer")
            cells.append(["" if _is_nan(r["name"]) else _shorten(str(r["name"]), _LAYER_WIDTH) for r in rows])
        if "num_params" in columns:  # not when every model failed
            headers.append("params")
            cells.append(format_column([r["num_params"] for r in rows]))
        if "alpha" in columns:
            headers.append("alpha")
            cells.append(format_column([r["alpha"] for r in rows], 3))
            notes.append("alpha: ESD pdf exponent (WeightWatcher)")
        if "element_tail_index" in columns:
            headers.append("hill")
            cells.append(format_column([r["element_tail_index"] for r in rows], 3))
            notes.append("hill: tail index of |w|")
        keep_columns = [k for k in self.keeps if _keep_column(k) in columns]
        if keep_columns:
            keep = sorted(keep_columns)[len(keep_columns) // 2]
            headers.append(f"err@{keep:g}")
            cells.append(format_column([r[_keep_column(keep)] for r in rows], 3))
            notes.append(f"err@{keep:g}: ||W - W_k||_F / ||W||_F keeping {keep:g} of the entries (parameter-weighted)")
        failed = [r["row_type"] == "error" for r in rows]
        if any(failed):
            headers.append("error")
            cells.append([str(r["error"]).split(":")[0] if bad else "" for r, bad in zip(rows, failed)])
            notes.append("error: why the model's analysis failed (the message is in the summary)")
        return _compact_table("model", [r["model"] for r in rows], headers, cells, notes, len(columns))

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas)."""
        return data_frame(self.rows(), self.columns, "ManyReport")

    def summary(self) -> str:
        """A few lines: models analysed, layers and parameters, and each failure with its message."""
        ok = [r for r in self.models if r.ok]
        params = sum(int(layer["num_params"]) for r in ok for layer in r.layers)
        layers = sum(len(r.layers) for r in ok)
        resumed = sum(r.resumed for r in ok)
        lines = [
            f"{len(ok)} of {plural(len(self.models), 'model')} analysed ({resumed} read back from out=): "
            f"{plural(layers, 'layer')}, {params:,} parameters"
        ]
        lines += [f"  failed: {model}: {error}" for model, error in self.errors.items()]
        return "\n".join(lines)


def analyze_many(
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    executor: Executor | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    **analyze_kwargs: Any,
) -> ManyReport:
    """Run `htcore.analyze` on every model file of ``sources`` in parallel and combine the tables.

    Parameters
    ----------
    sources : a path, or a list of paths, each a model file (anything `htcore.load_layers` reads), a
        directory (every file ending in `MODEL_SUFFIXES` below it, recursively, sorted), or a glob
        pattern (``**`` recurses). A model found twice is analysed once. A path that does not exist,
        a pattern matching nothing or a directory without model files raises before any work starts.
    executor : any `concurrent.futures.Executor`; every model is one ``submit`` of a picklable
        top-level function with the path and the options, so the workers must see the files
        under the same paths. None: a local process pool of `local_executor` (one worker per core,
        htcore's threads shared out between them), shut down on return. A Dask cluster:
        ``dask.distributed.Client(...).get_executor()`` (Dask's workers start with
        ``OMP_NUM_THREADS=1``; a worker that dies has its models rerun elsewhere); Ray or any other
        ``multiprocessing``-style pool: `pool_executor`. Scripts using a process pool need the
        ``if __name__ == "__main__":`` guard (workers are spawned, never forked: forking a process
        whose OpenMP runtime is running can hang the child).
    out : a directory (created if needed): each model's table is written there as soon as it
        finishes, as JSON in `ModelReport.to_json`'s layout except that NaN and +-inf are written as
        Python's ``json`` writes them (``NaN``, ``Infinity``; exact on reading back), atomically, as
        ``<file name>-<hash of its path>.json``, stamped ("analyze_many") with the model's
        real path, size, modification time and the options, so an interrupted run loses
        nothing done. A re-run with the same ``out`` reads back the models whose document is
        complete and whose stamp still matches, and analyses only the rest. Failed models are not
        written: a re-run tries them again.
    progress : a progress bar of finished models on stderr.
    **analyze_kwargs : ``spectral``, ``elements``, ``keeps``, ``include``, ``exclude`` of
        `htcore.analyze`, checked here once before anything is submitted.

    Returns a `ManyReport`, models in the order of ``sources`` whatever order they finished in.
    A model whose analysis raises (a corrupt file, an unsupported layout) or whose worker fails
    for good (Dask's ``KilledWorker``, a local pool broken by a worker killed by the system) becomes
    an error row with its message; the others finish. Every number equals what `htcore.analyze`
    gives for that file alone (each worker runs the same serial code; thread counts never change
    results). On an exception in the caller (Ctrl-C) the queued models are cancelled and the
    exception propagates; what finished is already in ``out``.
    """
    paths = model_files(sources)
    options = _check_options(analyze_kwargs)
    keeps = tuple(options.get("keeps", ()))
    results: dict[int, ModelResult] = {}
    stamps = {i: _stamp(path, options) for i, path in enumerate(paths)} if out is not None else {}
    if out is not None:
        os.makedirs(out, exist_ok=True)
        for i, path in enumerate(paths):
            doc = _read_done(_out_file(out, path), stamps[i])
            if doc is not None:
                results[i] = _result(path, doc, resumed=True)
    todo = [i for i in range(len(paths)) if i not in results]
    # A process pool starts its workers at the first submit: nothing is spawned when all is done.
    pool = local_executor(max(1, min(len(todo), _cores()))) if executor is None else executor
    futures: dict[Future, int] = {}
    try:
        for i in todo:
            futures[pool.submit(_analyze_file, paths[i], options)] = i
        finished = concurrent.futures.as_completed(futures)
        for future in progress_bar(finished, enabled=progress, total=len(futures), desc="htcore analyze_many", unit="model"):
            i = futures[future]
            try:
                doc = future.result()
            except Exception as exc:  # the worker, not the analysis, failed (killed, pool broken)
                doc = {"error": _message(exc)}
            if out is not None and "error" not in doc:
                _write_atomic(_out_file(out, paths[i]), {**doc, "analyze_many": stamps[i]})
            results[i] = _result(paths[i], doc, resumed=False)
    finally:
        for future in futures:  # no-op for finished ones; stops queued work on an interrupt
            future.cancel()
        if executor is None:
            pool.shutdown(wait=True, cancel_futures=True)
    return ManyReport(keeps=keeps, models=tuple(results[i] for i in range(len(paths))))


def model_files(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """The model files ``sources`` names (see `analyze_many`), in order, each once."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, Iterable):
        raise TypeError(f"sources must be a path, a directory, a glob pattern or a list of them, got {type(sources).__name__}")
    files: list[str] = []
    for i, source in enumerate(sources):
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"sources[{i}] must be a path, a directory or a glob pattern, got {type(source).__name__}")
        source = os.fspath(source)
        if os.path.exists(source):
            matches = [source]
        elif any(ch in source for ch in "*?["):
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                raise FileNotFoundError(f"sources[{i}]: the pattern {source!r} matches no file")
        else:
            raise FileNotFoundError(f"sources[{i}]: no such file or directory: {source!r}")
        for match in matches:
            if os.path.isdir(match):
                found = _directory_models(match)
                if not found:
                    raise ValueError(f"sources[{i}]: no model files ({', '.join(MODEL_SUFFIXES)}) in the directory {match!r}")
                files += found
            else:
                files.append(match)
    if not files:
        raise ValueError("sources names no model file")
    seen: set[str] = set()
    unique = []
    for path in files:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def local_executor(workers: int | None = None) -> ProcessPoolExecutor:
    """A process pool of ``workers`` (default: one per core available to this process), started
    with ``spawn`` (safe with OpenMP), each worker running htcore's kernels on
    ``max(1, htcore.get_num_threads() // workers)`` threads so the workers do not oversubscribe
    the cores."""
    workers = _cores() if workers is None else check_int(workers, "workers", low=1)
    threads = max(1, get_num_threads() // workers)
    import multiprocessing

    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=set_num_threads, initargs=(threads,)
    )


def executor_for(scheduler: str | None = None, workers: int | None = None) -> Executor:
    """The executor a command line asks for: ``scheduler`` (a Dask scheduler address such as
    ``tcp://host:8786``) -> an executor on that cluster, which closes its client when shut down
    (needs the ``htcore[dask]`` extra); otherwise `local_executor` of ``workers`` processes.
    Use it as a context manager (``with executor_for(...) as executor:``)."""
    if scheduler is None:
        return local_executor(workers)
    if not isinstance(scheduler, str) or not scheduler:
        raise TypeError(f"scheduler must be a Dask scheduler address such as 'tcp://host:8786', got {scheduler!r}")
    if workers is not None:
        raise ValueError(f"workers={workers!r} applies to the local process pool; a Dask cluster ({scheduler}) sizes itself")
    try:
        from dask.distributed import Client
    except ImportError:
        raise ImportError(
            f"a Dask scheduler ({scheduler}) needs Dask's distributed scheduler: pip install 'htcore[dask]'"
        ) from None
    return _ClientExecutor(Client(scheduler))


def pool_executor(pool: Any) -> Executor:
    """Wrap a ``multiprocessing``-style pool (anything with ``apply_async(fn, args, callback=,
    error_callback=)``: ``multiprocessing.Pool``, ``ray.util.multiprocessing.Pool``) as a
    `concurrent.futures.Executor` for `analyze_many`. Shutting it down leaves the pool running:
    close it yourself. For Ray::

        from ray.util.multiprocessing import Pool
        with Pool() as pool:
            report = htcore.analyze_many("checkpoints/", executor=htcore.measure.pool_executor(pool))
    """
    if not callable(getattr(pool, "apply_async", None)):
        raise TypeError(f"pool must have an apply_async method like multiprocessing.Pool, got {type(pool).__name__}")
    return _PoolExecutor(pool)


class _PoolExecutor(Executor):
    def __init__(self, pool: Any):
        self._pool = pool

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()

        def settle(setter: Callable[[Any], None]) -> Callable[[Any], None]:
            def call(value: Any) -> None:
                if future.set_running_or_notify_cancel():  # False: cancelled meanwhile, drop the value
                    setter(value)

            return call

        self._pool.apply_async(fn, args, kwargs, callback=settle(future.set_result), error_callback=settle(future.set_exception))
        return future


class _ClientExecutor(Executor):
    """Dask's ``client.get_executor()`` that also closes the client on shutdown."""

    def __init__(self, client: Any):
        self._client = client
        self._executor = client.get_executor()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait)
        self._client.close()


def _analyze_file(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """What a worker runs: ``analyze(path)`` as a document of plain Python values (`ModelReport.to_json`'s
    layout with NaN and +-inf kept as floats), or ``{"error": message}``."""
    try:
        report = analyze(path, progress=False, **options)
    except Exception as exc:  # a bad file must not take the rest of the run down with it
        return {"error": _message(exc)}
    layers = [{k: _plain(v) for k, v in row.items()} for row in report.rows()]
    return {"source": report.source, "keeps": list(report.keeps), "columns": report.columns, "layers": layers}


def _check_options(analyze_kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(analyze_kwargs) - set(_ANALYZE_OPTIONS))
    if unknown:
        raise TypeError(f"analyze_many got unexpected keyword arguments {unknown}; it passes on {list(_ANALYZE_OPTIONS)}")
    # analyze's own checks on an empty model: a typo fails now, not as one error row per model.
    empty = analyze({}, progress=False, **analyze_kwargs)
    # every option spelled out (analyze's defaults filled in) so out= stamps compare equal
    defaults = {name: p.default for name, p in inspect.signature(analyze).parameters.items() if name in _ANALYZE_OPTIONS}
    return {**defaults, **analyze_kwargs, "keeps": list(empty.keeps)}


_SMALL_SPECTRAL, _SMALL_ELEMENT = "alpha_small_sample", "element_small_sample"  # ModelReport's flag columns


def _summary_row(result: ModelResult, keeps: tuple[float, ...]) -> dict[str, Any]:
    layers = result.layers
    params = np.array([layer["num_params"] for layer in layers], dtype=np.float64)
    row: dict[str, Any] = {"row_type": "model", "num_params": int(params.sum())}
    keep_columns = {_keep_column(k) for k in keeps}
    for column in result.columns:
        if column in _BASE_COLUMNS:
            continue
        if column in (_SMALL_SPECTRAL, _SMALL_ELEMENT):  # a model is flagged when any of its layers is
            row[column] = any(bool(layer[column]) for layer in layers)
            continue
        values = np.array([layer[column] for layer in layers], dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            row[column] = math.nan
        elif column in keep_columns:
            row[column] = float(params[finite] @ values[finite] / params[finite].sum())
        else:
            row[column] = float(values[finite].mean())
    return row


def _result(path: str, doc: dict[str, Any], *, resumed: bool) -> ModelResult:
    if "error" in doc:
        return ModelResult(model=path, columns=(), layers=(), error=doc["error"], resumed=resumed)
    return ModelResult(model=path, columns=tuple(doc["columns"]), layers=tuple(doc["layers"]), resumed=resumed)


def _stamp(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """What a document in ``out`` must match to stand for ``path`` analysed with ``options``."""
    st = os.stat(path)
    return {"model": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "options": options}


def _out_file(out: str | os.PathLike, path: str) -> str:
    digest = hashlib.sha1(os.path.realpath(path).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(path))[:80]
    return os.path.join(os.fspath(out), f"{stem}-{digest}.json")


def _read_done(file: str, stamp: dict[str, Any]) -> dict[str, Any] | None:
    """The document in ``file`` if it is complete and matches ``stamp``, else None (analyse again)."""
    try:
        with open(file, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("analyze_many") != json.loads(json.dumps(stamp)):
        return None
    columns, layers = doc.get("columns"), doc.get("layers")
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns) and isinstance(layers, list)):
        return None
    if not all(isinstance(row, dict) and list(row) == columns for row in layers):
        return None
    return doc


def _write_atomic(file: str, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON so that ``file`` is either absent or complete (a rename, never a partial file)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file), prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)  # NaN and +-inf as Python's json writes them, so a read-back equals the original
        os.replace(tmp, file)
    except BaseException:
        os.unlink(tmp)
        raise


def _directory_models(directory: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names) if n.endswith(MODEL_SUFFIXES)]
    return found


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

