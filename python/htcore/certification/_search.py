"""`search_bound`: compress with every setting of a grid, certify each with the search charged, keep the tightest."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .._progress import progress as progress_bar
from .._validation import check_int
from ..compression import compress_grid
from ._certify import BoundReport, certify


@dataclass(frozen=True)
class SearchResult:
    """The grid searched by `search_bound`: every setting with its report, and the tightest (kl)."""

    settings: tuple[Mapping[str, Any], ...]
    reports: tuple[BoundReport, ...]
    best_index: int

    @property
    def best(self) -> BoundReport:
        return self.reports[self.best_index]

    @property
    def best_settings(self) -> Mapping[str, Any]:
        return self.settings[self.best_index]


def search_bound(model: Any, X_train: Any, y_train: Any, *, grid: Sequence[Mapping[str, Any]], delta: float = 0.05,
                 finetune: Mapping[str, Any] | None = None, X_test: Any = None, y_test: Any = None,
                 with_original: bool = True, progress: bool = False, settings_tried: int | None = None) -> SearchResult:
    """Compress ``model`` (a torch module with Linear and Conv2d layers, MLP or CNN, or a runtime
    model; see `htcore.compress`) with every setting in ``grid`` (dicts of `compress`
    keywords: keep, per_layer, levels, bias_precision, and finetune to override the shared one),
    certify each with ceil log2(len(grid)) search bits charged, and return all reports and the one
    with the lowest kl bound. ``finetune`` is passed to every compression (unless the setting gives
    its own), with (X_train, y_train) as training data; settings differing only in levels or
    bias_precision share one pruning and fine-tuning (`htcore.compression.compress_grid`). X_train and
    X_test are (n, features) rows or, for a CNN, (n, C, H, W) images. ``progress`` shows a bar on stderr.
    ``settings_tried`` (default len(grid), never fewer) is the number of settings charged: when this
    grid was itself picked after trying others on the same training data, count every one tried so
    that the bound stays honest.
    """
    grid = tuple(dict(g) for g in grid)
    check_int(len(grid), "len(grid)", low=1)
    settings_tried = len(grid) if settings_tried is None else check_int(settings_tried, "settings_tried", low=len(grid))
    reports = []
    compressed_models = compress_grid(model, grid, finetune=finetune, train_data=(X_train, y_train))
    for _, compressed in progress_bar(compressed_models, enabled=progress, desc="search_bound", total=len(grid),
                                      unit="setting"):
        reports.append(certify(compressed, X_train, y_train, delta=delta, original=model if with_original else None,
                               X_test=X_test, y_test=y_test, settings_tried=settings_tried))
    best = int(np.argmin([r.kl for r in reports]))
    return SearchResult(settings=grid, reports=tuple(reports), best_index=best)
