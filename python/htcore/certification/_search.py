"""`search_bound`: compress with every setting of a grid (hand-written, or one per total budget
through `htcore.allocate`), certify each with the search charged, keep the tightest, on any executor.

Work is split into groups of settings that share one pruning and fine-tuning (they differ only in
``levels`` or ``bias_precision``; `htcore.compression.compress_grid`). Each group is one task of a
picklable top-level function, run in this process (no executor) or on a
`concurrent.futures.Executor`: a local process pool, a Dask cluster. A task runs on one torch thread
and one htcore thread (restored afterwards), and its fine-tuning draws Dropout from a forked torch
RNG seeded from the fine-tuning seed (`htcore.train.fit`), so a group's result depends on nothing
but its inputs (torch's float sums depend on its thread count). Hence the serial run and every
parallel run give the same models, bits and bounds.
"""
from __future__ import annotations

import concurrent.futures
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .._progress import progress as progress_bar
from .._threads import get_num_threads, set_num_threads
from .._validation import check_int
from ..compression import Allocation, allocate, compress_grid
from ._certify import BoundReport, certify

BUDGET_UNITS = ("nnz", "bits", "rel_error")
_UNSET: Any = object()  # levels / bias_precision not given (None is a valid level: no codebook)


@dataclass(frozen=True)
class SearchResult:
    """The settings searched by `search_bound`: every setting with its report and compressed model,
    and the tightest (lowest kl).

    ``models[i]`` is the runtime `CompressedModel` certified by ``reports[i]`` (its ``metadata``
    gains ``"search": {"settings_tried", "index"}``); ``allocations[i]`` is the `htcore.allocate`
    result behind ``settings[i]`` with ``budgets=`` (None for a hand-written grid).
    """

    settings: tuple[Mapping[str, Any], ...]
    reports: tuple[BoundReport, ...]
    best_index: int
    models: tuple[Any, ...] = ()
    allocations: tuple[Allocation | None, ...] = ()

    @property
    def best(self) -> BoundReport:
        return self.reports[self.best_index]

    @property
    def best_settings(self) -> Mapping[str, Any]:
        return self.settings[self.best_index]

    @property
    def best_model(self) -> Any:
        """The certified winner: save it with `htcore.save_compressed`; `htcore.certify` on it with
        the ``settings_tried`` recorded in its ``metadata["search"]`` gives `best` again."""
        return self.models[self.best_index]


@dataclass(frozen=True)
class _Data:
    """The training (and test) sample every task needs, shipped once per task or scattered once."""

    X_train: Any
    y_train: Any
    X_test: Any
    y_test: Any


def search_bound(model: Any, X_train: Any, y_train: Any, *, grid: Sequence[Mapping[str, Any]] | None = None,
                 budgets: Sequence[float] | None = None, budget_unit: str = "nnz", allocate_method: str = "curve",
                 allocate_options: Mapping[str, Any] | None = None, levels: Any = _UNSET, bias_precision: Any = _UNSET,
                 delta: float = 0.05, finetune: Mapping[str, Any] | None = None, X_test: Any = None,
                 y_test: Any = None, with_original: bool = True, progress: bool = False,
                 executor: Executor | None = None, settings_tried: int | None = None) -> SearchResult:
    """Compress ``model`` with every setting searched, certify each with ceil log2(settings) search
    bits charged, and return all reports and models and the one with the lowest kl bound.

    Parameters
    ----------
    model : a torch module with Linear and Conv2d layers (MLP or CNN) or a runtime model (see
        `htcore.compress`). It is not modified.
    X_train, y_train : the training sample the bound is about (and the fine-tuning data): rows
        (n, features) or, for a CNN, images (n, C, H, W); integer labels.
    grid : dicts of `compress` keywords (keep, per_layer, levels, bias_precision, and finetune to
        override the shared one). Give ``grid`` or ``budgets``, not both.
    budgets : total budgets, one charged setting each: `htcore.allocate` (``method=allocate_method``,
        plus ``allocate_options``: normalize, sensitivity, value_bits) turns each into per-layer keep
        fractions for every Linear/Conv2d layer, computed here from the model's weights before
        anything else. ``budget_unit`` says what a budget counts: "nnz" (weight entries kept, over
        all weight layers), "bits" (allocate's cost model: value_bits + ceil log2 n per kept entry) or
        "rel_error" (a target relative Frobenius error in [0, 1]: the fewest entries reaching it).
    levels, bias_precision : with ``budgets`` only: a value or a list of values (``levels`` None =
        no codebook; ``bias_precision`` "float32" or "float16"); each budget is combined with every
        pair (budgets outermost), sharing its pruning and fine-tuning. Default: None and "float32".
    delta : failure probability of every bound.
    finetune : passed to every compression (unless a setting gives its own), with (X_train,
        y_train) as training data (`htcore.compress`).
    X_test, y_test : optional test sample, reported beside the bounds.
    with_original : measure the (gamma, S) figures and the Arora form against ``model``.
    progress : a bar of finished settings on stderr.
    executor : None (run here, one group after the other) or any `concurrent.futures.Executor`: a
        process pool (`htcore.measure.local_executor`), a Dask cluster
        (``dask.distributed.Client(...).get_executor()``; the model and data are scattered to the
        workers once), or a multiprocessing-style pool through `htcore.measure.pool_executor`. Each
        group of settings sharing one pruning and fine-tuning is one task of a picklable top-level
        function; the model, data and settings are pickled to it and the reports and compressed
        models pickled back. The executor is not shut down. Use processes, not threads: a task sets
        its process's torch and htcore thread counts.
    settings_tried : the number of settings charged (default: the number searched here, never
        fewer). When this grid was itself picked after trying others on the same training data,
        count every one tried so that the bound stays honest.

    Every task runs on one torch thread and one htcore thread (restored afterwards), its Dropout
    seeded from the fine-tuning seed (see the module docstring), so the result is the same
    whatever the executor: same settings, models, bits and bounds, in setting order. Returns a
    `SearchResult` holding every compressed model (`SearchResult.best_model` is the winner).
    """
    if (grid is None) == (budgets is None):
        raise ValueError("give grid= (a list of compress settings) or budgets= (a list of total budgets), exactly one")
    if grid is not None:
        if levels is not _UNSET or bias_precision is not _UNSET:
            raise ValueError("levels= and bias_precision= combine with budgets=; with grid=, put them in the grid's settings")
        settings = tuple(dict(g) for g in grid)
        check_int(len(settings), "len(grid)", low=1)
        allocations: tuple[Allocation | None, ...] = (None,) * len(settings)
    else:
        settings, allocations = _budget_settings(model, budgets, budget_unit, allocate_method, allocate_options,
                                                 None if levels is _UNSET else levels,
                                                 "float32" if bias_precision is _UNSET else bias_precision)
    if executor is not None and not isinstance(executor, Executor):
        hint = " (for a Dask client, pass client.get_executor())" if hasattr(executor, "get_executor") else ""
        raise TypeError(f"executor must be a concurrent.futures.Executor or None, got {type(executor).__name__}{hint}")
    groups = _groups(settings, finetune)
    data = _Data(X_train, y_train, X_test, y_test)
    tried = len(settings) if settings_tried is None else check_int(settings_tried, "settings_tried", low=len(settings))
    options = dict(finetune=finetune, delta=delta, with_original=with_original, settings_tried=tried)
    done: dict[int, tuple[BoundReport, Any]] = {}
    results = _run_groups(model, data, settings, groups, options, executor)
    for index, outcome in progress_bar(results, enabled=progress, desc="search_bound", total=len(settings), unit="setting"):
        done[index] = outcome
    reports = tuple(done[i][0] for i in range(len(settings)))
    models = tuple(done[i][1] for i in range(len(settings)))
    for i, compressed in enumerate(models):  # what a later certify of a saved model must charge
        compressed.metadata["search"] = {"settings_tried": tried, "index": i}
    best = int(np.argmin([r.kl for r in reports]))
    return SearchResult(settings=settings, reports=reports, best_index=best, models=models, allocations=allocations)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _budget_settings(model: Any, budgets: Sequence[float] | None, unit: str, method: str,
                     options: Mapping[str, Any] | None, levels: Any, bias_precision: Any
                     ) -> tuple[tuple[dict, ...], tuple[Allocation | None, ...]]:
    """One `compress` setting per (budget, level, bias precision), its per_layer from `allocate`."""
    if unit not in BUDGET_UNITS:
        raise ValueError(f"budget_unit must be one of {BUDGET_UNITS}, got {unit!r}")
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence) or not budgets:
        raise ValueError(f"budgets must be a non-empty list of {unit} budgets, got {budgets!r}")
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"allocate_options must be a mapping of allocate keywords, got {type(options).__name__}")
    reserved = sorted({"nnz", "bits", "rel_error", "method"} & set(options or {}))
    if reserved:
        raise ValueError(f"allocate_options may not set {reserved}: use budgets=, budget_unit= and allocate_method=")
    from ..nn import to_torch

    torch_model = model if hasattr(model, "named_modules") else to_torch(model)  # compress's layer names
    settings, allocations = [], []
    for budget in budgets:
        budget_kwargs: dict[str, Any] = {unit: budget}
        allocation = allocate(torch_model, **budget_kwargs, method=method, **(options or {}))
        for level in _as_list(levels):
            for precision in _as_list(bias_precision):
                settings.append(dict(per_layer=dict(allocation.keep), levels=level, bias_precision=precision))
                allocations.append(allocation)
    return tuple(settings), tuple(allocations)


def _groups(settings: Sequence[Mapping[str, Any]], finetune: Mapping[str, Any] | None) -> list[list[int]]:
    """Indices of the settings, grouped by what their pruning and fine-tuning depend on (everything
    but levels and bias_precision), in order of first appearance. compress_grid shares the work within
    a group; a group split finer than compress_grid's own key would only repeat work, never change it."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(settings):
        rest = {k: v for k, v in s.items() if k not in ("levels", "bias_precision")}
        tune = rest.pop("finetune", finetune)
        rest["finetune"] = sorted(tune.items()) if isinstance(tune, Mapping) else tune
        groups.setdefault(repr(sorted(rest.items())), []).append(i)
    return list(groups.values())


def _run_groups(model: Any, data: _Data, settings: Sequence[dict[str, Any]], groups: list[list[int]],
                options: dict[str, Any], executor: Executor | None) -> Iterator[tuple[int, tuple[BoundReport, Any]]]:
    """Yield (setting index, (report, model)) as groups finish: here in order, or on ``executor``."""
    if executor is None:
        for group in groups:
            yield from zip(group, _certify_group(model, data, [settings[i] for i in group], **options))
        return
    shipped_model, shipped_data = _scatter(executor, model), _scatter(executor, data)
    futures: dict[Future, list[int]] = {}
    try:
        for group in groups:
            futures[executor.submit(_certify_group, shipped_model, shipped_data, [settings[i] for i in group],
                                    **options)] = group
        for future in concurrent.futures.as_completed(futures):
            yield from zip(futures[future], future.result())
    finally:
        for future in futures:  # no-op for finished ones; stops queued work on an error or interrupt
            future.cancel()


def _scatter(executor: Executor, value: Any) -> Any:
    """On a Dask executor (``client.get_executor()`` or `htcore.measure.executor_for`'s, both
    holding their client as ``_client``), ``value`` sent to the workers once, as a future the tasks
    receive resolved; on any other executor ``value`` itself (pickled with every task)."""
    client = getattr(executor, "_client", None)
    if client is None or not callable(getattr(client, "scatter", None)):
        return value
    return client.scatter(value, broadcast=True, hash=False)  # a fresh key: an equal value scattered earlier may be released meanwhile


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch and htcore on one thread each for the block, the previous counts restored after."""
    import torch

    torch_threads, htcore_threads = torch.get_num_threads(), get_num_threads()
    torch.set_num_threads(1)
    set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        set_num_threads(htcore_threads)


def _certify_group(model: Any, data: _Data, group: list[dict[str, Any]], *, finetune: Mapping[str, Any] | None, delta: float,
                   with_original: bool, settings_tried: int) -> list[tuple[BoundReport, Any]]:
    """One task: compress (sharing the pruning and fine-tuning) and certify a group of settings.
    Deterministic in its inputs (module docstring): one thread each, Dropout seeded by `htcore.train.fit`."""
    out = []
    with _one_thread():
        for _, compressed in compress_grid(model, group, finetune=finetune, train_data=(data.X_train, data.y_train)):
            report = certify(compressed, data.X_train, data.y_train, delta=delta, original=model if with_original else None,
                             X_test=data.X_test, y_test=data.y_test, settings_tried=settings_tried)
            out.append((report, compressed))
    return out

